"""deploy/monitoring: the alert rules pass `promtool check rules` and their own `promtool test
rules` suites; the generated PrometheusRules and dashboards are current; every PromQL expression
in rules and dashboards parses and names only series the binaries export; the kustomize base
builds and its monitors select the pods the GMC renders; and a real Prometheus (Debian's)
scrapes a running egress proxy, GMC and AGC (with the fakes), evaluates every rule without
error, and counts the jobs this test ran."""
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

import pytest
import yaml

from conftest import Proxy, tenant_config, wait_for
from test_agc import _world, workers
from test_gmc_controller import start_gmc

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
MONITORING = os.path.join(ROOT, "deploy", "monitoring")
RULES = sorted(os.path.join(MONITORING, "rules", f) for f in os.listdir(os.path.join(MONITORING, "rules")) if f.endswith(".rules.yml"))
RULE_TESTS = sorted(os.path.join(MONITORING, "rules", "tests", f) for f in os.listdir(os.path.join(MONITORING, "rules", "tests")))
DASHBOARDS = [os.path.join(MONITORING, "dashboards", f) for f in ("platform.json", "tenant.json")]
GMC = os.environ.get("GMC_BIN") or os.path.join(ROOT, ".build", "debug", "gmc")

# Words of PromQL that look like names but are not series.
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset",
                "inf", "nan"}


def rule_expressions():
    for path in RULES:
        with open(path) as handle:
            for group in yaml.safe_load(handle)["groups"]:
                for rule in group["rules"]:
                    yield f"{os.path.basename(path)}:{rule.get('alert') or rule.get('record')}", rule["expr"]


def dashboard_expressions():
    for path in DASHBOARDS:
        with open(path) as handle:
            for panel in json.load(handle)["panels"]:
                for target in panel["targets"]:
                    yield f"{os.path.basename(path)}:{panel['title']}", target["expr"]


def grafana_to_promql(expr):
    """Grafana's variables, replaced by what Grafana would put there."""
    return expr.replace("$__rate_interval", "1m").replace("$__range", "1h").replace("$namespace", "team-a")


def series_names(expr):
    """The metric names an expression selects: identifiers outside label matchers, strings,
    ranges and grouping clauses, that are neither functions nor PromQL keywords."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![A-Za-z0-9_:.])[A-Za-z_:][A-Za-z0-9_:]*", text):
        after = text[match.end():].lstrip()
        word = match.group(0)
        if after.startswith("(") or word.lower() in PROMQL_WORDS:
            continue
        names.add(word)
    return names


def exported_names(body):
    """Every series name a /metrics page declares (a family with no series yet counts: its TYPE
    line is there from the start) or has samples for; histograms as _bucket, _sum and _count."""
    names = {line.split("{")[0].split(" ")[0] for line in body.splitlines() if line and not line.startswith("#")}
    for line in body.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[:2] == ["#", "TYPE"]:
            names |= {parts[2] + suffix for suffix in ("_bucket", "_sum", "_count")} if parts[3] == "histogram" else {parts[2]}
    return names


def families(body):
    """(name, type, help) of every family a /metrics page declares."""
    helps = {}
    out = []
    for line in body.splitlines():
        parts = line.split(" ", 3)
        if len(parts) >= 4 and parts[:2] == ["#", "HELP"]:
            helps[parts[2]] = parts[3]
        elif len(parts) == 4 and parts[:2] == ["#", "TYPE"]:
            out.append((parts[2], parts[3], helps.get(parts[2], "")))
    return out


def check_hygiene(prefix, body):
    """The naming rules every binary's series follow (Prometheus' own conventions)."""
    declared = families(body)
    assert declared, prefix
    names = {name for name, _, _ in declared}
    assert f"{prefix}_build_info" in names, f"{prefix} exports no build_info"
    for name, kind, help_text in declared:
        assert name.startswith(prefix + "_") or name.startswith("process_"), (prefix, name)
        if kind == "counter":
            assert name.endswith("_total"), f"counter {name} does not end in _total"
        else:
            assert not name.endswith("_total"), f"{kind} {name} ends in _total"
        if kind == "histogram":
            assert name.endswith("_seconds") or name.endswith("_bytes"), f"histogram {name} names no unit"
        if re.search(r"unix time|epoch", help_text, re.IGNORECASE):
            assert name.endswith("_timestamp_seconds") or name == "process_start_time_seconds", name


def test_the_hygiene_check_fails_on_each_rule_it_enforces():
    good = "# HELP x_build_info b\n# TYPE x_build_info gauge\n"
    check_hygiene("x", good)
    for bad in ("# HELP x_requests c\n# TYPE x_requests counter\n", "# HELP x_wait w\n# TYPE x_wait histogram\n",
                "# HELP x_reset_seconds Unix time of a reset\n# TYPE x_reset_seconds gauge\n",
                "# HELP y_total c\n# TYPE y_total counter\n", "# HELP x_open_total o\n# TYPE x_open_total gauge\n"):
        with pytest.raises(AssertionError):
            check_hygiene("x", good + bad)
    with pytest.raises(AssertionError):
        check_hygiene("x", "# HELP x_up u\n# TYPE x_up gauge\n")  # no build_info


def test_series_names_are_found_where_they_are_and_only_there():
    """The extractor the name check relies on, on expressions of every shape the files use."""
    assert series_names('sum by (le, ns) (rate(a_bucket{x="y{z}"}[5m])) / ignoring(le) b_total > 0.5') == {"a_bucket", "b_total"}
    assert series_names("absent(up{component=\"gmc\"} == 1)") == {"up"}
    assert series_names("x unless on (pod) y offset 5m and bool z") == {"x", "y", "z"}
    assert series_names('histogram_quantile(0.95, sum by (le) (rate(q_bucket[1m]))) > 600') == {"q_bucket"}


def test_every_rule_file_passes_promtool_check_and_its_unit_tests():
    assert len(RULES) == 3 and len(RULE_TESTS) == 3
    for path in RULES:
        result = subprocess.run(["promtool", "check", "rules", path], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "SUCCESS" in result.stdout
    for path in RULE_TESTS:
        result = subprocess.run(["promtool", "test", "rules", path], capture_output=True, text=True, cwd=os.path.dirname(path))
        assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_severity_a_summary_and_a_unit_tested_firing_case():
    tested = set()
    for path in RULE_TESTS:
        with open(path) as handle:
            for case in yaml.safe_load(handle)["tests"]:
                tested |= {t["alertname"] for t in case.get("alert_rule_test", []) if t.get("exp_alerts")}
    alerts = set()
    for path in RULES:
        with open(path) as handle:
            for group in yaml.safe_load(handle)["groups"]:
                for rule in group["rules"]:
                    alerts.add(rule["alert"])
                    assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
                    assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
    assert alerts <= tested, f"alerts no test case makes fire: {sorted(alerts - tested)}"


def test_generated_prometheus_rules_and_dashboards_are_current():
    result = subprocess.run([sys.executable, os.path.join(MONITORING, "render.py"), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    with open(os.path.join(MONITORING, "prometheusrules.yaml")) as handle:
        objects = [d for d in yaml.safe_load_all(handle) if d]
    for path, rule_object in zip(RULES, objects):
        with open(path) as handle:
            assert rule_object["spec"]["groups"] == yaml.safe_load(handle)["groups"], path


def test_every_dashboard_expression_is_valid_promql(tmp_path):
    """promtool parses each expression as a recording rule (the only parse it offers offline)."""
    rules = [{"record": f"dashboard:expr_{index}", "expr": grafana_to_promql(expr)}
             for index, (_, expr) in enumerate(dashboard_expressions())]
    assert len(rules) >= 20
    path = tmp_path / "dashboards.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def kustomize(path):
    result = subprocess.run(["kubectl", "kustomize", path], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def selects(selector, labels):
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In", expression
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return True


def test_the_monitoring_base_builds_and_its_monitors_select_the_pods_the_gmc_renders(tmp_path):
    objects = kustomize(MONITORING)
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == ["ConfigMap", "PodMonitor", "PodMonitor", "PrometheusRule", "PrometheusRule", "PrometheusRule"], kinds
    # The built-in kinds validate against Kubernetes' own schema; prometheus-operator's CRDs are
    # not in kubernetes-validate's schema set (and not reachable from CI), so the monitors are
    # checked below against what they must select instead.
    configmap = tmp_path / "configmap.yaml"
    configmap.write_text(yaml.safe_dump(next(o for o in objects if o["kind"] == "ConfigMap")))
    result = subprocess.run(["kubernetes-validate", "--strict", str(configmap)], capture_output=True, text=True)
    assert "passed" in result.stdout + result.stderr and result.returncode == 0, result.stdout + result.stderr
    dashboards = next(o for o in objects if o["kind"] == "ConfigMap")
    assert dashboards["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert {k: json.loads(v)["uid"] for k, v in dashboards["data"].items()} == {
        "platform.json": "actions-gateway-platform", "tenant.json": "actions-gateway-tenant"}

    monitors = {o["metadata"]["name"]: o["spec"] for o in objects if o["kind"] == "PodMonitor"}
    rendered = subprocess.run([GMC, "render", "--file", os.path.join(ROOT, "deploy", "examples", "tenant-team-a.yaml"),
                               "--allowed-priority-classes", "runner-critical,runner-standard"],
                              capture_output=True, text=True, check=True).stdout
    deployments = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "Deployment"]
    tenants = monitors["actions-gateway-tenants"]
    components = set()
    for deployment in deployments:
        template = deployment["spec"]["template"]
        labels = template["metadata"]["labels"]
        assert selects(tenants["selector"], labels), labels
        ports = {p["name"] for c in template["spec"]["containers"] for p in c.get("ports", [])}
        assert tenants["podMetricsEndpoints"][0]["port"] in ports, (labels, ports)
        components.add(labels["app.kubernetes.io/component"])
    assert components == {"proxy", "agc"}
    # Their NetworkPolicies admit the admin ports from the monitoring namespace label the docs name.
    policies = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "NetworkPolicy"]
    admitted = {p["metadata"]["name"] for p in policies for rule in p["spec"].get("ingress", []) for peer in rule.get("from", [])
                if peer.get("namespaceSelector", {}).get("matchLabels") == {"actions-gateway.github.com/monitoring": "true"}}
    assert {"team-a-gateway-proxy", "team-a-gateway-agc-ingress"} <= admitted, admitted
    gmc = next(d for d in kustomize(os.path.join(ROOT, "deploy", "gmc")) if d["kind"] == "Deployment")
    gmc_monitor = monitors["actions-gateway-gmc"]
    assert selects(gmc_monitor["selector"], gmc["spec"]["template"]["metadata"]["labels"])
    assert gmc["metadata"]["namespace"] in gmc_monitor["namespaceSelector"]["matchNames"]
    gmc_ports = {p["name"] for c in gmc["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
    assert gmc_monitor["podMetricsEndpoints"][0]["port"] in gmc_ports


def shipped_scrape_configs(pods):
    """prometheus/scrape-configs.yaml with its Kubernetes discovery replaced by static targets
    that carry the labels discovery would give these pods (Debian's Prometheus is built without
    Kubernetes discovery): the shipped relabeling itself decides what is kept and how it is labelled.
    `pods` maps a job name to [(address, {meta label: value})]."""
    with open(os.path.join(MONITORING, "prometheus", "scrape-configs.yaml")) as handle:
        configs = yaml.safe_load(handle)["scrape_configs"]
    for config in configs:
        assert [sd["role"] for sd in config.pop("kubernetes_sd_configs")] == ["pod"], config["job_name"]
        config["static_configs"] = [{"targets": [address], "labels": labels} for address, labels in pods[config["job_name"]]]
    return configs


def pod(namespace, name, port, **labels):
    meta = {"__meta_kubernetes_namespace": namespace, "__meta_kubernetes_pod_name": name,
            "__meta_kubernetes_pod_container_port_name": port}
    meta.update({f"__meta_kubernetes_pod_label_{key}": value for key, value in labels.items()})
    return meta


def tenant_pod(name, component, port="admin"):
    return pod("team-a", name, port, app_kubernetes_io_managed_by="gmc", app_kubernetes_io_component=component,
               actions_gateway_github_com_gateway="gw")


def test_plain_scrape_configs_load_in_prometheus(tmp_path):
    configs = shipped_scrape_configs({"actions-gateway-tenants": [("127.0.0.1:1", tenant_pod("p", "proxy"))],
                                      "actions-gateway-gmc": [("127.0.0.1:2", pod("actions-gateway-system", "g", "metrics",
                                                                                 app_kubernetes_io_name="gmc"))]})
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump({"scrape_configs": configs, "rule_files": RULES}))
    result = subprocess.run(["promtool", "check", "config", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# --- a real Prometheus against the real binaries ---------------------------------------------

def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def query(base, expr):
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())["data"]["result"]


def api(base, path):
    with urllib.request.urlopen(f"{base}{path}", timeout=5) as response:
        return json.loads(response.read())["data"]


def run_one_job(kube, github, job_number):
    before = {p["metadata"]["name"] for p in workers(kube)}
    job = github.control("enqueue", {"scaleSet": "cpu", "repository": "acme/widgets", "runId": 100 + job_number})["jobIds"][0]
    pod = wait_for(lambda: next((p for p in workers(kube) if p["metadata"]["name"] not in before
                                 and p["metadata"]["labels"]["actions-gateway.github.com/job-id"] == job), None),
                   timeout=20, what=f"the worker pod of job {job}")
    name = pod["metadata"]["name"]
    kube.call("PATCH", f"/api/v1/namespaces/team-a/pods/{name}/status",
              {"status": {"phase": "Running", "containerStatuses": [
                  {"name": "runner", "state": {"running": {"startedAt": pod["metadata"]["creationTimestamp"]}}}]}},
              content_type="application/merge-patch+json")
    github.control("start", {"jobId": job})
    github.control("complete", {"jobId": job, "result": "succeeded"})
    kube.call("PATCH", f"/api/v1/namespaces/team-a/pods/{name}/status",
              {"status": {"phase": "Succeeded", "containerStatuses": [{"name": "runner", "state": {"terminated": {"exitCode": 0}}}]}},
              content_type="application/merge-patch+json")


@pytest.fixture
def world(tmp_path):
    yield from _world(tmp_path, hold=0.3)


def test_a_real_prometheus_scrapes_the_binaries_evaluates_every_rule_and_counts_the_jobs_run(world, tmp_path):
    kube, github, start = world
    kube.call("POST", "/api/v1/namespaces", {"metadata": {"name": "system"}})
    agc, agc_admin = start([{"name": "cpu", "runnerLabels": ["linux"], "completedPodTTL": "0s"}])
    proxy = Proxy(tenant_config())
    gmc = start_gmc(kube, "gmc-test")
    prometheus = None
    try:
        gmc_admin = json.loads(gmc.stderr.readline())["admin"]
        proxy_admin = "%s:%d" % proxy.admin_address
        jobs = 3
        wait_for(lambda: github.control("state")["scaleSets"], timeout=20, what="scale set created")
        for number in range(jobs):
            run_one_job(kube, github, number)

        # One structured line per job transition, with the keys a log pipeline joins on.
        def transitions():
            records = [json.loads(line) for line in list(agc.log) if line.startswith("{")]
            return [r for r in records if r.get("msg") in ("job provisioned", "job started", "job completed")]
        lines = wait_for(lambda: (lambda t: t if len(t) == 3 * jobs else None)(transitions()), what="every job transition logged")
        for record in lines:
            assert record["namespace"] == "team-a" and record["gateway"] == "gw" and record["runner_group"] == "cpu", record
            assert record["job_id"] and record["run_id"].startswith("10"), record
        assert len({r["job_id"] for r in lines}) == jobs

        # What each binary exports, as a scrape sees it; every rule and panel may name only these.
        exported = {"up"}
        for prefix, admin in (("egress_proxy", proxy_admin), ("gmc", gmc_admin), ("agc", agc_admin)):
            body = urllib.request.urlopen(f"http://{admin}/metrics", timeout=5).read().decode()
            check_hygiene(prefix, body)
            exported |= exported_names(body)
        unknown = {(where, name) for where, expr in [*rule_expressions(), *dashboard_expressions()]
                   for name in series_names(grafana_to_promql(expr)) if name not in exported}
        assert not unknown, sorted(unknown)

        port = free_port()
        base = f"http://127.0.0.1:{port}"
        # The shipped scrape configs, fed the pods discovery would find: ours, plus two it must drop
        # (a worker pod, and the proxy's proxy port rather than its admin port).
        scrape_configs = shipped_scrape_configs({
            "actions-gateway-tenants": [(proxy_admin, tenant_pod("gw-proxy-0", "proxy")),
                                        (agc_admin, tenant_pod("gw-agc-0", "agc")),
                                        ("127.0.0.1:%d" % proxy.port, tenant_pod("gw-proxy-0", "proxy", port="proxy")),
                                        ("127.0.0.1:9", tenant_pod("gw-worker-1", "worker"))],
            "actions-gateway-gmc": [(gmc_admin, pod("actions-gateway-system", "gmc-0", "metrics", app_kubernetes_io_name="gmc"))],
        })
        config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"}, "rule_files": RULES,
                  "scrape_configs": scrape_configs}
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        prometheus = subprocess.Popen(["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
                                       f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

        def all_up():
            try:
                active = api(base, "/api/v1/targets")["activeTargets"]
            except OSError:
                return False
            return len(active) == 3 and all(t["health"] == "up" for t in active)
        wait_for(all_up, timeout=60, interval=0.5, what="Prometheus scraping all three targets")
        labelled = {(r["metric"]["component"], r["metric"]["namespace"], r["metric"].get("gateway"), r["metric"]["pod"])
                    for r in query(base, "up")}
        assert labelled == {("proxy", "team-a", "gw", "gw-proxy-0"), ("agc", "team-a", "gw", "gw-agc-0"),
                            ("gmc", "actions-gateway-system", None, "gmc-0")}, labelled

        completed = wait_for(lambda: (lambda r: r and float(r[0]["value"][1]) == jobs and r)(
            query(base, 'sum(agc_jobs_completed_total{namespace="team-a", runner_group="cpu", result="succeeded"})')),
            timeout=30, interval=0.5, what=f"Prometheus counting {jobs} jobs")
        assert float(completed[0]["value"][1]) == jobs

        def rules_evaluated():
            groups = api(base, "/api/v1/rules")["groups"]
            rules = [r for g in groups for r in g["rules"]]
            return rules if rules and all(r["lastEvaluation"] > "2000" for r in rules) else None
        rules = wait_for(rules_evaluated, timeout=30, interval=0.5, what="every rule evaluated")
        assert len(rules) == len(list(rule_expressions())), len(rules)
        bad = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
        assert not bad, bad
        # Nothing is wrong in this world, so nothing fires (a rule that fires on a healthy
        # gateway would page someone for nothing).
        firing = [r["name"] for r in rules if r["state"] == "firing"]
        assert not firing, firing
        # The dashboards' expressions run against the live series without error too.
        for where, expr in dashboard_expressions():
            query(base, grafana_to_promql(expr))
        assert query(base, 'max(gmc_leader)')[0]["value"][1] == "1"
    finally:
        if prometheus:
            prometheus.terminate()
            prometheus.wait(timeout=20)
        gmc.kill()
        gmc.wait()
        proxy.stop()

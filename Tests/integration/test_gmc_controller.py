"""`gmc run` against the fake API server: leader election between two replicas, failover,
reconciling through informers, a watch that survives 410 and dropped connections, and 200
gateways converging (time and RSS printed for the notes)."""
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from conftest import wait_for

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
GMC = os.environ.get("GMC_BIN") or os.path.join(ROOT, ".build", "debug", "gmc")
FAKE = os.path.join(ROOT, "Tests", "fakes", "kube_apiserver.py")


class Fake:
    def __init__(self):
        self.process = subprocess.Popen([sys.executable, FAKE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.url = f"http://127.0.0.1:{json.loads(self.process.stdout.readline())['port']}"

    token = None

    def call(self, method, path, body=None, content_type="application/json"):
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": content_type}
        if path.startswith("/fake/token"):
            self.token = body.get("token")
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"{}")

    def exists(self, path):
        return self.call("GET", path)[0] == 200

    def stop(self):
        self.process.stdin.close()
        self.process.kill()
        self.process.wait()


def gateway(name):
    return {"apiVersion": "actions-gateway.github.com/v1alpha1", "kind": "ActionsGateway", "metadata": {"name": name},
            "spec": {"gitHubAppRef": {"name": "app"}, "gitHubURL": "https://github.com/org",
                     "runnerGroups": [{"name": "cpu", "runnerLabels": ["self-hosted"], "maxWorkers": 5}]}}


def start_gmc(fake, identity, extra=()):
    return subprocess.Popen([GMC, "run", "--api-server", fake.url, "--leader-elect", "--lease-duration", "2",
                             "--lease-namespace", "system", "--identity", identity, "--metrics-addr", "127.0.0.1:0",
                             *extra], stderr=subprocess.PIPE, text=True)


@pytest.fixture
def fake():
    instance = Fake()
    for namespace in ["system", "team-a"]:
        instance.call("POST", "/api/v1/namespaces", {"metadata": {"name": namespace}})
    yield instance
    instance.stop()


def holder(fake):
    status, lease = fake.call("GET", "/apis/coordination.k8s.io/v1/namespaces/system/leases/gmc-leader")
    return lease.get("spec", {}).get("holderIdentity") if status == 200 else None


def test_one_leader_reconciles_and_the_other_takes_over(fake):
    first = start_gmc(fake, "gmc-a")
    second = start_gmc(fake, "gmc-b")
    try:
        leader = wait_for(lambda: holder(fake), interval=0.2, what="a leader")
        fake.call("POST", "/apis/actions-gateway.github.com/v1alpha1/namespaces/team-a/actionsgateways", gateway("one"))
        wait_for(lambda: fake.exists("/api/v1/namespaces/team-a/configmaps/one-proxy"), interval=0.2, what="children of the first gateway")
        assert holder(fake) == leader, "one leader throughout"
        (first if leader == "gmc-a" else second).send_signal(signal.SIGKILL)
        other = "gmc-b" if leader == "gmc-a" else "gmc-a"
        wait_for(lambda: holder(fake) == other, timeout=15, what="the standby takes the Lease")
        fake.call("POST", "/apis/actions-gateway.github.com/v1alpha1/namespaces/team-a/actionsgateways", gateway("two"))
        wait_for(lambda: fake.exists("/api/v1/namespaces/team-a/configmaps/two-proxy"), interval=0.2, what="the new leader reconciles")
    finally:
        for process in (first, second):
            process.kill()
            process.wait()


def test_watch_survives_410_and_dropped_connections(fake):
    gmc = start_gmc(fake, "solo")
    try:
        wait_for(lambda: holder(fake) == "solo", what="leader")
        fake.call("POST", "/apis/actions-gateway.github.com/v1alpha1/namespaces/team-a/actionsgateways", gateway("before"))
        wait_for(lambda: fake.exists("/api/v1/namespaces/team-a/configmaps/before-proxy"), interval=0.2, what="first gateway")
        fake.call("POST", "/fake/compact")       # every resourceVersion so far is now too old (410)
        fake.call("POST", "/fake/drop-watches")  # and every open watch is cut, as by an API server restart
        fake.call("POST", "/apis/actions-gateway.github.com/v1alpha1/namespaces/team-a/actionsgateways", gateway("after"))
        wait_for(lambda: fake.exists("/api/v1/namespaces/team-a/configmaps/after-proxy"), timeout=20,
                 what="a gateway created after the watch broke")
        fake.call("DELETE", "/api/v1/namespaces/team-a/configmaps/after-proxy")
        wait_for(lambda: fake.exists("/api/v1/namespaces/team-a/configmaps/after-proxy"), timeout=20,
                 what="a deleted child is recreated through the child watch")
        admin = json.loads(gmc.stderr.readline())["admin"]
        for path, expected in [("/healthz", "ok"), ("/readyz", "leader")]:
            assert urllib.request.urlopen(f"http://{admin}{path}").read().decode().strip() == expected
        metrics = urllib.request.urlopen(f"http://{admin}/metrics").read().decode()
        assert "gmc_leader 1" in metrics
        assert 'gmc_gateways{condition="False"} 2' in metrics, "both gateways known (not Ready: no pods run here)"
        successes = next(float(line.split()[-1]) for line in metrics.splitlines()
                         if line.startswith('gmc_reconcile_total{result="success"}'))
        assert successes >= 2
        check = subprocess.run(["promtool", "check", "metrics"], input=metrics, capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
    finally:
        gmc.kill()
        gmc.wait()


def test_two_hundred_gateways_converge(fake):
    gmc = start_gmc(fake, "scale", extra=("--workers", "8"))
    try:
        wait_for(lambda: holder(fake) == "scale", what="leader")
        started = time.monotonic()
        for index in range(200):
            fake.call("POST", "/apis/actions-gateway.github.com/v1alpha1/namespaces/team-a/actionsgateways", gateway(f"g{index}"))

        def converged():
            status, gateways = fake.call("GET", "/apis/actions-gateway.github.com/v1alpha1/namespaces/team-a/actionsgateways")
            return status == 200 and len(gateways["items"]) == 200 and all(
                (g.get("status") or {}).get("observedGeneration") == 1 for g in gateways["items"])
        wait_for(converged, timeout=300, interval=0.5, what="200 gateways reconciled")
        elapsed = time.monotonic() - started
        with open(f"/proc/{gmc.pid}/status") as f:
            rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        print(f"\ngmc-scale: 200 gateways converged in {elapsed:.1f} s; gmc RSS {rss} KiB")
        configmaps = fake.call("GET", "/api/v1/namespaces/team-a/configmaps")[1]["items"]
        assert len([c for c in configmaps if c["metadata"]["name"].endswith("-proxy")]) == 200
    finally:
        gmc.kill()
        gmc.wait()


def test_kubeconfig_for_development(fake, tmp_path):
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(f"""apiVersion: v1
kind: Config
current-context: dev
contexts:
  - name: dev
    context: {{cluster: fake, user: me}}
clusters:
  - name: fake
    cluster: {{server: "{fake.url}"}}
users:
  - name: me
    user: {{token: dev-token}}
""")
    gmc = subprocess.Popen([GMC, "run", "--kubeconfig", str(kubeconfig), "--metrics-addr", "127.0.0.1:0"],
                           stderr=subprocess.PIPE, text=True)
    try:
        fake.call("POST", "/apis/actions-gateway.github.com/v1alpha1/namespaces/team-a/actionsgateways", gateway("dev"))
        wait_for(lambda: fake.exists("/api/v1/namespaces/team-a/configmaps/dev-proxy"), interval=0.2, what="reconciled via kubeconfig")
    finally:
        gmc.kill()
        gmc.wait()
    # A token file is re-read per request: rotate it on both sides, and the GMC keeps working.
    token = tmp_path / "token"
    token.write_text("first-token\n")
    fake.call("POST", "/fake/token", {"token": "first-token"})
    rotating = tmp_path / "rotating"
    rotating.write_text(kubeconfig.read_text().replace("{token: dev-token}", "{tokenFile: " + str(token) + "}"))
    gmc = subprocess.Popen([GMC, "run", "--kubeconfig", str(rotating), "--metrics-addr", "127.0.0.1:0"],
                           stderr=subprocess.PIPE, text=True)
    try:
        fake.call("POST", "/apis/actions-gateway.github.com/v1alpha1/namespaces/team-a/actionsgateways", gateway("tok1"))
        wait_for(lambda: fake.exists("/api/v1/namespaces/team-a/configmaps/tok1-proxy"), interval=0.2, what="first token")
        token.write_text("second-token\n")
        fake.call("POST", "/fake/token", {"token": "second-token"})
        fake.call("POST", "/fake/drop-watches")  # new watches must authenticate with the new token
        fake.call("POST", "/apis/actions-gateway.github.com/v1alpha1/namespaces/team-a/actionsgateways", gateway("tok2"))
        wait_for(lambda: fake.exists("/api/v1/namespaces/team-a/configmaps/tok2-proxy"), timeout=20, interval=0.2,
                 what="the rotated token is used")
    finally:
        gmc.kill()
        gmc.wait()
    bad = tmp_path / "certs"
    bad.write_text(kubeconfig.read_text().replace("{token: dev-token}", "{client-certificate: /x.pem, client-key: /y.pem}"))
    refused = subprocess.run([GMC, "run", "--kubeconfig", str(bad), "--metrics-addr", "127.0.0.1:0"], capture_output=True,
                             text=True, timeout=20)
    assert refused.returncode != 0
    assert "client-certificate users are not supported" in refused.stderr


def test_steady_state_reconcile_makes_no_api_requests(fake):
    """A reconcile of a converged gateway reads only the informers' caches and writes nothing:
    what the fake API server saw during it is the measure (the note records it)."""
    gmc = subprocess.Popen([GMC, "run", "--api-server", fake.url, "--metrics-addr", "127.0.0.1:0"],
                           stderr=subprocess.PIPE, text=True)
    try:
        admin = json.loads(gmc.stderr.readline())["admin"]

        def reconciles():
            metrics = urllib.request.urlopen(f"http://{admin}/metrics").read().decode()
            return sum(float(line.split()[-1]) for line in metrics.splitlines() if line.startswith("gmc_reconcile_total{"))

        def synced():
            return "gmc_cache_synced 1" in urllib.request.urlopen(f"http://{admin}/metrics").read().decode()

        fake.call("POST", "/apis/actions-gateway.github.com/v1alpha1/namespaces/team-a/actionsgateways", gateway("steady"))
        wait_for(lambda: fake.call("GET", "/apis/actions-gateway.github.com/v1alpha1/namespaces/team-a/actionsgateways/steady")[1]
                 .get("status", {}).get("observedGeneration") == 1, what="converged")
        last = {}

        def quiet():  # nothing changed between two polls: no reconcile in flight
            now = (reconciles(), fake.call("GET", "/fake/stats")[1])
            settled = last.get("value") == now
            last["value"] = now
            return settled
        wait_for(synced, what="every informer listed")
        wait_for(quiet, interval=0.5, what="quiet")
        count, before = reconciles(), fake.call("GET", "/fake/stats")[1]
        # A change to a child that touches nothing the GMC owns: the child watch queues the
        # gateway, and its reconcile must find nothing to do.
        fake.call("PATCH", "/api/v1/namespaces/team-a/configmaps/steady-proxy",
                  {"metadata": {"labels": {"touched-by": "test"}}}, content_type="application/merge-patch+json")
        wait_for(lambda: reconciles() > count, what="the reconcile the change queued")
        wait_for(quiet, interval=0.5, what="quiet again")
        after = fake.call("GET", "/fake/stats")[1]
        runs = reconciles() - count
        delta = {verb: after[verb] - before[verb] for verb in ("get", "list", "watch", "writes")}
        delta["writes"] -= 1  # the test's own patch
        print(f"\ngmc-steady: {runs:.0f} reconcile(s) made {delta}")
        assert delta == {"get": 0, "list": 0, "watch": 0, "writes": 0}
    finally:
        gmc.kill()
        gmc.wait()


def test_every_reconcile_outcome_is_one_structured_log_line(fake):
    import threading
    gmc = subprocess.Popen([GMC, "run", "--api-server", fake.url, "--metrics-addr", "127.0.0.1:0", "--log-level", "debug"],
                           stderr=subprocess.PIPE, text=True)
    lines = []
    threading.Thread(target=lambda: [lines.append(line) for line in gmc.stderr], daemon=True).start()

    def records(message, gateway):
        return [r for r in (json.loads(line) for line in list(lines) if line.startswith("{"))
                if r.get("msg") == message and r.get("gateway") == gateway]
    try:
        bad = gateway("bad")
        bad["spec"]["proxy"] = {"extraAllowedHosts": ["downloads.example.com"]}  # schema-valid; the platform allows none
        fake.call("POST", "/apis/actions-gateway.github.com/v1alpha1/namespaces/team-a/actionsgateways", bad)
        fake.call("POST", "/apis/actions-gateway.github.com/v1alpha1/namespaces/team-a/actionsgateways", gateway("good"))
        refused = wait_for(lambda: records("gateway refused", "team-a/bad"), what="the refusal logged")
        assert "extraAllowedHosts" in refused[0]["problems"] and refused[0]["level"] == "warning"
        done = wait_for(lambda: records("reconciled", "team-a/good"), what="the reconcile logged")
        assert int(done[0]["writes"]) > 0 and float(done[0]["seconds"]) >= 0
    finally:
        gmc.kill()
        gmc.wait()

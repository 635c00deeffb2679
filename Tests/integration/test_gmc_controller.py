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


def reconcile_count(admin):
    """Reconciles so far, by any result (from the GMC's own metrics)."""
    metrics = urllib.request.urlopen(f"http://{admin}/metrics").read().decode()
    return sum(float(line.split()[-1]) for line in metrics.splitlines() if line.startswith("gmc_reconcile_total{"))


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
    for user, message in [("{auth-provider: {name: gcp}}", "auth-provider is not supported"),
                          ("{client-certificate: /x.pem}", "needs its key"),
                          ("{exec: {args: [x]}}", "exec has no command")]:
        bad = tmp_path / "bad"
        bad.write_text(kubeconfig.read_text().replace("{token: dev-token}", user))
        refused = subprocess.run([GMC, "run", "--kubeconfig", str(bad), "--metrics-addr", "127.0.0.1:0"], capture_output=True,
                                 text=True, timeout=20)
        assert refused.returncode != 0 and message in refused.stderr, refused.stderr
    refused = subprocess.run([GMC, "run", "--kubeconfig", str(kubeconfig), "--context", "nope", "--metrics-addr", "127.0.0.1:0"],
                             capture_output=True, text=True, timeout=20)
    assert refused.returncode != 0 and "no context named nope" in refused.stderr


def openssl(*args):
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def run_until_reconciled(args, fake_call, name, env=None):
    gmc = subprocess.Popen([GMC, "run", "--metrics-addr", "127.0.0.1:0", *args], stderr=subprocess.PIPE, text=True,
                           env=env)
    try:
        fake_call("POST", "/apis/actions-gateway.github.com/v1alpha1/namespaces/team-a/actionsgateways", gateway(name))
        wait_for(lambda: fake_call("GET", f"/api/v1/namespaces/team-a/configmaps/{name}-proxy")[0] == 200, timeout=20,
                 interval=0.2, what=f"{name} reconciled")
    finally:
        gmc.kill()
        gmc.wait()


def test_kubeconfig_with_a_client_certificate_against_a_server_that_requires_one(tmp_path):
    import base64
    import ssl
    d = tmp_path
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem"),
            "-days", "1", "-subj", "/CN=test-ca")
    for name, subject, extension in [("server", "/CN=127.0.0.1", "subjectAltName=IP:127.0.0.1"),
                                     ("client", "/CN=gmc/O=system:masters", "extendedKeyUsage=clientAuth")]:
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(d / f"{name}.key"), "-out", str(d / f"{name}.csr"),
                "-subj", subject)
        (d / f"{name}.ext").write_text(extension + "\n")
        openssl("x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.pem"), "-CAkey", str(d / "ca.key"),
                "-CAcreateserial", "-out", str(d / f"{name}.pem"), "-days", "1", "-extfile", str(d / f"{name}.ext"))
    process = subprocess.Popen([sys.executable, FAKE, "--tls", str(d / "server.pem"), str(d / "server.key"),
                                "--client-ca", str(d / "ca.pem")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    port = json.loads(process.stdout.readline())["port"]
    context = ssl.create_default_context(cafile=str(d / "ca.pem"))
    context.load_cert_chain(str(d / "client.pem"), str(d / "client.key"))

    def call(method, path, body=None):
        request = urllib.request.Request(f"https://127.0.0.1:{port}{path}", method=method,
                                         data=json.dumps(body).encode() if body is not None else None,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10, context=context) as response:
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as error:
            return error.code, {}
    try:
        call("POST", "/api/v1/namespaces", {"metadata": {"name": "team-a"}})
        without = ssl.create_default_context(cafile=str(d / "ca.pem"))
        try:
            urllib.request.urlopen(f"https://127.0.0.1:{port}/api/v1/namespaces", timeout=5, context=without)
            presented = False
        except (ssl.SSLError, urllib.error.URLError, ConnectionError):
            presented = True
        assert presented, "the fake refuses a client without a certificate"
        ca_data = base64.b64encode((d / "ca.pem").read_bytes()).decode()
        key_data = base64.b64encode((d / "client.key").read_bytes()).decode()
        (d / "config").write_text(f"""apiVersion: v1
kind: Config
current-context: tls
contexts:
  - {{name: tls, context: {{cluster: fake, user: cert}}}}
clusters:
  - {{name: fake, cluster: {{server: "https://127.0.0.1:{port}", certificate-authority-data: {ca_data}}}}}
users:
  - {{name: cert, user: {{client-certificate: client.pem, client-key-data: {key_data}}}}}
""")
        run_until_reconciled(["--kubeconfig", str(d / "config")], call, "tls")
    finally:
        process.stdin.close()
        process.kill()
        process.wait()


def test_kubeconfig_with_an_exec_plugin_from_KUBECONFIG_and_a_context(fake, tmp_path):
    counter = tmp_path / "runs"
    plugin = tmp_path / "credential-plugin"
    plugin.write_text(f"""#!{sys.executable}
import json, os, sys
info = json.loads(os.environ["KUBERNETES_EXEC_INFO"])
assert info["kind"] == "ExecCredential" and os.environ["PLUGIN_ENV"] == "from-kubeconfig"
with open({str(counter)!r}, "a") as f:
    f.write(sys.argv[1] + "\\n")
print(json.dumps({{"apiVersion": info["apiVersion"], "kind": "ExecCredential",
                  "status": {{"token": "exec-token", "expirationTimestamp": "2099-01-01T00:00:00Z"}}}}))
""")
    plugin.chmod(0o755)
    fake.call("POST", "/fake/token", {"token": "exec-token"})
    (tmp_path / "config").write_text(f"""apiVersion: v1
kind: Config
current-context: elsewhere
contexts:
  - {{name: elsewhere, context: {{cluster: nowhere, user: exec}}}}
  - {{name: dev, context: {{cluster: fake, user: exec}}}}
clusters:
  - {{name: nowhere, cluster: {{server: "http://127.0.0.1:1"}}}}
  - {{name: fake, cluster: {{server: "{fake.url}"}}}}
users:
  - name: exec
    user:
      exec:
        apiVersion: client.authentication.k8s.io/v1
        command: ./credential-plugin
        args: [token-please]
        env: [{{name: PLUGIN_ENV, value: from-kubeconfig}}]
""")
    env = dict(os.environ, KUBECONFIG=str(tmp_path / "config"))
    env.pop("KUBERNETES_SERVICE_HOST", None)
    run_until_reconciled(["--context", "dev"], fake.call, "exec", env=env)
    runs = counter.read_text().split()
    assert runs and set(runs) == {"token-please"}
    assert len(runs) == 1, "the token is cached until it expires"


def test_steady_state_reconcile_makes_no_api_requests(fake):
    """A reconcile of a converged gateway reads only the informers' caches and writes nothing:
    what the fake API server saw during it is the measure (the note records it)."""
    gmc = subprocess.Popen([GMC, "run", "--api-server", fake.url, "--metrics-addr", "127.0.0.1:0"],
                           stderr=subprocess.PIPE, text=True)
    try:
        admin = json.loads(gmc.stderr.readline())["admin"]

        def synced():
            lines = urllib.request.urlopen(f"http://{admin}/metrics").read().decode().splitlines()
            return "gmc_cache_synced 1" in lines

        fake.call("POST", "/apis/actions-gateway.github.com/v1alpha1/namespaces/team-a/actionsgateways", gateway("steady"))
        wait_for(lambda: fake.call("GET", "/apis/actions-gateway.github.com/v1alpha1/namespaces/team-a/actionsgateways/steady")[1]
                 .get("status", {}).get("observedGeneration") == 1, what="converged")
        last = {}

        def quiet():  # nothing changed between two polls: no reconcile in flight
            now = (reconcile_count(admin), fake.call("GET", "/fake/stats")[1])
            settled = last.get("value") == now
            last["value"] = now
            return settled
        wait_for(synced, what="every informer listed")
        wait_for(quiet, interval=0.5, what="quiet")
        count, before = reconcile_count(admin), fake.call("GET", "/fake/stats")[1]
        # A change to a child that touches nothing the GMC owns: the child watch queues the
        # gateway, and its reconcile must find nothing to do.
        fake.call("PATCH", "/api/v1/namespaces/team-a/configmaps/steady-proxy",
                  {"metadata": {"labels": {"touched-by": "test"}}}, content_type="application/merge-patch+json")
        wait_for(lambda: reconcile_count(admin) > count, what="the reconcile the change queued")
        wait_for(quiet, interval=0.5, what="quiet again")
        after = fake.call("GET", "/fake/stats")[1]
        runs = reconcile_count(admin) - count
        delta = {verb: after[verb] - before[verb] for verb in ("get", "list", "watch", "writes")}
        delta["writes"] -= 1  # the test's own patch
        print(f"\ngmc-steady: {runs:.0f} reconcile(s) made {delta}")
        assert delta == {"get": 0, "list": 0, "watch": 0, "writes": 0}
    finally:
        gmc.kill()
        gmc.wait()


def test_every_reconcile_outcome_is_one_structured_log_line(fake):
    import threading
    gmc = subprocess.Popen([GMC, "run", "--api-server", fake.url, "--metrics-addr", "127.0.0.1:0"],
                           stderr=subprocess.PIPE, text=True)
    lines = []
    threading.Thread(target=lambda: [lines.append(line) for line in gmc.stderr], daemon=True).start()

    def records(message, gateway):
        # Stable keys: the namespace and the gateway's name apart (docs/operations/observability.md).
        return [r for r in (json.loads(line) for line in list(lines) if line.startswith("{"))
                if r.get("msg") == message and r.get("namespace") == "team-a" and r.get("gateway") == gateway]
    try:
        bad = gateway("bad")
        bad["spec"]["proxy"] = {"extraAllowedHosts": ["downloads.example.com"]}  # schema-valid; the platform allows none
        fake.call("POST", "/apis/actions-gateway.github.com/v1alpha1/namespaces/team-a/actionsgateways", bad)
        fake.call("POST", "/apis/actions-gateway.github.com/v1alpha1/namespaces/team-a/actionsgateways", gateway("good"))
        refused = wait_for(lambda: records("gateway refused", "bad"), what="the refusal logged")
        assert "extraAllowedHosts" in refused[0]["problems"] and refused[0]["level"] == "warning"
        done = wait_for(lambda: records("reconciled", "good"), what="the reconcile logged at info")
        assert int(done[0]["writes"]) > 0 and float(done[0]["seconds"]) >= 0
    finally:
        gmc.kill()
        gmc.wait()


def test_periodic_resync_reconciles_unchanged_gateways(fake):
    gmc = subprocess.Popen([GMC, "run", "--api-server", fake.url, "--metrics-addr", "127.0.0.1:0", "--resync-seconds", "1"],
                           stderr=subprocess.PIPE, text=True)
    try:
        admin = json.loads(gmc.stderr.readline())["admin"]

        fake.call("POST", "/apis/actions-gateway.github.com/v1alpha1/namespaces/team-a/actionsgateways", gateway("idle"))
        wait_for(lambda: fake.call("GET", "/apis/actions-gateway.github.com/v1alpha1/namespaces/team-a/actionsgateways/idle")[1]
                 .get("status", {}).get("observedGeneration") == 1, what="converged")
        writes = fake.call("GET", "/fake/stats")[1]["writes"]
        start = reconcile_count(admin)
        wait_for(lambda: reconcile_count(admin) >= start + 3, timeout=20, what="three resyncs with nothing changed")
        assert fake.call("GET", "/fake/stats")[1]["writes"] == writes, "a resync of a converged gateway writes nothing"
    finally:
        gmc.kill()
        gmc.wait()
    refused = subprocess.run([GMC, "run", "--api-server", fake.url, "--resync-seconds", "-5"], capture_output=True, text=True)
    assert refused.returncode != 0


def test_the_gmc_keeps_the_agcs_conditions_and_follows_its_secret(fake):
    """The GMC and the AGC share status.conditions: each replaces only its own types. A Secret
    appearing reconciles the gateways that name it (CredentialsAvailable turns True)."""
    gmc = subprocess.Popen([GMC, "run", "--api-server", fake.url, "--metrics-addr", "127.0.0.1:0"],
                           stderr=subprocess.PIPE, text=True)
    path = "/apis/actions-gateway.github.com/v1alpha1/namespaces/team-a/actionsgateways/shared"

    def conditions():
        return {c["type"]: c for c in (fake.call("GET", path)[1].get("status") or {}).get("conditions", [])}
    try:
        fake.call("POST", "/apis/actions-gateway.github.com/v1alpha1/namespaces/team-a/actionsgateways", gateway("shared"))
        wait_for(lambda: conditions().get("CredentialsAvailable", {}).get("status") == "False", what="no Secret yet")
        # What the AGC does: the full list, its own condition added, conditional on the version read.
        current = fake.call("GET", path)[1]
        agc = {"type": "RateLimited", "status": "True", "reason": "SecondaryRateLimit", "message": "group cpu",
               "lastTransitionTime": "2026-12-03T00:00:00Z"}
        status, _ = fake.call("PATCH", path + "/status",
                              {"metadata": {"resourceVersion": current["metadata"]["resourceVersion"]},
                               "status": {"conditions": current["status"]["conditions"] + [agc],
                                          "runnerGroups": [{"name": "cpu", "runningJobs": 2}]}},
                              content_type="application/merge-patch+json")
        assert status == 200
        fake.call("POST", "/api/v1/namespaces/team-a/secrets", {"metadata": {"name": "app"}, "data": {}})
        wait_for(lambda: conditions().get("CredentialsAvailable", {}).get("status") == "True", what="the Secret noticed")
        after = conditions()
        assert after["RateLimited"] == agc, "the AGC's condition survives the GMC's write"
        assert fake.call("GET", path)[1]["status"]["runnerGroups"] == [{"name": "cpu", "runningJobs": 2}]
    finally:
        gmc.kill()
        gmc.wait()


def test_sigterm_stops_the_leader_cleanly_with_exit_zero(fake):
    """Every executable starts and stops the same way: TERM ends `gmc run` with status 0 and
    its stop line (not death by the signal, which the async main's parked thread caused)."""
    process = start_gmc(fake, "gmc-a")
    try:
        wait_for(lambda: holder(fake) == "gmc-a", interval=0.2, what="it leads")
        fake.call("POST", "/apis/actions-gateway.github.com/v1alpha1/namespaces/team-a/actionsgateways", gateway("one"))
        wait_for(lambda: fake.exists("/api/v1/namespaces/team-a/configmaps/one-proxy"), interval=0.2, what="it reconciles")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
        assert '"gmc stopped"' in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

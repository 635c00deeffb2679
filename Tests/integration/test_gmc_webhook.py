"""`gmc run --webhook-addr --webhook-secrets` end to end, with a real HTTP client: GitHub cloud and
GHES deliveries told apart by X-GitHub-Enterprise-Host, verified with each host's secret before
anything is parsed, and routed to the gateway and runner group the job's labels name; wrong,
missing and truncated signatures, oversized bodies, replays and other events get their answers
and their counters; a rotated secret file takes effect without a restart."""
import hashlib
import hmac
import http.client
import json
import os
import socket
import subprocess
import threading

import pytest

from conftest import wait_for
from test_gmc_controller import GMC, Fake

GATEWAYS = "/apis/actions-gateway.github.com/v1alpha1/namespaces/{}/actionsgateways"


def gateway(name, url, groups):
    return {"apiVersion": "actions-gateway.github.com/v1alpha1", "kind": "ActionsGateway", "metadata": {"name": name},
            "spec": {"gitHubAppRef": {"name": "app"}, "gitHubURL": url, "runnerGroups": groups}}


def job(labels, org="acme", action="queued", job_id=4242):
    return json.dumps({"action": action, "organization": {"login": org},
                       "repository": {"full_name": f"{org}/widgets", "owner": {"login": org}},
                       "workflow_job": {"id": job_id, "run_id": 77, "labels": labels, "created_at": "2026-12-07T10:00:00Z"}}).encode()


def sign(body, secret):
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class Router:
    def __init__(self, tmp_path):
        self.kube = Fake()
        for namespace in ("team-a", "team-b"):
            self.kube.call("POST", "/api/v1/namespaces", {"metadata": {"name": namespace}})
        self.kube.call("POST", GATEWAYS.format("team-a"), gateway("gw-a", "https://github.com/Acme", [
            {"name": "cpu", "runnerLabels": ["linux"]}, {"name": "gpu", "runnerLabels": ["linux", "cuda"]}]))
        self.kube.call("POST", GATEWAYS.format("team-b"), gateway("gw-b", "https://ghes.example.com/acme", [
            {"name": "cpu", "runnerLabels": ["linux"]}]))
        self.secrets = tmp_path / "secrets"
        self.secrets.mkdir()
        (self.secrets / "github.com").write_text("cloud-secret\n")
        (self.secrets / "ghes.example.com").write_text("ghes-secret")
        (self.secrets / "..data").write_text("a Secret mount's link, skipped")
        self.process = subprocess.Popen([GMC, "run", "--api-server", self.kube.url, "--metrics-addr", "127.0.0.1:0",
                                         "--webhook-addr", "127.0.0.1:0", "--webhook-secrets", str(self.secrets)],
                                        stderr=subprocess.PIPE, text=True)
        started = json.loads(self.process.stderr.readline())
        self.admin = started["admin"]
        host, port = started["webhook"].rsplit(":", 1)
        self.address = (host, int(port))
        self.lines = []
        threading.Thread(target=lambda: [self.lines.append(line) for line in self.process.stderr], daemon=True).start()
        self.serial = 0

    def post(self, body, event="workflow_job", secret="cloud-secret", host=None, signature=None, delivery=None, length=None):
        self.serial += 1
        headers = {"Content-Type": "application/json", "X-GitHub-Event": event,
                   "X-GitHub-Delivery": delivery or f"delivery-{self.serial}"}
        if signature is not False:
            headers["X-Hub-Signature-256"] = signature or sign(body, secret)
        if host:
            headers["X-GitHub-Enterprise-Host"] = host
        connection = http.client.HTTPConnection(*self.address, timeout=10)
        if length is None:
            connection.request("POST", "/webhook", body=body, headers=headers)
        else:  # a head that promises more than it sends: the answer must come before the body
            connection.putrequest("POST", "/webhook")
            for name, value in {**headers, "Content-Length": str(length)}.items():
                connection.putheader(name, value)
            connection.endheaders()
        response = connection.getresponse()
        result = response.status, response.read().decode().strip()
        connection.close()
        return result

    def counter(self, outcome):
        body = http.client.HTTPConnection(*self.admin.rsplit(":", 1), timeout=5)
        body.request("GET", "/metrics")
        text = body.getresponse().read().decode()
        for line in text.splitlines():
            if line.startswith(f'gmc_webhook_deliveries_total{{outcome="{outcome}"}}'):
                return float(line.split()[-1])
        return None

    def records(self, message):
        return [json.loads(line) for line in list(self.lines) if line.startswith("{") and json.loads(line).get("msg") == message]

    def stop(self):
        self.process.kill()
        self.process.wait()
        self.kube.stop()


@pytest.fixture
def router(tmp_path):
    instance = Router(tmp_path)
    # Until the gateway cache has listed, deliveries are 503 (not taken for unrouted).
    wait_for(lambda: instance.post(b"{}", event="ping")[0] == 200, timeout=20, interval=0.2, what="the webhook ready")
    yield instance
    instance.stop()


def test_cloud_and_enterprise_jobs_are_routed_to_their_own_gateway_and_group(router):
    assert router.post(job(["self-hosted", "linux"])) == (202, "routed")
    assert router.post(job(["self-hosted", "linux", "cuda"], job_id=4243)) == (202, "routed")
    assert router.post(job(["self-hosted", "linux"], job_id=4244), secret="ghes-secret", host="ghes.example.com") == (202, "routed")
    routed = wait_for(lambda: (lambda r: r if len(r) == 3 else None)(router.records("webhook routed")), what="three routed lines")
    # workflow_job_id: GitHub's numeric job id (the AGC's job_id is the scale-set message's UUID).
    assert [(r["namespace"], r["gateway"], r["runner_group"], int(r["workflow_job_id"])) for r in routed] == [
        ("team-a", "gw-a", "cpu", 4242), ("team-a", "gw-a", "gpu", 4243), ("team-b", "gw-b", "cpu", 4244)]
    assert all(r["run_id"] == "77" and r["queued_at"] == "2026-12-07T10:00:00Z" for r in routed)
    assert router.post(job(["self-hosted", "windows"])) == (202, "unrouted")
    assert router.post(job(["linux"], org="elsewhere")) == (202, "unrouted")
    assert router.counter("routed") == 3 and router.counter("unrouted") == 2


def test_bad_deliveries_are_answered_and_counted_never_crash(router):
    body = job(["linux"])
    good = sign(body, "cloud-secret")
    assert router.post(body, secret="wrong") == (401, "bad_signature")
    assert router.post(body, signature=False) == (401, "bad_signature")
    assert router.post(body, signature=good[:-1]) == (401, "bad_signature")
    assert router.post(body, signature=good, host="ghes.example.com") == (401, "bad_signature"), "the GHES host's secret"
    assert router.post(body, host="unknown.example.com") == (401, "unknown_host")
    assert router.post(b"", length=26 << 20)[0] == 413, "refused from the head, before 26 MiB arrive"
    assert router.post(b"{not json") == (400, "malformed")
    assert router.post(b"{}", event="push") == (202, "ignored")
    assert router.post(job(["linux"], action="completed")) == (202, "ignored")
    assert router.post(body, delivery="once") == (202, "routed")
    assert router.post(body, delivery="once") == (409, "replayed")
    assert router.counter("bad_signature") == 4 and router.counter("replayed") == 1 and router.counter("malformed") == 1
    assert router.counter("unknown_host") == 1 and router.counter("ignored") == 2
    assert router.process.poll() is None, "still running"
    assert router.post(b"{}", event="ping") == (200, "ping")


def test_a_rotated_secret_file_takes_effect_without_a_restart(router):
    body = job(["linux"])
    assert router.post(body, secret="cloud-secret")[0] == 202
    staged = router.secrets / ".new"
    staged.write_text("rotated-secret\n")
    os.replace(staged, router.secrets / "github.com")  # as a Secret mount swaps its files
    wait_for(lambda: router.post(body, secret="rotated-secret")[0] == 202, timeout=10, interval=0.2, what="the new secret in use")
    assert router.post(body, secret="cloud-secret") == (401, "bad_signature"), "the old one no longer verifies"


def test_only_the_leaders_pod_carries_the_webhook_label_and_a_standby_answers_503(tmp_path):
    """Two replicas under leader election: the leader labels its own pod (a webhook Service
    selects it), a stale label on the standby is cleared at its start, the standby answers 503,
    and when the leader dies the new one takes the label."""
    from test_gmc_controller import holder, start_gmc
    kube = Fake()
    processes = []
    try:
        for namespace in ("system", "team-a"):
            kube.call("POST", "/api/v1/namespaces", {"metadata": {"name": namespace}})
        for name, labels in (("gmc-a", {}), ("gmc-b", {"actions-gateway.github.com/webhook-leader": "true"})):
            kube.call("POST", "/api/v1/namespaces/system/pods", {"metadata": {"name": name, "labels": labels},
                                                               "spec": {"containers": [{"name": "gmc", "image": "gmc"}]}})
        kube.call("POST", GATEWAYS.format("team-a"), gateway("gw-a", "https://github.com/acme", [{"name": "cpu", "runnerLabels": ["linux"]}]))
        secrets = tmp_path / "secrets"
        secrets.mkdir()
        (secrets / "github.com").write_text("cloud-secret")
        webhooks = {}
        for name in ("gmc-a", "gmc-b"):
            process = start_gmc(kube, name, ["--webhook-addr", "127.0.0.1:0", "--webhook-secrets", str(secrets),
                                             "--pod-name", name, "--pod-namespace", "system"])
            processes.append(process)
            started = json.loads(process.stderr.readline())
            host, port = started["webhook"].rsplit(":", 1)
            webhooks[name] = (host, int(port))
            threading.Thread(target=lambda p=process: [None for _ in p.stderr], daemon=True).start()

        def labelled():
            pods = {n: kube.call("GET", f"/api/v1/namespaces/system/pods/{n}")[1]["metadata"].get("labels", {}) for n in ("gmc-a", "gmc-b")}
            return {n for n, labels in pods.items() if labels.get("actions-gateway.github.com/webhook-leader") == "true"}

        leader = wait_for(lambda: holder(kube), interval=0.2, what="a leader")
        standby = "gmc-b" if leader == "gmc-a" else "gmc-a"
        wait_for(lambda: labelled() == {leader}, timeout=15, interval=0.2, what="only the leader's pod labelled")

        def status(name):
            body = b"{}"
            connection = http.client.HTTPConnection(*webhooks[name], timeout=10)
            connection.request("POST", "/webhook", body=body, headers={
                "X-GitHub-Event": "ping", "X-GitHub-Delivery": f"d-{name}-{os.urandom(4).hex()}", "X-Hub-Signature-256": sign(body, "cloud-secret")})
            code = connection.getresponse().status
            connection.close()
            return code
        wait_for(lambda: status(leader) == 200, timeout=15, interval=0.2, what="the leader serving")
        assert status(standby) == 503, "the standby cannot route, so it takes nothing"

        processes[["gmc-a", "gmc-b"].index(leader)].kill()
        wait_for(lambda: holder(kube) == standby, timeout=20, interval=0.2, what="the standby takes the Lease")
        wait_for(lambda: standby in labelled(), timeout=15, interval=0.2, what="the new leader's pod labelled")
        wait_for(lambda: status(standby) == 200, timeout=15, interval=0.2, what="the new leader serving")
    finally:
        for process in processes:
            process.kill()
            process.wait()
        kube.stop()

"""The webhook router wakes the AGC (issue 18, item 1): a signed `workflow_job` `queued` delivery
to `gmc run --webhook-addr` reaches the routed gateway's AGC as a signed POST /wake; a classic
group opens a session for it at once, and the job's pod carries GitHub's queue time. The AGC's
own checks (signature, gateway, issue time, nonce) are driven directly with a Python signer.
Assertions read what the fakes saw: the broker's sessions and the API server's pods."""
import base64
import hashlib
import hmac
import http.client
import json
import subprocess
import threading
import time
import urllib.request

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from conftest import wait_for
from test_agc import metric, workers, world  # noqa: F401  (world is the fixture)
from test_agc_classic import finish, group, live_sessions
from test_gmc_controller import GMC

QUEUED_AT = "2026-12-07T10:00:00Z"


def keys(tmp_path):
    private = Ed25519PrivateKey.generate()
    path = tmp_path / "wake.pem"
    path.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    public = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return private, path, base64.b64encode(public).decode()


def post(address, path, body, headers):
    host, port = address.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    connection.request("POST", path, body=body, headers={"Content-Type": "application/json", **headers})
    response = connection.getresponse()
    result = response.status, response.read().decode().strip()
    connection.close()
    return result


def wake_body(group="cpu", **fields):
    job = {"runnerGroup": group, "jobID": 1, "runID": 5, "repository": "acme/widgets", "jobName": "build",
           "queuedAt": int(time.time()) - 60}
    request = {"namespace": "team-a", "gateway": "gw", "issuedAt": int(time.time()), "nonce": "n-1", "jobs": [job], **fields}
    return json.dumps(request).encode()


def signed(private, body):
    return {"X-Actions-Gateway-Signature": "ed25519=" + base64.b64encode(private.sign(body)).decode()}


def test_a_routed_delivery_wakes_the_classic_group_and_its_pod_carries_githubs_queue_time(world, tmp_path):
    kube, github, start = world
    _, key_file, public = keys(tmp_path)
    _, agc_admin = start([group(minListeners=1, maxListeners=3)], agc_args=("--wake-public-key", public))
    wait_for(lambda: len(live_sessions(github)) == 1, timeout=30, what="the baseline session")
    sessions_before = len(live_sessions(github))

    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "github.com").write_text("cloud-secret")
    gmc = subprocess.Popen([GMC, "run", "--api-server", kube.url, "--metrics-addr", "127.0.0.1:0", "--webhook-addr", "127.0.0.1:0",
                            "--webhook-secrets", str(secrets), "--wake-key", str(key_file),
                            "--agc-url-template", f"http://{agc_admin}"], stderr=subprocess.PIPE, text=True)
    try:
        started = json.loads(gmc.stderr.readline())
        lines = []
        threading.Thread(target=lambda: [lines.append(line) for line in gmc.stderr], daemon=True).start()
        delivery = json.dumps({"action": "queued", "organization": {"login": "acme"},
                               "repository": {"full_name": "acme/widgets", "owner": {"login": "acme"}},
                               "workflow_job": {"id": 4242, "run_id": 4242, "name": "build (linux, 1)", "labels": ["self-hosted", "linux"],
                                                "created_at": QUEUED_AT}}).encode()
        headers = {"X-GitHub-Event": "workflow_job", "X-GitHub-Delivery": "d-1",
                   "X-Hub-Signature-256": "sha256=" + hmac.new(b"cloud-secret", delivery, hashlib.sha256).hexdigest()}
        # The router answers 503 until its gateway cache has synced.
        wait_for(lambda: post(started["webhook"], "/webhook", delivery, {**headers, "X-GitHub-Delivery": f"d-{time.monotonic()}"})
                 [0] == 202, timeout=20, what="the router routing")
        wait_for(lambda: metric(agc_admin, "agc_wakes_total", outcome="accepted") >= 1, timeout=20, what="the AGC woken")
        # The fake broker saw a second session open for the queued job, before any job exists.
        wait_for(lambda: len(live_sessions(github)) > sessions_before, timeout=20, what="a session opened by the wake")
        assert len(live_sessions(github)) <= 3, "never past maxListeners"
        assert not workers(kube), "a wake creates no pod by itself"
        gmc_text = urllib.request.urlopen(f"http://{started['admin']}/metrics").read().decode()
        assert 'gmc_agc_wakes_total{outcome="sent"}' in gmc_text and 'gmc_agc_wakes_total{outcome="sent"} 0' not in gmc_text

        # The job the webhook named arrives at a session: its pod says when GitHub queued it.
        github.control("classic/enqueue", {"repository": "acme/widgets", "runId": 4242, "jobName": "build (linux, 1)"})
        wait_for(lambda: len(workers(kube)) == 1, timeout=30, what="the job's pod")
        annotations = workers(kube)[0]["metadata"]["annotations"]
        assert annotations["actions-gateway.github.com/queued-at"] == QUEUED_AT, annotations
        # A job no webhook named has no GitHub queue time to show.
        github.control("classic/enqueue", {"repository": "acme/widgets", "runId": 99, "jobName": "lint"})
        wait_for(lambda: len(workers(kube)) == 2, timeout=30, what="the second job's pod")
        other = next(p for p in workers(kube) if p["metadata"]["annotations"]["actions-gateway.github.com/run-id"] == "99")
        assert "actions-gateway.github.com/queued-at" not in other["metadata"]["annotations"]
        for pod in workers(kube):
            finish(kube, pod)
    finally:
        gmc.terminate()
        gmc.wait(timeout=15)


def test_the_agc_takes_only_signed_fresh_wakes_for_itself_once(world, tmp_path):
    kube, github, start = world
    private, _, public = keys(tmp_path)
    _, agc_admin = start([group(minListeners=1, maxListeners=2)], agc_args=("--wake-public-key", public))
    body = wake_body()
    assert post(agc_admin, "/wake", body, {}) == (401, "bad_signature"), "unsigned"
    forger = Ed25519PrivateKey.generate()
    assert post(agc_admin, "/wake", body, signed(forger, body)) == (401, "bad_signature"), "another key"
    tampered = body.replace(b'"gw"', b'"gx"')
    assert post(agc_admin, "/wake", tampered, signed(private, body)) == (401, "bad_signature"), "changed after signing"
    other = wake_body(gateway="gw-b", nonce="n-2")
    assert post(agc_admin, "/wake", other, signed(private, other)) == (403, "wrong_gateway")
    stale = wake_body(issuedAt=int(time.time()) - 3600, nonce="n-3")
    assert post(agc_admin, "/wake", stale, signed(private, stale)) == (401, "stale")
    unknown = wake_body(group="gpu", nonce="n-4")
    assert post(agc_admin, "/wake", unknown, signed(private, unknown)) == (202, "accepted 0"), "a group this gateway does not run"
    assert post(agc_admin, "/wake", b"x" * ((256 << 10) + 1), {})[0] == 413
    assert post(agc_admin, "/wake", body, signed(private, body)) == (202, "accepted 1")
    assert post(agc_admin, "/wake", body, signed(private, body)) == (409, "replayed")
    for outcome, count in (("bad_signature", 3), ("wrong_gateway", 1), ("stale", 1), ("accepted", 2), ("replayed", 1)):
        assert metric(agc_admin, "agc_wakes_total", outcome=outcome) == count, outcome
    assert metric(agc_admin, "agc_wake_jobs_unknown_group_total") == 1
    wait_for(lambda: len(live_sessions(github)) == 2, timeout=20, what="the accepted wake's session")


def test_without_a_key_the_agc_takes_no_wake(world):
    _, _, start = world
    _, agc_admin = start([group()])
    body = wake_body()
    assert post(agc_admin, "/wake", body, {})[0] in (404, 405), "no POST route without --wake-public-key"


@pytest.mark.parametrize("flag,value", [("--wake-public-key", "AAAA"), ("--wake-public-key", "not base64!")])
def test_a_bad_public_key_is_refused_at_start(tmp_path, flag, value):
    from test_agc import AGC
    result = subprocess.run([AGC, "run", "--namespace", "n", "--gateway", "g", "--credentials", str(tmp_path), flag, value],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode != 0 and "--wake-public-key" in result.stderr


def test_gmc_refuses_a_key_that_is_not_ed25519(tmp_path):
    from cryptography.hazmat.primitives.asymmetric import rsa
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path / "rsa.pem"
    path.write_bytes(rsa_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    result = subprocess.run([GMC, "run", "--api-server", "http://127.0.0.1:9", "--wake-key", str(path)], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode != 0 and "not Ed25519" in result.stderr
    result = subprocess.run([GMC, "run", "--api-server", "http://127.0.0.1:9", "--agc-url-template", "http://{gateway}/x"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode != 0 and "--agc-url-template" in result.stderr

"""`agc run` against the fake API server and the fake GitHub: a queued job becomes exactly one
worker pod shaped as spec/agc.md section 4 says, and after GitHub completes it and the pod
succeeds the Secret and the pod are gone and the message is deleted; tiers and the ceiling
bound what is created and what the capacity header advertises. Assertions are on what the
fakes saw (their stores and call logs)."""
import json
import os
import subprocess
import sys
import threading
import urllib.request

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from conftest import wait_for
from test_gmc_controller import Fake as KubeFake

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
AGC = os.environ.get("AGC_BIN") or os.path.join(ROOT, ".build", "debug", "agc")
GITHUB = os.path.join(ROOT, "Tests", "fakes", "github_actions.py")
WORKERS = "/api/v1/namespaces/team-a/pods?labelSelector=actions-gateway.github.com/component%3Dworker"


class GitHubFake:
    def __init__(self, tmp_path):
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.credentials = tmp_path / "app"
        self.credentials.mkdir()
        (self.credentials / "appId").write_text("42\n")
        (self.credentials / "installationId").write_text("7\n")
        (self.credentials / "privateKey").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()))
        public = tmp_path / "app.pub"
        public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        self.process = subprocess.Popen([sys.executable, GITHUB, "--public-key", str(public), "--app-id", "42", "--hold", "0.3"],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.base = f"http://127.0.0.1:{json.loads(self.process.stdout.readline())['port']}"

    def control(self, name, body=None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.base}/control/{name}", data=data, method="POST" if data else "GET",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def stop(self):
        self.process.stdin.close()
        self.process.wait(timeout=10)


@pytest.fixture
def world(tmp_path):
    kube = KubeFake()
    github = GitHubFake(tmp_path)
    kube.call("POST", "/api/v1/namespaces", {"metadata": {"name": "team-a"}})
    processes = []

    def start(groups):
        status, _ = kube.call("POST", "/apis/actions-gateway.github.com/v1alpha1/namespaces/team-a/actionsgateways", {
            "apiVersion": "actions-gateway.github.com/v1alpha1", "kind": "ActionsGateway", "metadata": {"name": "gw"},
            "spec": {"gitHubAppRef": {"name": "app"}, "gitHubURL": "https://github.com/acme", "runnerGroups": groups}})
        assert status == 201
        env = {k: v for k, v in os.environ.items() if k.lower() not in ("https_proxy", "http_proxy", "no_proxy", "all_proxy")}
        env["HTTPS_PROXY"] = "http://gw-proxy.team-a.svc:3128"  # handed to workers; the AGC's own GitHub traffic below goes direct
        env["NO_PROXY"] = "127.0.0.1"
        process = subprocess.Popen([AGC, "run", "--namespace", "team-a", "--gateway", "gw", "--credentials", str(github.credentials),
                                    "--api-server", kube.url, "--admin", "127.0.0.1:0", "--github-api-url", github.base + "/api/v3",
                                    "--worker-image", "runner:test"], stderr=subprocess.PIPE, text=True, env=env)
        processes.append(process)
        admin = None
        for line in process.stderr:
            record = json.loads(line) if line.startswith("{") else {}
            if record.get("msg") == "agc started":
                admin = record["admin"]
                break
        assert admin, "the AGC logged its admin address"
        # Keep reading its log, so a full pipe never blocks the AGC.
        threading.Thread(target=lambda: [None for _ in process.stderr], daemon=True).start()
        wait_for(lambda: urllib.request.urlopen(f"http://{admin}/readyz").status == 200 if _ok(f"http://{admin}/readyz") else False,
                 timeout=20, what="agc ready")
        return process, admin

    yield kube, github, start
    for process in processes:
        process.terminate()
        process.wait(timeout=15)
    github.stop()
    kube.stop()


def _ok(url):
    try:
        return urllib.request.urlopen(url, timeout=2).status == 200
    except Exception:
        return False


def workers(kube):
    return kube.call("GET", WORKERS)[1].get("items", [])


def metric(admin, name, **labels):
    text = urllib.request.urlopen(f"http://{admin}/metrics").read().decode()
    wanted = {f'{k}="{v}"' for k, v in labels.items()}
    for line in text.splitlines():
        if line.startswith(f"{name}{{") and set(line.split("}")[0][len(name) + 1:].split(",")) == wanted:
            return float(line.split()[-1])
    return 0.0


def test_one_job_one_pod_then_cleaned_up(world):
    kube, github, start = world
    _, admin = start([{"name": "cpu", "runnerLabels": ["linux"], "completedPodTTL": "0s",
                       "priorityTiers": [{"priorityClassName": "tier-a", "threshold": 2}, {"priorityClassName": "tier-b", "threshold": 5}]}])
    wait_for(lambda: github.control("state")["scaleSets"], timeout=20, what="scale set created")
    scale_set = github.control("state")["scaleSets"][0]
    assert scale_set["name"] == "cpu" and [label["name"] for label in scale_set["labels"]] == ["cpu", "linux"]

    job = github.control("enqueue", {"scaleSet": "cpu", "repository": "acme/widgets", "runId": 77})["jobIds"][0]
    wait_for(lambda: len(workers(kube)) == 1, timeout=20, what="one worker pod")
    pod = workers(kube)[0]
    meta, spec = pod["metadata"], pod["spec"]
    assert meta["labels"]["actions-gateway.github.com/job-id"] == job
    assert meta["labels"]["actions-gateway.github.com/gateway"] == "gw"
    assert meta["labels"]["actions-gateway.github.com/runner-group"] == "cpu"
    assert meta["labels"]["app.kubernetes.io/managed-by"] == "agc"
    assert meta["annotations"]["actions-gateway.github.com/run-id"] == "77"
    assert meta["annotations"]["actions-gateway.github.com/repository"] == "acme/widgets"
    assert meta["annotations"]["actions-gateway.github.com/tier"] == "0"
    assert meta["annotations"]["actions-gateway.github.com/acquisition"] == "scaleSet"
    assert meta["ownerReferences"][0]["kind"] == "ActionsGateway" and meta["ownerReferences"][0]["controller"] is False
    assert spec["restartPolicy"] == "Never" and spec["serviceAccountName"] == "gw-worker"
    assert spec["automountServiceAccountToken"] is False and spec["priorityClassName"] == "tier-a"
    runner = next(c for c in spec["containers"] if c["name"] == "runner")
    assert runner["image"] == "runner:test" and runner["command"] == ["agc", "worker"]
    env = {e["name"]: e["value"] for e in runner["env"]}
    assert env["AGC_WORKER_MODE"] == "scaleset" and env["HTTPS_PROXY"] == "http://gw-proxy.team-a.svc:3128"
    assert runner["resources"]["requests"] == {"cpu": "500m", "memory": "1Gi"}
    status, secret = kube.call("GET", f"/api/v1/namespaces/team-a/secrets/{meta['name']}")
    assert status == 200 and "jitconfig" in secret["data"]
    assert secret["metadata"]["ownerReferences"][0]["kind"] == "Pod", "the pod owns its Secret"
    runners = github.control("state")["runners"]
    assert list(runners) == [f"cpu-{job}"], "one JIT runner, named <set>-<jobId>"

    # GitHub runs and completes it; the pod succeeds.
    github.control("start", {"jobId": job})
    github.control("complete", {"jobId": job, "result": "succeeded"})
    kube.call("PATCH", f"/api/v1/namespaces/team-a/pods/{meta['name']}/status",
              {"status": {"phase": "Succeeded", "containerStatuses": [{"name": "runner", "state": {"terminated": {"exitCode": 0}}}]}},
              content_type="application/merge-patch+json")
    wait_for(lambda: not workers(kube), timeout=20, what="pod reaped after completedPodTTL 0s")
    wait_for(lambda: kube.call("GET", f"/api/v1/namespaces/team-a/secrets/{meta['name']}")[0] == 404, timeout=10, what="secret gone")
    messages = github.control("state")["messages"][str(scale_set["id"])]
    wait_for(lambda: all(m["deleted"] for m in github.control("state")["messages"][str(scale_set["id"])]),
             timeout=10, what="every message of the job deleted")
    assert len(messages) == 3, "JobAssigned, JobStarted, JobCompleted"
    assert metric(admin, "agc_jobs_completed_total", runner_group="cpu", result="succeeded") == 1
    guards = kube.call("GET", "/api/v1/namespaces/team-a/configmaps/gw-cpu-guards")[1]
    assert job in json.loads(guards["data"]["guards.json"])["completed"], "the guard was saved"
    assert len([c for c in github.control("state")["calls"] if c["endpoint"] == "jit_config"]) == 1


def test_tiers_and_the_ceiling_bound_pods_and_the_capacity_header(world):
    kube, github, start = world
    _, admin = start([{"name": "cpu", "runnerLabels": ["linux"], "completedPodTTL": "0s",
                       "priorityTiers": [{"priorityClassName": "tier-a", "threshold": 2}, {"priorityClassName": "tier-b", "threshold": 5}]}])
    wait_for(lambda: github.control("state")["scaleSets"], timeout=20, what="scale set created")
    jobs = github.control("enqueue", {"scaleSet": "cpu", "count": 6})["jobIds"]
    wait_for(lambda: len(workers(kube)) == 5, timeout=30, what="five pods (the ceiling)")
    by_job = {p["metadata"]["labels"]["actions-gateway.github.com/job-id"]: p for p in workers(kube)}
    classes = sorted(p["spec"]["priorityClassName"] for p in by_job.values())
    assert classes == ["tier-a", "tier-a", "tier-b", "tier-b", "tier-b"]
    assert jobs[5] not in by_job, "the sixth waits"
    polls = [c for c in github.control("state")["calls"] if c["endpoint"] == "poll"]
    assert polls and max(c["capacity"] for c in polls) <= 5, "never more than the ceiling advertised"
    assert github.control("state")["jobs"][jobs[5]]["state"] == "queued", "GitHub never assigned beyond the capacity"

    # One finishes: the sixth is assigned and created.
    first = by_job[jobs[0]]["metadata"]["name"]
    github.control("start", {"jobId": jobs[0]})
    github.control("complete", {"jobId": jobs[0], "result": "succeeded"})
    kube.call("PATCH", f"/api/v1/namespaces/team-a/pods/{first}/status", {"status": {"phase": "Succeeded"}},
              content_type="application/merge-patch+json")
    wait_for(lambda: jobs[5] in {p["metadata"]["labels"]["actions-gateway.github.com/job-id"] for p in workers(kube)},
             timeout=30, what="the sixth job's pod")
    assert len([p for p in workers(kube) if p.get("status", {}).get("phase") != "Succeeded"]) == 5
    polls = [c for c in github.control("state")["calls"] if c["endpoint"] == "poll"]
    assert max(c["capacity"] for c in polls) <= 5

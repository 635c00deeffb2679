"""`agc run` against the fake API server and the fake GitHub: a queued job becomes exactly one
worker pod shaped as spec/agc.md section 4 says, and after GitHub completes it and the pod
succeeds the Secret and the pod are gone and the message is deleted; tiers and the ceiling
bound what is created and what the capacity header advertises. Assertions are on what the
fakes saw (their stores and call logs)."""
import json
import os
import signal
import subprocess
import sys
import threading
import urllib.request
from collections import Counter

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from conftest import wait_for
from test_gmc_controller import Fake as KubeFake

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
AGC = os.environ.get("AGC_BIN") or os.path.join(ROOT, ".build", "debug", "agc")
GITHUB = os.path.join(ROOT, "Tests", "fakes", "github_actions.py")
WORKERS = "/api/v1/namespaces/team-a/pods?labelSelector=actions-gateway.github.com/component%3Dworker"
GATEWAY = "/apis/actions-gateway.github.com/v1alpha1/namespaces/team-a/actionsgateways/gw"
GMC_READY = {"type": "Ready", "status": "False", "reason": "Progressing", "message": "", "observedGeneration": 1,
             "lastTransitionTime": "2026-01-01T00:00:00Z"}


class GitHubFake:
    def __init__(self, tmp_path, hold=0.3, extra=()):
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.credentials = tmp_path / "app"
        self.credentials.mkdir()
        (self.credentials / "appId").write_text("42\n")
        (self.credentials / "installationId").write_text("7\n")
        (self.credentials / "privateKey").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()))
        public = tmp_path / "app.pub"
        public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        self.process = subprocess.Popen([sys.executable, GITHUB, "--public-key", str(public), "--app-id", "42", "--hold", str(hold),
                                         *extra],
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
    yield from _world(tmp_path, hold=0.3)


@pytest.fixture
def long_poll_world(tmp_path):
    """GitHub holding an empty poll 30 s, as the real one holds it ~50 s."""
    yield from _world(tmp_path, hold=30)


def new_cluster():
    """A fake API server with the tenant's namespace and the priority classes the tests name."""
    kube = KubeFake()
    kube.call("POST", "/api/v1/namespaces", {"metadata": {"name": "team-a"}})
    for name, value in (("tier-a", 1000), ("tier-b", 100)):
        kube.call("POST", "/apis/scheduling.k8s.io/v1/priorityclasses", {"metadata": {"name": name}, "value": value})
    return kube


def apply_gateway(kube, groups, **spec):
    status, _ = kube.call("POST", "/apis/actions-gateway.github.com/v1alpha1/namespaces/team-a/actionsgateways", {
        "apiVersion": "actions-gateway.github.com/v1alpha1", "kind": "ActionsGateway", "metadata": {"name": "gw"},
        "spec": {"gitHubAppRef": {"name": "app"}, "gitHubURL": "https://github.com/acme", "runnerGroups": groups, **spec}})
    assert status == 201


def _world(tmp_path, hold, extra=()):
    kube = new_cluster()
    github = GitHubFake(tmp_path, hold, extra)
    processes = []

    def start(groups, gmc_status=False, ready=True, agc_args=(), **spec):
        apply_gateway(kube, groups, **spec)
        if gmc_status:  # what the GMC would have written: the AGC must keep it
            status, _ = kube.call("PATCH", f"{GATEWAY}/status", {"status": {"conditions": [GMC_READY]}},
                                  content_type="application/merge-patch+json")
            assert status == 200
        return launch(ready, agc_args)

    def launch(ready=True, agc_args=()):
        process, admin = launch_agc(kube, github, ready=ready, agc_args=agc_args)
        processes.append(process)
        return process, admin

    start.launch = launch
    yield kube, github, start
    for process in processes:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=15)
    github.stop()
    kube.stop()


def launch_agc(kube, github, ready=True, agc_args=()):
    """An AGC for gateway team-a/gw against `kube` and `github`; its log is kept in `process.log`."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("https_proxy", "http_proxy", "no_proxy", "all_proxy")}
    env["HTTPS_PROXY"] = "http://gw-proxy.team-a.svc:3128"  # handed to workers; the AGC's own GitHub traffic below goes direct
    env["NO_PROXY"] = "127.0.0.1"
    process = subprocess.Popen([AGC, "run", "--namespace", "team-a", "--gateway", "gw", "--credentials", str(github.credentials),
                                "--api-server", kube.url, "--admin", "127.0.0.1:0", "--github-api-url", github.base + "/api/v3",
                                "--worker-image", "runner:test", *agc_args], stderr=subprocess.PIPE, text=True, env=env)
    admin = None
    for line in process.stderr:
        record = json.loads(line) if line.startswith("{") else {}
        if record.get("msg") == "agc started":
            admin = record["admin"]
            break
    assert admin, "the AGC logged its admin address"
    # Keep reading its log (kept for failure messages), so a full pipe never blocks the AGC.
    process.log = []
    threading.Thread(target=lambda: [process.log.append(line) for line in process.stderr], daemon=True).start()
    if ready:
        wait_for(lambda: _ok(f"http://{admin}/readyz"), timeout=20, what="agc ready")
    return process, admin


# What a source asks of GitHub once per scale set, before any job.
BOOTSTRAP = {"access_tokens", "registration_token", "runner_registration", "runner_groups", "scale_sets", "session_create"}


def _ok(url):
    try:
        return urllib.request.urlopen(url, timeout=2).status == 200
    except Exception:
        return False


def annotate(kube, value):
    """Sets the gateway's drain annotation (actions-gateway.github.com/drain)."""
    status, _ = kube.call("PATCH", GATEWAY, {"metadata": {"annotations": {"actions-gateway.github.com/drain": value}}},
                          content_type="application/merge-patch+json")
    assert status == 200


def workers(kube):
    return kube.call("GET", WORKERS)[1].get("items", [])


def metric(admin, name, **labels):
    text = urllib.request.urlopen(f"http://{admin}/metrics").read().decode()
    wanted = {f'{k}="{v}"' for k, v in labels.items()}
    for line in text.splitlines():
        if not labels and line.startswith(f"{name} "):
            return float(line.split()[-1])
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

    # The kubelet starts it; GitHub runs and completes it; the pod succeeds.
    kube.call("PATCH", f"/api/v1/namespaces/team-a/pods/{meta['name']}/status",
              {"status": {"phase": "Running", "containerStatuses": [{"name": "runner", "state": {"running": {"startedAt": meta["creationTimestamp"]}}}]}},
              content_type="application/merge-patch+json")
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
    for family in ("agc_job_queue_seconds", "agc_pod_start_seconds", "agc_job_duration_seconds"):
        assert metric(admin, family + "_count", runner_group="cpu") == 1, family
    assert metric(admin, "agc_pod_start_seconds_bucket", runner_group="cpu", le="0.5") == 1, "started as it was created"
    assert 0 < metric(admin, "agc_github_ratelimit_remaining", runner_group="cpu") < 5000
    body = urllib.request.urlopen(f"http://{admin}/metrics").read().decode()
    check = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    guards = kube.call("GET", "/api/v1/namespaces/team-a/configmaps/gw-cpu-guards")[1]
    assert job in json.loads(guards["data"]["guards.json"])["completed"], "the guard was saved"
    # GitHub requests the job cost, beyond the long poll and the once-per-set bootstrap: one JIT
    # config and one DELETE per message naming it; nothing else was asked of GitHub.
    calls = github.control("state")["calls"]
    per_job = Counter(c["endpoint"] for c in calls if c["endpoint"] in ("jit_config", "message_delete"))
    assert per_job == {"jit_config": 1, "message_delete": len(messages)}, per_job
    assert {c["endpoint"] for c in calls} <= BOOTSTRAP | {"poll", "jit_config", "message_delete"}
    assert all(c["status"] < 400 for c in calls if c["endpoint"] != "poll"), [c for c in calls if c["status"] >= 400]
    print(f"GitHub requests for one job, poll and bootstrap aside: {sum(per_job.values())} {dict(per_job)}")


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


EXAMPLE = os.path.join(ROOT, "deploy", "examples", "tenant-team-a.yaml")


def render_pod(*args, stdin=None):
    return subprocess.run([AGC, "render-pod", *args], input=stdin, capture_output=True, text=True, timeout=30)


def test_render_pod_prints_the_pod_the_controller_would_create(tmp_path):
    import yaml
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"jobId": "5b8e1c2a-0000-4000-8000-000000000001", "runId": 9, "repository": "team-a-org/app"}))
    result = render_pod("--file", EXAMPLE, "--group", "gpu-runners", "--job", str(job), "--worker-image", "runner:test")
    assert result.returncode == 0, result.stderr
    secret, pod = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert secret["kind"] == "Secret" and pod["kind"] == "Pod"
    labels = pod["metadata"]["labels"]
    assert labels["actions-gateway.github.com/job-id"] == "5b8e1c2a-0000-4000-8000-000000000001"
    assert labels["actions-gateway.github.com/runner-group"] == "gpu-runners"
    assert pod["metadata"]["annotations"]["actions-gateway.github.com/run-id"] == "9"
    assert pod["spec"]["priorityClassName"] == "runner-critical", "tier 0 of the group"
    runner = next(c for c in pod["spec"]["containers"] if c["name"] == "runner")
    assert runner["image"] == "runner:test"
    assert runner["resources"]["limits"]["nvidia.com/gpu"] == "1", "the tenant's template is kept"
    import base64
    assert base64.b64decode(secret["stringData"]["jitconfig"] if "stringData" in secret else secret["data"]["jitconfig"]) == b"<jit config>", \
        "the blob is a placeholder, never a credential"

    # stdin gives the same document.
    with open(EXAMPLE) as f:
        again = render_pod("--file", "-", "--group", "gpu-runners", "--job", str(job), "--worker-image", "runner:test", stdin=f.read())
    assert again.returncode == 0 and again.stdout == result.stdout


@pytest.mark.parametrize("args, stdin, message", [
    (["--group", "nope"], None, "no runner group nope (groups: gpu-runners, cpu-runners)"),
    (["--group", "cpu-runners", "--job", "/nonexistent.json"], None, "--job: cannot read /nonexistent.json"),
    (["--file", "/nonexistent.yaml", "--group", "cpu-runners"], None, "cannot read /nonexistent.yaml"),
    (["--file", "-", "--group", "cpu-runners"], "kind: ConfigMap\n", "exactly one ActionsGateway (found 0)"),
    (["--file", "-", "--group", "cpu-runners"], "kind: ActionsGateway\nkind: ActionsGateway\n", "duplicated key"),
])
def test_render_pod_refuses_bad_input_clearly(args, stdin, message):
    if "--file" not in args:
        args = ["--file", EXAMPLE, *args]
    result = render_pod(*args, stdin=stdin)
    assert result.returncode != 0 and result.stdout == ""
    assert message in result.stderr, result.stderr


GROUP = {"name": "cpu", "runnerLabels": ["linux"], "completedPodTTL": "0s"}


def pod_of(kube, job):
    return next((p for p in workers(kube) if p["metadata"]["labels"]["actions-gateway.github.com/job-id"] == job), None)


def succeed(kube, pod):
    kube.call("PATCH", f"/api/v1/namespaces/team-a/pods/{pod['metadata']['name']}/status",
              {"status": {"phase": "Succeeded", "containerStatuses": [{"name": "runner", "state": {"terminated": {"exitCode": 0}}}]}},
              content_type="application/merge-patch+json")


def gateway_status(kube):
    return kube.call("GET", GATEWAY)[1].get("status", {})


def guards(kube, group="cpu"):
    status, body = kube.call("GET", f"/api/v1/namespaces/team-a/configmaps/gw-{group}-guards")
    return json.loads(body["data"]["guards.json"]) if status == 200 else {"completed": {}}


def endpoint_calls(github, endpoint, since=0):
    return [c for c in github.control("state")["calls"][since:] if c["endpoint"] == endpoint]


def test_a_job_run_by_another_runner_of_the_set_is_bound_to_the_pod_that_ran_it(world):
    kube, github, start = world
    start([GROUP])
    wait_for(lambda: github.control("state")["scaleSets"], timeout=20, what="scale set created")
    first = github.control("enqueue", {"scaleSet": "cpu", "repository": "acme/one", "runId": 101})["jobIds"][0]
    second = github.control("enqueue", {"scaleSet": "cpu", "repository": "acme/two", "runId": 202})["jobIds"][0]
    wait_for(lambda: pod_of(kube, first) and pod_of(kube, second), timeout=20, what="two pods")
    # GitHub hands the first job to the runner created for the second.
    github.control("start", {"jobId": first, "runnerName": f"cpu-{second}"})

    def stamped():
        annotations = pod_of(kube, second)["metadata"]["annotations"]
        return annotations.get("actions-gateway.github.com/job-id") == first and annotations
    annotations = wait_for(stamped, timeout=20, what="the second pod bound to the first job")
    assert annotations["actions-gateway.github.com/run-id"] == "101"
    assert annotations["actions-gateway.github.com/repository"] == "acme/one"
    untouched = pod_of(kube, first)["metadata"]["annotations"]
    assert untouched["actions-gateway.github.com/run-id"] == "101" and untouched.get("actions-gateway.github.com/job-id") != second

    # The first job completes on the pod that ran it: that pod is the one reaped, the other stays.
    github.control("complete", {"jobId": first, "result": "succeeded"})
    succeed(kube, pod_of(kube, second))
    wait_for(lambda: pod_of(kube, second) is None, timeout=20, what="the pod that ran the job reaped")
    assert pod_of(kube, first) is not None, "the idle runner's pod is not taken for the job's"


def test_a_restarted_agc_replays_undeleted_messages_without_a_second_pod(world):
    kube, github, start = world
    process, _ = start([GROUP])
    wait_for(lambda: github.control("state")["scaleSets"], timeout=20, what="scale set created")
    job = github.control("enqueue", {"scaleSet": "cpu", "runId": 5})["jobIds"][0]
    wait_for(lambda: pod_of(kube, job), timeout=20, what="a pod")
    set_id = str(github.control("state")["scaleSets"][0]["id"])
    # Killed outright: no message deleted, no session closed; GitHub expires the session later.
    process.kill()
    process.wait(timeout=10)
    github.control("drop-session", {"scaleSet": "cpu"})
    undeleted = [m for m in github.control("state")["messages"][set_id] if not m["deleted"]]
    assert undeleted, "the JobAssigned message is still in the set's log"
    calls_before = len(github.control("state")["calls"])

    restarted, admin = start.launch()
    # The new session polls from cursor 0 and sees the JobAssigned again.
    wait_for(lambda: [c for c in endpoint_calls(github, "poll", calls_before) if c["cursor"] in (None, "0")], timeout=20,
             what="a poll from the start of the log")
    wait_for(lambda: len([c for c in endpoint_calls(github, "poll", calls_before) if c["status"] == 200]) >= 1, timeout=20,
             what="the replay delivered")
    assert len(workers(kube)) == 1, "no second pod"
    assert len(endpoint_calls(github, "jit_config")) == 1, "no second JIT runner"

    # It then carries on: the job concludes and every message goes.
    github.control("start", {"jobId": job})
    github.control("complete", {"jobId": job, "result": "succeeded"})
    succeed(kube, pod_of(kube, job))
    wait_for(lambda: all(m["deleted"] for m in github.control("state")["messages"][set_id]), timeout=20, what="messages deleted")
    wait_for(lambda: not workers(kube), timeout=20, what=f"pod reaped; AGC log: {''.join(restarted.log[-15:])}")
    assert len(endpoint_calls(github, "jit_config")) == 1, "never provisioned again"


def test_a_pod_reaped_before_its_job_concluded_is_not_provisioned_again_after_a_restart(world):
    kube, github, start = world
    process, _ = start([GROUP])
    wait_for(lambda: github.control("state")["scaleSets"], timeout=20, what="scale set created")
    job = github.control("enqueue", {"scaleSet": "cpu"})["jobIds"][0]
    pod = wait_for(lambda: pod_of(kube, job), timeout=20, what="a pod")
    message = pod["metadata"]["annotations"]["actions-gateway.github.com/message-id"]
    # The pod ends and is reaped while GitHub has not yet said the job concluded.
    succeed(kube, pod)
    wait_for(lambda: not workers(kube), timeout=20, what="pod reaped")
    assert guards(kube)["reaped"][job]["messageID"] == int(message), "the guard names the assigning message"
    process.kill()
    process.wait(timeout=10)
    github.control("drop-session", {"scaleSet": "cpu"})
    calls_before = len(github.control("state")["calls"])

    start.launch()
    wait_for(lambda: [c for c in endpoint_calls(github, "poll", calls_before) if c["status"] == 200], timeout=20, what="the replay")
    # Polls go on; the replayed JobAssigned created nothing.
    polls = len(endpoint_calls(github, "poll"))
    wait_for(lambda: len(endpoint_calls(github, "poll")) >= polls + 3, timeout=20, what="more polls")
    assert not workers(kube), "no second pod for a replayed assignment"
    assert not endpoint_calls(github, "jit_config", calls_before), "and no second runner"


def test_a_pod_reaped_at_start_keeps_the_guards_the_previous_agc_left(world):
    """At start the pod informer reaps what finished while no AGC ran, and saves the guards,
    possibly before the group's source has loaded them: the save must not drop the previous
    AGC's guard for a job it had reaped, or the replayed JobAssigned gets a second pod."""
    kube, github, start = world
    process, _ = start([GROUP])
    wait_for(lambda: github.control("state")["scaleSets"], timeout=20, what="scale set created")
    first, second = github.control("enqueue", {"scaleSet": "cpu", "count": 2})["jobIds"]
    wait_for(lambda: pod_of(kube, first) and pod_of(kube, second), timeout=20, what="two pods")
    github.control("fault", {"endpoint": "message_delete", "status": 503, "count": 1000})  # both assignments stay undeleted
    succeed(kube, pod_of(kube, first))
    wait_for(lambda: not pod_of(kube, first), timeout=20, what="the first pod reaped")
    assert first in guards(kube)["reaped"], "the guard for the reaped pod was saved"
    process.kill()
    process.wait(timeout=10)
    succeed(kube, pod_of(kube, second))  # finishes while no AGC runs: the next one reaps it at start
    github.control("drop-session", {"scaleSet": "cpu"})
    github.control("fault", {"endpoint": "message_delete", "status": 503, "count": 0})
    calls_before = len(github.control("state")["calls"])

    start.launch()
    wait_for(lambda: not workers(kube), timeout=20, what="the second pod reaped at start")
    wait_for(lambda: [c for c in endpoint_calls(github, "poll", calls_before) if c["status"] == 200], timeout=20, what="the replay")
    polls = len(endpoint_calls(github, "poll"))
    wait_for(lambda: len(endpoint_calls(github, "poll")) >= polls + 3, timeout=20, what="more polls")
    assert not workers(kube), "no second pod for either replayed assignment"
    assert not endpoint_calls(github, "jit_config", calls_before), "and no second runner"
    assert {first, second} <= set(guards(kube)["reaped"]), "both guards kept"


def test_a_restart_after_completion_never_provisions_the_job_again(world):
    kube, github, start = world
    process, _ = start([GROUP])
    wait_for(lambda: github.control("state")["scaleSets"], timeout=20, what="scale set created")
    job = github.control("enqueue", {"scaleSet": "cpu"})["jobIds"][0]
    wait_for(lambda: pod_of(kube, job), timeout=20, what="a pod")
    # The messages stay undeleted (every DELETE fails), the job concludes, the pod is reaped.
    github.control("fault", {"endpoint": "message_delete", "status": 503, "count": 1000})
    github.control("start", {"jobId": job})
    github.control("complete", {"jobId": job, "result": "succeeded"})
    succeed(kube, pod_of(kube, job))
    wait_for(lambda: not workers(kube), timeout=20, what="pod reaped")
    wait_for(lambda: job in guards(kube)["completed"], timeout=20, what="the job's guard saved")
    process.kill()
    process.wait(timeout=10)
    github.control("drop-session", {"scaleSet": "cpu"})
    github.control("fault", {"endpoint": "message_delete", "status": 503, "count": 0})
    calls_before = len(github.control("state")["calls"])

    start.launch()
    set_id = str(github.control("state")["scaleSets"][0]["id"])
    # The replay of JobAssigned meets the guard: nothing is created, and every message is deleted.
    wait_for(lambda: all(m["deleted"] for m in github.control("state")["messages"][set_id]), timeout=20, what="messages deleted")
    assert not workers(kube), "the concluded job got no second pod"
    assert not endpoint_calls(github, "jit_config", calls_before), "and no second JIT runner"


def test_queue_token_expiry_a_dropped_session_and_throttling_are_recovered(world):
    kube, github, start = world
    start([GROUP])
    wait_for(lambda: github.control("state")["scaleSets"], timeout=20, what="scale set created")
    wait_for(lambda: endpoint_calls(github, "poll"), timeout=20, what="polling")

    # 401 on the poll: the queue token is refreshed on the same session.
    github.control("expire-queue-tokens")
    wait_for(lambda: [c for c in endpoint_calls(github, "session_refresh") if c["status"] == 200], timeout=20, what="session refreshed")
    job = github.control("enqueue", {"scaleSet": "cpu"})["jobIds"][0]
    wait_for(lambda: pod_of(kube, job), timeout=20, what="a pod after the refresh")

    # The session vanishes (404): a new one, polling from the start of the log again.
    sessions_before = len(endpoint_calls(github, "session_create"))
    github.control("drop-session", {"scaleSet": "cpu"})
    wait_for(lambda: len([c for c in endpoint_calls(github, "session_create") if c["status"] == 200]) > sessions_before, timeout=20,
             what="session recreated")
    assert len(workers(kube)) == 1, "the replayed JobAssigned made no second pod"

    # 429 with Retry-After and a 503 on the JIT config: the job is still provisioned, once.
    calls_before = len(github.control("state")["calls"])
    github.control("fault", {"endpoint": "jit_config", "status": 429, "count": 1, "retryAfter": 1})
    second = github.control("enqueue", {"scaleSet": "cpu"})["jobIds"][0]
    wait_for(lambda: pod_of(kube, second), timeout=30, what="a pod despite the 429")
    jit = endpoint_calls(github, "jit_config", calls_before)
    assert [c["status"] for c in jit] == [429, 201] or [c["status"] for c in jit] == [429, 200], jit
    assert jit[1]["at"] - jit[0]["at"] >= 0.9, "Retry-After honoured"
    github.control("fault", {"endpoint": "poll", "status": 503, "count": 2})
    third = github.control("enqueue", {"scaleSet": "cpu"})["jobIds"][0]
    wait_for(lambda: pod_of(kube, third), timeout=30, what="a pod after two failed polls")
    assert len(workers(kube)) == 3


def test_groups_added_and_removed_in_the_cr_take_effect_without_a_restart(world):
    kube, github, start = world
    _, admin = start([GROUP])
    wait_for(lambda: github.control("state")["scaleSets"], timeout=20, what="scale set created")
    path = "/apis/actions-gateway.github.com/v1alpha1/namespaces/team-a/actionsgateways/gw"
    gpu_group = {"name": "gpu", "runnerLabels": ["gpu"],
                 "podTemplate": {"spec": {"containers": [{"name": "runner", "resources": {"limits": {"nvidia.com/gpu": "2"}}}]}}}
    status, _ = kube.call("PATCH", path, {"spec": {"runnerGroups": [GROUP, gpu_group]}}, content_type="application/merge-patch+json")
    assert status == 200
    wait_for(lambda: {s["name"] for s in github.control("state")["scaleSets"]} == {"cpu", "gpu"}, timeout=20, what="a second scale set")
    gpu = next(s for s in github.control("state")["scaleSets"] if s["name"] == "gpu")
    wait_for(lambda: str(gpu["id"]) in github.control("state")["sessions"] or gpu["id"] in github.control("state")["sessions"],
             timeout=20, what="its session")
    job = github.control("enqueue", {"scaleSet": "gpu"})["jobIds"][0]
    wait_for(lambda: pod_of(kube, job), timeout=20, what="a gpu pod")
    assert pod_of(kube, job)["metadata"]["labels"]["actions-gateway.github.com/runner-group"] == "gpu"
    # Running, it holds two GPUs: GPU-seconds accrue on the status tick.
    kube.call("PATCH", f"/api/v1/namespaces/team-a/pods/{pod_of(kube, job)['metadata']['name']}/status",
              {"status": {"phase": "Running"}}, content_type="application/merge-patch+json")
    wait_for(lambda: metric(admin, "agc_accelerator_seconds_total", runner_group="gpu", resource="nvidia.com/gpu") >= 2,
             timeout=30, what="GPU-seconds counted")

    # Removed: its session is closed; its running pod is left to finish.
    status, _ = kube.call("PATCH", path, {"spec": {"runnerGroups": [GROUP]}}, content_type="application/merge-patch+json")
    assert status == 200
    wait_for(lambda: [c for c in endpoint_calls(github, "session_delete") if c["status"] in (200, 204)], timeout=20, what="session deleted")
    sessions = github.control("state")["sessions"]
    assert str(gpu["id"]) not in sessions and gpu["id"] not in sessions
    assert pod_of(kube, job) is not None, "the running job's pod is not killed"


def test_a_runner_name_left_registered_is_freed_or_sidestepped(world):
    import uuid
    kube, github, start = world
    start([GROUP])
    wait_for(lambda: github.control("state")["scaleSets"], timeout=20, what="scale set created")
    # A predecessor registered the job's runner and died before its pod existed.
    job = str(uuid.uuid4())
    stale = github.control("runner", {"scaleSet": "cpu", "name": f"cpu-{job}"})
    github.control("enqueue", {"scaleSet": "cpu", "jobIds": [job]})
    pod = wait_for(lambda: pod_of(kube, job), timeout=20, what="a pod despite the taken name")
    assert pod["metadata"]["annotations"]["actions-gateway.github.com/runner-name"] == f"cpu-{job}"
    deletes = endpoint_calls(github, "runner_delete")
    assert [c["path"].rsplit("/", 1)[1] for c in deletes] == [str(stale["id"])], "the stale registration was removed"
    assert [c["status"] for c in endpoint_calls(github, "jit_config")] == [409, 200]

    # When it cannot be removed, a suffixed name is used instead.
    second = str(uuid.uuid4())
    github.control("runner", {"scaleSet": "cpu", "name": f"cpu-{second}"})
    github.control("fault", {"endpoint": "runner_delete", "status": 422, "count": 5})
    github.control("enqueue", {"scaleSet": "cpu", "jobIds": [second]})
    pod = wait_for(lambda: pod_of(kube, second), timeout=20, what="a pod under a suffixed runner name")
    assert pod["metadata"]["annotations"]["actions-gateway.github.com/runner-name"] == f"cpu-{second}-1"
    assert f"cpu-{second}-1" in github.control("state")["runners"]


def active_workers(kube):
    return [p for p in workers(kube) if p.get("status", {}).get("phase") not in ("Succeeded", "Failed")]


def test_a_shared_quota_bounds_two_groups_together_and_a_scoped_quota_bounds_its_class(world):
    kube, github, start = world
    kube.call("POST", "/api/v1/namespaces/team-a/resourcequotas", {
        "metadata": {"name": "workers"}, "spec": {"hard": {"pods": "4", "requests.cpu": "10"}}})
    kube.call("POST", "/api/v1/namespaces/team-a/resourcequotas", {
        "metadata": {"name": "burst"}, "spec": {"hard": {"pods": "1"}, "scopeSelector": {"matchExpressions": [
            {"scopeName": "PriorityClass", "operator": "In", "values": ["tier-b"]}]}}})
    _, admin = start([
        {"name": "cpu", "runnerLabels": ["linux"], "completedPodTTL": "0s",
         "priorityTiers": [{"priorityClassName": "tier-a", "threshold": 1}, {"priorityClassName": "tier-b", "threshold": 5}]},
        {"name": "gpu", "runnerLabels": ["gpu"], "completedPodTTL": "0s", "maxWorkers": 5}], gmc_status=True)
    wait_for(lambda: len(github.control("state")["scaleSets"]) == 2, timeout=20, what="two scale sets")
    cpu_jobs = github.control("enqueue", {"scaleSet": "cpu", "count": 4})["jobIds"]
    gpu_jobs = github.control("enqueue", {"scaleSet": "gpu", "count": 4})["jobIds"]
    wait_for(lambda: len(active_workers(kube)) == 4, timeout=30, what="the quota's four pods")
    # Let several more polls go by: nothing beyond the quota is created, or advertised.
    polls_now = len(endpoint_calls(github, "poll"))
    wait_for(lambda: len(endpoint_calls(github, "poll")) >= polls_now + 6, timeout=30, what="more polls")
    pods = active_workers(kube)
    assert len(pods) == 4, "two groups never over-commit one quota together"
    assert len([p for p in pods if p["spec"].get("priorityClassName") == "tier-b"]) <= 1, "the scoped quota bounds its class"
    state = github.control("state")
    assigned = [j for j in state["jobs"].values() if j["state"] != "queued"]
    assert len(assigned) <= 4, f"GitHub assigned only what the quota admits: {len(assigned)}"
    advertised = 0
    for name in ("cpu", "gpu"):
        set_id = next(s["id"] for s in state["scaleSets"] if s["name"] == name)
        last = [c for c in state["calls"] if c["endpoint"] == "poll" and c["path"].startswith(f"/queue/{set_id}/")][-1]
        advertised += last["capacity"]
    assert advertised <= 4, f"the two groups' totals together never exceed the quota: {advertised}"
    assert metric(admin, "agc_capacity_withheld", runner_group="cpu", reason="quota") == 1 \
        or metric(admin, "agc_capacity_withheld", runner_group="gpu", reason="quota") == 1
    quota = kube.call("GET", "/api/v1/namespaces/team-a/resourcequotas/workers")[1]
    assert quota["status"]["used"]["pods"] == "4"
    # The gateway says so, naming the group, beside the GMC's own condition.
    condition = wait_for(lambda: next((c for c in gateway_status(kube).get("conditions", [])
                                       if c["type"] == "WorkerQuotaExceeded" and c["status"] == "True"), None),
                         timeout=20, what="WorkerQuotaExceeded=True")
    assert condition["reason"] == "QuotaExhausted" and "group " in condition["message"] and "pods 4/4" in condition["message"]
    assert next(c for c in gateway_status(kube)["conditions"] if c["type"] == "Ready") == GMC_READY, "the GMC's condition kept"
    lines = {g["name"]: g for g in gateway_status(kube)["runnerGroups"]}
    assert set(lines) == {"cpu", "gpu"} and sum(g["pendingJobs"] + g["runningJobs"] for g in lines.values()) == 4
    assert all(g["activeSessions"] == 1 and g["acquisition"] == "scaleSet" and g["lastJobAt"] for g in lines.values())

    # One finishes: exactly one more is created, still within the quota.
    done = pods[0]
    job = done["metadata"]["labels"]["actions-gateway.github.com/job-id"]
    github.control("start", {"jobId": job})
    github.control("complete", {"jobId": job, "result": "succeeded"})
    succeed(kube, done)
    wait_for(lambda: len(active_workers(kube)) == 4 and done["metadata"]["name"] not in {p["metadata"]["name"] for p in active_workers(kube)},
             timeout=30, what="a fifth job's pod in the freed slot")
    assert len(active_workers(kube)) == 4
    assert set(cpu_jobs + gpu_jobs) >= {p["metadata"]["labels"]["actions-gateway.github.com/job-id"] for p in workers(kube)}


def held_jobs(admin):
    jobs = json.loads(urllib.request.urlopen(f"http://{admin}/jobs", timeout=5).read())
    return {j["jobId"]: j for j in jobs if j["phase"] == "Held"}


def warning_events(kube, reason):
    items = kube.call("GET", "/api/v1/namespaces/team-a/events")[1].get("items", [])
    return [e for e in items if e.get("reason") == reason and e.get("type") == "Warning"
            and e["involvedObject"].get("kind") == "ActionsGateway" and e["involvedObject"].get("name") == "gw"]


def pod_creates(kube):
    requests = kube.call("GET", "/fake/requests")[1]["requests"]
    return [r for r in requests if r["method"] == "POST" and r["path"] == "/api/v1/namespaces/team-a/pods"]


def test_a_pod_the_api_server_refuses_for_quota_is_held_and_created_on_a_retry(world):
    """Our headroom can be wrong: the quota controller lags and a pod we do not watch uses the
    quota. The API server's 403 holds the job (shown in /jobs, counted) and a retry 30 s later,
    once the quota has room, creates its pod: nothing lost, nothing doubled."""
    kube, github, start = world
    kube.call("POST", "/api/v1/namespaces/team-a/resourcequotas", {"metadata": {"name": "workers"}, "spec": {"hard": {"pods": "2"}}})
    kube.call("POST", "/fake/quota-controller", {"paused": True})
    status, _ = kube.call("POST", "/api/v1/namespaces/team-a/pods", {
        "metadata": {"name": "build-cache"}, "spec": {"containers": [{"name": "c", "image": "cache"}]}})
    assert status == 201
    _, admin = start([dict(GROUP, maxWorkers=5)])
    wait_for(lambda: github.control("state")["scaleSets"], timeout=20, what="scale set created")
    jobs = github.control("enqueue", {"scaleSet": "cpu", "count": 2})["jobIds"]
    held = wait_for(lambda: held_jobs(admin) or None, timeout=30, what="a job held by the API server's refusal")
    (job, entry), = held.items()
    assert entry["held"].startswith("quota (API server): pods ") and "exceeded quota: workers" in entry["held"], entry
    refused = [r for r in pod_creates(kube) if r["code"] == 403]
    assert refused and refused[0]["reason"] == "Forbidden"
    assert metric(admin, "agc_quota_retries_total", runner_group="cpu") >= 1
    assert len(workers(kube)) == 1

    kube.call("DELETE", "/api/v1/namespaces/team-a/pods/build-cache")
    wait_for(lambda: len(workers(kube)) == 2, timeout=45, what="the held job's pod on the 30 s retry")
    assert sorted(p["metadata"]["labels"]["actions-gateway.github.com/job-id"] for p in workers(kube)) == sorted(jobs)
    assert len([r for r in pod_creates(kube) if r["code"] == 201]) == 3, "one create per job (and the test's own pod)"
    wait_for(lambda: not held_jobs(admin), timeout=10, what="nothing held any more")


def test_warning_events_say_what_went_wrong_once_and_count_repeats(world):
    kube, github, start = world
    _, admin = start([{"name": "cpu", "runnerLabels": ["linux"], "completedPodTTL": "0s",
                       "priorityTiers": [{"priorityClassName": "tier-missing", "threshold": 2}]}])
    wait_for(lambda: github.control("state")["scaleSets"], timeout=20, what="scale set created")
    github.control("fault", {"endpoint": "jit_config", "status": 500, "count": 1})
    job = github.control("enqueue", {"scaleSet": "cpu"})["jobIds"][0]
    acquisition = wait_for(lambda: warning_events(kube, "JobAcquisitionFailed") or None, timeout=30, what="JobAcquisitionFailed")
    assert job in acquisition[0]["message"] and "cpu" in acquisition[0]["message"]
    created = wait_for(lambda: warning_events(kube, "WorkerPodCreateFailed") or None, timeout=30, what="WorkerPodCreateFailed")
    assert "no PriorityClass with name tier-missing" in created[0]["message"], created[0]["message"]
    assert created[0]["source"]["component"] == "agc" and created[0]["involvedObject"]["uid"]
    assert held_jobs(admin)[job]["held"].startswith("pod create failed"), "the job waits, and /jobs says why"
    assert not workers(kube)

    # The class appears: the held job's pod is created, once.
    kube.call("POST", "/apis/scheduling.k8s.io/v1/priorityclasses", {"metadata": {"name": "tier-missing"}, "value": 10})
    wait_for(lambda: len(workers(kube)) == 1, timeout=30, what="the pod once its class exists")
    assert workers(kube)[0]["spec"]["priority"] == 10
    assert len(warning_events(kube, "JobAcquisitionFailed")) == 1 and len(warning_events(kube, "WorkerPodCreateFailed")) == 1


def test_a_template_asking_for_privilege_under_restricted_is_refused_with_an_event(world):
    kube, github, start = world
    process, admin = start([dict(GROUP, podTemplate={"spec": {"containers": [
        {"name": "runner", "image": "runner:test", "securityContext": {"privileged": True}}]}})],
        ready=False, securityProfile="restricted")
    refused = wait_for(lambda: warning_events(kube, "TemplateRefused") or None, timeout=20, what="TemplateRefused")
    assert "privileged" in refused[0]["message"] and "podTemplate" in refused[0]["message"], refused[0]["message"]
    assert not _ok(f"http://{admin}/readyz") and process.poll() is None, "not ready, and still running"
    assert not github.control("state")["scaleSets"], "no acquisition for a refused gateway"


def test_a_held_job_goes_as_soon_as_room_appears_not_at_the_end_of_the_long_poll(long_poll_world):
    """GitHub holds an empty poll (30 s here, ~50 s in production). A job held by the ceiling
    because the previous pod is still running must not wait for that poll to end."""
    kube, github, start = long_poll_world
    _, admin = start([dict(GROUP, maxWorkers=1)])
    wait_for(lambda: github.control("state")["scaleSets"], timeout=20, what="scale set created")
    first, second = github.control("enqueue", {"scaleSet": "cpu", "count": 2})["jobIds"]
    wait_for(lambda: len(workers(kube)) == 1, timeout=20, what="the first pod")
    pod = workers(kube)[0]
    kube.call("PATCH", f"/api/v1/namespaces/team-a/pods/{pod['metadata']['name']}/status",
              {"status": {"phase": "Running", "containerStatuses": [{"name": "runner", "state": {"running": {}}}]}},
              content_type="application/merge-patch+json")
    github.control("start", {"jobId": first})
    github.control("complete", {"jobId": first, "result": "succeeded"})
    wait_for(lambda: second in held_jobs(admin), timeout=20, what="the second job held: its predecessor still runs")
    assert held_jobs(admin)[second]["held"].startswith("ceiling 1/1")
    succeed(kube, pod)
    # Well inside the 30 s hold of the poll now in flight.
    wait_for(lambda: second in {p["metadata"]["labels"]["actions-gateway.github.com/job-id"] for p in workers(kube)},
             timeout=12, what="the second pod before the long poll ends")


GMC = os.environ.get("GMC_BIN") or os.path.join(ROOT, ".build", "debug", "gmc")


def _allowed(role, verb, resource, name):
    return any(("" in rule["apiGroups"] or "actions-gateway.github.com" in rule["apiGroups"]) and resource in rule["resources"]
               and verb in rule["verbs"] and (not rule.get("resourceNames") or name in rule["resourceNames"]) for rule in role["rules"])


def _api_call(request):
    """(verb, resource[/subresource], name) of one logged API request, as RBAC sees it."""
    import urllib.parse
    url = urllib.parse.urlparse(request["path"])
    parts = [p for p in url.path.split("/") if p]
    rest = parts[2:] if parts[0] == "api" else parts[3:]
    if rest[:1] == ["namespaces"] and len(rest) > 2:
        rest = rest[2:]
    resource, name = rest[0], rest[1] if len(rest) > 1 else None
    if len(rest) > 2:
        resource += "/" + rest[2]
    watch = "watch=true" in url.query or "watch=1" in url.query
    verb = {"POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}.get(
        request["method"], "get" if name else "watch" if watch else "list")
    return verb, resource, name


def test_the_agc_role_the_gmc_renders_allows_every_call_the_agc_makes_and_little_else(world, tmp_path):
    import yaml
    kube, github, start = world
    groups = [{"name": "cpu", "runnerLabels": ["linux"], "completedPodTTL": "0s", "maxWorkers": 2}]
    _, admin = start(groups)
    wait_for(lambda: github.control("state")["scaleSets"], timeout=20, what="scale set created")
    job = github.control("enqueue", {"scaleSet": "cpu"})["jobIds"][0]
    pod = wait_for(lambda: workers(kube) and workers(kube)[0], timeout=20, what="the pod")
    github.control("start", {"jobId": job})
    github.control("complete", {"jobId": job, "result": "succeeded"})
    succeed(kube, pod)
    wait_for(lambda: not workers(kube), timeout=20, what="the pod reaped")
    wait_for(lambda: gateway_status(kube).get("runnerGroups"), timeout=20, what="status written")

    document = tmp_path / "gw.yaml"
    document.write_text(yaml.safe_dump({
        "apiVersion": "actions-gateway.github.com/v1alpha1", "kind": "ActionsGateway", "metadata": {"name": "gw", "namespace": "team-a"},
        "spec": {"gitHubAppRef": {"name": "app"}, "gitHubURL": "https://github.com/acme", "runnerGroups": groups}}))
    rendered = subprocess.run([GMC, "render", "--file", str(document)], capture_output=True, text=True, check=True).stdout
    role = next(d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "Role")
    calls = {_api_call(r) for r in kube.call("GET", "/fake/requests")[1]["requests"] if r["agent"].startswith("agc/")}
    assert calls, "the AGC's requests are in the log, by its User-Agent"
    refused = sorted(str(c) for c in calls if not _allowed(role, *c))
    assert not refused, f"RBAC would refuse: {refused}"
    used = {(verb, resource) for verb, resource, _ in calls}
    granted = {(verb, resource) for rule in role["rules"] for resource in rule["resources"] for verb in rule["verbs"]}
    # Granted for paths this flow does not take: Events (a failure) and counting them, the
    # retries ConfigMap's optimistic update, a pod read again after a recovery claim's conflict.
    assert granted - used <= {("create", "events"), ("patch", "events"), ("update", "configmaps"), ("get", "pods")}, sorted(granted - used)


def test_a_burst_up_to_the_ceiling_is_admitted_whole(world):
    """30 jobs at once under a ceiling of 30: every one gets its pod at once. (A pod the watch
    delivers before its reservation is cleared must not count twice and hold jobs back.)"""
    kube, github, start = world
    _, admin = start([dict(GROUP, maxWorkers=30)])
    wait_for(lambda: github.control("state")["scaleSets"], timeout=20, what="scale set created")
    jobs = github.control("enqueue", {"scaleSet": "cpu", "count": 30})["jobIds"]
    wait_for(lambda: len(workers(kube)) == 30, timeout=30, what="thirty pods")
    assert sorted(p["metadata"]["labels"]["actions-gateway.github.com/job-id"] for p in workers(kube)) == sorted(jobs)
    assert metric(admin, "agc_jobs_admission_rejected_total", runner_group="cpu", reason="ceiling") == 0
    # Counted once the create's answer (and the Secret's re-owning) is back: a pod can be in the
    # API server's store a moment before.
    wait_for(lambda: metric(admin, "agc_jobs_acquired_total", runner_group="cpu") == 30, timeout=10, what="30 acquired")


def test_a_gateway_moved_to_another_organisation_restarts_its_sources_there(world):
    kube, github, start = world
    start([GROUP])
    wait_for(lambda: github.control("state")["scaleSets"], timeout=20, what="scale set created")
    before = len(github.control("state")["calls"])
    sessions = len(endpoint_calls(github, "session_create"))
    status, _ = kube.call("PATCH", GATEWAY, {"spec": {"gitHubURL": "https://github.com/other-org"}},
                          content_type="application/merge-patch+json")
    assert status == 200
    moved = wait_for(lambda: [c for c in github.control("state")["calls"][before:] if c["endpoint"] == "registration_token"],
                     timeout=30, what="a fresh bootstrap")
    assert "/orgs/other-org/" in moved[0]["path"], moved[0]
    assert any(c["endpoint"] == "session_delete" for c in github.control("state")["calls"][before:]), "the old session closed"
    wait_for(lambda: len(endpoint_calls(github, "session_create")) > sessions, timeout=30, what="a new session")
    job = github.control("enqueue", {"scaleSet": "cpu"})["jobIds"][0]
    wait_for(lambda: pod_of(kube, job), timeout=20, what="a pod from the restarted source")


def test_the_gmc_and_the_agc_running_together_keep_each_others_conditions(world):
    """Both write status.conditions with merge patches (which replace the list whole): each
    sends its own types plus the other's as it read them, under the resourceVersion."""
    kube, github, start = world
    start([GROUP])
    gmc = subprocess.Popen([GMC, "run", "--api-server", kube.url, "--metrics-addr", "127.0.0.1:0"],
                           stderr=subprocess.DEVNULL, text=True)
    try:
        gmc_types = {"Ready", "ProxyAvailable", "AGCAvailable", "CredentialsAvailable", "Degraded"}
        agc_types = {"GitHubAuthenticated", "RateLimited", "WorkersUnschedulable", "WorkerQuotaExceeded", "Drained"}

        def both():
            types = {c["type"] for c in gateway_status(kube).get("conditions", [])}
            return types >= gmc_types | agc_types

        wait_for(both, timeout=30, what="both writers' conditions")
        # Each writer now changes its share: a second group (the AGC's status.runnerGroups, the
        # GMC's observedGeneration), then a job (the AGC's counts). Neither loses the other's.
        status, _ = kube.call("PATCH", GATEWAY, {"spec": {"runnerGroups": [GROUP, dict(GROUP, name="more", runnerLabels=["more"])]}},
                              content_type="application/merge-patch+json")
        assert status == 200
        wait_for(lambda: {g["name"] for g in gateway_status(kube).get("runnerGroups", [])} == {"cpu", "more"} and both(),
                 timeout=30, what="the AGC's new group beside the GMC's conditions")
        generation = kube.call("GET", GATEWAY)[1]["metadata"]["generation"]
        wait_for(lambda: gateway_status(kube).get("observedGeneration") == generation and both(), timeout=30,
                 what="the GMC's new generation beside the AGC's conditions")
        job = github.control("enqueue", {"scaleSet": "cpu"})["jobIds"][0]
        wait_for(lambda: pod_of(kube, job), timeout=20, what="a pod")
        wait_for(lambda: next((g for g in gateway_status(kube)["runnerGroups"] if g["name"] == "cpu"), {}).get("pendingJobs") == 1,
                 timeout=20, what="the AGC's count")
        assert both()
        conditions = gateway_status(kube)["conditions"]
        assert len(conditions) == len({c["type"] for c in conditions}), "no condition type twice"
    finally:
        gmc.terminate()
        gmc.wait(timeout=15)


def test_a_job_secret_left_without_its_pod_is_deleted_when_the_job_concludes(world):
    """A create that died half-way (the AGC killed between Secret and pod) leaves a Secret
    holding a runner credential: it goes when GitHub concludes the job, by its name."""
    kube, github, start = world
    start([GROUP])
    wait_for(lambda: github.control("state")["scaleSets"], timeout=20, what="scale set created")
    job = github.control("enqueue", {"scaleSet": "cpu"})["jobIds"][0]
    pod = wait_for(lambda: pod_of(kube, job), timeout=20, what="the pod")
    name = pod["metadata"]["name"]
    secret = f"/api/v1/namespaces/team-a/secrets/{name}"
    wait_for(lambda: (kube.call("GET", secret)[1]["metadata"].get("ownerReferences") or [{}])[0].get("kind") == "Pod",
             timeout=20, what="the Secret owned by its pod")
    # Orphan it: owned by nothing, its pod gone.
    assert kube.call("PATCH", secret, {"metadata": {"ownerReferences": None}}, content_type="application/merge-patch+json")[0] == 200
    assert kube.call("DELETE", f"/api/v1/namespaces/team-a/pods/{name}")[0] == 200
    wait_for(lambda: not pod_of(kube, job), timeout=10, what="the pod gone")
    assert kube.exists(secret)
    github.control("complete", {"jobId": job, "result": "failed"})
    wait_for(lambda: not kube.exists(secret), timeout=20, what="the orphaned Secret deleted")


def test_sigterm_closes_the_session_leaves_running_workers_and_exits_zero(world):
    """spec section 1: on SIGTERM stop acquiring, delete the session (10 s budget), exit 0;
    running worker pods are not touched. (Before the fix the AGC died of the signal: the
    async main's parked thread took it with the default action.)"""
    kube, github, start = world
    process, _ = start([{"name": "cpu", "runnerLabels": ["linux"]}])
    wait_for(lambda: github.control("state")["sessions"], timeout=20, what="a queue session")
    github.control("enqueue", {"scaleSet": "cpu", "repository": "acme/widgets", "runId": 78})
    wait_for(lambda: len(workers(kube)) == 1, timeout=20, what="one worker pod")
    pod = workers(kube)[0]["metadata"]["name"]
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=15) == 0, "".join(process.log[-20:])
    assert github.control("state")["sessions"] == {}, "the session was deleted at GitHub"
    assert [c for c in github.control("state")["calls"] if c["endpoint"] == "session_delete"]
    assert [p["metadata"]["name"] for p in workers(kube)] == [pod], "the running worker was left alone"
    assert any('"agc stopped"' in line for line in process.log)

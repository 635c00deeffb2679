"""Classic acquisition end to end against the fake GitHub's broker (spec/agc.md section 3,
reference 2.1 and 3.1): virtual sessions each with its own JIT agent, encrypted deliveries,
acquire, renew with the job token only, single-use agent recycling, and fan-out: one pod per
plan, siblings completed with the winner's result, never a false green. Assertions read what
the fakes saw."""
import base64
import json
import signal
import time
from collections import Counter

import pytest

from conftest import wait_for
from test_agc import _world, annotate, metric, warning_events, workers, world  # noqa: F401  (world is the fixture)

PODS = "/api/v1/namespaces/team-a/pods"
MERGE = "application/merge-patch+json"


def classic(github):
    return github.control("classic/state")


def live_sessions(github):
    return [s for s in classic(github)["sessions"].values() if not s["killed"]]


def group(**extra):
    return {"name": "cpu", "runnerLabels": ["linux"], "acquisition": "classic", "completedPodTTL": "0s", **extra}


def payload_of(kube, pod):
    status, secret = kube.call("GET", f"/api/v1/namespaces/team-a/secrets/{pod['metadata']['name']}")
    assert status == 200
    return json.loads(base64.b64decode(secret["data"]["payload"]))


def finish(kube, pod, phase="Succeeded"):
    name = pod["metadata"]["name"]
    kube.call("PATCH", f"{PODS}/{name}/status", {"status": {"phase": phase, "containerStatuses": [
        {"name": "runner", "state": {"terminated": {"exitCode": 0 if phase == "Succeeded" else 1}}}]}}, content_type=MERGE)


def test_three_sessions_a_job_renewed_with_its_token_and_the_agent_recycled(world):
    kube, github, start = world
    start([group(minListeners=3, maxListeners=3)])
    wait_for(lambda: len(live_sessions(github)) == 3, timeout=30, what="three virtual sessions")
    agents = classic(github)["agents"]
    assert len(agents) == 3 and len({s["agentId"] for s in live_sessions(github)}) == 3, "one agent per session"
    for index in range(3):
        status, secret = kube.call("GET", f"/api/v1/namespaces/team-a/secrets/gw-agent-cpu-{index}")
        assert status == 200 and "encodedJITConfig" in secret["data"], "each agent kept in its Secret"

    plan = github.control("classic/enqueue", {"repository": "acme/widgets", "runId": 4242})["planIds"][0]
    wait_for(lambda: len(workers(kube)) == 1, timeout=30, what="one worker pod")
    pod = workers(kube)[0]
    meta = pod["metadata"]
    assert meta["annotations"]["actions-gateway.github.com/acquisition"] == "classic"
    assert meta["annotations"]["actions-gateway.github.com/run-id"] == "4242"
    assert meta["annotations"]["actions-gateway.github.com/repository"] == "acme/widgets"
    runner = next(c for c in pod["spec"]["containers"] if c["name"] == "runner")
    assert {e["name"]: e.get("value") for e in runner["env"]}["AGC_WORKER_MODE"] == "classic"
    payload = payload_of(kube, pod)
    assert payload["plan"]["planId"] == plan, "the job message reaches the worker byte for byte"
    request = payload["requestId"]

    # Renewed with the job token: the fake refuses anything else, and records every attempt.
    wait_for(lambda: any(r["requestId"] == request and r["ok"] for r in classic(github)["renewals"]), timeout=20, what="a renewal")
    assert all(r["ok"] for r in classic(github)["renewals"]), classic(github)["renewals"]
    # The acquire consumed the agent: a new one under the same name, and three sessions again.
    wait_for(lambda: len(classic(github)["agents"]) == 4 and len(live_sessions(github)) == 3, timeout=30, what="the agent recycled")
    consumed = [a for a in classic(github)["agents"].values() if a["consumed"]]
    assert len(consumed) == 1 and consumed[0]["name"] in {a["name"] for a in classic(github)["agents"].values() if not a["consumed"]}

    github.control("classic/run", {"requestId": request, "result": "succeeded"})
    finish(kube, pod)
    wait_for(lambda: not workers(kube), timeout=20, what="the finished pod reaped")
    state = classic(github)["plans"][plan]
    assert state["conclusion"] == "success" and state["falseGreen"] is False
    assert [d["completedBy"] for d in state["deliveries"].values()] == ["worker"], "the AGC never completed its own delivery"


def test_fan_out_one_pod_siblings_completed_with_the_winners_result(world):
    kube, github, start = world
    start([group(minListeners=3, maxListeners=3)])
    wait_for(lambda: len(live_sessions(github)) == 3, timeout=30, what="three virtual sessions")
    plan = github.control("classic/enqueue", {"fanout": 3})["planIds"][0]
    wait_for(lambda: all(d["state"] == "acquired" for d in classic(github)["plans"][plan]["deliveries"].values()),
             timeout=30, what="all three deliveries acquired")
    wait_for(lambda: len(workers(kube)) == 1, timeout=20, what="the plan's pod")
    pods = workers(kube)
    assert len(pods) == 1, "one pod for one plan"
    winner = payload_of(kube, pods[0])["requestId"]
    github.control("classic/run", {"requestId": winner, "result": "failed"})
    finish(kube, pods[0], phase="Failed")
    wait_for(lambda: classic(github)["plans"][plan]["conclusion"] is not None, timeout=20, what="the plan concluded")
    state = classic(github)["plans"][plan]
    siblings = [d for key, d in state["deliveries"].items() if int(key) != winner]
    assert [(d["completedBy"], d["result"]) for d in siblings] == [("broker", "failed")] * 2, "siblings get the winner's result"
    assert state["conclusion"] == "failure" and state["falseGreen"] is False
    assert len(workers(kube)) <= 1


@pytest.fixture
def fast_keys_world(tmp_path):
    """1024-bit agent keys: 500 recycled agents would spend a minute in the fake's RSA key generation."""
    yield from _world(tmp_path, hold=0.3, extra=("--agent-key-bits", "1024"))


def test_five_hundred_jobs_through_twenty_sessions_in_two_groups_each_run_exactly_once(fast_keys_world):
    kube, github, start = fast_keys_world
    groups = [{**group(minListeners=10, maxListeners=10, maxWorkers=100), "name": name, "runnerLabels": [name]} for name in ("cpu", "gpu")]
    _, admin = start(groups)
    wait_for(lambda: len(live_sessions(github)) == 20, timeout=60, what="twenty virtual sessions")
    plans = set(github.control("classic/enqueue", {"count": 500})["planIds"])
    pods_seen = {}  # pod name -> plan
    deadline = time.monotonic() + 240

    def run_what_exists():
        """The kubelet and the runner: every worker pod runs its delivery and succeeds."""
        for pod in workers(kube):
            name = pod["metadata"]["name"]
            if name in pods_seen or pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
                continue
            payload = payload_of(kube, pod)
            pods_seen[name] = payload["plan"]["planId"]
            github.control("classic/run", {"requestId": payload["requestId"], "result": "succeeded"})
            finish(kube, pod)

    while time.monotonic() < deadline:
        run_what_exists()
        done = [p for p in classic(github)["plans"].values() if p["conclusion"] is not None]
        if len(done) == 500:
            break
        time.sleep(0.2)
    state = classic(github)["plans"]
    assert set(state) == plans
    assert sum(1 for p in state.values() if p["conclusion"] == "success") == 500, "every job concluded"
    assert not [p for p in state.values() if p["falseGreen"]]
    acquired = Counter(len([d for d in p["deliveries"].values() if d.get("acquiredBy")]) for p in state.values())
    assert acquired == {1: 500}, "each job acquired once"
    assert sorted(Counter(pods_seen.values()).values()) == [1] * 500, "one pod per job"
    per_group = {g: metric(admin, "agc_jobs_acquired_total", runner_group=g) for g in ("cpu", "gpu")}
    assert sum(per_group.values()) == 500, per_group


def test_sigterm_deletes_every_session_and_exits_zero(world):
    kube, github, start = world
    process, _ = start([group(minListeners=3, maxListeners=3)])
    wait_for(lambda: len(live_sessions(github)) == 3, timeout=30, what="three virtual sessions")
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=15) == 0
    assert classic(github)["sessions"] == {}, "every broker session deleted"
    deletes = [c for c in github.control("state")["calls"] if c["endpoint"] == "broker_session_delete"]
    assert len(deletes) == 3 and all(c["status"] == 200 for c in deletes)


def running_job(world):
    """An AGC with one classic session and one job running on it, renewed once:
    (the AGC, the plan, the job's pod, its request id)."""
    kube, github, start = world
    process, _ = start([group(minListeners=1, maxListeners=1)])
    wait_for(lambda: len(live_sessions(github)) == 1, timeout=30, what="a virtual session")
    plan = github.control("classic/enqueue", {})["planIds"][0]
    wait_for(lambda: len(workers(kube)) == 1, timeout=30, what="the worker pod")
    pod = workers(kube)[0]
    request = payload_of(kube, pod)["requestId"]
    wait_for(lambda: any(r["requestId"] == request and r["ok"] for r in classic(github)["renewals"]), timeout=20, what="a renewal")
    return process, plan, pod, request


def test_a_restarted_agc_renews_the_running_job_of_its_predecessor(world):
    """GitHub's job lock lapses ~10 min after the last renewal: an AGC upgraded while a job
    runs must go on renewing it (from what the pod's Secret keeps), and never run it twice."""
    kube, github, start = world
    first, plan, pod, request = running_job(world)
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=15) == 0
    before = len([r for r in classic(github)["renewals"] if r["requestId"] == request])
    assert [p["metadata"]["name"] for p in workers(kube)] == [pod["metadata"]["name"]], "the pod runs on without an AGC"

    start.launch()
    wait_for(lambda: len([r for r in classic(github)["renewals"] if r["requestId"] == request]) > before, timeout=20,
             what="the successor renewing the job")
    assert all(r["ok"] for r in classic(github)["renewals"]), "renewed with the job token only"
    wait_for(lambda: len(live_sessions(github)) == 1, timeout=30, what="the successor's session")
    assert len(workers(kube)) == 1, "no second pod for the job"

    github.control("classic/run", {"requestId": request, "result": "succeeded"})
    finish(kube, workers(kube)[0])
    wait_for(lambda: classic(github)["plans"][plan]["conclusion"] is not None, timeout=20, what="the job concluded")
    state = classic(github)["plans"][plan]
    assert state["conclusion"] == "success" and state["falseGreen"] is False
    assert [d["completedBy"] for d in state["deliveries"].values()] == ["worker"]
    assert len([d for d in state["deliveries"].values() if d.get("acquiredBy")]) == 1, "acquired once"


def test_agents_register_in_the_named_runner_group_and_a_missing_group_is_said(world):
    kube, github, start = world
    github.control("groups", {"ci-large": 7})
    start([group(minListeners=2, maxListeners=2, gitHubRunnerGroup="ci-large"),
           {**group(minListeners=1, maxListeners=1, gitHubRunnerGroup="no-such-group"), "name": "gpu", "runnerLabels": ["gpu"]}])
    wait_for(lambda: len(live_sessions(github)) == 2, timeout=30, what="the ci-large sessions")
    agents = classic(github)["agents"].values()
    assert sorted(a["groupId"] for a in agents) == [7, 7], "registered in the named group, by its GitHub id"
    lookups = [c for c in github.control("state")["calls"] if c["endpoint"] == "list_runner_groups"]
    assert lookups and all(c["status"] == 200 for c in lookups)
    wait_for(lambda: warning_events(kube, "RunnerGroupNotFound"), timeout=20, what="a RunnerGroupNotFound event")
    assert "no-such-group" in warning_events(kube, "RunnerGroupNotFound")[0]["message"]
    assert len(live_sessions(github)) == 2, "no session for a group GitHub does not have"


def _github_call(github, method, path, body=None, token=None):
    import urllib.request
    request = urllib.request.Request(github.base + path, data=None if body is None else json.dumps(body).encode(), method=method,
                                     headers={"Content-Type": "application/json", **({"Authorization": "Bearer " + token} if token else {})})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read() or b"null")


def test_a_stale_runner_under_our_name_is_deregistered_through_busy_answers(world):
    """Reference 1.4: a predecessor's runner holds the slot's name (409 on registration); its
    DELETE answers 422 "still running a job" for a while, retried 2 s rising, then it goes."""
    from cryptography.hazmat.primitives import serialization
    from test_fake_github import app_jwt
    kube, github, start = world
    key = serialization.load_pem_private_key((github.credentials / "privateKey").read_bytes(), password=None)
    token = _github_call(github, "POST", "/api/v3/app/installations/7/access_tokens", token=app_jwt(key, "42"))["token"]
    stale = _github_call(github, "POST", "/api/v3/orgs/acme/actions/runners/generate-jitconfig",
                         {"name": "gw-cpu-0", "runner_group_id": 1, "labels": ["linux"], "work_folder": "_work"}, token=token)
    github.control("classic/settings", {"busyDeletes": 2})
    start([group(minListeners=1, maxListeners=1)])
    wait_for(lambda: len(live_sessions(github)) == 1, timeout=40, what="a session after the stale runner went")
    deletes = [c["status"] for c in github.control("state")["calls"] if c["endpoint"] == "runner_delete"]
    assert deletes == [422, 422, 204], deletes
    assert live_sessions(github)[0]["agentId"] != stale["runner"]["id"]
    assert classic(github)["agents"][str(stale["runner"]["id"])]["consumed"], "the stale runner's record is gone"


def test_a_removed_group_renews_its_running_job_until_it_ends(world):
    """Only this AGC renews a classic job's lock. A group removed from the spec while a job
    runs would otherwise stop renewing, and GitHub would fail the job ~10 min later. The group's
    source retires instead: no session, the job renewed until its pod ends, the finished pod
    deleted (no group TTL applies to it any more), then the source is gone."""
    kube, github, _ = world
    process, plan, pod, request = running_job(world)

    def renewals():
        return [r for r in classic(github)["renewals"] if r["requestId"] == request]
    status, _ = kube.call("PATCH", "/apis/actions-gateway.github.com/v1alpha1/namespaces/team-a/actionsgateways/gw",
                          {"spec": {"runnerGroups": [{"name": "more", "runnerLabels": ["more"]}]}}, content_type="application/merge-patch+json")
    assert status == 200
    wait_for(lambda: any("classic group retiring" in line for line in process.log), timeout=20, what="the group retiring")
    wait_for(lambda: not live_sessions(github), timeout=20, what="its session deleted")
    before = len(renewals())
    assert [p["metadata"]["name"] for p in workers(kube)] == [pod["metadata"]["name"]], "the pod runs on"
    wait_for(lambda: len(renewals()) > before, timeout=90, what="the removed group's job renewed")
    assert all(r["ok"] for r in renewals())

    github.control("classic/run", {"requestId": request, "result": "succeeded"})
    finish(kube, pod)
    wait_for(lambda: not workers(kube), timeout=20, what="the finished pod deleted")
    wait_for(lambda: any("classic group retired" in line for line in process.log), timeout=20, what="the source gone")
    assert classic(github)["plans"][plan]["conclusion"] == "success"
    assert not live_sessions(github), "the retired group opened no session"


def slow_acquire(world, seconds):
    """An AGC with one classic session, whose first job's acquire GitHub records at once and
    answers `seconds` later; returns once it is recorded: (the AGC, the acquired deliveries)."""
    kube, github, start = world
    process, _ = start([group(minListeners=1, maxListeners=1)])
    wait_for(lambda: len(live_sessions(github)) == 1, timeout=30, what="a virtual session")
    github.control("classic/settings", {"acquireDelay": seconds})
    plan = github.control("classic/enqueue", {})["planIds"][0]

    def acquired():
        return [d for d in classic(github)["plans"][plan]["deliveries"].values() if d.get("acquiredBy")]
    wait_for(acquired, timeout=30, what="the acquire sent")
    return process, acquired


def test_a_drain_while_an_acquire_is_answered_runs_the_job_it_acquired(world):
    """Once sent, an acquire may have made the job this AGC's at GitHub, and only its answer
    lets the AGC run it. A drain that begins while the answer is on its way must not cancel
    it, or the job waits, run by nobody, until its lock lapses."""
    kube, github, _ = world
    process, acquired = slow_acquire(world, seconds=4)
    annotate(kube, "true")
    wait_for(lambda: any("drain requested" in line for line in process.log), timeout=5, what="the drain seen")
    assert not workers(kube), "the drain began before the acquire's answer came"
    wait_for(lambda: len(workers(kube)) == 1, timeout=30, what="the acquired job's pod")
    request = acquired()[0]["requestId"]
    wait_for(lambda: any(r["requestId"] == request and r["ok"] for r in classic(github)["renewals"]), timeout=20,
             what="the job renewed")
    wait_for(lambda: not live_sessions(github), timeout=20, what="no session while drained")
    assert len(acquired()) == 1 and len(workers(kube)) == 1


def test_a_stop_while_an_acquire_is_answered_leaves_the_job_a_pod_its_successor_adopts(world):
    """SIGTERM as an acquire's answer is on its way: the job is ours at GitHub, and a successor
    adopts a job by its pod. The stopping AGC waits for that answer and gives the job its pod
    (up to 5 s) before it exits, so the next AGC renews it, rather than nobody running it until
    its lock lapses."""
    kube, github, start = world
    first, acquired = slow_acquire(world, seconds=3)
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=30) == 0
    assert len(workers(kube)) == 1, "the acquired job got its pod before the AGC exited"
    assert not live_sessions(github), "every session deleted"

    github.control("classic/settings", {"acquireDelay": 0})
    request = acquired()[0]["requestId"]
    before = len([r for r in classic(github)["renewals"] if r["requestId"] == request])
    start.launch()
    wait_for(lambda: len([r for r in classic(github)["renewals"] if r["requestId"] == request and r["ok"]]) > before, timeout=30,
             what="the successor renewing the job")
    assert len(acquired()) == 1 and len(workers(kube)) == 1, "acquired once, one pod"

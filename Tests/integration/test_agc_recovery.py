"""Jobs that recover by themselves (spec/agc.md section 5, reference section 4): `agc run` against
the fake API server and the fake GitHub, with the test writing pod status the way a scheduler,
a kubelet or the control plane would. Every assertion is on what the fakes saw: GitHub's re-run
calls and the jobs it queued again, the pods the API server was asked to create, the retries
ConfigMap, Events."""
import json
import os
import signal
import time
from collections import Counter
from datetime import datetime, timezone

import pytest

from conftest import wait_for
from test_agc import GATEWAY, metric, workers, world  # noqa: F401  (world is the fixture)

PODS = "/api/v1/namespaces/team-a/pods"
MERGE = "application/merge-patch+json"


def stamp(epoch=None):
    return datetime.fromtimestamp(time.time() if epoch is None else epoch, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def pod_for(kube, job):
    return next((p for p in workers(kube) if p["metadata"]["labels"]["actions-gateway.github.com/job-id"] == job), None)


def run_pod(kube, pod, node="node-1"):
    """The scheduler binds it, the kubelet starts its runner."""
    name = pod["metadata"]["name"]
    assert kube.call("PATCH", f"{PODS}/{name}", {"spec": {"nodeName": node}}, content_type=MERGE)[0] == 200
    assert kube.call("PATCH", f"{PODS}/{name}/status", {"status": {
        "phase": "Running", "conditions": [{"type": "PodScheduled", "status": "True"}],
        "containerStatuses": [{"name": "runner", "state": {"running": {"startedAt": stamp()}}}]}}, content_type=MERGE)[0] == 200


def status(kube, name, phase, reason=None, exit_code=137, container_reason=None, conditions=None):
    """The kubelet reporting how the runner container ended."""
    terminated = {"exitCode": exit_code, "startedAt": stamp(time.time() - 60), "finishedAt": stamp(time.time() + 1)}
    if container_reason:
        terminated["reason"] = container_reason
    body = {"phase": phase, "containerStatuses": [{"name": "runner", "state": {"terminated": terminated}}]}
    if reason:
        body["reason"] = reason
    if conditions is not None:
        body["conditions"] = conditions
    return kube.call("PATCH", f"{PODS}/{name}/status", {"status": body}, content_type=MERGE)[0]


def target(reason):
    return [{"type": "PodScheduled", "status": "True"}, {"type": "DisruptionTarget", "status": "True", "reason": reason}]


def retries(kube):
    code, body = kube.call("GET", "/api/v1/namespaces/team-a/configmaps/gw-retries")
    return json.loads(body["data"]["retries.json"]) if code == 200 else {"runs": {}, "pending": {}}


def reruns(github, run_id=None):
    return [r for r in github.control("state")["reruns"] if run_id is None or r["runId"] == str(run_id)]


def events(kube, reason):
    return [e for e in kube.call("GET", "/api/v1/namespaces/team-a/events")[1].get("items", []) if e.get("reason") == reason]


def pod_creates(kube):
    """Pod names the API server created, with how often (201s to POST .../pods)."""
    log = kube.call("GET", "/fake/requests")[1]["requests"]
    return Counter(r["name"] for r in log if r["method"] == "POST" and r["path"].split("?")[0] == PODS and r["code"] == 201)


def start_jobs(kube, github, start, count, group=None, unstarted=(), **group_settings):
    """`count` jobs with their pods running, each started on its runner at GitHub except the
    indexes in `unstarted` (a worker that never ran: GitHub never saw its runner take the job)."""
    group = group or {"name": "cpu", "runnerLabels": ["linux"], "completedPodTTL": "0s", "maxWorkers": 30}
    group.update(group_settings)
    process, admin = start([group])
    wait_for(lambda: github.control("state")["scaleSets"], timeout=20, what="scale set created")
    jobs = github.control("enqueue", {"scaleSet": "cpu", "count": count})["jobIds"]
    wait_for(lambda: all(pod_for(kube, job) for job in jobs), timeout=30, what=f"{count} worker pods")
    state = github.control("state")["jobs"]
    pods = {}
    for index, job in enumerate(jobs):
        pod = pod_for(kube, job)
        run_pod(kube, pod)
        if index not in unstarted:
            github.control("start", {"jobId": job})
        pods[job] = pod
    return process, admin, jobs, {job: state[job]["runId"] for job in jobs}, pods


def new_attempt(github, run_id):
    """The job GitHub queued when it accepted the re-run of `run_id`."""
    accepted = [r for r in reruns(github, run_id) if r["accepted"]]
    return accepted[0]["newJobIds"][0] if accepted and accepted[0]["newJobIds"] else None


def test_each_cause_recovers_exactly_once(world):
    kube, github, start = world
    causes = ["eviction", "preemption", "node_lost", "drain", "oom", "deletion", "cancelled", "never_started", "succeeded"]
    process, admin, jobs, runs, pods = start_jobs(kube, github, start, len(causes), unstarted=(causes.index("never_started"),))
    by_cause = dict(zip(causes, jobs))
    name = {cause: pods[job]["metadata"]["name"] for cause, job in by_cause.items()}

    # The never-started one goes back to Pending on no node (as if it had never been bound).
    never = name["never_started"]
    kube.call("PATCH", f"{PODS}/{never}", {"spec": {"nodeName": None}}, content_type=MERGE)
    kube.call("PATCH", f"{PODS}/{never}/status", {"status": {"phase": "Pending", "containerStatuses": [
        {"name": "runner", "state": {"waiting": {"reason": "ImagePullBackOff"}}}]}}, content_type=MERGE)
    first_uid = pods[by_cause["never_started"]]["metadata"]["uid"]

    # What Kubernetes does to each.
    assert status(kube, name["eviction"], "Failed", reason="Evicted") == 200
    assert kube.call("PATCH", f"{PODS}/{name['preemption']}/status", {"status": {"conditions": target("PreemptionByScheduler")}},
                     content_type=MERGE)[0] == 200
    kube.call("DELETE", f"{PODS}/{name['preemption']}")
    assert status(kube, name["preemption"], "Succeeded", exit_code=0, conditions=target("PreemptionByScheduler")) == 200
    kube.call("PATCH", f"{PODS}/{name['node_lost']}/status", {"status": {"conditions": target("DeletionByTaintManager")}},
              content_type=MERGE)
    kube.call("DELETE", f"{PODS}/{name['node_lost']}?gracePeriodSeconds=0")
    assert kube.call("POST", f"{PODS}/{name['drain']}/eviction", {"apiVersion": "policy/v1", "kind": "Eviction",
                                                                   "metadata": {"name": name["drain"], "namespace": "team-a"}})[0] in (200, 201)
    status(kube, name["drain"], "Failed", conditions=target("EvictionByEvictionAPI"))
    assert status(kube, name["oom"], "Failed", container_reason="OOMKilled") == 200
    for cause in ("deletion", "cancelled"):
        kube.call("DELETE", f"{PODS}/{name[cause]}")
        status(kube, name[cause], "Failed", exit_code=143)
    kube.call("DELETE", f"{PODS}/{never}")
    assert status(kube, name["succeeded"], "Succeeded", exit_code=0) == 200

    # GitHub concludes each job as it would once its runner is gone.
    for cause, job in by_cause.items():
        if cause == "never_started":
            continue
        github.control("complete", {"jobId": job, "result": {"succeeded": "succeeded", "cancelled": "canceled"}.get(cause, "failed")})

    recovered = ["eviction", "preemption", "node_lost", "drain", "oom", "deletion"]
    wait_for(lambda: all(new_attempt(github, runs[by_cause[c]]) for c in recovered), timeout=40, what="every disrupted run re-run")
    for cause in recovered:
        attempt = new_attempt(github, runs[by_cause[cause]])
        wait_for(lambda: pod_for(kube, attempt), timeout=30, what=f"the re-run {cause} job's pod")
    # The never-started job is offered again: a new pod for the same job, no call on its run.
    wait_for(lambda: (pod_for(kube, by_cause["never_started"]) or {}).get("metadata", {}).get("uid") not in (None, first_uid),
             timeout=30, what="a new pod for the never-started job")
    wait_for(lambda: events(kube, "EvictionRerunWithheld"), timeout=20, what="the cancelled run's re-run withheld")

    for cause in recovered:
        run = runs[by_cause[cause]]
        calls = reruns(github, run)
        assert [c["accepted"] for c in calls] == [True], f"{cause}: one accepted re-run call, {calls}"
        expected = 2 if cause == "deletion" else 1  # the cancelled run's pod was deleted too
        assert metric(admin, "agc_disruptions_total", runner_group="cpu", cause=cause) == expected, cause
        wait_for(lambda: metric(admin, "agc_reruns_total", runner_group="cpu", cause=cause, outcome="accepted") == 1,
                 what=f"the {cause} re-run counted")
        ledger = retries(kube)["runs"][str(run)]
        assert ledger["spent"] == 1 and ledger["pods"] == [pods[by_cause[cause]]["metadata"]["uid"]], (cause, ledger)
    assert not reruns(github, runs[by_cause["cancelled"]]), "a cancelled run is never re-run"
    assert metric(admin, "agc_reruns_total", runner_group="cpu", cause="deletion", outcome="withheld") == 1
    assert not reruns(github, runs[by_cause["never_started"]]) and not github.control("state")["force_cancels"], \
        "a scale-set job that never started is not cancelled nor re-run: its capacity is offered again"
    assert metric(admin, "agc_disruptions_total", runner_group="cpu", cause="abandoned") == 1
    assert not reruns(github, runs[by_cause["succeeded"]]), "a job that ran to its end is not re-run"
    assert not retries(kube)["pending"]
    creates = pod_creates(kube)
    assert all(count == 1 for pod, count in creates.items() if pod != never), creates
    assert creates[never] == 2, "the never-started job got exactly one new pod"
    assert process.poll() is None


def test_the_budget_is_per_run_and_survives_a_restart(world):
    kube, github, start = world
    process, admin, jobs, runs, pods = start_jobs(kube, github, start, 1, maxEvictionRetries=1, completedPodTTL="1h")
    run = runs[jobs[0]]
    assert status(kube, pods[jobs[0]]["metadata"]["name"], "Failed", reason="Evicted") == 200
    github.control("complete", {"jobId": jobs[0], "result": "failed"})
    wait_for(lambda: new_attempt(github, run), timeout=30, what="the first re-run")
    claimed = pod_for(kube, jobs[0])["metadata"]["annotations"]["actions-gateway.github.com/recovery"]
    assert claimed.startswith("eviction "), "the pod is claimed, visibly"
    attempt = new_attempt(github, run)

    # A new AGC (the first killed outright) creates the attempt's pod and keeps the spent budget.
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    github.control("drop-session", {"scaleSet": "cpu"})  # GitHub expires a dead owner's session
    _, admin = start.launch()
    wait_for(lambda: pod_for(kube, attempt), timeout=30, what="the re-run job's pod, from the new AGC")
    second = pod_for(kube, attempt)
    run_pod(kube, second)
    github.control("start", {"jobId": attempt})
    assert status(kube, second["metadata"]["name"], "Failed", reason="Evicted") == 200
    github.control("complete", {"jobId": attempt, "result": "failed"})
    wait_for(lambda: events(kube, "EvictionRetriesExhausted"), timeout=20, what="the exhausted budget's Warning")
    assert metric(admin, "agc_reruns_total", runner_group="cpu", cause="eviction", outcome="exhausted") == 1
    (event,) = events(kube, "EvictionRetriesExhausted")
    assert event["type"] == "Warning" and event["involvedObject"]["kind"] == "ActionsGateway" and str(run) in event["message"]
    assert [c["accepted"] for c in reruns(github, run)] == [True], "the second disruption of the run is not re-run"
    assert retries(kube)["runs"][str(run)]["spent"] == 1
    assert sorted(retries(kube)["runs"][str(run)]["pods"]) == sorted([pods[jobs[0]]["metadata"]["uid"], second["metadata"]["uid"]])


def test_a_restart_finishes_every_job_and_each_pending_rerun_once(world):
    kube, github, start = world
    process, _, jobs, runs, pods = start_jobs(kube, github, start, 20)
    disrupted = jobs[:3]
    for job in disrupted:
        assert status(kube, pods[job]["metadata"]["name"], "Failed", reason="Evicted") == 200
    wait_for(lambda: len(retries(kube)["pending"]) == 3, timeout=10, interval=0.05, what="three re-runs pending")
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    github.control("drop-session", {"scaleSet": "cpu"})  # GitHub expires a dead owner's session
    called_before = len(reruns(github))
    for job in jobs:
        github.control("complete", {"jobId": job, "result": "failed" if job in disrupted else "succeeded"})
    for job in jobs[3:]:
        assert status(kube, pods[job]["metadata"]["name"], "Succeeded", exit_code=0) == 200

    restarted, admin = start.launch()
    wait_for(lambda: all(new_attempt(github, runs[job]) for job in disrupted), timeout=40, what="each pending re-run, after the restart")
    for job in disrupted:
        attempt = new_attempt(github, runs[job])
        wait_for(lambda: pod_for(kube, attempt), timeout=30, what="the re-run job's pod")
        pod = pod_for(kube, attempt)
        run_pod(kube, pod)
        github.control("start", {"jobId": attempt})
        github.control("complete", {"jobId": attempt, "result": "succeeded"})
        status(kube, pod["metadata"]["name"], "Succeeded", exit_code=0)
    try:
        wait_for(lambda: not workers(kube), timeout=30, what="every pod finished and reaped")
    except AssertionError:
        print([(p["metadata"]["name"], p["metadata"]["labels"]["actions-gateway.github.com/job-id"], p.get("status", {}).get("phase"),
                p["metadata"].get("deletionTimestamp")) for p in workers(kube)], disrupted)
        raise
    wait_for(lambda: not retries(kube)["pending"], timeout=10, what="nothing pending")
    for job in disrupted:
        assert [c["accepted"] for c in reruns(github, runs[job])] == [True], reruns(github, runs[job])
    assert len(reruns(github)) == 3 and called_before in (0, 1, 2, 3)
    creates = pod_creates(kube)
    twice = [name for name, count in creates.items() if count > 1]
    if twice:  # what each AGC said about them, for the failure message
        for who, proc in (("first", process), ("restarted", restarted)):
            print(who, [line for line in getattr(proc, "log", []) if any(name in line for name in twice)][-20:])
        print("disrupted", disrupted, "called before the kill", called_before)
    assert len(creates) == 23 and not twice, f"20 jobs and 3 re-runs: one pod each, none twice: {twice}"
    assert all(s["state"] == "completed" for s in github.control("state")["jobs"].values())


def scale_set_polls(github, name):
    ids = {str(s["id"]) for s in github.control("state")["scaleSets"] if s["name"] == name}
    return [c for c in github.control("state")["calls"] if c["endpoint"] == "poll" and any(f"/queue/{i}/" in c.get("path", "") for i in ids)]


@pytest.mark.parametrize("reclaim", [True, False])
def test_a_floor_tier_reclaims_quota_from_a_lower_tier(world, reclaim):
    kube, github, start = world
    assert kube.call("POST", "/api/v1/namespaces/team-a/resourcequotas",
                     {"metadata": {"name": "workers"}, "spec": {"hard": {"pods": "3"}}})[0] == 201
    batch = {"name": "batch", "runnerLabels": ["batch"], "maxWorkers": 10, "completedPodTTL": "0s"}
    gpu = {"name": "gpu", "runnerLabels": ["gpu"], "completedPodTTL": "0s", "priorityTiers": [
        {"priorityClassName": "tier-a", "threshold": 1, "reclaimQuota": reclaim}, {"priorityClassName": "tier-b", "threshold": 3}]}
    process, admin = start([batch, gpu])
    wait_for(lambda: len(github.control("state")["scaleSets"]) == 2, timeout=20, what="both scale sets")
    jobs = github.control("enqueue", {"scaleSet": "batch", "count": 3})["jobIds"]
    wait_for(lambda: all(pod_for(kube, job) for job in jobs), timeout=30, what="three batch pods: the quota is full")
    for job in jobs:
        run_pod(kube, pod_for(kube, job))
        github.control("start", {"jobId": job})
    state = github.control("state")["jobs"]
    # A poll advertises what was true when it was sent: let one sent after the quota filled
    # finish first, so the gpu job meets only the verdict under test.
    seen = len(scale_set_polls(github, "gpu"))
    wait_for(lambda: [c for c in scale_set_polls(github, "gpu")[seen:] if c["capacity"] == (1 if reclaim else 0)], timeout=20,
             what="a gpu poll sent with the quota full")
    floor = github.control("enqueue", {"scaleSet": "gpu"})["jobIds"][0]

    if not reclaim:
        before = len(github.control("state")["calls"])
        wait_for(lambda: len([c for c in github.control("state")["calls"][before:] if c["endpoint"] == "poll"]) >= 6, timeout=30,
                 what="a few polls of both sets")
        assert github.control("state")["jobs"][floor]["state"] == "queued", "no room advertised: GitHub keeps the job"
        assert not pod_for(kube, floor)
        assert all(not p["metadata"].get("deletionTimestamp") for p in workers(kube)), "nothing deleted"
        assert metric(admin, "agc_quota_reclaims_total", runner_group="gpu") == 0
        return

    def reclaimed():
        return [p for p in workers(kube) if p["metadata"].get("annotations", {}).get("actions-gateway.github.com/deletion-reason")
                == "quota-reclaimed"]
    wait_for(reclaimed, timeout=30, what="a batch worker reclaimed")
    (victim,) = reclaimed()
    newest = max((pod_for(kube, job) for job in jobs), key=lambda p: (p["metadata"]["creationTimestamp"], p["metadata"]["name"]))
    assert victim["metadata"]["name"] == newest["metadata"]["name"], "the newest lower-tier worker"
    assert victim["metadata"]["deletionTimestamp"], "deleted gracefully (its runner gets SIGTERM)"
    victim_job = victim["metadata"]["labels"]["actions-gateway.github.com/job-id"]
    # Its kubelet stops it; GitHub concludes its job failed.
    status(kube, victim["metadata"]["name"], "Failed", exit_code=143)
    github.control("complete", {"jobId": victim_job, "result": "failed"})
    wait_for(lambda: pod_for(kube, floor), timeout=30, what="the floor pod, once the reclaimed one is gone")
    assert pod_for(kube, floor)["spec"]["priorityClassName"] == "tier-a"
    others = [pod_for(kube, job) for job in jobs if job != victim_job]
    assert all(p and not p["metadata"].get("deletionTimestamp") for p in others), "exactly one worker reclaimed"
    assert metric(admin, "agc_quota_reclaims_total", runner_group="gpu") == 1
    run = state[victim_job]["runId"]
    wait_for(lambda: new_attempt(github, run), timeout=30, what="the reclaimed job re-run")
    wait_for(lambda: metric(admin, "agc_reruns_total", runner_group="batch", cause="quota_reclaimed", outcome="accepted") == 1,
             what="the re-run counted")
    assert retries(kube)["runs"][str(run)]["spent"] == 0, "a reclaim spends none of the run's budget"


def test_max_pods_per_node_keeps_full_nodes_out(world):
    kube, github, start = world
    start([{"name": "cpu", "runnerLabels": ["linux"], "completedPodTTL": "0s", "maxWorkers": 10, "maxPodsPerNode": 2,
            "podTemplate": {"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["ci"]}]}]}}}}}}])
    wait_for(lambda: github.control("state")["scaleSets"], timeout=20, what="scale set created")
    first = github.control("enqueue", {"scaleSet": "cpu", "count": 2})["jobIds"]
    wait_for(lambda: all(pod_for(kube, job) for job in first), timeout=30, what="two pods")
    for job in first:
        terms = pod_for(kube, job)["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        assert terms == [{"matchExpressions": [{"key": "pool", "operator": "In", "values": ["ci"]}]}], "no node is full yet"
        run_pod(kube, pod_for(kube, job), node="node-1")
    third = github.control("enqueue", {"scaleSet": "cpu"})["jobIds"][0]
    wait_for(lambda: pod_for(kube, third), timeout=30, what="the third pod")
    terms = pod_for(kube, third)["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms == [{"matchExpressions": [{"key": "pool", "operator": "In", "values": ["ci"]},
                                           {"key": "kubernetes.io/hostname", "operator": "NotIn", "values": ["node-1"]}]}]


def test_a_classic_job_that_never_started_is_cancelled_then_rerun_once_capacity_is_back(world):
    """Reference 4.5: a classic worker deleted before it started: force-cancel the run (GitHub
    would otherwise wait for the lost runner), then re-run it once a later pod of the group is
    scheduled. (Classic acquisition itself is issue 14; its pods carry acquisition=classic.)"""
    kube, github, start = world
    _, admin = start([{"name": "cpu", "runnerLabels": ["linux"], "completedPodTTL": "0s", "maxWorkers": 5}])

    def classic_pod(name, run_id):
        return {"metadata": {"name": name, "labels": {
            "actions-gateway.github.com/gateway": "gw", "actions-gateway.github.com/runner-group": "cpu",
            "actions-gateway.github.com/component": "worker", "actions-gateway.github.com/job-id": name},
            "annotations": {"actions-gateway.github.com/run-id": str(run_id), "actions-gateway.github.com/repository": "acme/widgets",
                            "actions-gateway.github.com/acquisition": "classic", "actions-gateway.github.com/tier": "0"}},
            "spec": {"containers": [{"name": "runner", "image": "runner:test"}]}}
    code, first = kube.call("POST", PODS, classic_pod("gw-cpu-classic-1", 4242))
    assert code == 201
    wait_for(lambda: any(p["metadata"]["name"] == "gw-cpu-classic-1" for p in workers(kube)), what="the pod")
    created = datetime.strptime(first["metadata"]["creationTimestamp"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()
    assert kube.call("DELETE", f"{PODS}/gw-cpu-classic-1")[0] == 200  # never bound: gone at once
    wait_for(lambda: "4242" in retries(kube)["pending"], timeout=10, what="the abandoned run pending")
    # Capacity comes back: a later pod of the group is scheduled.
    # creationTimestamps have one-second resolution: "later" is a later second.
    wait_for(lambda: time.time() >= created + 1, timeout=3, what="the next second")
    assert kube.call("POST", PODS, classic_pod("gw-cpu-classic-2", 4343))[0] == 201
    kube.call("PATCH", f"{PODS}/gw-cpu-classic-2/status", {"status": {"conditions": [{"type": "PodScheduled", "status": "True"}]}},
              content_type=MERGE)
    wait_for(lambda: reruns(github, 4242), timeout=20, what="the re-run")
    assert [c["runId"] for c in github.control("state")["force_cancels"]] == ["4242"], "cancelled first, once"
    assert [c["accepted"] for c in reruns(github, 4242)] == [True]
    assert github.control("state")["force_cancels"][0]["at"] <= reruns(github, 4242)[0]["at"]
    wait_for(lambda: metric(admin, "agc_reruns_total", runner_group="cpu", cause="abandoned", outcome="accepted") == 1,
             what="the re-run counted")
    assert not retries(kube)["pending"]


def test_guards_written_at_once_all_land_even_when_the_writes_arrive_out_of_order(world):
    """Pods reaped in quick succession each leave a guard before they go. The API server is made
    to apply the first guards write last (it is held 0.6 s); the guards ConfigMap must still end
    up naming every reaped job, or after a restart a replayed JobAssigned of a job whose guard
    was lost gets a second pod (the restart test's flake)."""
    kube, github, start = world
    _, _, jobs, _, pods = start_jobs(kube, github, start, 4)
    held_from = time.time()
    kube.call("POST", "/fake/delay-patches", {"pathContains": "-guards", "delays": [0.6]})
    for job in jobs:
        assert status(kube, pods[job]["metadata"]["name"], "Failed", reason="Evicted") == 200
    wait_for(lambda: not workers(kube), timeout=20, what="every evicted pod reaped")

    def guarded():
        status_code, guards = kube.call("GET", "/api/v1/namespaces/team-a/configmaps/gw-cpu-guards")
        return set(json.loads(guards["data"]["guards.json"]).get("reaped", {})) if status_code == 200 else set()
    # Judged once the held write has been answered (the fake's request log), so a lost guard
    # cannot hide behind a moment when the later writes had landed and the held one had not.
    wait_for(lambda: [r for r in kube.call("GET", "/fake/requests")[1]["requests"]
                      if r["method"] == "PATCH" and "-guards" in r["path"] and r["at"] >= held_from + 0.6],
             timeout=10, interval=0.1, what="the held guards write answered")
    # Without the writes chained, the held one lands last and this never holds (checked: 3 of 3 failed).
    wait_for(lambda: guarded() >= set(jobs), timeout=10, interval=0.1, what="a guard for every reaped job")

"""Blue/green (issue 18, item 5): two clusters, each with its own API server and the same
gateway, against one GitHub. The standby cluster's AGC holds no session while the active one
runs (GitHub allows one per scale set), takes over with its first session attempt after the
active one stops, and runs no job twice: the jobs still running on the active cluster's
runners get no pod in the standby (GitHub will not deregister a runner that runs a job), while
an assigned job whose runner never started is taken over. A drain (the annotation
actions-gateway.github.com/drain) hands the sessions over without stopping the active AGC, so
the classic jobs it runs, whose locks only it can renew, end as they would have. Assertions
read what the fakes saw: GitHub's call log, jobs and renewals, each cluster's pods and status."""
import signal

import pytest

from conftest import wait_for
from test_agc import (GitHubFake, annotate, apply_gateway, gateway_status, launch_agc, metric, new_cluster, pod_creates,
                      warning_events, workers)
from test_agc_classic import finish

GROUP = [{"name": "cpu", "runnerLabels": ["linux"], "completedPodTTL": "0s"}]


@pytest.fixture
def clusters(tmp_path):
    github = GitHubFake(tmp_path)
    blue, green = new_cluster(), new_cluster()
    processes = []
    yield github, blue, green, processes
    for process in processes:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=15)
    github.stop()
    blue.stop()
    green.stop()


def calls(github, endpoint):
    return [c for c in github.control("state")["calls"] if c["endpoint"] == endpoint]


def active_and_standby(clusters):
    """The scale-set gateway in both clusters, blue's AGC holding the session and green's
    refused a second one: ((process, admin) of blue, (process, admin) of green)."""
    github, blue, green, processes = clusters
    for kube in (blue, green):
        apply_gateway(kube, GROUP)
    active = launch_agc(blue, github)
    processes.append(active[0])
    wait_for(lambda: any(s.get("active", True) for s in github.control("state")["sessions"].values()), timeout=20, what="blue's session")
    standby = launch_agc(green, github)
    processes.append(standby[0])
    wait_for(lambda: [c for c in calls(github, "session_create") if c["status"] == 409], timeout=20, what="green refused a second session")
    return active, standby


def test_the_standby_takes_over_when_the_active_stops_and_no_job_runs_twice(clusters):
    github, blue, green, processes = clusters
    (active, _), (standby, standby_admin) = active_and_standby(clusters)
    assert len([c for c in calls(github, "session_create") if c["status"] == 200]) == 1, "one session for the scale set"

    # Three jobs on blue: two start on blue's runners, one is assigned but its runner never starts.
    jobs = github.control("enqueue", {"scaleSet": "cpu", "count": 3, "repository": "acme/widgets"})["jobIds"]
    wait_for(lambda: len(workers(blue)) == 3, timeout=20, what="blue's three pods")
    running, waiting = jobs[:2], jobs[2]
    for job in running:
        github.control("start", {"jobId": job})
    assert not workers(green), "the standby makes no pod while it holds no session"

    # Blue stops (its session deleted); green takes over with its next attempt.
    active.send_signal(signal.SIGTERM)
    assert active.wait(timeout=30) == 0
    deleted = max(c["at"] for c in calls(github, "session_delete"))
    wait_for(lambda: [c for c in calls(github, "session_create") if c["status"] == 200 and c["at"] > deleted], timeout=20,
             what="green's session")
    after = [c for c in calls(github, "session_create") if c["at"] > deleted]
    assert after[0]["status"] == 200, "the first attempt after blue's session went succeeds (one retry interval)"

    # Green replays blue's undeleted assignments: the waiting job is taken over, the running ones are not.
    wait_for(lambda: len(workers(green)) == 1, timeout=30, what="green's pod for the job whose runner never started")
    assert workers(green)[0]["metadata"]["labels"]["actions-gateway.github.com/job-id"] == waiting
    wait_for(lambda: metric(standby_admin, "agc_jobs_running_elsewhere_total", runner_group="cpu") == 2, timeout=30,
             what="both running jobs seen running elsewhere")
    # New work flows while blue's two jobs still run: they hold no capacity the standby needs.
    fresh = github.control("enqueue", {"scaleSet": "cpu", "count": 2, "repository": "acme/widgets"})["jobIds"]
    wait_for(lambda: {p["metadata"]["labels"]["actions-gateway.github.com/job-id"] for p in workers(green)} == {waiting, *fresh},
             timeout=30, what="pods for the jobs queued after the takeover")
    for job in running:
        github.control("complete", {"jobId": job})
    state = github.control("state")["jobs"]
    wait_for(lambda: all(github.control("state")["jobs"][j]["state"] == "completed" for j in running), timeout=10, what="completed")
    green_jobs = [p["metadata"]["labels"]["actions-gateway.github.com/job-id"] for p in workers(green)]
    assert set(green_jobs) == {waiting, *fresh}, "never a second pod for a job that ran on blue"
    assert all(state[j].get("runnerName") == f"cpu-{j}" for j in running), "each job ran on its one runner"


def test_a_classic_standby_waits_for_the_active_agents_instead_of_deleting_them(clusters):
    """Classic groups: the standby has no agent Secret, so its registration meets the active
    cluster's agents under the same names. While they are online (a live session) it waits,
    holding no session, instead of deleting them as it would a dead predecessor's."""
    github, blue, green, processes = clusters
    group = [{"name": "cpu", "runnerLabels": ["linux"], "acquisition": "classic", "minListeners": 1, "maxListeners": 1}]
    for kube in (blue, green):
        apply_gateway(kube, group)
    active, _ = launch_agc(blue, github)
    processes.append(active)

    def live():
        return [s for s in github.control("classic/state")["sessions"].values() if not s["killed"]]
    wait_for(lambda: len(live()) == 1, timeout=30, what="blue's session")
    blue_agent = live()[0]["agentId"]
    standby, _ = launch_agc(green, github)
    processes.append(standby)
    wait_for(lambda: any("held by another AGC's live session" in line for line in standby.log), timeout=30, what="green waiting")
    assert [s["agentId"] for s in live()] == [blue_agent], "blue's session untouched, green holds none"
    assert not github.control("classic/state")["agents"][str(blue_agent)]["consumed"], "blue's agent not deleted"

    active.send_signal(signal.SIGTERM)
    assert active.wait(timeout=30) == 0
    wait_for(lambda: len(live()) == 1 and live()[0]["agentId"] != blue_agent, timeout=30, what="green's own session")


def drained(kube):
    return next((c for c in gateway_status(kube).get("conditions", []) if c["type"] == "Drained"), {})


def test_a_classic_drain_hands_the_sessions_over_and_renews_its_running_job_until_it_ends(clusters):
    """Stopping the active AGC would stop the renewals of the classic jobs it runs (the other
    cluster cannot see their pods), so their locks lapse ~10 min later and they fail mid-run.
    Drained instead, it deletes its sessions at once, the standby's next attempt opens its own,
    and the running job is renewed until its pod finishes; then Drained=True. Lifting the drain
    (a rollback) makes the drained AGC wait for the other's live agent, as a standby does."""
    github, blue, green, processes = clusters
    group = [{"name": "cpu", "runnerLabels": ["linux"], "acquisition": "classic", "minListeners": 1, "maxListeners": 1,
              "completedPodTTL": "0s"}]
    for kube in (blue, green):
        apply_gateway(kube, group)
    active, active_admin = launch_agc(blue, github)
    processes.append(active)

    def live():
        return [s for s in github.control("classic/state")["sessions"].values() if not s["killed"]]

    def renewals(request):
        return [r for r in github.control("classic/state")["renewals"] if r["requestId"] == request]
    wait_for(lambda: len(live()) == 1, timeout=30, what="blue's session")
    standby, _ = launch_agc(green, github)
    processes.append(standby)
    wait_for(lambda: any("held by another AGC's live session" in line for line in standby.log), timeout=30, what="green waiting")

    first = github.control("classic/enqueue", {"repository": "acme/widgets"})["planIds"][0]
    wait_for(lambda: len(workers(blue)) == 1, timeout=30, what="blue's worker pod")
    pod = workers(blue)[0]
    plans = github.control("classic/state")["plans"]
    request = next(d["requestId"] for d in plans[first]["deliveries"].values() if d.get("acquiredBy"))
    wait_for(lambda: any(r["ok"] for r in renewals(request)), timeout=20, what="blue's first renewal")
    wait_for(lambda: len(live()) == 1, timeout=30, what="blue's session again, on its recycled agent")
    blue_agents = set(github.control("classic/state")["agents"])

    annotate(blue, "true")
    wait_for(lambda: drained(blue).get("reason") == "JobsRunning", timeout=20, what="blue draining")
    renewed_before = len(renewals(request))
    assert metric(active_admin, "agc_draining") == 1
    wait_for(lambda: live() and all(str(s["agentId"]) not in blue_agents for s in live()), timeout=30,
             what="blue's session gone and green's own open")
    assert active.poll() is None, "blue runs on"

    second = github.control("classic/enqueue", {"repository": "acme/widgets"})["planIds"][0]
    wait_for(lambda: len(workers(green)) == 1, timeout=30, what="green's pod for the job queued after the cut-over")
    assert len(pod_creates(blue)) == 1, "the draining AGC takes no job"

    # GitHub's lock would lapse without renewals: blue renews on (every 60 s) while the job runs.
    wait_for(lambda: len(renewals(request)) > renewed_before, timeout=90, what="blue renewing the running job while drained")
    assert all(r["ok"] for r in renewals(request)), "renewed with the job token, never refused"
    assert drained(blue)["status"] == "False"

    github.control("classic/run", {"requestId": request, "result": "succeeded"})
    finish(blue, pod)
    wait_for(lambda: drained(blue).get("status") == "True", timeout=30, what="Drained=True once the job ended")
    assert drained(blue)["reason"] == "NothingRunning"
    state = github.control("classic/state")["plans"]
    assert state[first]["conclusion"] == "success" and state[first]["falseGreen"] is False, state[first]
    for plan in (first, second):
        assert len([d for d in state[plan]["deliveries"].values() if d.get("acquiredBy")]) == 1, "each job acquired once"
    assert len(pod_creates(blue)) == 1 and len(pod_creates(green)) == 1, "one pod per job, each in one cluster"

    # Rollback: blue asks for sessions again and finds green's agent online under the name: it waits.
    waits = len([line for line in active.log if "held by another AGC's live session" in line])
    annotate(blue, "false")
    wait_for(lambda: len([line for line in active.log if "held by another AGC's live session" in line]) > waits, timeout=30,
             what="blue waiting for green's agent")
    wait_for(lambda: drained(blue).get("reason") == "NotRequested", timeout=20, what="Drained says no drain is asked for")
    assert all(str(s["agentId"]) not in blue_agents for s in live()), "green's session untouched"


def test_a_scale_set_drain_gives_the_session_to_the_standby_and_leaves_running_pods_alone(clusters):
    github, blue, green, processes = clusters
    (active, active_admin), _ = active_and_standby(clusters)

    jobs = github.control("enqueue", {"scaleSet": "cpu", "count": 2, "repository": "acme/widgets"})["jobIds"]
    wait_for(lambda: len(workers(blue)) == 2, timeout=20, what="blue's two pods")
    for job in jobs:
        github.control("start", {"jobId": job})
    pods = {p["metadata"]["name"] for p in workers(blue)}

    annotate(blue, "true")
    wait_for(lambda: calls(github, "session_delete"), timeout=20, what="blue's session deleted")
    deleted = max(c["at"] for c in calls(github, "session_delete"))
    wait_for(lambda: [c for c in calls(github, "session_create") if c["status"] == 200 and c["at"] > deleted], timeout=20,
             what="green's session")
    assert [c for c in calls(github, "session_create") if c["at"] > deleted][0]["status"] == 200, "within one retry interval"
    assert active.poll() is None and metric(active_admin, "agc_draining") == 1
    assert {p["metadata"]["name"] for p in workers(blue)} == pods, "running pods untouched"
    wait_for(lambda: drained(blue).get("reason") == "JobsRunning", timeout=20, what="blue draining, jobs running")

    fresh = github.control("enqueue", {"scaleSet": "cpu", "count": 1, "repository": "acme/widgets"})["jobIds"]
    wait_for(lambda: [p for p in workers(green) if p["metadata"]["labels"]["actions-gateway.github.com/job-id"] in fresh],
             timeout=30, what="green's pod for new work")
    assert len(pod_creates(blue)) == 2, "the draining AGC takes no job"
    for job in jobs:
        github.control("complete", {"jobId": job})
    for pod in workers(blue):
        finish(blue, pod)
    wait_for(lambda: drained(blue).get("status") == "True", timeout=30, what="Drained=True once blue's pods ended")
    assert {p["metadata"]["labels"]["actions-gateway.github.com/job-id"] for p in workers(green)} == set(fresh), \
        "never a second pod for a job that ran on blue"


def test_a_drain_annotation_that_means_nothing_serves_and_says_so(clusters):
    github, blue, _, processes = clusters
    apply_gateway(blue, GROUP)
    active, admin = launch_agc(blue, github)
    processes.append(active)
    wait_for(lambda: any(s.get("active", True) for s in github.control("state")["sessions"].values()), timeout=20, what="a session")
    annotate(blue, "yes")
    wait_for(lambda: drained(blue).get("reason") == "InvalidAnnotation", timeout=20, what="the condition naming the value")
    assert '"yes"' in drained(blue)["message"]
    wait_for(lambda: warning_events(blue, "DrainAnnotationInvalid"), timeout=10, what="a Warning Event")
    assert not calls(github, "session_delete") and metric(admin, "agc_draining") == 0, "still serving"

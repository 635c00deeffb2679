"""Blue/green (issue 18, item 5): two clusters, each with its own API server and the same
gateway, against one GitHub. The standby cluster's AGC holds no session while the active one
runs (GitHub allows one per scale set), takes over with its first session attempt after the
active one stops, and runs no job twice: the jobs still running on the active cluster's
runners get no pod in the standby (GitHub will not deregister a runner that runs a job), while
an assigned job whose runner never started is taken over. Assertions read what the fakes saw:
GitHub's call log and jobs, each cluster's pods."""
import signal

import pytest

from conftest import wait_for
from test_agc import GitHubFake, apply_gateway, launch_agc, metric, new_cluster, workers

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


def test_the_standby_takes_over_when_the_active_stops_and_no_job_runs_twice(clusters):
    github, blue, green, processes = clusters
    for kube in (blue, green):
        apply_gateway(kube, GROUP)
    active, _ = launch_agc(blue, github)
    processes.append(active)
    wait_for(lambda: any(s.get("active", True) for s in github.control("state")["sessions"].values()), timeout=20, what="blue's session")
    standby, standby_admin = launch_agc(green, github)
    processes.append(standby)
    wait_for(lambda: [c for c in calls(github, "session_create") if c["status"] == 409], timeout=20, what="green refused a second session")
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

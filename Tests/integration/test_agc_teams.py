"""Runner groups' `allowedTeams` end to end (issue 18, item 2): the AGC asks GitHub whether a
run's triggering actor is an active member of one of the group's teams before a worker pod is
made. A member's job gets its pod; a non-member's run is cancelled, with an audit line and a
Warning Event, and no pod; while GitHub cannot answer, a fail-closed group makes no pod.
Scale-set and classic groups alike. Assertions read what the fakes saw."""
import json
import time

from conftest import wait_for
from test_agc import metric, warning_events, workers, world  # noqa: F401  (world is the fixture)
from test_agc_classic import classic, group as classic_group, live_sessions


def teams_group(**extra):
    return {"name": "cpu", "runnerLabels": ["linux"], "completedPodTTL": "0s", "allowedTeams": ["acme/builders"], **extra}


def cancels(github):
    return [c["runId"] for c in github.control("state")["cancels"]]


def test_a_members_job_runs_and_a_non_members_run_is_cancelled_with_no_pod(world):
    kube, github, start = world
    github.control("teams", {"acme/builders": {"alice": "active", "bob": "pending"}})
    process, admin = start([teams_group()])
    wait_for(lambda: github.control("state")["scaleSets"], timeout=20, what="scale set created")

    github.control("actor", {"runId": 51, "login": "alice"})
    github.control("enqueue", {"scaleSet": "cpu", "repository": "acme/widgets", "runId": 51})
    wait_for(lambda: len(workers(kube)) == 1, timeout=20, what="the member's pod")

    github.control("actor", {"runId": 52, "login": "bob"})
    denied = github.control("enqueue", {"scaleSet": "cpu", "repository": "acme/widgets", "runId": 52})["jobIds"][0]
    wait_for(lambda: cancels(github) == ["52"], timeout=20, what="the non-member's run cancelled")
    wait_for(lambda: github.control("state")["jobs"][denied]["state"] == "completed", timeout=10, what="its job concluded")
    wait_for(lambda: warning_events(kube, "JobDenied"), timeout=10, what="a JobDenied Event")
    event = warning_events(kube, "JobDenied")[0]["message"]
    assert "bob" in event and "runner group cpu" in event and "acme/builders" in event, event
    wait_for(lambda: any("job denied by team policy" in line for line in process.log), timeout=10, what="the audit line")
    audit = json.loads(next(line for line in process.log if "job denied by team policy" in line))
    assert audit["user"] == "bob" and audit["runner_group"] == "cpu" and audit["teams"] == "acme/builders" and audit["reason"] == "not_member"
    assert audit["run_id"] == "52" and audit["run"] == "cancelled"
    assert len(workers(kube)) == 1, "no pod for the denied job"
    assert not [r for r in github.control("state")["runners"].values() if denied in r["name"]], "no runner registered for it"
    assert metric(admin, "agc_jobs_denied_total", runner_group="cpu", reason="not_member") == 1


def test_while_github_cannot_say_a_fail_closed_group_makes_no_pod_and_a_fail_open_one_does(world):
    kube, github, start = world
    github.control("teams", {"acme/builders": {"carol": "active"}})
    github.control("actor", {"runId": 61, "login": "carol"})
    github.control("actor", {"runId": 62, "login": "carol"})
    github.control("fault", {"endpoint": "team_membership", "status": 502, "count": 1000})
    _, admin = start([teams_group(), teams_group(name="gpu", runnerLabels=["gpu"], allowedTeamsOnError="allow")])
    wait_for(lambda: len(github.control("state")["scaleSets"]) == 2, timeout=20, what="both scale sets")
    closed = github.control("enqueue", {"scaleSet": "cpu", "repository": "acme/widgets", "runId": 61})["jobIds"][0]
    github.control("enqueue", {"scaleSet": "gpu", "repository": "acme/widgets", "runId": 62})
    wait_for(lambda: len(workers(kube)) == 1, timeout=20, what="the fail-open group's pod")
    assert workers(kube)[0]["metadata"]["labels"]["actions-gateway.github.com/runner-group"] == "gpu"
    wait_for(lambda: metric(admin, "agc_team_checks_unavailable_total", runner_group="cpu") >= 2, timeout=30,
             what="the fail-closed job asked again")
    assert [p for p in workers(kube) if p["metadata"]["labels"]["actions-gateway.github.com/runner-group"] == "cpu"] == []
    assert not cancels(github), "no run cancelled on a guess"
    # GitHub answers again: the held job gets its pod.
    github.control("fault", {"endpoint": "team_membership", "status": 502, "count": 0})
    wait_for(lambda: len(workers(kube)) == 2, timeout=30, what="the held job's pod once GitHub answers")
    assert github.control("state")["jobs"][closed]["state"] != "completed"


def test_a_classic_groups_non_member_is_completed_cancelled_with_no_pod(world):
    kube, github, start = world
    github.control("teams", {"acme/builders": {"alice": "active"}})
    _, admin = start([classic_group(minListeners=1, maxListeners=1, allowedTeams=["acme/builders"])])
    wait_for(lambda: len(live_sessions(github)) == 1, timeout=30, what="a virtual session")
    github.control("actor", {"runId": 71, "login": "mallory"})
    plan = github.control("classic/enqueue", {"repository": "acme/widgets", "runId": 71})["planIds"][0]
    wait_for(lambda: classic(github)["plans"][plan]["conclusion"] is not None, timeout=30, what="the denied plan concluded")
    state = classic(github)["plans"][plan]
    assert [(d["completedBy"], d["result"]) for d in state["deliveries"].values()] == [("broker", "failed")], state
    assert state["falseGreen"] is False and state["conclusion"] == "failure", "a job that never ran is never green"
    assert cancels(github) == ["71"] and not workers(kube)
    github.control("actor", {"runId": 72, "login": "alice"})
    github.control("classic/enqueue", {"repository": "acme/widgets", "runId": 72})
    wait_for(lambda: len(workers(kube)) == 1, timeout=30, what="the member's classic pod")
    assert metric(admin, "agc_jobs_denied_total", runner_group="cpu", reason="not_member") == 1

"""The fake GitHub (Tests/fakes/github_actions.py) driven with plain HTTP requests shaped as
reference/agc-protocol.md sections 1.1-1.3 and 2.2 describe, to show it keeps the semantics the
AGC's tests rely on: App JWT checks, the bootstrap chain, one session per scale set, capacity-
bounded auto-assignment, cursor replay of undeleted messages, queue-token rotation, faults."""
import base64
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

FAKE = os.path.join(os.path.dirname(__file__), "..", "fakes", "github_actions.py")


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def app_jwt(key, app_id, iat_offset=-60, ttl=600):
    now = int(time.time())
    header = b64url(json.dumps({"alg": "RS256", "typ": "JWT"}).encode())
    claims = b64url(json.dumps({"iat": now + iat_offset, "exp": now + iat_offset + ttl, "iss": app_id,
                                "jti": str(uuid.uuid4())}).encode())
    signature = key.sign(f"{header}.{claims}".encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{header}.{claims}.{b64url(signature)}"


class Fake:
    def __init__(self, tmp_path, hold=0.3, extra=()):
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public = tmp_path / "app.pub"
        public.write_bytes(self.key.public_key().public_bytes(serialization.Encoding.PEM,
                                                              serialization.PublicFormat.SubjectPublicKeyInfo))
        self.process = subprocess.Popen([sys.executable, FAKE, "--public-key", str(public), "--app-id", "42", "--hold", str(hold),
                                         *extra], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.base = f"http://127.0.0.1:{json.loads(self.process.stdout.readline())['port']}"

    def call(self, method, path, body=None, headers=None, raw_url=None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(raw_url or self.base + path, data=data, method=method, headers=headers or {})
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                text = response.read()
                return response.status, (json.loads(text) if text else None), response.headers
        except urllib.error.HTTPError as error:
            text = error.read()
            return error.code, (json.loads(text) if text else None), error.headers

    def control(self, name, body=None):
        status, payload, _ = self.call("POST" if body is not None else "GET", "/control/" + name, body)
        assert status == 200, payload
        return payload

    def close(self):
        self.process.stdin.close()
        self.process.wait(timeout=10)


@pytest.fixture
def fake(tmp_path):
    server = Fake(tmp_path)
    yield server
    server.close()


def bootstrap(fake):
    """Installation token -> registration token -> admin token and service URL."""
    status, token, _ = fake.call("POST", "/api/v3/app/installations/7/access_tokens",
                                 headers={"Authorization": "Bearer " + app_jwt(fake.key, "42")})
    assert status == 201
    status, registration, _ = fake.call("POST", "/api/v3/orgs/acme/actions/runners/registration-token",
                                        headers={"Authorization": "Bearer " + token["token"]})
    assert status == 201
    status, admin, _ = fake.call("POST", "/api/v3/actions/runner-registration",
                                 {"url": "https://github.example/acme", "runner_event": "register"},
                                 headers={"Authorization": "RemoteAuth " + registration["token"]})
    assert status == 200
    return token["token"], admin


def service(fake, admin, method, path, body=None, version=True):
    url = admin["url"] + path + ("?" if "?" not in path else "&") + "api-version=6.0-preview" if version else admin["url"] + path
    return fake.call(method, "", body, {"Authorization": "Bearer " + admin["token"]}, raw_url=url)


def test_app_jwt_checks_and_bootstrap_chain(fake):
    for bad in (app_jwt(fake.key, "41"), app_jwt(fake.key, "42", iat_offset=60), app_jwt(fake.key, "42", ttl=900), "x.y.z"):
        status, body, _ = fake.call("POST", "/api/v3/app/installations/7/access_tokens", headers={"Authorization": "Bearer " + bad})
        assert status == 401, body
    status, _, _ = fake.call("POST", "/api/v3/orgs/acme/actions/runners/registration-token", headers={"Authorization": "Bearer nope"})
    assert status == 401
    status, _, _ = fake.call("POST", "/api/v3/actions/runner-registration", {"url": "u", "runner_event": "register"},
                             headers={"Authorization": "RemoteAuth nope"})
    assert status == 401
    _, admin = bootstrap(fake)
    header, claims, _ = admin["token"].split(".")
    assert json.loads(base64.urlsafe_b64decode(header + "==="))["alg"] == "none"
    assert json.loads(base64.urlsafe_b64decode(claims + "==="))["exp"] > time.time()
    assert service(fake, admin, "GET", "/_apis/runtime/runnergroups/?groupName=Default", version=False)[0] == 400
    status, groups, _ = service(fake, admin, "GET", "/_apis/runtime/runnergroups/?groupName=Default")
    assert status == 200 and groups == {"count": 1, "value": [{"id": 1, "name": "Default"}]}
    assert service(fake, admin, "GET", "/_apis/runtime/runnergroups/?groupName=nope")[1]["count"] == 0
    fake.control("admin-ttl", {"seconds": 0})
    _, expired = bootstrap(fake)
    assert service(fake, expired, "GET", "/_apis/runtime/runnergroups/?groupName=Default")[0] == 401


def test_one_session_per_set_capacity_bounded_assignment_and_replay(fake):
    _, admin = bootstrap(fake)
    status, created, _ = service(fake, admin, "POST", "/_apis/runtime/runnerscalesets", {
        "name": "cpu", "runnerGroupId": 1, "labels": [{"name": "cpu", "type": "System"}, {"name": "linux", "type": "System"}],
        "runnerSetting": {"ephemeral": True}})
    assert status == 200 and [label["name"] for label in created["labels"]] == ["cpu", "linux"]
    listed = service(fake, admin, "GET", "/_apis/runtime/runnerscalesets?name=cpu")[1]
    assert listed["count"] == 1 and listed["value"][0]["id"] == created["id"]
    sessions = f"/_apis/runtime/runnerscalesets/{created['id']}/sessions"
    status, session, _ = service(fake, admin, "POST", sessions, {"ownerName": "ns/g"})
    assert status == 200 and session["messageQueueAccessToken"]
    assert service(fake, admin, "POST", sessions, {"ownerName": "ns/g"})[0] == 409

    jobs = fake.control("enqueue", {"scaleSet": "cpu", "count": 3})["jobIds"]

    def poll(cursor, capacity, token=None):
        return fake.call("GET", "", headers={"Authorization": "Bearer " + (token or session["messageQueueAccessToken"]),
                                             "X-ScaleSetMaxCapacity": str(capacity)},
                         raw_url=f"{session['messageQueueUrl']}?lastMessageId={cursor}")

    assert poll(0, 0)[0] == 202, "capacity 0: nothing is assigned"
    status, message, _ = poll(0, 2)
    assert status == 200 and message["messageType"] == "RunnerScaleSetJobMessages"
    assigned = json.loads(message["body"])
    assert [m["messageType"] for m in assigned] == ["JobAssigned", "JobAssigned"]
    assert [m["jobId"] for m in assigned] == jobs[:2] and assigned[0]["runnerRequestId"] == 0
    assert assigned[0]["ownerName"] == "acme" and assigned[0]["repositoryName"] == "widgets" and assigned[0]["workflowRunId"] > 0
    assert message["statistics"]["totalAssignedJobs"] == 2 and message["statistics"]["totalAvailableJobs"] == 1
    assert poll(message["messageId"], 2)[0] == 202, "assigned jobs count against the capacity until they complete"

    status, jit, _ = service(fake, admin, "POST", f"/_apis/runtime/runnerscalesets/{created['id']}/generatejitconfig",
                             {"name": f"cpu-{jobs[0]}", "workFolder": "_work"})
    assert status == 200 and jit["runner"]["name"] == f"cpu-{jobs[0]}"
    files = json.loads(base64.b64decode(jit["encodedJITConfig"]))
    assert set(files) == {".runner", ".credentials", ".credentials_rsaparams"}
    assert service(fake, admin, "POST", f"/_apis/runtime/runnerscalesets/{created['id']}/generatejitconfig",
                   {"name": f"cpu-{jobs[0]}"})[0] == 409

    fake.control("start", {"jobId": jobs[0], "runnerName": "cpu-other"})
    fake.control("complete", {"jobId": jobs[0], "result": "succeeded"})
    status, started, _ = poll(message["messageId"], 2)
    assert json.loads(started["body"])[0]["messageType"] == "JobStarted"
    assert json.loads(started["body"])[0]["runnerName"] == "cpu-other"
    status, completed, _ = poll(started["messageId"], 2)
    assert json.loads(completed["body"])[0] == {**json.loads(completed["body"])[0], "messageType": "JobCompleted", "result": "succeeded"}
    status, third, _ = poll(completed["messageId"], 2)
    assert [m["jobId"] for m in json.loads(third["body"])] == [jobs[2]], "a completed job frees its slot"

    # Deleting acks; a new session replays every undeleted message from cursor 0.
    queue = session["messageQueueUrl"]
    delete = lambda mid, token: fake.call("DELETE", "", headers={"Authorization": "Bearer " + token}, raw_url=f"{queue}/{mid}")[0]
    assert delete(message["messageId"], session["messageQueueAccessToken"]) == 204
    assert delete(message["messageId"], session["messageQueueAccessToken"]) == 404
    assert service(fake, admin, "DELETE", f"{sessions}/{session['sessionId']}")[0] == 204
    status, session, _ = service(fake, admin, "POST", sessions, {"ownerName": "ns/g"})
    assert status == 200
    replayed = poll(0, 2)[1]
    assert replayed["messageId"] == started["messageId"], "the log belongs to the scale set"

    # PATCH rotates the queue token; the old one stops working.
    old = session["messageQueueAccessToken"]
    status, refreshed, _ = service(fake, admin, "PATCH", f"{sessions}/{session['sessionId']}")
    assert status == 200 and refreshed["sessionId"] == session["sessionId"] and refreshed["messageQueueAccessToken"] != old
    assert poll(0, 2, token=old)[0] == 401
    assert poll(0, 2, token=refreshed["messageQueueAccessToken"])[0] == 200

    # Faults and a dropped session.
    fake.control("fault", {"endpoint": "poll", "status": 429, "count": 1, "retryAfter": 1})
    status, _, headers = poll(0, 2, token=refreshed["messageQueueAccessToken"])
    assert status == 429 and headers["Retry-After"] == "1"
    fake.control("drop-session", {"scaleSet": "cpu"})
    assert poll(0, 2, token=refreshed["messageQueueAccessToken"])[0] == 404

    calls = fake.control("state")["calls"]
    polls = [c for c in calls if c["endpoint"] == "poll"]
    assert polls and all("capacity" in c for c in polls)
    assert max(c["capacity"] for c in polls) == 2


def test_extra_labels_dropped_like_old_ghes_and_runs(fake):
    token, admin = bootstrap(fake)
    fake.control("drop-extra-labels", {"enabled": True})
    _, created, _ = service(fake, admin, "POST", "/_apis/runtime/runnerscalesets", {
        "name": "gpu", "runnerGroupId": 1, "labels": [{"name": "gpu", "type": "System"}, {"name": "a100", "type": "System"}]})
    assert [label["name"] for label in created["labels"]] == ["gpu"]
    fake.control("runstate", {"runId": 5, "status": "in_progress", "conclusion": None})
    auth = {"Authorization": "token " + token}
    assert fake.call("POST", "/api/v3/repos/acme/widgets/actions/runs/5/rerun-failed-jobs", {}, auth)[0] == 403
    assert fake.call("POST", "/api/v3/repos/acme/widgets/actions/runs/5/force-cancel", None, auth)[0] == 202
    assert fake.call("GET", "/api/v3/repos/acme/widgets/actions/runs/5", None, auth)[1]["conclusion"] == "cancelled"
    assert fake.call("POST", "/api/v3/repos/acme/widgets/actions/runs/5/rerun-failed-jobs", {}, auth)[0] == 201
    assert [r["accepted"] for r in fake.control("state")["reruns"]] == [False, True]
    assert fake.call("GET", "/nowhere")[2]["X-Fakegithub-Unserved"] == "1"


def test_jit_name_conflicts_and_runner_lookup_and_deregistration(fake):
    token, admin = bootstrap(fake)
    _, created, _ = service(fake, admin, "POST", "/_apis/runtime/runnerscalesets", {
        "name": "cpu", "runnerGroupId": 1, "labels": [{"name": "cpu", "type": "System"}], "runnerSetting": {"ephemeral": True}})
    stale = fake.control("runner", {"scaleSet": "cpu", "name": "cpu-job1"})
    jit = f"/_apis/runtime/runnerscalesets/{created['id']}/generatejitconfig"
    assert service(fake, admin, "POST", jit, {"name": "cpu-job1", "workFolder": "_work"})[0] == 409, "a registered name conflicts"
    fake.control("runner", {"scaleSet": "cpu", "name": "cpu-job10"})
    auth = {"Authorization": "Bearer " + token}
    assert fake.call("GET", "/api/v3/orgs/acme/actions/runners?name=cpu-job1", headers={"Authorization": "Bearer nope"})[0] == 401
    status, found, _ = fake.call("GET", "/api/v3/orgs/acme/actions/runners?name=cpu-job1", headers=auth)
    assert status == 200 and sorted(r["name"] for r in found["runners"]) == ["cpu-job1", "cpu-job10"], "not an exact match"
    assert found["total_count"] == 2
    assert fake.call("DELETE", f"/api/v3/orgs/acme/actions/runners/{stale['id']}", headers=auth)[0] == 204
    assert fake.call("DELETE", f"/api/v3/orgs/acme/actions/runners/{stale['id']}", headers=auth)[0] == 404
    status, config, _ = service(fake, admin, "POST", jit, {"name": "cpu-job1", "workFolder": "_work"})
    assert status == 200 and config["runner"]["name"] == "cpu-job1", "the name is free again"

    chosen = str(uuid.uuid4())
    assert fake.control("enqueue", {"scaleSet": "cpu", "jobIds": [chosen]})["jobIds"] == [chosen]
    assert fake.control("state")["jobs"][chosen]["state"] == "queued"


def test_runs_follow_their_jobs_and_a_rerun_queues_new_attempts(fake):
    """Reference 2.3: a run is 'already running' (403) until its jobs conclude; a re-run of a
    failed run queues a new attempt of each failed job (new jobId, same runId); a refusal
    window set by the control API answers 403 first; nothing failed: refused."""
    token, admin = bootstrap(fake)
    created = service(fake, admin, "POST", "/_apis/runtime/runnerscalesets", {
        "name": "cpu", "runnerGroupId": 1, "labels": [{"name": "cpu", "type": "System"}]})[1]
    session = service(fake, admin, "POST", f"/_apis/runtime/runnerscalesets/{created['id']}/sessions", {"ownerName": "ns/g"})[1]
    first, second = fake.control("enqueue", {"scaleSet": "cpu", "count": 2, "runId": 77})["jobIds"]
    status, _, _ = fake.call("GET", "", headers={"Authorization": "Bearer " + session["messageQueueAccessToken"],
                                                 "X-ScaleSetMaxCapacity": "5"},
                             raw_url=f"{session['messageQueueUrl']}?lastMessageId=0")
    assert status == 200
    auth = {"Authorization": "token " + token}
    run = "/api/v3/repos/acme/widgets/actions/runs/77"
    assert fake.call("GET", run, None, auth)[1]["status"] == "in_progress"
    assert fake.call("POST", run + "/rerun-failed-jobs", {}, auth)[0] == 403
    fake.control("start", {"jobId": first})
    fake.control("complete", {"jobId": first, "result": "failed"})
    fake.control("complete", {"jobId": second, "result": "succeeded"})
    got = fake.call("GET", run, None, auth)[1]
    assert {k: got[k] for k in ("id", "status", "conclusion")} == {"id": 77, "status": "completed", "conclusion": "failure"}
    fake.control("rerun-refusals", {"runId": 77, "count": 2})
    assert [fake.call("POST", run + "/rerun-failed-jobs", {}, auth)[0] for _ in range(3)] == [403, 403, 201]
    reruns = fake.control("state")["reruns"]
    assert [r["accepted"] for r in reruns] == [False, False, False, True]
    (attempt,) = reruns[-1]["newJobIds"]
    jobs = fake.control("state")["jobs"]
    assert jobs[attempt]["runId"] == 77 and jobs[attempt]["state"] == "queued" and jobs[attempt]["rerunOf"] == first
    assert fake.call("GET", run, None, auth)[1]["status"] == "in_progress", "the new attempt runs"
    status, _, _ = fake.call("GET", "", headers={"Authorization": "Bearer " + session["messageQueueAccessToken"],
                                                 "X-ScaleSetMaxCapacity": "5"},
                             raw_url=f"{session['messageQueueUrl']}?lastMessageId=1")
    assert status == 200, "the new attempt is assigned like any queued job"
    fake.control("complete", {"jobId": attempt, "result": "succeeded"})
    assert fake.call("GET", run, None, auth)[1]["conclusion"] == "success"
    assert fake.call("POST", run + "/rerun-failed-jobs", {}, auth)[0] == 422, "nothing failed: nothing to re-run"


def test_team_memberships_run_actors_and_cancel_with_its_job_completed(fake):
    token, admin = bootstrap(fake)
    auth = {"Authorization": "token " + token}
    fake.control("teams", {"Acme/Builders": {"Alice": "active", "carol": "pending"}})
    member = "/api/v3/orgs/acme/teams/builders/memberships/"
    status, body, _ = fake.call("GET", member + "alice", None, auth)
    assert status == 200 and body["state"] == "active", "teams and logins compare without case"
    assert fake.call("GET", member + "carol", None, auth)[1]["state"] == "pending"
    assert fake.call("GET", member + "bob", None, auth)[0] == 404
    assert fake.call("GET", "/api/v3/orgs/acme/teams/other/memberships/alice", None, auth)[0] == 404
    assert fake.call("GET", member + "alice")[0] == 401, "no token"
    fake.control("fault", {"endpoint": "team_membership", "status": 502, "count": 1})
    assert fake.call("GET", member + "alice", None, auth)[0] == 502

    # A run's actor, and a cancel that ends its assigned job with a JobCompleted on the queue.
    _, created, _ = service(fake, admin, "POST", "/_apis/runtime/runnerscalesets", {
        "name": "cpu", "runnerGroupId": 1, "labels": [{"name": "cpu", "type": "System"}], "runnerSetting": {"ephemeral": True}})
    _, session, _ = service(fake, admin, "POST", f"/_apis/runtime/runnerscalesets/{created['id']}/sessions", {"ownerName": "ns/g"})
    job = fake.control("enqueue", {"scaleSet": "cpu", "runId": 31})["jobIds"][0]
    fake.control("actor", {"runId": 31, "login": "mallory"})
    run = fake.call("GET", "/api/v3/repos/acme/widgets/actions/runs/31", None, auth)[1]
    assert run["triggering_actor"]["login"] == "mallory" and run["actor"]["login"] == "mallory"
    assert fake.call("GET", "/api/v3/repos/acme/widgets/actions/runs/32", None, auth)[1]["triggering_actor"]["login"] == "octocat"

    def poll(cursor):
        return fake.call("GET", "", headers={"Authorization": "Bearer " + session["messageQueueAccessToken"], "X-ScaleSetMaxCapacity": "1"},
                         raw_url=f"{session['messageQueueUrl']}?lastMessageId={cursor}")

    status, message, _ = poll(0)
    assert status == 200 and json.loads(message["body"])[0]["messageType"] == "JobAssigned"
    assert fake.call("POST", "/api/v3/repos/acme/widgets/actions/runs/31/cancel", None, auth)[0] == 202
    status, message, _ = poll(message["messageId"])
    completed = json.loads(message["body"])[0]
    assert completed["messageType"] == "JobCompleted" and completed["jobId"] == job and completed["result"] == "canceled"
    assert fake.call("POST", "/api/v3/repos/acme/widgets/actions/runs/31/cancel", None, auth)[0] == 409, "already completed"
    assert [c["runId"] for c in fake.control("state")["cancels"]] == ["31"]


def test_a_runner_running_a_job_cannot_be_deleted(fake):
    token, admin = bootstrap(fake)
    _, created, _ = service(fake, admin, "POST", "/_apis/runtime/runnerscalesets", {
        "name": "cpu", "runnerGroupId": 1, "labels": [{"name": "cpu", "type": "System"}], "runnerSetting": {"ephemeral": True}})
    _, session, _ = service(fake, admin, "POST", f"/_apis/runtime/runnerscalesets/{created['id']}/sessions", {"ownerName": "ns/g"})
    job = fake.control("enqueue", {"scaleSet": "cpu"})["jobIds"][0]
    runner = fake.control("runner", {"scaleSet": "cpu", "name": f"cpu-{job}"})
    status, _, _ = fake.call("GET", "", headers={"Authorization": "Bearer " + session["messageQueueAccessToken"], "X-ScaleSetMaxCapacity": "1"},
                             raw_url=f"{session['messageQueueUrl']}?lastMessageId=0")
    assert status == 200, "assigned"
    auth = {"Authorization": "Bearer " + token}
    listed = fake.call("GET", f"/api/v3/orgs/acme/actions/runners?name=cpu-{job}", headers=auth)[1]["runners"][0]
    assert listed["status"] == "offline" and listed["busy"] is False
    fake.control("start", {"jobId": job})
    listed = fake.call("GET", f"/api/v3/orgs/acme/actions/runners?name=cpu-{job}", headers=auth)[1]["runners"][0]
    assert listed["status"] == "online" and listed["busy"] is True, "a runner running a job is online and busy"
    status, body, _ = fake.call("DELETE", f"/api/v3/orgs/acme/actions/runners/{runner['id']}", headers=auth)
    assert status == 422 and "still running a job" in body["message"]
    fake.control("complete", {"jobId": job})
    assert fake.call("DELETE", f"/api/v3/orgs/acme/actions/runners/{runner['id']}", headers=auth)[0] == 204

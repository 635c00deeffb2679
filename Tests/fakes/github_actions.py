#!/usr/bin/env python3
"""A fake of the GitHub side an AGC talks to (loopback, plain HTTP), written from
reference/agc-protocol.md sections 1.1-1.3, 2.2, 2.3 and 8 and spec/agc.md section 8, never from
the Swift code.

It plays GHES-shaped URLs, so the AGC's API base is http://127.0.0.1:PORT/api/v3:
  POST /api/v3/app/installations/{id}/access_tokens       App JWT checked (RS256, iss, iat, exp) -> 201
  POST /api/v3/orgs/{org}/actions/runners/registration-token   installation token -> 201 {token}
  POST /api/v3/actions/runner-registration                 RemoteAuth <registration token> -> 200 {url, token}
  the scale-set service under /actions/_apis/runtime/...   admin JWT (alg none, short exp) + api-version=6.0-preview
  the message queue under /queue/{scaleSetId}/message      queue token; X-ScaleSetMaxCapacity; cursor; DELETE
  GET  /api/v3/{orgs/{org}|repos/{o}/{r}}/actions/runners?name=<n>   {total_count, runners} (a substring
                                                           filter, as GitHub's: callers compare names); status
                                                           online while a classic agent's session lives or a
                                                           runner runs a job, busy while it runs one
  DELETE /api/v3/{orgs/{org}|repos/{o}/{r}}/actions/runners/{id}      204, 404 unknown, 422 while the runner
                                                           runs a job (a started job names it), as GitHub refuses
  GET  /api/v3/repos/{o}/{r}/actions/runs/{id}             {status, conclusion, actor, triggering_actor}
  POST /api/v3/repos/{o}/{r}/actions/runs/{id}/rerun-failed-jobs | force-cancel | cancel
  GET  /api/v3/orgs/{org}/teams/{slug}/memberships/{user}   installation token -> 200 {state, role}, 404 not a member

cancel (GitHub's plain cancel): 202; 409 once the run completed. Its unfinished jobs end
cancelled; an assigned one gets a JobCompleted (result canceled) on its scale set's queue, as
GitHub sends one about 0.2 s after a cancel.

Runs: a run's state follows its jobs unless /control/runstate fixed it: completed once every job
of the run completed (conclusion failure if any did not succeed, cancelled if one was cancelled),
else in_progress; a run with no job known is completed/failure. rerun-failed-jobs on a completed
run queues a new attempt (new jobId, same runId) of every job of the run that did not succeed,
as GitHub does; with none to re-run it refuses (422). A rerun is 403 "already running" while the run is not completed.

GitHub's assignment model: queued jobs are auto-assigned while the set's assigned jobs (which
include running ones) stay at or below the capacity the poll advertises; each assignment is a
JobAssigned message in the set's log. The log belongs to the scale set: a new session polling
from cursor 0 replays every undeleted message.

Control API (same port, under /control/, no auth):
  POST /control/enqueue        {"scaleSet", "count"?, "jobIds"?, "repository"?, "runId"?} -> {"jobIds": [...]}
  POST /control/runner         {"scaleSet", "name"}      a registered runner nobody runs (a stale JIT registration)
  POST /control/start          {"jobId", "runnerName"?}  JobStarted (runnerName defaults to the
                               JIT runner named <set>-<jobId>, else any registered runner)
  POST /control/complete       {"jobId", "result"?}      JobCompleted; the job stops counting as assigned
  POST /control/fault          {"endpoint", "status", "count"?, "retryAfter"?}  the next calls answer status
  POST /control/drop-session   {"scaleSet"}              the session vanishes (polls get 404)
  POST /control/expire-queue-tokens                      every queue token stops working (polls get 401)
  POST /control/admin-ttl      {"seconds"}               lifetime of admin JWTs minted from now on
  POST /control/runstate       {"runId", "status", "conclusion"}   fixes a run's state (else it follows its jobs)
  POST /control/groups         {name: id}   runner groups the organisation has besides Default (id 1)
  POST /control/rerun-refusals {"runId", "count"}       the next `count` re-runs of the run get 403 "already running"
  POST /control/drop-extra-labels {"enabled"}            GHES < 3.21: scale sets keep only their first label
  POST /control/teams          {"org/slug": {"login": "active" | "pending"}}   replaces the organisation's teams
  POST /control/actor          {"runId", "login"}       who triggered the run (default "octocat")
  GET  /control/state          jobs, messages, sessions, runners, scale sets, calls (every request seen)
The classic per-runner broker (generate-jitconfig, /token, /broker/..., /runservice/...) and its
/control/classic/ levers: see github_classic.py.
Prints {"port": N}; serves until stdin closes.
"""
import argparse
import base64
import json
import socket
import sys
import threading
import time
import urllib.parse
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

import github_classic as classic

lock = threading.Condition()
S = {
    "installation_tokens": {},  # token -> expiry epoch
    "registration_tokens": set(),
    "admin_tokens": {},  # token -> expiry epoch
    "admin_ttl": 3600,
    "groups": {"Default": 1},
    "scale_sets": {},  # id -> {id, name, runnerGroupId, labels}
    "sessions": {},  # scale set id -> {sessionId, token, ownerName}
    "runners": {},  # name -> {id, name, scaleSetId}
    "jobs": {},  # jobId -> {..., state: queued|assigned|started|completed}
    "queue_order": [],  # jobIds waiting for assignment, FIFO
    "messages": {},  # scale set id -> [ {messageId, jobs:[...], deleted} ]
    "next_message": 1,
    "next_id": 1,
    "faults": {},  # endpoint -> [status, remaining, retryAfter]
    "calls": [],
    "ratelimit_remaining": 5000,
    "runs": {},  # runId -> {status, conclusion}
    "reruns": [],
    "rerun_refusals": {},  # runId -> how many more reruns answer 403 "already running"
    "force_cancels": [],
    "cancels": [],
    "teams": {},  # "org/slug" (lowercase) -> {login (lowercase): state}
    "actors": {},  # runId (str) -> login
    "drop_extra_labels": False,
}


classic.lock = lock
classic.RUNNERS = S["runners"]


def now():
    return time.time()


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def next_id():
    S["next_id"] += 1
    return S["next_id"]


def stamp(epoch):
    return datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def precise(epoch):
    """GitHub's message timestamps carry fractions of a second."""
    return datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def statistics(set_id):
    jobs = [j for j in S["jobs"].values() if j["scaleSetId"] == set_id]
    return {
        "totalAvailableJobs": sum(1 for j in jobs if j["state"] == "queued"),
        "totalAcquiredJobs": sum(1 for j in jobs if j["state"] in ("assigned", "started")),
        "totalAssignedJobs": sum(1 for j in jobs if j["state"] in ("assigned", "started")),
        "totalRunningJobs": sum(1 for j in jobs if j["state"] == "started"),
        "totalRegisteredRunners": sum(1 for r in S["runners"].values() if r["scaleSetId"] == set_id),
        "totalBusyRunners": sum(1 for j in jobs if j["state"] == "started"),
        "totalIdleRunners": 0,
    }


def job_message(job, message_type, **extra):
    body = {
        "messageType": message_type,
        "runnerRequestId": 0,
        "jobId": job["jobId"],
        "ownerName": job["repository"].split("/")[0],
        "repositoryName": job["repository"].split("/")[1],
        "workflowRunId": job["runId"],
        "jobDisplayName": job["jobDisplayName"],
        "jobWorkflowRef": job["workflowRef"],
        # GitHub leaves queueTime at the zero time in practice; the others are set as the job moves.
        "queueTime": "0001-01-01T00:00:00Z",
        "scaleSetAssignTime": precise(job["assignedAt"]) if job.get("assignedAt") else "0001-01-01T00:00:00Z",
        "runnerAssignTime": precise(job["startedAt"]) if job.get("startedAt") else "0001-01-01T00:00:00Z",
        "finishTime": precise(job["finishedAt"]) if job.get("finishedAt") else "0001-01-01T00:00:00Z",
    }
    body.update(extra)
    return body


def run_state(run_id):
    """A run's {status, conclusion}: what /control/runstate fixed, else what its jobs say."""
    if run_id in S["runs"]:
        return S["runs"][run_id]
    jobs = [j for j in S["jobs"].values() if str(j["runId"]) == run_id]
    if not jobs:
        return {"status": "completed", "conclusion": "failure"}
    latest = [j for j in jobs if not j.get("rerunDone")]  # a re-run attempt stands for the job it re-runs
    if any(j["state"] != "completed" for j in latest):
        return {"status": "in_progress", "conclusion": None}
    results = {j.get("result") for j in latest}
    conclusion = "cancelled" if results & {"canceled", "cancelled"} else "success" if results == {"succeeded"} else "failure"
    return {"status": "completed", "conclusion": conclusion}


def runner_online(runner):
    """Online while an agent's session lives (classic), or while it runs a job (scale set)."""
    if runner.get("classic"):
        return any(s["agentId"] == runner["id"] and not s["killed"] for s in classic.C["sessions"].values())
    return any(j.get("runnerName") == runner["name"] and j["state"] == "started" for j in S["jobs"].values())


def append_message(set_id, jobs):
    S["messages"].setdefault(set_id, []).append({"messageId": S["next_message"], "jobs": jobs, "deleted": False})
    S["next_message"] += 1
    lock.notify_all()


def assign(set_id, capacity):
    """GitHub's auto-assignment: keep the set's assigned (and running) jobs <= capacity."""
    assigned = statistics(set_id)["totalAssignedJobs"]
    batch = []
    for job_id in list(S["queue_order"]):
        job = S["jobs"][job_id]
        if job["scaleSetId"] != set_id:
            continue
        if assigned >= capacity:
            break
        job["state"], job["assignedAt"] = "assigned", now()
        S["queue_order"].remove(job_id)
        assigned += 1
        batch.append(job_message(job, "JobAssigned"))
    if batch:
        append_message(set_id, batch)


def jit_blob(name, runner_id):
    files = {
        ".runner": {"agentId": runner_id, "agentName": name, "serverUrl": BASE + "/actions", "serverUrlV2": BASE + "/broker",
                    "useV2Flow": True, "poolId": 1},
        ".credentials": {"scheme": "OAuth", "data": {"clientId": f"jit-client-{runner_id}", "authorizationUrl": BASE + "/token"}},
        ".credentials_rsaparams": {"modulus": "AQAB", "exponent": "AQAB", "d": "AQ==", "p": "AQ==", "q": "AQ==", "dp": "AQ==",
                                   "dq": "AQ==", "inverseQ": "AQ=="},
    }
    encoded = {key: base64.b64encode(json.dumps(value).encode()).decode() for key, value in files.items()}
    return base64.b64encode(json.dumps(encoded).encode()).decode()


class Handler(classic.ClassicRoutes, BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        # Headers and body go out as separate writes: without this, Nagle plus the client's
        # delayed ACK add 40 ms to every answer on a kept-alive connection (GitHub has no such stall).
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, *args):
        pass

    def reply(self, code, payload=None, headers=()):
        body = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(code)
        if payload is not None:
            self.send_header("Content-Type", "application/json")
        for name, value in headers:
            self.send_header(name, value)
        if self.url.path.startswith("/api/v3/"):  # GitHub's REST API counts every call against the hour's budget
            with lock:
                S["ratelimit_remaining"] = max(0, S["ratelimit_remaining"] - 1)
                self.send_header("X-RateLimit-Remaining", str(S["ratelimit_remaining"]))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.status = code

    def record(self, endpoint):
        call = {"method": self.command, "path": self.url.path, "endpoint": endpoint, "status": self.status, "at": now()}
        capacity = self.headers.get("X-ScaleSetMaxCapacity")
        if capacity is not None:
            call["capacity"] = int(capacity)
        if self.command == "GET" and endpoint == "poll":
            call["cursor"] = self.query.get("lastMessageId")
        with lock:
            S["calls"].append(call)

    def fault(self, endpoint):
        with lock:
            entry = S["faults"].get(endpoint)
            if not entry or entry[1] <= 0:
                return False
            entry[1] -= 1
            status, retry_after = entry[0], entry[2]
        headers = [("Retry-After", str(retry_after))] if retry_after is not None else []
        self.reply(status, {"message": f"injected {status}"}, headers)
        return True

    def body(self):
        length = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(length) if length else b""
        self.raw = raw
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return "invalid"

    def handle_any(self):
        self.url = urllib.parse.urlparse(self.path)
        self.query = dict(urllib.parse.parse_qsl(self.url.query))
        self.status = 0
        payload = self.body()
        parts = [urllib.parse.unquote(p) for p in self.url.path.strip("/").split("/")]
        if parts and parts[0] == "control":
            return self.control(parts[1:], payload)
        endpoint, handler = self.route(parts)
        if handler is None:
            self.reply(404, {"message": "Not Found"}, [("X-Fakegithub-Unserved", "1")])
        elif not self.fault(endpoint):
            handler(parts, payload)
        self.record(endpoint)

    do_GET = do_POST = do_PATCH = do_DELETE = handle_any

    # MARK: routing

    def route(self, parts):
        method = self.command
        endpoint, handler = self.classic_route(parts)
        if handler is not None:
            return endpoint, handler
        if parts[:3] == ["api", "v3", "app"] and len(parts) == 6 and parts[3] == "installations" and method == "POST":
            return "access_tokens", self.access_token
        if parts[:2] == ["api", "v3"] and parts[-2:] == ["runners", "registration-token"] and method == "POST":
            return "registration_token", self.registration_token
        if parts[:2] == ["api", "v3"] and "actions" in parts and parts[parts.index("actions") + 1:][:1] == ["runners"]:
            rest = parts[parts.index("actions") + 2:]
            if rest == [] and method == "GET":
                return "runners_list", self.list_runners
            if rest == ["generate-jitconfig"] and method == "POST":
                return "generate_jitconfig", lambda p, body: self.generate_jitconfig(p, body, S["runners"], next_id, S["groups"])
            if len(rest) == 1 and rest[0].isdigit() and method == "DELETE":
                return "runner_delete", self.delete_runner
        if parts[:3] == ["api", "v3", "orgs"] and parts[4:] == ["actions", "runner-groups"] and method == "GET":
            return "list_runner_groups", self.list_runner_groups
        if parts == ["api", "v3", "actions", "runner-registration"] and method == "POST":
            return "runner_registration", self.runner_registration
        if parts[:3] == ["api", "v3", "repos"] and len(parts) >= 8 and parts[5:7] == ["actions", "runs"]:
            if len(parts) == 8 and method == "GET":
                return "run", self.run_status
            if len(parts) == 9 and parts[8] == "rerun-failed-jobs" and method == "POST":
                return "rerun", self.rerun
            if len(parts) == 9 and parts[8] == "force-cancel" and method == "POST":
                return "force_cancel", self.force_cancel
            if len(parts) == 9 and parts[8] == "cancel" and method == "POST":
                return "run_cancel", self.cancel
        if parts[:3] == ["api", "v3", "orgs"] and len(parts) == 8 and parts[4] == "teams" and parts[6] == "memberships" and method == "GET":
            return "team_membership", self.team_membership
        if parts[:3] == ["actions", "_apis", "runtime"]:
            rest = parts[3:]
            if rest == ["runnergroups"] and method == "GET":
                return "runner_groups", self.admin(self.runner_groups)
            if rest == ["runnerscalesets"]:
                return "scale_sets", self.admin(self.list_scale_sets if method == "GET" else self.create_scale_set)
            if len(rest) == 3 and rest[0] == "runnerscalesets" and rest[2] == "sessions" and method == "POST":
                return "session_create", self.admin(self.create_session)
            if len(rest) == 4 and rest[0] == "runnerscalesets" and rest[2] == "sessions":
                if method == "PATCH":
                    return "session_refresh", self.admin(self.refresh_session)
                if method == "DELETE":
                    return "session_delete", self.admin(self.delete_session)
            if len(rest) == 3 and rest[0] == "runnerscalesets" and rest[2] == "generatejitconfig" and method == "POST":
                return "jit_config", self.admin(self.jit_config)
        if len(parts) == 3 and parts[0] == "queue" and parts[2] == "message" and method == "GET":
            return "poll", self.poll
        if len(parts) == 4 and parts[0] == "queue" and parts[2] == "message" and method == "DELETE":
            return "message_delete", self.delete_message
        return None, None

    # MARK: auth and bootstrap

    def bearer(self, scheme="Bearer"):
        auth = self.headers.get("Authorization", "")
        return auth[len(scheme) + 1:] if auth.startswith(scheme + " ") else None

    def access_token(self, parts, _):
        token = self.bearer()
        reason = check_app_jwt(token) if token else "no bearer token"
        if reason:
            return self.reply(401, {"message": reason})
        with lock:
            value = f"ghs_fake{next_id()}"
            S["installation_tokens"][value] = now() + 3600
        self.reply(201, {"token": value, "expires_at": stamp(now() + 3600)})

    def installation_ok(self, scheme="Bearer"):
        token = self.bearer(scheme)
        with lock:
            return token is not None and S["installation_tokens"].get(token, 0) > now()

    def registration_token(self, parts, _):
        if not self.installation_ok():
            return self.reply(401, {"message": "Bad credentials"})
        with lock:
            value = f"reg-{next_id()}"
            S["registration_tokens"].add(value)
        self.reply(201, {"token": value, "expires_at": stamp(now() + 3600)})

    def runner_registration(self, parts, payload):
        token = self.bearer("RemoteAuth")
        with lock:
            known = token in S["registration_tokens"]
        if not known:
            return self.reply(401, {"message": "RemoteAuth registration token required"})
        if not isinstance(payload, dict) or payload.get("runner_event") != "register" or not payload.get("url"):
            return self.reply(400, {"message": "url and runner_event=register required"})
        with lock:
            expiry = int(now() + S["admin_ttl"])
            header = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
            claims = b64url(json.dumps({"exp": expiry, "jti": str(uuid.uuid4())}).encode())
            value = f"{header}.{claims}."
            S["admin_tokens"][value] = expiry
        self.reply(200, {"url": BASE + "/actions", "token": value})

    def admin(self, handler):
        def checked(parts, payload):
            if self.query.get("api-version") != "6.0-preview":
                return self.reply(400, {"message": "api-version=6.0-preview required"})
            token = self.bearer()
            with lock:
                expiry = S["admin_tokens"].get(token)
            if expiry is None or expiry <= now():
                return self.reply(401, {"message": "admin token missing or expired"})
            with lock:
                handler(parts, payload)
        return checked

    # MARK: the scale-set service (called with the lock held)

    def list_runner_groups(self, parts, _):
        """REST: the organisation's runner groups, paginated (per_page at most 100)."""
        if not self.installation_ok():
            return self.reply(401, {"message": "Bad credentials"})
        per_page = min(max(int(self.query.get("per_page", "30")), 1), 100)
        page = max(int(self.query.get("page", "1")), 1)
        with lock:
            groups = sorted(S["groups"].items(), key=lambda item: item[1])
        chosen = groups[(page - 1) * per_page:page * per_page]
        self.reply(200, {"total_count": len(groups), "runner_groups": [
            {"id": gid, "name": name, "visibility": "all", "default": name == "Default"} for name, gid in chosen]})

    def runner_groups(self, parts, _):
        name = self.query.get("groupName", "")
        group = S["groups"].get(name)
        value = [{"id": group, "name": name}] if group is not None else []
        self.reply(200, {"count": len(value), "value": value})

    def list_scale_sets(self, parts, _):
        name = self.query.get("name")
        value = [s for s in S["scale_sets"].values() if name is None or s["name"] == name]
        self.reply(200, {"count": len(value), "value": value})

    def create_scale_set(self, parts, payload):
        if not isinstance(payload, dict) or not payload.get("name") or not isinstance(payload.get("runnerGroupId"), int):
            return self.reply(400, {"message": "name and runnerGroupId required"})
        if any(s["name"] == payload["name"] for s in S["scale_sets"].values()):
            return self.reply(409, {"message": "a scale set with this name exists"})
        labels = [label for label in payload.get("labels", []) if isinstance(label, dict)]
        if S["drop_extra_labels"]:
            labels = labels[:1]
        set_id = next_id()
        S["scale_sets"][set_id] = {"id": set_id, "name": payload["name"], "runnerGroupId": payload["runnerGroupId"],
                                   "labels": labels, "runnerSetting": payload.get("runnerSetting", {})}
        self.reply(200, S["scale_sets"][set_id])

    def scale_set(self, parts):
        try:
            return S["scale_sets"].get(int(parts[4]))
        except ValueError:
            return None

    def create_session(self, parts, payload):
        scale_set = self.scale_set(parts)
        if scale_set is None:
            return self.reply(404, {"message": "no such scale set"})
        if scale_set["id"] in S["sessions"]:
            return self.reply(409, {"message": "another session is active for this scale set"})
        session = {"sessionId": str(uuid.uuid4()), "ownerName": (payload or {}).get("ownerName", ""), "token": f"qt-{next_id()}"}
        S["sessions"][scale_set["id"]] = session
        self.reply(200, self.session_view(scale_set["id"], session))

    def session_view(self, set_id, session):
        return {"sessionId": session["sessionId"], "ownerName": session["ownerName"],
                "messageQueueUrl": f"{BASE}/queue/{set_id}/message", "messageQueueAccessToken": session["token"],
                "statistics": statistics(set_id)}

    def own_session(self, parts):
        scale_set = self.scale_set(parts)
        session = S["sessions"].get(scale_set["id"]) if scale_set else None
        return (scale_set, session) if session and session["sessionId"] == parts[6] else (scale_set, None)

    def refresh_session(self, parts, _):
        scale_set, session = self.own_session(parts)
        if session is None:
            return self.reply(404, {"message": "no such session"})
        session["token"] = f"qt-{next_id()}"
        self.reply(200, self.session_view(scale_set["id"], session))

    def delete_session(self, parts, _):
        scale_set, session = self.own_session(parts)
        if session is None:
            return self.reply(404, {"message": "no such session"})
        del S["sessions"][scale_set["id"]]
        lock.notify_all()
        self.reply(204)

    def jit_config(self, parts, payload):
        scale_set = self.scale_set(parts)
        if scale_set is None:
            return self.reply(404, {"message": "no such scale set"})
        name = (payload or {}).get("name") if isinstance(payload, dict) else None
        if not name:
            return self.reply(400, {"message": "name required"})
        if name in S["runners"]:
            return self.reply(409, {"message": "Already exists"})
        runner_id = next_id()
        S["runners"][name] = {"id": runner_id, "name": name, "scaleSetId": scale_set["id"]}
        self.reply(200, {"runner": {"id": runner_id, "name": name}, "encodedJITConfig": jit_blob(name, runner_id)})

    # MARK: the message queue

    def queue_session(self, parts):
        try:
            set_id = int(parts[1])
        except ValueError:
            return None, None
        session = S["sessions"].get(set_id)
        return set_id, session

    def poll(self, parts, _):
        try:
            capacity = int(self.headers.get("X-ScaleSetMaxCapacity", ""))
            cursor = int(self.query.get("lastMessageId", "0"))
        except ValueError:
            return self.reply(400, {"message": "X-ScaleSetMaxCapacity and lastMessageId must be integers"})
        if capacity < 0:
            return self.reply(400, {"message": "negative capacity"})
        deadline = now() + ARGS.hold
        with lock:
            while True:
                set_id, session = self.queue_session(parts)
                if session is None:
                    return self.reply(404, {"message": "session not found"})
                if self.bearer() != session["token"]:
                    return self.reply(401, {"message": "queue token expired"})
                assign(set_id, capacity)
                pending = [m for m in S["messages"].get(set_id, []) if not m["deleted"] and m["messageId"] > cursor]
                if pending:
                    message = pending[0]
                    return self.reply(200, {"messageId": message["messageId"], "messageType": "RunnerScaleSetJobMessages",
                                            "body": json.dumps(message["jobs"]), "statistics": statistics(set_id)})
                left = deadline - now()
                if left <= 0:
                    return self.reply(202)
                lock.wait(left)

    def delete_message(self, parts, _):
        with lock:
            set_id, session = self.queue_session(parts)
            if session is None or self.bearer() != session["token"]:
                return self.reply(401, {"message": "queue token required"})
            for message in S["messages"].get(set_id, []):
                if str(message["messageId"]) == parts[3] and not message["deleted"]:
                    message["deleted"] = True
                    return self.reply(204)
        self.reply(404, {"message": "no such message"})

    # MARK: runs

    def run_id(self, parts):
        return parts[7]

    def list_runners(self, parts, _):
        if not self.installation_ok():
            return self.reply(401, {"message": "Bad credentials"})
        wanted = self.query.get("name", "")
        with lock:
            found = [{"id": r["id"], "name": r["name"], "status": "online" if runner_online(r) else "offline",
                      "busy": any(j.get("runnerName") == r["name"] and j["state"] == "started" for j in S["jobs"].values())}
                     for r in S["runners"].values() if wanted in r["name"]]
        self.reply(200, {"total_count": len(found), "runners": found})

    def delete_runner(self, parts, _):
        if not self.installation_ok():
            return self.reply(401, {"message": "Bad credentials"})
        with lock:
            name = next((n for n, r in S["runners"].items() if str(r["id"]) == parts[-1]), None)
            if name is None:
                return self.reply(404, {"message": "Not Found"})
            if any(j.get("runnerName") == name and j["state"] == "started" for j in S["jobs"].values()):
                return self.reply(422, {"message": f"Bad request - Runner \"{name}\" is still running a job\""})
            if S["runners"][name].get("classic") and classic.C["settings"]["busyDeletes"] > 0:
                classic.C["settings"]["busyDeletes"] -= 1
                return self.reply(422, {"message": f"Bad request - Runner \"{name}\" is still running a job\""})
            if S["runners"].pop(name).get("classic"):
                classic.ClassicRoutes.forget_agent(int(parts[-1]))
        self.reply(204)

    def run_status(self, parts, _):
        if not self.installation_ok() and not self.installation_ok("token"):
            return self.reply(401, {"message": "Bad credentials"})
        with lock:
            run = run_state(self.run_id(parts))
            login = S["actors"].get(self.run_id(parts), "octocat")
        user = {"login": login, "type": "User"}
        self.reply(200, {"id": int(self.run_id(parts)) if self.run_id(parts).isdigit() else 0, **run, "actor": user, "triggering_actor": user})

    def team_membership(self, parts, _):
        if not self.installation_ok("token"):
            return self.reply(401, {"message": "Bad credentials"})
        team = f"{parts[3]}/{parts[5]}".lower()
        with lock:
            state = S["teams"].get(team, {}).get(parts[7].lower())
        if state is None:
            return self.reply(404, {"message": "Not Found"})
        self.reply(200, {"state": state, "role": "member", "url": f"{BASE}/api/v3/teams/1/memberships/{parts[7]}"})

    def cancel(self, parts, _):
        if not self.installation_ok("token"):
            return self.reply(401, {"message": "Bad credentials"})
        run_id = self.run_id(parts)
        with lock:
            if run_state(run_id)["status"] == "completed" and any(str(j["runId"]) == run_id for j in S["jobs"].values()):
                return self.reply(409, {"message": "Cannot cancel a workflow run that is completed."})
            S["cancels"].append({"runId": run_id, "at": now()})
            for job in S["jobs"].values():
                if str(job["runId"]) != run_id or job["state"] == "completed":
                    continue
                assigned = job["state"] != "queued"
                job["state"], job["result"], job["finishedAt"] = "completed", "canceled", now()
                if job["jobId"] in S["queue_order"]:
                    S["queue_order"].remove(job["jobId"])
                if assigned:
                    append_message(job["scaleSetId"], [job_message(job, "JobCompleted", result="canceled",
                                                                   runnerName=job.get("runnerName", ""))])
            lock.notify_all()
        self.reply(202, {})

    def rerun(self, parts, _):
        if not self.installation_ok("token"):
            return self.reply(401, {"message": "Bad credentials"})
        run_id = self.run_id(parts)
        with lock:
            refusals = S["rerun_refusals"].get(run_id, 0)
            if refusals:
                S["rerun_refusals"][run_id] = refusals - 1
            run = run_state(run_id)
            accepted = run["status"] == "completed" and not refusals
            jobs = [j for j in S["jobs"].values() if str(j["runId"]) == run_id and not j.get("rerunDone")
                    and j["state"] == "completed" and j.get("result") != "succeeded"] if accepted else []
            known = any(str(j["runId"]) == run_id for j in S["jobs"].values())
            if accepted and known and not jobs:
                S["reruns"].append({"runId": run_id, "accepted": False, "at": now(), "newJobIds": [], "refused": "no failed jobs"})
                return self.reply(422, {"message": "There are no failed jobs to re-run"})
            new_ids = []
            for job in jobs:
                job["rerunDone"] = True
                attempt = {key: job[key] for key in ("scaleSetId", "repository", "runId", "jobDisplayName", "workflowRef")}
                attempt.update({"jobId": str(uuid.uuid4()), "state": "queued", "queuedAt": now(), "rerunOf": job["jobId"]})
                S["jobs"][attempt["jobId"]] = attempt
                S["queue_order"].append(attempt["jobId"])
                new_ids.append(attempt["jobId"])
            if accepted:
                S["runs"].pop(run_id, None)  # from now on the run follows its (new) jobs
            S["reruns"].append({"runId": run_id, "accepted": accepted, "at": now(), "newJobIds": new_ids})
            lock.notify_all()
        if accepted:
            self.reply(201, {})
        else:
            self.reply(403, {"message": "This workflow is already running"})

    def force_cancel(self, parts, _):
        if not self.installation_ok("token"):
            return self.reply(401, {"message": "Bad credentials"})
        with lock:
            S["force_cancels"].append({"runId": self.run_id(parts), "at": now()})
            S["runs"][self.run_id(parts)] = {"status": "completed", "conclusion": "cancelled"}
            for job in S["jobs"].values():  # its unfinished jobs end cancelled (and may be re-run)
                if str(job["runId"]) == self.run_id(parts) and job["state"] != "completed":
                    job["state"], job["result"], job["finishedAt"] = "completed", "canceled", now()
                    if job["jobId"] in S["queue_order"]:
                        S["queue_order"].remove(job["jobId"])
        self.reply(202, {})

    # MARK: control

    def control(self, parts, payload):
        payload = payload if isinstance(payload, dict) else {}
        with lock:
            if parts[:1] == ["classic"]:
                return self.classic_control(parts[1:], payload)
            if parts == ["state"] and self.command == "GET":
                view = {key: S[key] for key in ("jobs", "runners", "calls", "reruns", "force_cancels", "cancels", "groups", "teams")}
                view["scaleSets"] = list(S["scale_sets"].values())
                view["sessions"] = {str(k): v for k, v in S["sessions"].items()}
                view["messages"] = {str(k): v for k, v in S["messages"].items()}
                return self.reply(200, view)
            if parts == ["enqueue"]:
                names = {s["name"]: s["id"] for s in S["scale_sets"].values()}
                if payload.get("scaleSet") not in names:
                    return self.reply(404, {"message": "no such scale set"})
                created = []
                chosen = list(payload.get("jobIds") or [])
                for _ in range(len(chosen) or int(payload.get("count", 1))):
                    number = next_id()
                    job = {"jobId": chosen.pop(0) if chosen else str(uuid.uuid4()), "scaleSetId": names[payload["scaleSet"]], "state": "queued",
                           "repository": payload.get("repository", "acme/widgets"),
                           "runId": int(payload.get("runId", 900000 + number)), "jobDisplayName": f"build {number}",
                           "workflowRef": "acme/widgets/.github/workflows/ci.yml@refs/heads/main", "queuedAt": now()}
                    S["jobs"][job["jobId"]] = job
                    S["queue_order"].append(job["jobId"])
                    created.append(job["jobId"])
                lock.notify_all()
                return self.reply(200, {"jobIds": created})
            if parts in (["start"], ["complete"]):
                job = S["jobs"].get(payload.get("jobId"))
                if job is None or job["state"] in ("queued", "completed"):
                    return self.reply(409, {"message": "job not assigned"})
                if parts == ["start"]:
                    default = f"{S['scale_sets'][job['scaleSetId']]['name']}-{job['jobId']}"
                    runner = payload.get("runnerName") or default
                    job["state"], job["runnerName"], job["startedAt"] = "started", runner, now()
                    append_message(job["scaleSetId"], [job_message(job, "JobStarted", runnerName=runner,
                                                                   runnerId=S["runners"].get(runner, {}).get("id", 0))])
                else:
                    job["state"], job["result"], job["finishedAt"] = "completed", payload.get("result", "succeeded"), now()
                    append_message(job["scaleSetId"], [job_message(job, "JobCompleted", result=job["result"],
                                                                   runnerName=job.get("runnerName", ""))])
                return self.reply(200, job)
            if parts == ["runner"]:
                names = {sc["name"]: sc["id"] for sc in S["scale_sets"].values()}
                if payload.get("scaleSet") not in names or not payload.get("name"):
                    return self.reply(404, {"message": "no such scale set"})
                S["runners"][payload["name"]] = {"id": next_id(), "name": payload["name"], "scaleSetId": names[payload["scaleSet"]]}
                return self.reply(200, S["runners"][payload["name"]])
            if parts == ["teams"]:
                S["teams"] = {team.lower(): {login.lower(): state for login, state in members.items()} for team, members in payload.items()}
                return self.reply(200, S["teams"])
            if parts == ["actor"]:
                S["actors"][str(payload["runId"])] = payload["login"]
                return self.reply(200, {})
            if parts == ["fault"]:
                S["faults"][payload["endpoint"]] = [int(payload["status"]), int(payload.get("count", 1)), payload.get("retryAfter")]
                return self.reply(200, {})
            if parts == ["drop-session"]:
                for set_id, scale_set in S["scale_sets"].items():
                    if scale_set["name"] == payload.get("scaleSet"):
                        S["sessions"].pop(set_id, None)
                lock.notify_all()
                return self.reply(200, {})
            if parts == ["expire-queue-tokens"]:
                for session in S["sessions"].values():
                    session["token"] += "-expired"
                lock.notify_all()
                return self.reply(200, {})
            if parts == ["admin-ttl"]:
                S["admin_ttl"] = float(payload["seconds"])
                return self.reply(200, {})
            if parts == ["groups"]:  # {name: id}: runner groups the organisation has besides Default
                S["groups"].update({str(k): int(v) for k, v in payload.items()})
                return self.reply(200, S["groups"])
            if parts == ["runstate"]:
                S["runs"][str(payload["runId"])] = {"status": payload.get("status", "completed"),
                                                    "conclusion": payload.get("conclusion")}
                return self.reply(200, {})
            if parts == ["rerun-refusals"]:
                S["rerun_refusals"][str(payload["runId"])] = int(payload.get("count", 1))
                return self.reply(200, {})
            if parts == ["drop-extra-labels"]:
                S["drop_extra_labels"] = bool(payload.get("enabled", True))
                return self.reply(200, {})
        self.reply(404, {"message": "unknown control call"})


def check_app_jwt(token):
    """None when `token` is an App JWT GitHub would take: RS256 by the App's key, iss = App id,
    iat in the past, exp in the future and at most 10 minutes after iat; else the reason."""
    try:
        header_b64, claims_b64, signature_b64 = token.split(".")
        header = json.loads(b64url_decode(header_b64))
        claims = json.loads(b64url_decode(claims_b64))
        if header.get("alg") != "RS256":
            return "alg is not RS256"
        PUBLIC_KEY.verify(b64url_decode(signature_b64), f"{header_b64}.{claims_b64}".encode(), padding.PKCS1v15(), hashes.SHA256())
    except Exception as error:  # any parse or signature failure is a 401
        return f"bad jwt: {type(error).__name__}"
    current = int(now())
    if str(claims.get("iss")) != ARGS.app_id:
        return "wrong iss"
    if not claims.get("iat", current + 1) <= current:
        return "iat in the future"
    if not claims.get("exp", 0) > current or claims["exp"] - claims["iat"] > 600:
        return "exp expired or more than 10 minutes after iat"
    return None


class Server(ThreadingHTTPServer):
    # listen()'s backlog, fixed when the server is made: at the default 5, a burst of new
    # connections overflows it and each dropped SYN costs the client a 1 s retransmit.
    request_queue_size = 256
    daemon_threads = True

    def handle_error(self, request, client_address):
        # A client that went away mid-answer (a held poll cut by SIGTERM) is not the fake's error.
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return
        super().handle_error(request, client_address)


def main():
    global ARGS, PUBLIC_KEY, BASE
    parser = argparse.ArgumentParser()
    parser.add_argument("--public-key", required=True)
    parser.add_argument("--app-id", required=True)
    parser.add_argument("--hold", type=float, default=0.5, help="seconds an empty poll is held before 202")
    parser.add_argument("--agent-key-bits", type=int, default=2048, choices=[1024, 2048, 3072],
                        help="RSA key size of classic agents (1024 makes 1,000-agent benches fast to set up)")
    parser.add_argument("--public-url", help="the base URL clients reach us at, for the URLs we hand out (a TLS or "
                                             "HTTP/2 front such as nghttpx); default: our own http://127.0.0.1:PORT")
    ARGS = parser.parse_args()
    with open(ARGS.public_key, "rb") as f:
        PUBLIC_KEY = serialization.load_pem_public_key(f.read())
    server = Server(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    BASE = (ARGS.public_url or f"http://127.0.0.1:{server.server_address[1]}").rstrip("/")
    classic.BASE, classic.HOLD, classic.KEY_BITS = BASE, ARGS.hold, ARGS.agent_key_bits
    print(json.dumps({"port": server.server_address[1]}), flush=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sys.stdin.read()


if __name__ == "__main__":
    main()

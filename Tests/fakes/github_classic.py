"""The classic per-runner broker of the fake GitHub (reference/agc-protocol.md sections 1.4,
2.1 and 3.1), written from the reference, never from the Swift code. github_actions.py routes
to it and shares its lock, call log and runner registry.

  POST /api/v3/{orgs/{org}|repos/{o}/{r}}/actions/runners/generate-jitconfig   installation token;
       {name, runner_group_id, labels, work_folder} -> 201 {runner{id,name}, encoded_jit_config}
       (409 "Already exists" for a taken name, 404 for a runner group id the organisation does not
       have). The blob carries a real RSA key per agent.
  GET  /api/v3/orgs/{org}/actions/runner-groups?per_page&page   -> {total_count, runner_groups[{id,name}]}
       (served by github_actions.py, which holds the groups; POST /control/groups {name: id} adds some).
  POST /token            form: client_credentials + jwt-bearer assertion. The assertion must be RS256,
                         typ JWT, no kid; claims exactly iss = sub = clientId, aud = this URL,
                         nbf, exp <= nbf + 5 min, jti a UUID, no iat; signed by the agent's key.
                         A fresh agent answers 400 "registration not found" `propagation` times.
  POST /broker/session   {ownerName, agent{id,name,version}} -> {sessionId, encryptionKey?}; 400
                         "too old" below the version floor; 409 while the agent has a session.
  DELETE /broker/session the bearer's session; its undelivered work returns to the pool.
  GET  /broker/message   long poll (held --hold s): 202 empty, or 200 {messageId, messageType
                         RunnerJobRequest, body} with the body encrypted under the session key
                         (base64(IV || AES-256-CBC, PKCS#7)). A session whose agent was consumed
                         answers 200 with an empty body once, then 401.
  POST {run_service_url}/acquirejob   session bearer; within the delivery window; -> the job
                         message, header x-plan-id; consumes a single-use agent (GitHub deletes it).
  POST {run_service_url}/renewjob     the job token only (else 401 "Not authorized for this job").
  POST {run_service_url}/completejob  the job token; {planId, jobId, result} -> 204.

Each delivery has its own run_service_url (/runservice/<random>): a URL cached from another
delivery answers 404. Fan-out: one plan (one job) handed out as N deliveries with distinct
runner_request_ids, each to a different session. A plan concludes once every acquired delivery
is completed: failure if any failed, success if all succeeded; a plan that concludes success
while no delivery ever ran (/control/classic/run) is recorded as a false green.

Control (under /control/classic/):
  POST enqueue  {"count"?, "fanout"?, "repository"?, "runId"?, "jobName"?}   -> {"planIds"}
                jobName: the job's display name (default "build"), as a webhook's workflow_job.name says it
  POST run      {"requestId", "result"}   the worker ran that delivery and completed it
  POST settings {"singleUse", "encrypt", "rawKey", "minVersion", "propagation", "window", "dotnetStyle",
                 "busyDeletes", "acquireDelay"}   busyDeletes: the next N DELETEs of a classic runner answer 422
                 "still running a job", as GitHub does for a busy runner; acquireDelay: seconds an
                 acquirejob answer takes after the acquisition is recorded (a slow network)
  GET  state    agents, sessions, plans (with deliveries), renewals
"""
import base64
import json
import os
import re
import threading
import time
import urllib.parse
import uuid

from cryptography.hazmat.primitives import hashes, padding as sympadding
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

lock = threading.Condition()  # replaced by github_actions with its own
RUNNERS = {}  # replaced by github_actions with its runner registry (name -> record)
BASE = ""
HOLD = 0.5
KEY_BITS = 2048

C = {
    "agents": {},  # agent id -> {id, name, clientId, key (private, ours to verify with), consumed, propagating}
    "tokens": {},  # broker OAuth token -> agent id
    "sessions": {},  # session id -> {sessionId, agentId, key, killed, emptySent, version}
    "plans": {},  # planId -> {planId, jobId, runId, repository, ran, conclusion, falseGreen, deliveries{reqId: {...}}}
    "urls": {},  # run service path segment -> request id
    "renewals": [],  # {requestId, ok}
    "next": 1,
    "settings": {"singleUse": True, "encrypt": True, "rawKey": False, "minVersion": "2.329.0", "propagation": 0,
                 "window": 120.0, "dotnetStyle": False, "busyDeletes": 0,
                 "acquireDelay": 0.0},
}


def _next():
    C["next"] += 1
    return C["next"]


def _b64(value):
    return base64.b64encode(value).decode()


def _int_bytes(number):
    return number.to_bytes((number.bit_length() + 7) // 8 or 1, "big")


def _b64url_decode(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _version(text):
    return tuple(int(p) for p in re.findall(r"\d+", text or "0")[:3])


def jit_blob(agent, name):
    numbers = agent["key"].private_numbers()
    params = {"modulus": numbers.public_numbers.n, "exponent": numbers.public_numbers.e, "d": numbers.d, "p": numbers.p,
              "q": numbers.q, "dp": numbers.dmp1, "dq": numbers.dmq1, "inverseQ": numbers.iqmp}
    rsaparams = {key: _b64(_int_bytes(value)) for key, value in params.items()}
    files = {
        ".runner": {"agentId": agent["id"], "agentName": name, "poolId": 1, "serverUrl": BASE + "/actions",
                    "serverUrlV2": BASE + "/broker", "useV2Flow": True, "workFolder": "_work"},
        ".credentials": {"scheme": "OAuth", "data": {"clientId": agent["clientId"], "authorizationUrl": BASE + "/token",
                                                     "requireFipsCryptography": "False"}},
        ".credentials_rsaparams": rsaparams,
    }
    prefix = b""
    if C["settings"]["dotnetStyle"]:  # what .NET writes: PascalCase keys, a UTF-8 BOM
        files[".credentials_rsaparams"] = {k[0].upper() + k[1:]: v for k, v in rsaparams.items()}
        prefix = b"\xef\xbb\xbf"
    encoded = {key: _b64(prefix + json.dumps(value).encode()) for key, value in files.items()}
    return _b64(json.dumps(encoded).encode())


class ClassicRoutes:
    """Mixed into github_actions.Handler: `self.reply`, `self.bearer`, `self.installation_ok`,
    `self.raw`, `self.query` come from there."""

    def classic_route(self, parts):
        method = self.command
        if parts == ["token"] and method == "POST":
            return "oauth_token", self.oauth_token
        if parts == ["broker", "session"]:
            if method == "POST":
                return "broker_session_create", self.broker_session_create
            if method == "DELETE":
                return "broker_session_delete", self.broker_session_delete
        if parts == ["broker", "message"] and method == "GET":
            return "broker_poll", self.broker_poll
        if len(parts) == 3 and parts[0] == "runservice" and method == "POST":
            if parts[2] in ("acquirejob", "renewjob", "completejob"):
                return parts[2], getattr(self, "run_" + parts[2])
        return None, None

    # MARK: registration

    def generate_jitconfig(self, parts, payload, runners, next_id, groups):
        if not self.installation_ok():
            return self.reply(401, {"message": "Bad credentials"})
        if not isinstance(payload, dict) or not payload.get("name") or "runner_group_id" not in payload:
            return self.reply(422, {"message": "name and runner_group_id are required"})
        if payload["runner_group_id"] not in groups.values():
            return self.reply(404, {"message": "Not Found"})  # what GitHub answers for a group id it does not know
        key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)  # outside the lock: it takes a while
        with lock:
            name = payload["name"]
            if name in runners:
                return self.reply(409, {"message": "Already exists"})
            runner_id = next_id()
            agent = {"id": runner_id, "name": name, "clientId": str(uuid.uuid4()), "key": key, "consumed": False,
                     "propagating": C["settings"]["propagation"], "labels": payload.get("labels", []),
                     "groupId": payload["runner_group_id"]}
            C["agents"][runner_id] = agent
            runners[name] = {"id": runner_id, "name": name, "scaleSetId": None, "classic": True}
            blob = jit_blob(agent, name)
        self.reply(201, {"runner": {"id": runner_id, "name": name, "os": "linux", "status": "offline", "busy": False},
                         "encoded_jit_config": blob})

    @staticmethod
    def forget_agent(runner_id):
        """The runner record is gone (deregistered, or consumed by an acquire): its sessions die."""
        agent = C["agents"].get(runner_id)
        if agent:
            agent["consumed"] = True
        for session in C["sessions"].values():
            if session["agentId"] == runner_id:
                session["killed"] = True
        lock.notify_all()

    # MARK: OAuth

    def oauth_token(self, parts, _):
        form = dict(urllib.parse.parse_qsl(self.raw.decode(errors="replace")))
        if form.get("grant_type") != "client_credentials" or \
                form.get("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer":
            return self.reply(400, {"error": "unsupported_grant_type"})
        reason, agent = self.check_assertion(form.get("client_assertion", ""))
        if reason:
            return self.reply(401, {"error": "invalid_client", "error_description": reason})
        with lock:
            if agent["consumed"]:
                return self.reply(401, {"error": "invalid_client", "error_description": "runner deleted"})
            if agent["propagating"] > 0:  # set when it registered: a new record is not everywhere at once
                agent["propagating"] -= 1
                return self.reply(400, {"error": "invalid_client", "error_description": "Registration was not found"})
            token = f"bt-{_next()}-{uuid.uuid4().hex[:8]}"
            C["tokens"][token] = agent["id"]
        self.reply(200, {"access_token": token, "token_type": "Bearer", "expires_in": 3600})

    def check_assertion(self, assertion):
        try:
            head, claims_part, signature = assertion.split(".")
            header = json.loads(_b64url_decode(head))
            claims = json.loads(_b64url_decode(claims_part))
        except (ValueError, TypeError):
            return "malformed assertion", None
        if header != {"alg": "RS256", "typ": "JWT"}:
            return f"header must be exactly alg RS256, typ JWT (no kid): {header}", None
        if set(claims) != {"iss", "sub", "aud", "nbf", "exp", "jti"}:
            return f"claims must be exactly iss, sub, aud, nbf, exp, jti (no iat): {sorted(claims)}", None
        with lock:
            agent = next((a for a in C["agents"].values() if a["clientId"] == claims["iss"]), None)
        if agent is None:
            return "unknown client", None
        moment = time.time()
        if claims["sub"] != claims["iss"] or claims["aud"] != BASE + "/token":
            return "iss, sub or aud wrong", None
        try:
            uuid.UUID(str(claims["jti"]))
        except ValueError:
            return "jti is not a UUID", None
        if not (claims["nbf"] <= moment + 30 and claims["exp"] > moment and claims["exp"] - claims["nbf"] <= 330):
            return "nbf/exp outside a 5-minute window around now", None
        try:
            agent["key"].public_key().verify(_b64url_decode(signature), f"{head}.{claims_part}".encode(),
                                             padding.PKCS1v15(), hashes.SHA256())
        except Exception:  # noqa: BLE001 - any verification failure is a refusal
            return "bad signature", None
        return None, agent

    def broker_agent(self):
        token = self.bearer()
        with lock:
            return C["agents"].get(C["tokens"].get(token)) if token else None

    # MARK: sessions

    def broker_session_create(self, parts, payload):
        agent = self.broker_agent()
        if agent is None or agent["consumed"]:
            return self.reply(401, {"message": "unauthorized"})
        if not isinstance(payload, dict) or not isinstance(payload.get("agent"), dict):
            return self.reply(400, {"message": "agent is required"})
        version = payload["agent"].get("version", "")
        if _version(version) < _version(C["settings"]["minVersion"]):
            return self.reply(400, {"message": f"Runner version v{version} is too old. The minimum supported version is "
                                               f"v{C['settings']['minVersion']}."})
        if payload["agent"].get("id") != agent["id"]:
            return self.reply(400, {"message": "agent id does not match the credentials"})
        with lock:
            if any(s["agentId"] == agent["id"] for s in C["sessions"].values()):
                return self.reply(409, {"message": "A session for this runner already exists."})
            key = os.urandom(32)
            session = {"sessionId": str(uuid.uuid4()), "agentId": agent["id"], "ownerName": payload.get("ownerName"),
                       "key": key, "killed": False, "emptySent": False, "version": version,
                       "encrypt": C["settings"]["encrypt"]}
            C["sessions"][session["sessionId"]] = session
        answer = {"sessionId": session["sessionId"], "ownerName": session["ownerName"],
                  "agent": {"id": agent["id"], "name": agent["name"]}}
        if session["encrypt"]:
            if C["settings"]["rawKey"]:
                answer["encryptionKey"] = {"encrypted": False, "value": _b64(key)}
            else:
                wrapped = agent["key"].public_key().encrypt(key, padding.OAEP(mgf=padding.MGF1(hashes.SHA1()),
                                                                               algorithm=hashes.SHA1(), label=None))
                answer["encryptionKey"] = {"encrypted": True, "value": _b64(wrapped)}
        self.reply(200, answer)

    def bearer_session(self):
        token = self.bearer()
        with lock:
            agent_id = C["tokens"].get(token) if token else None
            return next((s for s in C["sessions"].values() if s["agentId"] == agent_id), None) if agent_id else None

    def broker_session_delete(self, parts, _):
        session = self.bearer_session()
        if session is None:
            return self.reply(404, {"message": "no session"})
        with lock:
            C["sessions"].pop(session["sessionId"], None)
            for plan in C["plans"].values():  # delivered, never acquired: back to the pool
                for delivery in plan["deliveries"].values():
                    if delivery["session"] == session["sessionId"] and delivery["state"] == "delivered":
                        delivery.update(state="pooled", session=None)
            lock.notify_all()
        self.reply(200, {})

    # MARK: messages

    def expire_deliveries(self, moment):
        """The delivery window: a delivery not acquired in time goes back to the pool (GitHub redelivers)."""
        for plan in C["plans"].values():
            for delivery in plan["deliveries"].values():
                if delivery["state"] == "delivered" and moment - delivery["at"] > C["settings"]["window"]:
                    delivery.update(state="pooled", session=None)

    def next_delivery(self, session):
        moment = time.time()
        self.expire_deliveries(moment)
        for plan in C["plans"].values():
            if plan["conclusion"] is not None:
                continue
            if any(d["session"] == session["sessionId"] for d in plan["deliveries"].values()):
                continue  # every delivery of one plan goes to a different session
            for delivery in plan["deliveries"].values():
                if delivery["state"] == "pooled":
                    url = uuid.uuid4().hex
                    C["urls"][url] = delivery["requestId"]
                    delivery.update(state="delivered", session=session["sessionId"], at=moment, url=url,
                                    messageId=_next(), deliveries=delivery.get("deliveries", 0) + 1)
                    return plan, delivery
        return None

    def broker_poll(self, parts, _):
        session = self.bearer_session()
        if session is None or session["sessionId"] != self.query.get("sessionId"):
            return self.reply(401 if session is None else 404, {"message": "no such session"})
        deadline = time.time() + HOLD
        with lock:
            while True:
                if session["killed"]:
                    if not session["emptySent"]:
                        session["emptySent"] = True
                        found = "empty"
                        break
                    return self.reply(401, {"message": "runner deleted"})
                if session["sessionId"] not in C["sessions"]:
                    return self.reply(404, {"message": "session expired"})
                found = self.next_delivery(session)
                left = deadline - time.time()
                if found or left <= 0:
                    break
                lock.wait(min(left, 0.25))
        if found == "empty":
            return self.reply_raw(200, b"")
        if not found:
            return self.reply(202)
        plan, delivery = found
        body = json.dumps({"runner_request_id": delivery["requestId"], "run_service_url": f"{BASE}/runservice/{delivery['url']}",
                           "billing_owner_id": "acme-billing"})
        if session["encrypt"]:
            iv = os.urandom(16)
            padder = sympadding.PKCS7(128).padder()
            data = padder.update(body.encode()) + padder.finalize()
            encryptor = Cipher(algorithms.AES(session["key"]), modes.CBC(iv)).encryptor()
            body = _b64(iv + encryptor.update(data) + encryptor.finalize())
        self.reply(200, {"messageId": delivery["messageId"], "messageType": "RunnerJobRequest", "body": body})

    def reply_raw(self, code, body):
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.status = code

    # MARK: run service

    def delivery_of(self, parts):
        request_id = C["urls"].get(parts[1])
        for plan in C["plans"].values():
            if request_id in plan["deliveries"]:
                return plan, plan["deliveries"][request_id]
        return None, None

    def run_acquirejob(self, parts, payload):
        session = self.bearer_session()
        with lock:
            plan, delivery = self.delivery_of(parts)
            if session is None:
                return self.reply(401, {"message": "unauthorized"})
            if delivery is None or not isinstance(payload, dict) or payload.get("jobMessageId") != delivery["requestId"]:
                return self.reply(404, {"message": "no such job request here"})
            if delivery["state"] != "delivered" or delivery["session"] != session["sessionId"]:
                return self.reply(409 if delivery["state"] == "acquired" else 404, {"message": "job request not deliverable"})
            if time.time() - delivery["at"] > C["settings"]["window"]:
                return self.reply(404, {"message": "delivery window missed"})
            delivery.update(state="acquired", jobToken=f"jt-{delivery['requestId']}-{uuid.uuid4().hex[:8]}",
                            acquiredBy=session["agentId"])
            if C["settings"]["singleUse"]:  # GitHub deletes a JIT runner's record when it acquires
                agent = C["agents"][session["agentId"]]
                RUNNERS.pop(agent["name"], None)
                self.forget_agent(agent["id"])
            message = self.job_message(plan, delivery)
            delay = C["settings"]["acquireDelay"]
        if delay:
            time.sleep(delay)  # GitHub's side is done; only the answer is slow (outside the lock)
        self.send_json(200, message, [("x-plan-id", plan["planId"])])

    def send_json(self, code, payload, headers):
        body = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.status = code

    @staticmethod
    def job_message(plan, delivery):
        owner, repo = plan["repository"].split("/")
        return {
            "messageType": "RunnerJobRequest", "plan": {"planType": "Build", "version": 1, "planId": plan["planId"],
                                                         "artifactUri": "", "artifactLocation": None},
            "timeline": {"id": str(uuid.uuid4()), "changeId": 1, "location": None},
            "jobId": plan["jobId"], "jobDisplayName": plan.get("jobName", "build"), "jobName": "build", "requestId": delivery["requestId"],
            "lockedUntil": "0001-01-01T00:00:00", "billingOwnerId": "acme-billing",
            "resources": {"endpoints": [{"name": "SystemVssConnection", "url": BASE + "/pipelines",
                                         "authorization": {"scheme": "OAuth", "parameters": {"AccessToken": delivery["jobToken"]}},
                                         "data": {"CacheServerUrl": BASE + "/cache", "ResultsServiceUrl": BASE + "/results"}}]},
            "contextData": {"github": {"t": 2, "d": [{"k": "run_id", "v": str(plan["runId"])}, {"k": "repository", "v": plan["repository"]},
                                                     {"k": "repository_owner", "v": owner}, {"k": "workflow", "v": f"{repo} CI"}]}},
            "variables": {}, "steps": [], "mask": [], "fileTable": [], "environmentVariables": [], "defaults": [],
            "jobOutputs": None, "jobContainer": None, "jobServiceContainers": None, "snapshot": None,
        }

    def job_token_ok(self, delivery):
        return delivery is not None and delivery.get("jobToken") is not None and self.bearer() == delivery["jobToken"]

    def run_renewjob(self, parts, payload):
        with lock:
            plan, delivery = self.delivery_of(parts)
            ok = self.job_token_ok(delivery) and isinstance(payload, dict) and payload.get("jobId") == delivery["requestId"] \
                and payload.get("planId") == plan["planId"]
            C["renewals"].append({"requestId": delivery["requestId"] if delivery else None, "ok": bool(ok)})
            if not ok:
                return self.reply(401, {"source": "actions-run-service", "statusCode": 401, "errorMessage": "Not authorized for this job"})
            if delivery["state"] != "acquired":
                return self.reply(404, {"message": "job is no longer locked"})
        self.reply(200, {"lockedUntil": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 600))})

    def run_completejob(self, parts, payload):
        with lock:
            plan, delivery = self.delivery_of(parts)
            if not self.job_token_ok(delivery) or not isinstance(payload, dict) or payload.get("jobId") != delivery["requestId"]:
                return self.reply(401, {"message": "Not authorized for this job"})
            if delivery["state"] == "completed":
                return self.reply(404, {"message": "already completed"})
            self.complete(plan, delivery, payload.get("result"), by="broker")
        self.reply(204)

    @staticmethod
    def complete(plan, delivery, result, by):
        delivery.update(state="completed", result=result, completedBy=by)
        acquired = [d for d in plan["deliveries"].values() if d["state"] in ("acquired", "completed")]
        if all(d["state"] == "completed" for d in acquired):
            results = {d["result"] for d in acquired}
            if "failed" in results:
                plan["conclusion"] = "failure"
            elif results <= {"succeeded", "succeededWithIssues", "abandoned", "canceled", "skipped"}:
                plan["conclusion"] = "success"
                plan["falseGreen"] = not plan["ran"]
            else:
                plan["conclusion"] = "failure"
        lock.notify_all()

    # MARK: control

    def classic_control(self, parts, payload):
        """Called with the lock held."""
        if parts == ["state"]:
            agents = {str(k): {key: v for key, v in a.items() if key != "key"} for k, a in C["agents"].items()}
            sessions = {k: {key: v for key, v in s.items() if key != "key"} for k, s in C["sessions"].items()}
            return self.reply(200, {"agents": agents, "sessions": sessions, "plans": C["plans"], "renewals": C["renewals"],
                                    "settings": C["settings"]})
        if parts == ["settings"]:
            unknown = set(payload) - set(C["settings"])
            if unknown:
                return self.reply(400, {"message": f"unknown settings {sorted(unknown)}"})
            C["settings"].update(payload)
            return self.reply(200, C["settings"])
        if parts == ["enqueue"]:
            created = []
            for _ in range(int(payload.get("count", 1))):
                number = _next()
                plan = {"planId": str(uuid.uuid4()), "jobId": str(uuid.uuid4()), "runId": int(payload.get("runId", 800000 + number)),
                        "repository": payload.get("repository", "acme/widgets"), "jobName": payload.get("jobName", "build"), "ran": False, "conclusion": None,
                        "falseGreen": False, "deliveries": {}}
                for _ in range(int(payload.get("fanout", 1))):
                    request_id = 5_000_000 + _next()
                    plan["deliveries"][request_id] = {"requestId": request_id, "state": "pooled", "session": None}
                C["plans"][plan["planId"]] = plan
                created.append(plan["planId"])
            lock.notify_all()
            return self.reply(200, {"planIds": created})
        if parts == ["run"]:
            for plan in C["plans"].values():
                delivery = plan["deliveries"].get(payload.get("requestId"))
                if delivery is not None:
                    if delivery["state"] != "acquired":
                        return self.reply(409, {"message": f"delivery is {delivery['state']}, not acquired"})
                    plan["ran"] = True
                    self.complete(plan, delivery, payload.get("result", "succeeded"), by="worker")
                    return self.reply(200, {"conclusion": plan["conclusion"]})
            return self.reply(404, {"message": "no such delivery"})
        return self.reply(404, {"message": "no such control"})

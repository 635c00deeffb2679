"""The fake GitHub's classic broker, tested on its own against reference/agc-protocol.md 1.4,
2.1 and 3.1 (a client written here, in Python, not the Swift one): JIT registration with a real
key, the OAuth client assertion's exact shape, one session per agent, the version floor,
encrypted bodies, per-delivery run service URLs, renew with the job token only, single-use agents
and fan-out accounting with its false-green trap."""
import base64
import json
import threading
import urllib.error
import urllib.parse
import urllib.request
import uuid
import time

import pytest
from cryptography.hazmat.primitives import hashes, padding as sympadding
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from conftest import wait_for
from test_fake_github import app_jwt, b64url, fake  # noqa: F401  (fake is the fixture)


def installation(fake):
    status, token, _ = fake.call("POST", "/api/v3/app/installations/7/access_tokens",
                                 headers={"Authorization": "Bearer " + app_jwt(fake.key, "42")})
    assert status == 201
    return token["token"]


class Agent:
    """One JIT agent as a classic runner holds it: the files of its blob, its key, its token."""

    def __init__(self, fake, token, name):
        self.fake = fake
        status, body, _ = fake.call("POST", "/api/v3/orgs/acme/actions/runners/generate-jitconfig",
                                    {"name": name, "runner_group_id": 1, "labels": ["linux"], "work_folder": "_work"},
                                    headers={"Authorization": "Bearer " + token})
        assert status == 201, body
        self.id = body["runner"]["id"]
        files = json.loads(base64.b64decode(body["encoded_jit_config"]))
        decoded = {name: json.loads(base64.b64decode(value).decode("utf-8-sig")) for name, value in files.items()}
        assert set(decoded) == {".runner", ".credentials", ".credentials_rsaparams"}
        self.runner, self.credentials = decoded[".runner"], decoded[".credentials"]
        params = {k[0].lower() + k[1:]: int.from_bytes(base64.b64decode(v), "big") for k, v in decoded[".credentials_rsaparams"].items()}
        public = rsa.RSAPublicNumbers(params["exponent"], params["modulus"])
        self.key = rsa.RSAPrivateNumbers(params["p"], params["q"], params["d"], params["dp"], params["dq"], params["inverseQ"],
                                         public).private_key()
        self.broker = self.runner["serverUrlV2"]
        self.bearer = None
        self.session = None

    def assertion(self, header=None, drop=(), extra=None):
        client, audience = self.credentials["data"]["clientId"], self.credentials["data"]["authorizationUrl"]
        moment = int(time.time())
        claims = {"iss": client, "sub": client, "aud": audience, "nbf": moment, "exp": moment + 300, "jti": str(uuid.uuid4())}
        claims.update(extra or {})
        for name in drop:
            claims.pop(name)
        head = b64url(json.dumps(header or {"alg": "RS256", "typ": "JWT"}).encode())
        body = b64url(json.dumps(claims).encode())
        signature = self.key.sign(f"{head}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{head}.{body}.{b64url(signature)}"

    def exchange(self, assertion=None):
        form = urllib.parse.urlencode({"grant_type": "client_credentials", "client_assertion": assertion or self.assertion(),
                                       "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"}).encode()
        request = urllib.request.Request(self.credentials["data"]["authorizationUrl"], data=form, method="POST",
                                         headers={"Content-Type": "application/x-www-form-urlencoded"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                self.bearer = json.loads(response.read())["access_token"]
                return response.status
        except urllib.error.HTTPError as error:
            error.read()
            return error.code

    def call(self, method, url, body=None, bearer=None):
        return self.fake.call(method, "", body, {"Authorization": "Bearer " + (bearer or self.bearer), "Accept": "application/json"},
                              raw_url=url)

    def open(self, version="2.335.1"):
        status, body, _ = self.call("POST", self.broker + "/session",
                                    {"ownerName": "gw", "agent": {"id": self.id, "name": self.runner["agentName"], "version": version},
                                     "useFipsEncryption": False})
        if status == 200:
            self.session = body
        return status, body

    def poll(self):
        query = urllib.parse.urlencode({"sessionId": self.session["sessionId"], "status": "online", "runnerVersion": "2.335.1",
                                        "os": "Linux", "architecture": "X64", "disableUpdate": "false"})
        return self.call("GET", f"{self.broker}/message?{query}")

    def decrypt(self, body):
        key = self.session.get("encryptionKey")
        if not key:
            return json.loads(body)
        secret = base64.b64decode(key["value"])
        if key["encrypted"]:
            secret = self.key.decrypt(secret, padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None))
        raw = base64.b64decode(body)
        decryptor = Cipher(algorithms.AES(secret), modes.CBC(raw[:16])).decryptor()
        unpadder = sympadding.PKCS7(128).unpadder()
        return json.loads(unpadder.update(decryptor.update(raw[16:]) + decryptor.finalize()) + unpadder.finalize())

    def next_job(self):
        deadline = time.time() + 10
        while time.time() < deadline:
            status, message, _ = self.poll()
            if status == 200 and message:
                assert message["messageType"] == "RunnerJobRequest"
                return self.decrypt(message["body"])
            assert status == 202, (status, message)
        raise AssertionError("no job delivered")


def ready_agent(fake, token, name):
    agent = Agent(fake, token, name)
    assert agent.exchange() == 200
    assert agent.open()[0] == 200
    return agent


def test_registration_assertion_shape_and_one_session_per_agent(fake):
    token = installation(fake)
    agent = Agent(fake, token, "cpu-1")
    assert fake.call("POST", "/api/v3/orgs/acme/actions/runners/generate-jitconfig", {"name": "cpu-1", "runner_group_id": 1},
                     headers={"Authorization": "Bearer " + token})[0] == 409, "a taken name is a conflict"
    assert agent.runner["useV2Flow"] is True and agent.credentials["scheme"] == "OAuth"
    for refused in (agent.assertion(header={"alg": "RS256", "typ": "JWT", "kid": "k"}), agent.assertion(extra={"iat": int(time.time())}),
                    agent.assertion(extra={"aud": ["x"]}), agent.assertion(drop=("jti",)),
                    agent.assertion(extra={"exp": int(time.time()) + 3600})):
        assert agent.exchange(refused) == 401
    other = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    forged, agent.key = agent.key, other
    assert agent.exchange() == 401, "signed by another key"
    agent.key = forged
    fake.control("classic/settings", {"propagation": 2})
    late = Agent(fake, token, "cpu-2")
    assert [late.exchange(), late.exchange(), late.exchange()] == [400, 400, 200], "registration propagation"
    assert agent.exchange() == 200
    assert agent.open(version="2.300.0")[0] == 400, "below the version floor"
    assert agent.open()[0] == 200
    assert agent.open()[0] == 409, "one session per agent"
    assert agent.call("DELETE", agent.broker + "/session")[0] == 200
    assert agent.open()[0] == 200


def test_encrypted_delivery_acquire_renew_with_the_job_token_and_single_use(fake):
    token = installation(fake)
    agent = ready_agent(fake, token, "cpu-1")
    assert agent.session["encryptionKey"]["encrypted"] is True
    assert agent.poll()[0] == 202, "nothing queued"
    plan = fake.control("classic/enqueue", {"repository": "acme/widgets", "runId": 41, "jobName": "build (linux, 2)"})["planIds"][0]
    status, message, _ = agent.poll()
    assert status == 200
    with pytest.raises(ValueError):
        json.loads(message["body"])  # encrypted on the wire
    job = agent.decrypt(message["body"])
    assert set(job) == {"runner_request_id", "run_service_url", "billing_owner_id"}
    run_service = job["run_service_url"]
    status, payload, headers = agent.call("POST", run_service + "/acquirejob",
                                          {"jobMessageId": job["runner_request_id"], "runnerOS": "Linux", "billingOwnerId": "x"})
    assert status == 200 and headers["x-plan-id"] == plan == payload["plan"]["planId"]
    endpoint = next(e for e in payload["resources"]["endpoints"] if e["name"] == "SystemVssConnection")
    job_token = endpoint["authorization"]["parameters"]["AccessToken"]
    run = {entry["k"]: entry["v"] for entry in payload["contextData"]["github"]["d"]}
    assert run["run_id"] == "41" and run["repository"] == "acme/widgets"
    assert payload["jobDisplayName"] == "build (linux, 2)", "the display name a webhook's workflow_job.name would carry"
    renew = {"planId": plan, "jobId": job["runner_request_id"]}
    assert agent.call("POST", run_service + "/renewjob", renew)[0] == 401, "the session token is refused"
    status, body, _ = agent.call("POST", run_service + "/renewjob", renew, bearer=job_token)
    assert status == 200 and body["lockedUntil"]
    # Single use: the runner record is gone; the session says so with one empty 200, then 401.
    runners = fake.control("state")["runners"]
    assert "cpu-1" not in runners
    status, body, _ = agent.poll()
    assert status == 200 and body is None
    assert agent.poll()[0] == 401
    assert agent.exchange() == 401
    assert fake.control("classic/run", {"requestId": job["runner_request_id"], "result": "succeeded"})["conclusion"] == "success"
    assert agent.call("POST", run_service + "/renewjob", renew, bearer=job_token)[0] == 404, "the lock is gone once completed"
    # Recycled under the same name: a new agent, a new session.
    again = ready_agent(fake, token, "cpu-1")
    assert again.id != agent.id


def test_stale_run_service_url_delivery_window_and_session_delete_returns_work(fake):
    token = installation(fake)
    first, second = ready_agent(fake, token, "a"), ready_agent(fake, token, "b")
    fake.control("classic/enqueue", {"count": 2})
    one, two = first.next_job(), second.next_job()
    status, _, _ = first.call("POST", two["run_service_url"] + "/acquirejob", {"jobMessageId": one["runner_request_id"]})
    assert status == 404, "another delivery's run service URL"
    assert second.call("DELETE", second.broker + "/session")[0] == 200
    assert second.open()[0] == 200
    assert second.next_job()["runner_request_id"] == two["runner_request_id"], "a deleted session's delivery is handed out again"
    fake.control("classic/settings", {"window": 0})
    assert first.call("POST", one["run_service_url"] + "/acquirejob", {"jobMessageId": one["runner_request_id"]})[0] == 404


def test_fan_out_distinct_deliveries_sibling_completion_and_the_false_green(fake):
    token = installation(fake)
    fake.control("classic/settings", {"singleUse": False, "rawKey": True})
    agents = [ready_agent(fake, token, f"s-{n}") for n in range(3)]
    assert agents[0].session["encryptionKey"]["encrypted"] is False
    plan = fake.control("classic/enqueue", {"fanout": 3})["planIds"][0]
    jobs = [agent.next_job() for agent in agents]
    assert len({job["runner_request_id"] for job in jobs}) == 3, "distinct request ids"
    tokens = []
    for agent, job in zip(agents, jobs):
        status, payload, _ = agent.call("POST", job["run_service_url"] + "/acquirejob", {"jobMessageId": job["runner_request_id"]})
        assert status == 200 and payload["plan"]["planId"] == plan
        tokens.append(next(e for e in payload["resources"]["endpoints"]
                           if e["name"] == "SystemVssConnection")["authorization"]["parameters"]["AccessToken"])
    # The winner's worker runs and fails; the siblings are completed with its result.
    fake.control("classic/run", {"requestId": jobs[0]["runner_request_id"], "result": "failed"})
    for job, job_token in zip(jobs[1:], tokens[1:]):
        status, _, _ = agents[0].call("POST", job["run_service_url"] + "/completejob",
                                      {"planId": plan, "jobId": job["runner_request_id"], "result": "failed"}, bearer=job_token)
        assert status == 204
    state = fake.control("classic/state")["plans"][plan]
    assert state["conclusion"] == "failure" and state["falseGreen"] is False
    # The trap: completing every delivery of a plan that never ran concludes it green.
    plan = fake.control("classic/enqueue", {})["planIds"][0]
    job = agents[1].next_job()
    _, payload, _ = agents[1].call("POST", job["run_service_url"] + "/acquirejob", {"jobMessageId": job["runner_request_id"]})
    job_token = payload["resources"]["endpoints"][0]["authorization"]["parameters"]["AccessToken"]
    agents[1].call("POST", job["run_service_url"] + "/completejob", {"planId": plan, "jobId": job["runner_request_id"],
                                                                    "result": "canceled"}, bearer=job_token)
    state = fake.control("classic/state")["plans"][plan]
    assert state["conclusion"] == "success" and state["falseGreen"] is True


def test_dotnet_style_blob_and_deregistration_kills_the_session(fake):
    token = installation(fake)
    fake.control("classic/settings", {"dotnetStyle": True})
    agent = ready_agent(fake, token, "dn-1")  # PascalCase rsaparams behind a BOM decode to the same key
    assert fake.call("DELETE", f"/api/v3/orgs/acme/actions/runners/{agent.id}", headers={"Authorization": "Bearer " + token})[0] == 204
    status, body, _ = agent.poll()
    assert status == 200 and body is None
    assert agent.poll()[0] == 401


def test_a_public_url_is_the_base_of_every_url_handed_out(tmp_path):
    """Behind a front (nghttpx for HTTP/2 over TLS) the broker, run service and registration URLs
    name the front, not the fake's own port."""
    from test_fake_github import Fake
    front = Fake(tmp_path, extra=("--public-url", "https://front.example:8443/"))
    try:
        agent = Agent(front, installation(front), "fronted")
        assert agent.broker.startswith("https://front.example:8443/")
        assert not agent.broker.startswith(front.base)
    finally:
        front.close()


def test_runner_groups_are_listed_by_page_and_registration_needs_a_known_group(fake):
    token = installation(fake)
    fake.control("groups", {f"pool-{n}": 100 + n for n in range(150)})
    auth = {"Authorization": "Bearer " + token}
    seen = []
    for page in (1, 2, 3):
        status, body, _ = fake.call("GET", f"/api/v3/orgs/acme/actions/runner-groups?per_page=100&page={page}", headers=auth)
        assert status == 200 and body["total_count"] == 151
        seen += [(g["name"], g["id"]) for g in body["runner_groups"]]
    assert len(seen) == 151 and ("Default", 1) in seen and ("pool-149", 249) in seen
    status, _, _ = fake.call("GET", "/api/v3/orgs/acme/actions/runner-groups")
    assert status == 401, "the installation token is required"
    status, body, _ = fake.call("POST", "/api/v3/orgs/acme/actions/runners/generate-jitconfig",
                                {"name": "lost", "runner_group_id": 99999, "labels": ["linux"], "work_folder": "_work"}, headers=auth)
    assert status == 404, body


def test_a_slow_acquire_answer_comes_after_the_acquisition_is_recorded(fake):
    token = installation(fake)
    agent = ready_agent(fake, token, "slow")
    plan = fake.control("classic/enqueue", {})["planIds"][0]
    job = agent.next_job()
    fake.control("classic/settings", {"acquireDelay": 1.5})
    answered = {}

    def acquire():
        answered["status"] = agent.call("POST", job["run_service_url"] + "/acquirejob", {"jobMessageId": job["runner_request_id"]})[0]
    thread = threading.Thread(target=acquire)
    started = time.monotonic()
    thread.start()
    wait_for(lambda: any(d.get("acquiredBy") for d in fake.control("classic/state")["plans"][plan]["deliveries"].values()),
             timeout=5, what="the acquisition recorded")
    assert "status" not in answered, "recorded before the answer left"
    thread.join(timeout=10)
    assert answered["status"] == 200 and time.monotonic() - started >= 1.5

"""`agc worker` (spec/agc.md section 6) with a fake runner (Tests/fakes/fake_runner.py) in a
temporary RUNNER_HOME: the files it writes, the command line and frame the runner gets, signal
relay, the grace period and exit codes. Assertions are on what the fake runner reported."""
import base64
import json
import os
import signal
import subprocess
import sys

import pytest

from conftest import wait_for
from test_agc import world  # noqa: F401  (the fixture)

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
AGC = os.environ.get("AGC_BIN") or os.path.join(ROOT, ".build", "debug", "agc")
FAKE = os.path.abspath(os.path.join(ROOT, "Tests", "fakes", "fake_runner.py"))
FILES = {".runner": '{"agentId": 7, "serverUrl": "https://pipelines.example"}', ".credentials": '{"scheme": "OAuth"}',
         ".credentials_rsaparams": '{"modulus": "AQAB"}'}


def blob(files, bom=False):
    body = json.dumps({name: base64.b64encode(text.encode()).decode() for name, text in files.items()}).encode()
    return base64.b64encode((b"\xef\xbb\xbf" if bom else b"") + body).decode()


@pytest.fixture
def home(tmp_path):
    runner = tmp_path / "home"
    (runner / "bin").mkdir(parents=True)
    for script in (runner / "run.sh", runner / "bin" / "Runner.Worker"):
        script.write_text(f"#!/bin/sh\nexec {sys.executable} {FAKE} \"$@\"\n")
        script.chmod(0o755)
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    return runner, secrets, tmp_path / "report.json"


def worker(home, jit=None, payload=None, mode="scaleset", wait=True, **env):
    runner, secrets, report = home
    if jit is not None:
        (secrets / "jitconfig").write_text(jit)
    if payload is not None:
        (secrets / "payload").write_bytes(payload.encode())
    environment = {"PATH": os.environ["PATH"], "RUNNER_HOME": str(runner), "AGC_SECRETS_DIR": str(secrets), "AGC_WORKER_MODE": mode,
                   "FAKE_RUNNER_REPORT": str(report), **env}
    process = subprocess.Popen([AGC, "worker"], env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if not wait:
        return process
    out, err = process.communicate(timeout=60)
    return process.returncode, out, err


def report(home):
    return json.loads(home[2].read_text())


def test_scaleset_writes_the_files_and_runs_run_sh_with_the_blob(home, tmp_path):
    runner, _, _ = home
    ca = tmp_path / "proxy-ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nproxy\n-----END CERTIFICATE-----\n")
    files = {".Runner": FILES[".runner"], ".credentials": FILES[".credentials"], ".CREDENTIALS_RSAPARAMS": FILES[".credentials_rsaparams"],
             "../escaped": "x", "notes.txt": "y"}
    jit = blob(files, bom=True)
    code, out, err = worker(home, jit, FAKE_RUNNER_EXIT="100", PROXY_CA_CERT_PATH=str(ca))
    assert code == 0, err
    seen = report(home)
    assert seen["argv"] == ["--jitconfig", jit] and os.path.realpath(seen["cwd"]) == os.path.realpath(runner)
    assert seen["files"] == {name: "0o600" for name in FILES}
    for name, text in FILES.items():
        assert (runner / name).read_text() == text
    assert not (tmp_path / "escaped").exists() and not (runner / "notes.txt").exists(), "only the three files, nowhere else"
    bundle = seen["env"]["SSL_CERT_FILE"]
    assert open(bundle).read().endswith(ca.read_text()), "the proxy CA joins the system bundle"
    assert not {"AGC_SECRETS_DIR", "AGC_WORKER_MODE"} & set(seen["env"]), "the wrapper's own settings stay with it"
    assert jit not in out + err, "the blob is never printed"


@pytest.mark.parametrize("runner_code, expected", [("101", 0), ("102", 102), ("1", 1)])
def test_exit_codes(home, runner_code, expected):
    code, _, err = worker(home, blob(FILES), FAKE_RUNNER_EXIT=runner_code)
    assert code == expected, err


@pytest.mark.parametrize("payload", ['{"jobId": "é中😀", "steps": []}', "", json.dumps({"blob": "x" * (1 << 20)})])
def test_classic_frame_reaches_the_runner_byte_for_byte(home, payload):
    code, _, err = worker(home, blob(FILES), payload=payload, mode="classic")
    assert code == 0, err
    seen = report(home)
    assert seen["argv"] == ["spawnclient", "3", "4"]
    frame = seen["frame"]
    assert frame["type"] == 1 and frame["length"] == len(payload.encode("utf-16-le")) == frame["bodyBytes"]
    assert frame["payload"] == payload


def test_sigterm_reaches_the_runner(home):
    process = worker(home, blob(FILES), wait=False, FAKE_RUNNER_WAIT="1")
    wait_for(lambda: home[2].exists(), timeout=20, what="the runner started")
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=20) == 143, "the runner's own exit on SIGTERM, passed through"
    assert (home[2].parent / "report.json.term").read_text() == "SIGTERM"


def test_a_runner_that_ignores_sigterm_is_killed_after_the_grace(home):
    process = worker(home, blob(FILES), wait=False, FAKE_RUNNER_WAIT="1", FAKE_RUNNER_IGNORE_TERM="1", WORKER_SHUTDOWN_GRACE="1s")
    wait_for(lambda: home[2].exists(), timeout=20, what="the runner started")
    pid = report(home)["pid"]
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=20) == 128 + signal.SIGKILL
    assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"


@pytest.mark.parametrize("jit, message", [
    (None, "cannot read the job Secret's jitconfig"),
    ("not-base64!", "the JIT config is not base64"),
    (base64.b64encode(b'{".runner": "cg=="}').decode(), "the JIT config has no .credentials"),
])
def test_a_missing_or_corrupt_secret_is_exit_2_with_a_clear_error(home, jit, message):
    code, out, err = worker(home, jit)
    assert code == 2 and message in err, err
    assert not home[2].exists(), "no runner started"
    if jit:
        assert jit not in err


def test_the_fake_runner_reads_a_frame_on_its_own(tmp_path):
    """The fake runner, tested without the wrapper: a frame built here from the spec's layout."""
    import struct
    report_path = tmp_path / "r.json"
    payload = '{"x": "é😀"}'
    body = payload.encode("utf-16-le")
    frame_r, frame_w = os.pipe()
    answer_r, answer_w = os.pipe()
    process = subprocess.Popen([sys.executable, FAKE, "spawnclient", "3", "4"], close_fds=False,
                               env={"FAKE_RUNNER_REPORT": str(report_path), "RUNNER_HOME": str(tmp_path)},
                               preexec_fn=lambda: (os.dup2(frame_r, 3), os.dup2(answer_w, 4)))
    os.close(frame_r)
    os.close(answer_w)
    with os.fdopen(frame_w, "wb") as pipe:  # os.pipe() ends are not inherited; only the dup2 copies are
        pipe.write(struct.pack("<II", 1, len(body)) + body)
    with os.fdopen(answer_r, "rb") as answers:
        assert len(answers.read()) == 100000
    assert process.wait(timeout=20) == 0
    assert json.loads(report_path.read_text())["frame"] == {"type": 1, "length": len(body), "bodyBytes": len(body), "payload": payload}


def test_a_job_runs_end_to_end_through_the_pods_own_command(world, home):
    """The fake GitHub assigns a job; the AGC creates its pod; the test plays the kubelet: it
    mounts the pod's Secret, runs the pod's command with the pod's environment (through
    `agc worker` and the fake runner, which takes its job at GitHub), and reports the exit."""
    from test_agc import workers
    kube, github, start = world
    start([{"name": "cpu", "runnerLabels": ["linux"], "completedPodTTL": "0s"}])
    wait_for(lambda: github.control("state")["scaleSets"], timeout=20, what="scale set created")
    job = github.control("enqueue", {"scaleSet": "cpu"})["jobIds"][0]
    pod = wait_for(lambda: workers(kube) and workers(kube)[0], timeout=20, what="the worker pod")
    runner = next(c for c in pod["spec"]["containers"] if c["name"] == "runner")
    mount = next(m for m in runner["volumeMounts"] if m["name"] == "job-secret")
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "job-secret")
    status, secret = kube.call("GET", f"/api/v1/namespaces/team-a/secrets/{volume['secret']['secretName']}")
    assert status == 200 and mount["readOnly"] is True
    _, secrets, report_path = home
    for key, value in secret["data"].items():  # what the kubelet would mount
        (secrets / key).write_bytes(base64.b64decode(value))
    assert runner["command"] == ["agc", "worker"]
    env = {e["name"]: e["value"] for e in runner["env"]}
    name = pod["metadata"]["name"]
    kube.call("PATCH", f"/api/v1/namespaces/team-a/pods/{name}/status", {"status": {"phase": "Running", "containerStatuses": [
        {"name": "runner", "state": {"running": {"startedAt": pod["metadata"]["creationTimestamp"]}}}]}},
        content_type="application/merge-patch+json")
    environment = {**env, "PATH": os.environ["PATH"], "RUNNER_HOME": str(home[0]), "AGC_SECRETS_DIR": str(secrets),
                   "FAKE_RUNNER_REPORT": str(report_path), "FAKE_RUNNER_RUN_JOB": "1", "NO_PROXY": "127.0.0.1"}
    result = subprocess.run([AGC, *runner["command"][1:]], env=environment, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert report(home)["ranJob"] == job and report(home)["env"]["HTTPS_PROXY"] == env["HTTPS_PROXY"]
    kube.call("PATCH", f"/api/v1/namespaces/team-a/pods/{name}/status", {"status": {"phase": "Succeeded", "containerStatuses": [
        {"name": "runner", "state": {"terminated": {"exitCode": result.returncode}}}]}}, content_type="application/merge-patch+json")
    assert github.control("state")["jobs"][job]["state"] == "completed"
    wait_for(lambda: not workers(kube), timeout=20, what="the finished pod reaped")
    set_id = str(github.control("state")["scaleSets"][0]["id"])
    wait_for(lambda: all(m["deleted"] for m in github.control("state")["messages"][set_id]), timeout=20, what="every message deleted")

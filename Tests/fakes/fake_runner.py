#!/usr/bin/env python3
"""A stand-in for the actions runner that `agc worker` starts (spec/agc.md section 6), written
from the spec, not from the Swift code. Installed as $RUNNER_HOME/run.sh (scale set: it gets
`--jitconfig <blob>`) and $RUNNER_HOME/bin/Runner.Worker (classic: `spawnclient 3 4`, the job
frame on fd 3, fd 4 its answer channel).

Given `--jitconfig`, it also does what a real runner does with its one job, against the fake
GitHub named by the blob's `.runner` serverUrl: the job of the runner `<set>-<jobId>` is
started and completed there (through the fake's control API, standing in for the broker
session a real runner opens), with result $FAKE_RUNNER_RESULT (default succeeded).

It writes what it saw as JSON to $FAKE_RUNNER_REPORT: argv, cwd, environment, the modes of the
runner files, and for classic the frame parsed byte by byte (uint32 LE type, uint32 LE length,
UTF-16LE payload). $FAKE_RUNNER_EXIT is its exit code (default 0); with $FAKE_RUNNER_WAIT it
waits for SIGTERM (and exits 143 on it) unless $FAKE_RUNNER_IGNORE_TERM, when it ignores it.
"""
import json
import os
import signal
import stat
import struct
import sys
import time


def read_frame():
    data = b""
    with os.fdopen(3, "rb") as pipe:
        while True:
            chunk = pipe.read(65536)
            if not chunk:
                break
            data += chunk
    if len(data) < 8:
        return {"error": f"short frame: {len(data)} bytes"}
    kind, length = struct.unpack("<II", data[:8])
    body = data[8:]
    return {"type": kind, "length": length, "bodyBytes": len(body), "payload": body.decode("utf-16-le") if len(body) == length else None}


def run_the_job(blob):
    """The runner side of GitHub's protocol, as far as the fake GitHub models it."""
    import base64
    import urllib.request
    files = json.loads(base64.b64decode(blob).lstrip(b"\xef\xbb\xbf"))
    runner = json.loads(base64.b64decode(files[".runner"]))
    name, server = runner["agentName"], runner["serverUrl"]
    base = server[: -len("/actions")] if server.endswith("/actions") else server
    job = name.split("-", 1)[1]
    for step, body in (("start", {"jobId": job, "runnerName": name}),
                       ("complete", {"jobId": job, "result": os.environ.get("FAKE_RUNNER_RESULT", "succeeded")})):
        request = urllib.request.Request(f"{base}/control/{step}", data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
    return job


def main():
    report = {"argv": sys.argv[1:], "cwd": os.getcwd(), "env": dict(os.environ), "pid": os.getpid()}
    home = os.environ.get("RUNNER_HOME", os.getcwd())
    report["files"] = {name: oct(stat.S_IMODE(os.stat(os.path.join(home, name)).st_mode))
                       for name in (".runner", ".credentials", ".credentials_rsaparams") if os.path.exists(os.path.join(home, name))}
    if sys.argv[1:2] == ["spawnclient"]:
        report["frame"] = read_frame()
        with os.fdopen(4, "wb") as answer:
            answer.write(b"x" * 100000)  # more than a pipe holds: the wrapper must drain it
    if sys.argv[1:2] == ["--jitconfig"] and os.environ.get("FAKE_RUNNER_RUN_JOB"):
        report["ranJob"] = run_the_job(sys.argv[2])
    path = os.environ["FAKE_RUNNER_REPORT"]
    termed = {"got": False}

    def on_term(number, _):
        termed["got"] = True
    if os.environ.get("FAKE_RUNNER_WAIT"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN if os.environ.get("FAKE_RUNNER_IGNORE_TERM") else on_term)
    with open(path + ".tmp", "w") as f:
        json.dump(report, f)
    os.rename(path + ".tmp", path)
    if os.environ.get("FAKE_RUNNER_WAIT"):
        deadline = time.monotonic() + 60
        while not termed["got"] and time.monotonic() < deadline:
            signal.pause() if not os.environ.get("FAKE_RUNNER_IGNORE_TERM") else time.sleep(0.05)
        if termed["got"]:
            with open(path + ".term", "w") as f:
                f.write("SIGTERM")
            sys.exit(143)
    sys.exit(int(os.environ.get("FAKE_RUNNER_EXIT", "0")))


if __name__ == "__main__":
    main()

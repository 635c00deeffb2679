#!/usr/bin/env python3
"""A stand-in for the actions runner that `agc worker` starts (spec/agc.md section 6), written
from the spec, not from the Swift code. Installed as $RUNNER_HOME/run.sh (scale set: it gets
`--jitconfig <blob>`) and $RUNNER_HOME/bin/Runner.Worker (classic: `spawnclient 3 4`, the job
frame on fd 3, fd 4 its answer channel).

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


def main():
    report = {"argv": sys.argv[1:], "cwd": os.getcwd(), "env": dict(os.environ), "pid": os.getpid()}
    home = os.environ.get("RUNNER_HOME", os.getcwd())
    report["files"] = {name: oct(stat.S_IMODE(os.stat(os.path.join(home, name)).st_mode))
                       for name in (".runner", ".credentials", ".credentials_rsaparams") if os.path.exists(os.path.join(home, name))}
    if sys.argv[1:2] == ["spawnclient"]:
        report["frame"] = read_frame()
        with os.fdopen(4, "wb") as answer:
            answer.write(b"x" * 100000)  # more than a pipe holds: the wrapper must drain it
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

#!/usr/bin/env python3
"""Idle classic virtual sessions (spec/agc.md section 3: <= 12 KiB of AGC RSS per idle session at
1,000, its HTTP transfer included): for each N, a fresh release `agc` with one classic group of
`minListeners = maxListeners = N` against the fake GitHub (broker long polls held `--hold` s, as
GitHub holds them ~50 s) and the fake API server. Once all N sessions poll it waits `--settle`
seconds, then reads the AGC's RSS, and over `--window` seconds its CPU and the broker requests
the fake saw. Reports, per N: RSS, (RSS - RSS at N=1) / (N - 1) per session, polls per hour per
session, CPU seconds per hour.

The fake speaks HTTP/1.1, so each held poll is a connection of its own; against GitHub (HTTP/2)
polls share connections, so this is the upper bound of the transport's share.
Loopback only; everything it starts it stops. `make bench-agc-classic` runs it with the defaults.
"""
import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "Tests" / "integration"))
sys.path.insert(0, str(ROOT / "bench"))
from agc_burst import cpu_seconds, rss_kib, start_agc  # noqa: E402
from conftest import wait_for  # noqa: E402
from test_agc import GitHubFake  # noqa: E402
from test_gmc_controller import Fake as KubeFake  # noqa: E402


def live_sessions(github):
    return sum(1 for s in github.control("classic/state")["sessions"].values() if not s["killed"])


def polls(github):
    return sum(1 for c in github.control("state")["calls"] if c["endpoint"] == "broker_poll")


def one(agc, sessions, hold, settle, window):
    with tempfile.TemporaryDirectory(prefix="agc-classic-") as tmp:
        kube, github, process = KubeFake(), GitHubFake(Path(tmp), hold=hold, extra=("--agent-key-bits", "1024")), None
        try:
            process = start_agc(agc, kube, github, max_workers=10,
                                group={"acquisition": "classic", "minListeners": sessions, "maxListeners": sessions})
            started = time.monotonic()
            wait_for(lambda: live_sessions(github) >= sessions, timeout=600, interval=0.5, what=f"{sessions} sessions")
            ready = time.monotonic() - started
            time.sleep(settle)  # a measurement, not a test: let start-up allocations settle
            rss = rss_kib(process.pid)
            cpu, seen, t0 = cpu_seconds(process.pid), polls(github), time.monotonic()
            time.sleep(window)
            elapsed = time.monotonic() - t0
            return {"sessions": sessions, "ready_s": round(ready, 1), "rss_kib": rss,
                    "polls_per_hour_per_session": round((polls(github) - seen) * 3600 / elapsed / sessions, 1),
                    "cpu_s_per_hour": round((cpu_seconds(process.pid) - cpu) * 3600 / elapsed, 2)}
        finally:
            if process and process.poll() is None:
                process.terminate()
                process.wait(timeout=30)
            github.stop()
            kube.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agc", default=str(ROOT / ".build" / "release" / "agc"))
    parser.add_argument("--sessions", default="1,100,1000")
    parser.add_argument("--hold", type=float, default=50.0, help="seconds the fake holds an empty poll (GitHub: ~50)")
    parser.add_argument("--settle", type=float, default=10.0)
    parser.add_argument("--window", type=float, default=120.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = [one(args.agc, int(n), args.hold, args.settle, args.window) for n in args.sessions.split(",")]
    base = rows[0]["rss_kib"]
    for row in rows:
        row["kib_per_session"] = round((row["rss_kib"] - base) / (row["sessions"] - rows[0]["sessions"]), 2) if row is not rows[0] else None
    if args.json:
        print(json.dumps(rows))
        return
    print(f"{'sessions':>8} {'ready s':>8} {'RSS KiB':>9} {'KiB/session':>12} {'polls/h/session':>16} {'CPU s/h':>8}")
    for row in rows:
        per = "" if row["kib_per_session"] is None else f"{row['kib_per_session']:.2f}"
        print(f"{row['sessions']:>8} {row['ready_s']:>8} {row['rss_kib']:>9} {per:>12} {row['polls_per_hour_per_session']:>16} "
              f"{row['cpu_s_per_hour']:>8}")


if __name__ == "__main__":
    main()

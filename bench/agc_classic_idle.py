#!/usr/bin/env python3
"""Idle classic virtual sessions (spec/agc.md section 3: <= 12 KiB of AGC RSS per idle session at
1,000, its HTTP transfer included): for each N, a fresh release `agc` with one classic group of
`minListeners = maxListeners = N` against the fake GitHub (broker long polls held `--hold` s, as
GitHub holds them ~50 s) and the fake API server. Once all N sessions poll it waits `--settle`
seconds, then reads the AGC's RSS, and over `--window` seconds its CPU and the broker requests
the fake saw. Reports, per N: RSS, (RSS - RSS at N=1) / (N - 1) per session, polls per hour per
session, CPU seconds per hour.

The fake speaks HTTP/1.1, so each held poll is a connection of its own. GitHub speaks HTTP/2
over TLS, where polls share connections: `--http2` puts nghttpx (Debian's nghttp2-proxy) in
front of the fake, TLS with a throwaway certificate and HTTP/2 to the AGC, HTTP/1.1 to the fake,
so the AGC's side is what it is against GitHub. RSS is read twice: after `--settle`, and at the
end of the window (after the AGC's once-a-minute return of free heap, with the default window).
Loopback only; everything it starts it stops. `make bench-agc-classic` runs it with the defaults.
"""
import contextlib
import socket
import subprocess
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


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def http2_front(tmp, backend_port, port):
    """nghttpx on 127.0.0.1:port: TLS + HTTP/2 (100 streams per connection, as GitHub allows) in
    front of the fake; one backend connection per held poll, timeouts above the hold."""
    key, cert = tmp / "front.key", tmp / "front.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    front = subprocess.Popen(["nghttpx", f"--frontend=127.0.0.1,{port}", f"--backend=127.0.0.1,{backend_port};;proto=http/1.1",
                              "--workers=1", "--backend-connections-per-host=4000", "--backend-read-timeout=120s",
                              "--frontend-http2-read-timeout=600s", "--frontend-read-timeout=600s", "--stream-read-timeout=0",
                              "--frontend-http2-max-concurrent-streams=100", "--no-ocsp", "--errorlog-file=/dev/null",
                              str(key), str(cert)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: _listening(port), timeout=20, what="nghttpx")
        yield cert
    finally:
        front.terminate()
        front.wait(timeout=10)


def _listening(port):
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def one(agc, sessions, hold, settle, window, http2):
    with tempfile.TemporaryDirectory(prefix="agc-classic-") as tmp, contextlib.ExitStack() as stack:
        extra, port = ("--agent-key-bits", "1024"), free_port()
        if http2:
            extra += ("--public-url", f"https://127.0.0.1:{port}")
        kube, github, process = KubeFake(), GitHubFake(Path(tmp), hold=hold, extra=extra), None
        try:
            api_url, agc_extra = None, ()
            if http2:
                cert = stack.enter_context(http2_front(Path(tmp), int(github.base.rsplit(":", 1)[1]), port))
                api_url, agc_extra = f"https://127.0.0.1:{port}/api/v3", ("--github-ca", str(cert))
            process = start_agc(agc, kube, github, max_workers=10, api_url=api_url, extra=agc_extra,
                                group={"acquisition": "classic", "minListeners": sessions, "maxListeners": sessions})
            started = time.monotonic()
            wait_for(lambda: live_sessions(github) >= sessions, timeout=600, interval=0.5, what=f"{sessions} sessions")
            ready = time.monotonic() - started
            time.sleep(settle)  # a measurement, not a test: let start-up allocations settle
            rss = rss_kib(process.pid)
            cpu, seen, t0 = cpu_seconds(process.pid), polls(github), time.monotonic()
            time.sleep(window)
            elapsed = time.monotonic() - t0
            return {"sessions": sessions, "ready_s": round(ready, 1), "rss_kib": rss, "rss_end_kib": rss_kib(process.pid),
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
    parser.add_argument("--http2", action="store_true", help="TLS + HTTP/2 to the AGC through nghttpx, as GitHub serves it")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = [one(args.agc, int(n), args.hold, args.settle, args.window, args.http2) for n in args.sessions.split(",")]
    for key in ("rss_kib", "rss_end_kib"):
        base = rows[0][key]
        for row in rows:
            per = round((row[key] - base) / (row["sessions"] - rows[0]["sessions"]), 2) if row is not rows[0] else None
            row["kib_per_session" if key == "rss_kib" else "kib_per_session_end"] = per
    if args.json:
        print(json.dumps(rows))
        return
    print(f"{'sessions':>8} {'ready s':>8} {'RSS KiB':>9} {'KiB/session':>12} {'RSS end':>9} {'KiB/session':>12} "
          f"{'polls/h/session':>16} {'CPU s/h':>8}")
    for row in rows:
        per = "" if row["kib_per_session"] is None else f"{row['kib_per_session']:.2f}"
        end = "" if row["kib_per_session_end"] is None else f"{row['kib_per_session_end']:.2f}"
        print(f"{row['sessions']:>8} {row['ready_s']:>8} {row['rss_kib']:>9} {per:>12} {row['rss_end_kib']:>9} {end:>12} "
              f"{row['polls_per_hour_per_session']:>16} {row['cpu_s_per_hour']:>8}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""`make bench`: connect-flood against egress-proxy, squid, tinyproxy and a direct connection,
in one run on this machine, printed as one table with ratios. Loopback only; everything it
starts is stopped at the end.

Each measure runs --runs times, rounds interleaved across the targets so machine drift hits
all of them alike, and the median is reported.
"""
import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SQUID_PORT = 23128       # below the ephemeral range, so client sockets cannot take it first
TINYPROXY_PORT = 23129
EGRESS_PORT = 23130      # and 23131 for its admin endpoint


def log(message):
    print(message, file=sys.stderr, flush=True)


class Process:
    def __init__(self, args, **kwargs):
        self.popen = subprocess.Popen(args, **kwargs)

    @property
    def pid(self):
        return self.popen.pid

    def stop(self):
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def wait_port(port, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(["ss", "-Htln", f"sport = :{port}"], capture_output=True, text=True).stdout
        if out.strip():
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def flood(args, *mode_args):
    result = subprocess.run([args.flood, *mode_args, "--json"], capture_output=True, text=True, timeout=3600)
    if result.returncode != 0:
        raise RuntimeError(f"connect-flood {' '.join(mode_args)} failed: {result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--proxy-bin", default=os.path.join(ROOT, ".build/release/egress-proxy"))
    parser.add_argument("--flood", default=os.path.join(ROOT, ".build/release/connect-flood"))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--size", default="2G")
    parser.add_argument("--hold", type=int, default=5000)
    parser.add_argument("--long", action="store_true", help="also 8,000 tunnels held 60 s and 1,000,000 tunnels in a row")
    parser.add_argument("--json-out", default=os.path.join(ROOT, ".build-bench", "results.json"))
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="egress-bench-")
    processes = []
    try:
        echo = Process([args.flood, "serve", "--loops", "1"], stdout=subprocess.PIPE, text=True)
        processes.append(echo)
        echo_address = json.loads(echo.popen.stdout.readline())["echo"]
        config = os.path.join(work, "egress.yaml")
        with open(config, "w") as f:
            f.write("listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\ntenants:\n  - name: bench\n"
                    "    allow: [{cidr: 127.0.0.0/8, ports: [\"*\"]}]\n    allowPrivate: [127.0.0.0/8]\n")
        # Audit lines (info) are part of what the proxy does per tunnel; they go straight to a
        # file, as in production, with no process of ours copying them on the shared cores.
        audit = open(os.path.join(work, "egress.log"), "w")
        ours = Process([args.proxy_bin, "--config", config, "--log-level", "info",
                        "--listen", f"127.0.0.1:{EGRESS_PORT}", "--admin", f"127.0.0.1:{EGRESS_PORT + 1}"], stderr=audit)
        processes.append(ours)
        ours_address = f"127.0.0.1:{EGRESS_PORT}"
        wait_port(EGRESS_PORT)
        squid = Process([os.path.join(ROOT, "bench/peers/squid.sh"), str(SQUID_PORT), os.path.join(work, "squid")],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        processes.append(squid)
        tiny = Process([os.path.join(ROOT, "bench/peers/tinyproxy.sh"), str(TINYPROXY_PORT), os.path.join(work, "tinyproxy")],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        processes.append(tiny)
        wait_port(SQUID_PORT)
        wait_port(TINYPROXY_PORT)
        for name, process in [("squid", squid), ("tinyproxy", tiny)]:
            if process.popen.poll() is not None:
                raise RuntimeError(f"{name} exited at start (is another copy holding its port?)")

        targets = {
            "egress-proxy": (["--proxy", ours_address], ours.pid),
            "squid": (["--proxy", f"127.0.0.1:{SQUID_PORT}"], squid.pid),
            "tinyproxy": (["--proxy", f"127.0.0.1:{TINYPROXY_PORT}"], tiny.pid),
            "direct": (["--direct"], None),
        }
        results = {name: {"rate": [], "p99": [], "throughput": [], "hold": []} for name in targets}

        for run in range(args.runs):
            for name, (where, _) in targets.items():
                r = flood(args, "rate", *where, "--target", echo_address, "--concurrency", "64", "--duration", str(args.duration))
                log(f"rate run {run + 1} {name}: {r['tunnels_per_second']}/s p99 {r['p99_ms']} ms failures {r['failures']}")
                results[name]["rate"].append(r["tunnels_per_second"])
                results[name]["p99"].append(r["p99_ms"])
        for run in range(args.runs):
            for name, (where, _) in targets.items():
                r = flood(args, "throughput", *where, "--target", echo_address, "--size", args.size)
                log(f"throughput run {run + 1} {name}: {r['mb_per_second']} MB/s failures {r['failures']}")
                results[name]["throughput"].append(r["mb_per_second"])
        for name, (where, pid) in targets.items():
            if pid is None:
                continue
            r = flood(args, "hold", *where, "--target", echo_address, "--tunnels", str(args.hold), "--seconds", "2",
                      "--pid", str(pid))
            log(f"hold {args.hold} {name}: {r}")
            results[name]["hold"].append(r)

        # Latency at half our maximum rate, ours and direct at the same open-loop rate.
        half = round(statistics.median(results["egress-proxy"]["rate"]) / 2)
        latency = {}
        for name in ["egress-proxy", "direct"]:
            r = flood(args, "rate", *targets[name][0], "--target", echo_address, "--rate", str(half),
                      "--duration", str(args.duration))
            log(f"open loop {half}/s {name}: p99 {r['p99_ms']} ms, {r['tunnels_per_second']}/s, failures {r['failures']}")
            latency[name] = r

        extra = {}
        if args.long:
            r = flood(args, "hold", *targets["egress-proxy"][0], "--target", echo_address, "--tunnels", "8000",
                      "--seconds", "60", "--pid", str(ours.pid))
            log(f"hold 8000 for 60 s: {r}")
            extra["hold_8000_60s"] = r
            first = flood(args, "rate", *targets["egress-proxy"][0], "--target", echo_address, "--concurrency", "64",
                          "--count", "10000", "--duration", "3600", "--pid", str(ours.pid))
            rest = flood(args, "rate", *targets["egress-proxy"][0], "--target", echo_address, "--concurrency", "64",
                         "--count", "990000", "--duration", "3600", "--pid", str(ours.pid))
            log(f"leak check: RSS after 10,000 {first['rss_kib']} KiB, after 1,000,000 {rest['rss_kib']} KiB")
            extra["leak"] = {"after_10k_kib": first["rss_kib"], "after_1m_kib": rest["rss_kib"],
                             "completed": first["completed"] + rest["completed"],
                             "failures": [first["failures"], rest["failures"]]}

        table = summarize(results, latency, half, extra)
        print(table)
        os.makedirs(os.path.dirname(args.json_out), exist_ok=True)
        with open(args.json_out, "w") as f:
            json.dump({"results": results, "latency": latency, "extra": extra, "cores": os.cpu_count()}, f, indent=1)
    finally:
        for process in reversed(processes):
            process.stop()
        shutil.rmtree(work, ignore_errors=True)


def summarize(results, latency, half, extra):
    def med(name, key):
        values = [v for v in results[name][key] if v is not None]
        return statistics.median(values) if values else None

    def ratio(a, b):
        return f"{a / b:.2f}x" if a and b else "n/a"

    ours_rate, squid_rate, tiny_rate, direct_rate = (med(n, "rate") for n in ["egress-proxy", "squid", "tinyproxy", "direct"])
    ours_tp, squid_tp, tiny_tp, direct_tp = (med(n, "throughput") for n in ["egress-proxy", "squid", "tinyproxy", "direct"])
    hold = {n: results[n]["hold"][0]["bytes_per_tunnel"] if results[n]["hold"] and "bytes_per_tunnel" in results[n]["hold"][0]
            else None for n in ["egress-proxy", "squid", "tinyproxy"]}
    lines = [
        "| measure | egress-proxy | squid | tinyproxy | direct | ours/squid | ours/tinyproxy | ours/direct |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        f"| tunnels/s, CONNECT + 64 B round trip + close, 64 clients | {ours_rate:.0f} | {squid_rate:.0f} | {tiny_rate:.0f} | "
        f"{direct_rate:.0f} | {ratio(ours_rate, squid_rate)} | {ratio(ours_rate, tiny_rate)} | {ratio(ours_rate, direct_rate)} |",
        f"| p99 ms at that load | {med('egress-proxy', 'p99')} | {med('squid', 'p99')} | {med('tinyproxy', 'p99')} | "
        f"{med('direct', 'p99')} | | | |",
        f"| MB/s, one tunnel streaming each way | {ours_tp:.0f} | {squid_tp:.0f} | {tiny_tp:.0f} | {direct_tp:.0f} | "
        f"{ratio(ours_tp, squid_tp)} | {ratio(ours_tp, tiny_tp)} | {ratio(ours_tp, direct_tp)} |",
        f"| RSS bytes per idle tunnel | {hold['egress-proxy']} | {hold['squid']} | {hold['tinyproxy']} | | "
        f"{ratio(hold['squid'], hold['egress-proxy'])} less | {ratio(hold['tinyproxy'], hold['egress-proxy'])} less | |",
        f"| p99 ms open loop at {half}/s (half our max) | {latency['egress-proxy']['p99_ms']} | | | {latency['direct']['p99_ms']} | "
        f"| | {ratio(latency['egress-proxy']['p99_ms'], latency['direct']['p99_ms'])} |",
    ]
    if "hold_8000_60s" in extra:
        h = extra["hold_8000_60s"]
        lines.append(f"| 8,000 tunnels held 60 s | held {h['held']}, lost {h['lost']}, failures {h['failures']} | | | | | | |")
    if "leak" in extra:
        leak = extra["leak"]
        growth = (leak["after_1m_kib"] - leak["after_10k_kib"]) / leak["after_10k_kib"] * 100
        lines.append(f"| 1,000,000 tunnels in a row: RSS after 10k / after 1M | {leak['after_10k_kib']} KiB / "
                     f"{leak['after_1m_kib']} KiB ({growth:+.1f}%) | | | | | | |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

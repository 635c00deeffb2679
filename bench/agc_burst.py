#!/usr/bin/env python3
"""The AGC under a burst: N jobs queued at once on one scale set, against the fake GitHub and
the fake API server (Tests/fakes), with a release `agc`. Reports, per round and as medians:

- GitHub assigned the job -> its worker pod created (p50, p99, max), from the two fakes' own
  clocks (the GitHub fake's `assignedAt`, the API server fake's request log `at`);
- GitHub requests per job once every job completed, leaving out polls and the once-per-set
  bootstrap (one message can assign many jobs, so a burst needs fewer DELETEs per job);
- AGC RSS idle (ready, no job) and with the N jobs' pods running.

Loopback only; everything it starts it stops. `make bench-agc` runs it with the defaults.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "Tests" / "integration"))
from conftest import wait_for  # noqa: E402  (the tests' own helpers and fake drivers)
from idle_memory import rss_kib  # noqa: E402
from test_agc import BOOTSTRAP, GitHubFake, workers  # noqa: E402
from test_gmc_controller import Fake as KubeFake  # noqa: E402


def cpu_seconds(pid):
    """utime + stime of a process (fields 14 and 15 of /proc/PID/stat, in clock ticks)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def start_agc(agc, kube, github, max_workers, stderr=subprocess.DEVNULL, log_level="warning", group=None, api_url=None, extra=(),
              groups=None, https_proxy=None, admin="127.0.0.1:0"):
    """Namespace team-a, gateway gw with one group `cpu` (pods kept 1 h; `group` adds or
    overrides fields), and `agc run` on both fakes, its GitHub traffic direct (to `api_url` if given,
    with `extra` arguments; `groups` replaces the one group; `https_proxy` sends GitHub traffic
    through that proxy, as a tenant's AGC does). Returns the
    process (the caller waits for its session)."""
    kube.call("POST", "/api/v1/namespaces", {"metadata": {"name": "team-a"}})
    kube.call("POST", "/apis/actions-gateway.github.com/v1alpha1/namespaces/team-a/actionsgateways", {
        "apiVersion": "actions-gateway.github.com/v1alpha1", "kind": "ActionsGateway", "metadata": {"name": "gw"},
        "spec": {"gitHubAppRef": {"name": "app"}, "gitHubURL": "https://github.com/acme", "runnerGroups": groups or [
            {"name": "cpu", "runnerLabels": ["linux"], "maxWorkers": max_workers, "completedPodTTL": "1h", **(group or {})}]}})
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("https_proxy", "http_proxy", "no_proxy", "all_proxy")}
    if https_proxy:
        env["HTTPS_PROXY"] = https_proxy  # the API server fake is http://, which curl never sends to an HTTPS_PROXY
    else:
        env["NO_PROXY"] = "127.0.0.1"
    return subprocess.Popen([agc, "run", "--namespace", "team-a", "--gateway", "gw", "--credentials", str(github.credentials),
                             "--api-server", kube.url, "--admin", admin, "--github-api-url", api_url or github.base + "/api/v3",
                             "--worker-image", "runner:bench", "--log-level", log_level, *extra], stderr=stderr, env=env)


def one_round(agc, jobs, settle, log):
    with tempfile.TemporaryDirectory(prefix="agc-burst-") as tmp:  # the fake app's private key
        return _round(agc, jobs, settle, log, Path(tmp))


def _round(agc, jobs, settle, log, tmp):
    kube, github, process = KubeFake(), GitHubFake(tmp, hold=0.5), None
    stderr = open(log, "a") if log else subprocess.DEVNULL
    try:
        process = start_agc(agc, kube, github, max_workers=max(jobs, 1), stderr=stderr, log_level="info" if log else "warning")
        wait_for(lambda: github.control("state")["sessions"], timeout=30, what="the AGC's queue session")
        time.sleep(settle)  # a measurement, not a test: let start-up allocations settle
        idle = rss_kib(process.pid)

        cpu_before = cpu_seconds(process.pid)
        ids = github.control("enqueue", {"scaleSet": "cpu", "count": jobs})["jobIds"]
        wait_for(lambda: len(workers(kube)) >= jobs, timeout=120, what=f"{jobs} worker pods")
        burst_cpu = cpu_seconds(process.pid) - cpu_before
        state = github.control("state")
        created = {r["name"]: r["at"] for r in kube.call("GET", "/fake/requests")[1]["requests"]
                   if r["method"] == "POST" and r["path"] == "/api/v1/namespaces/team-a/pods" and r["code"] == 201}
        latencies = []
        for pod in workers(kube):
            job = state["jobs"][pod["metadata"]["labels"]["actions-gateway.github.com/job-id"]]
            latencies.append((created[pod["metadata"]["name"]] - job["assignedAt"]) * 1000)
        assert sorted(p["metadata"]["labels"]["actions-gateway.github.com/job-id"] for p in workers(kube)) == sorted(ids)

        # Every pod running its runner, every job started at GitHub: the AGC holds N live jobs.
        for pod in workers(kube):
            kube.call("PATCH", f"/api/v1/namespaces/team-a/pods/{pod['metadata']['name']}/status",
                      {"status": {"phase": "Running", "containerStatuses": [
                          {"name": "runner", "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}]}},
                      content_type="application/merge-patch+json")
        for job in ids:
            github.control("start", {"jobId": job})
        time.sleep(settle)
        busy = rss_kib(process.pid)
        # Every job completes: the messages are deleted once all the jobs they name concluded.
        for job in ids:
            github.control("complete", {"jobId": job, "result": "succeeded"})
        wait_for(lambda: all(m["deleted"] for ms in github.control("state")["messages"].values() for m in ms), timeout=60,
                 what="every message deleted")
        calls = Counter(c["endpoint"] for c in github.control("state")["calls"] if c["endpoint"] not in BOOTSTRAP | {"poll"})
        return {"latencies_ms": latencies, "rss_idle_kib": idle, "rss_busy_kib": busy, "burst_cpu_s": burst_cpu,
                "github_requests_per_job": sum(calls.values()) / jobs, "by_endpoint": dict(calls)}
    finally:
        if process and process.poll() is None:
            process.terminate()
            process.wait(timeout=20)
        github.stop()
        kube.stop()
        if log:
            stderr.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agc", default=str(ROOT / ".build" / "release" / "agc"))
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--settle", type=float, default=3.0, help="seconds before each RSS reading")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--agc-log", help="append the AGC's log (level info) to this file")
    args = parser.parse_args()
    rounds = [one_round(args.agc, args.jobs, args.settle, args.agc_log) for _ in range(args.rounds)]
    result = {
        "jobs": args.jobs, "rounds": args.rounds,
        "assigned_to_pod_p50_ms": statistics.median(percentile(r["latencies_ms"], 0.50) for r in rounds),
        "assigned_to_pod_p99_ms": statistics.median(percentile(r["latencies_ms"], 0.99) for r in rounds),
        "assigned_to_pod_max_ms": statistics.median(max(r["latencies_ms"]) for r in rounds),
        "github_requests_per_job": statistics.median(r["github_requests_per_job"] for r in rounds),
        "github_requests_by_endpoint": rounds[-1]["by_endpoint"],
        "agc_cpu_seconds_burst": statistics.median(r["burst_cpu_s"] for r in rounds),
        "agc_rss_idle_kib": statistics.median(r["rss_idle_kib"] for r in rounds),
        "agc_rss_busy_kib": statistics.median(r["rss_busy_kib"] for r in rounds),
    }
    if args.json:
        print(json.dumps(result, sort_keys=True))
        return
    print(f"| measure ({args.jobs} jobs queued at once, median of {args.rounds} rounds) | value |")
    print("|---|---:|")
    for key in ("assigned_to_pod_p50_ms", "assigned_to_pod_p99_ms", "assigned_to_pod_max_ms"):
        print(f"| job assigned -> pod created, {key.split('_')[-2]} ms | {result[key]:.1f} |")
    print(f"| GitHub requests per job (no polls, no bootstrap) | {result['github_requests_per_job']:.2f} "
          f"{result['github_requests_by_endpoint']} |")
    print(f"| AGC CPU seconds from enqueue to the last pod | {result['agc_cpu_seconds_burst']:.2f} |")
    print(f"| AGC RSS idle, KiB | {result['agc_rss_idle_kib']} |")
    print(f"| AGC RSS with {args.jobs} jobs running, KiB | {result['agc_rss_busy_kib']} |")


if __name__ == "__main__":
    main()

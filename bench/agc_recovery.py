#!/usr/bin/env python3
"""The AGC recovering evicted jobs: N running jobs' pods evicted at once (the kubelet's Failed /
Evicted status), GitHub concluding each job failed at once, against the fake GitHub and the fake
API server (Tests/fakes), with a release `agc`. Reports, from the fakes' own clocks:

- disruption -> first re-run call: the eviction's status write (the API server fake's request
  log) to GitHub's first `rerun-failed-jobs` for the run (the GitHub fake's log). The contract's
  delay is 5 s (reference 4.3), so this is 5 s plus how late the AGC is;
- disruption -> the new job's pod: to the creation of the pod for the attempt GitHub queued.

Loopback only; everything it starts it stops. `make bench-agc-recovery` runs it with the defaults.
"""
import argparse
import json
import statistics
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "Tests" / "integration"))
sys.path.insert(0, str(ROOT / "bench"))
from agc_burst import percentile, start_agc  # noqa: E402
from conftest import wait_for  # noqa: E402
from test_agc import GitHubFake, workers  # noqa: E402
from test_gmc_controller import Fake as KubeFake  # noqa: E402

PODS = "/api/v1/namespaces/team-a/pods"


def stamp():
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class WorkerName:
    """A worker pod's name as the AGC makes it (spec: <gateway>-<group>-<FNV-1a of the job id>),
    so a pod reaped before the measurement is read is still found in the request log."""
    @staticmethod
    def of(job, prefix="gw-cpu"):
        value = 0xcbf29ce484222325
        for byte in job.encode():
            value = ((value ^ byte) * 0x100000001b3) % (1 << 64)
        return f"{prefix}-{format(value, 'x')[-10:].rjust(10, '0')}"
MERGE = "application/merge-patch+json"


def one_round(agc, jobs):
    with tempfile.TemporaryDirectory(prefix="agc-recovery-") as tmp:  # the fake app's private key
        return _round(agc, jobs, Path(tmp))


def _round(agc, jobs, tmp):
    kube, github, process = KubeFake(), GitHubFake(tmp, hold=0.5), None
    try:
        process = start_agc(agc, kube, github, max_workers=max(2 * jobs, 1))
        wait_for(lambda: github.control("state")["sessions"], timeout=30, what="the AGC's queue session")
        ids = github.control("enqueue", {"scaleSet": "cpu", "count": jobs})["jobIds"]
        wait_for(lambda: len(workers(kube)) >= jobs, timeout=120, what=f"{jobs} worker pods")
        pods = {p["metadata"]["labels"]["actions-gateway.github.com/job-id"]: p["metadata"]["name"] for p in workers(kube)}
        for job in ids:
            kube.call("PATCH", f"{PODS}/{pods[job]}/status", {"status": {"phase": "Running", "containerStatuses": [
                {"name": "runner", "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}]}}, content_type=MERGE)
            github.control("start", {"jobId": job})
        for job in ids:  # the kubelet evicts them all; GitHub concludes each failed
            kube.call("PATCH", f"{PODS}/{pods[job]}/status", {"status": {"phase": "Failed", "reason": "Evicted", "containerStatuses": [
                {"name": "runner", "state": {"terminated": {"exitCode": 137, "finishedAt": stamp()}}}]}}, content_type=MERGE)
            github.control("complete", {"jobId": job, "result": "failed"})
        runs = {str(github.control("state")["jobs"][job]["runId"]): job for job in ids}

        def reruns():
            return [r for r in github.control("state")["reruns"] if r["accepted"] and r["runId"] in runs]
        wait_for(lambda: len(reruns()) == jobs, timeout=120, what="every run re-run")
        attempts = {r["runId"]: r["newJobIds"][0] for r in reruns()}
        def creates():
            return [r for r in kube.call("GET", "/fake/requests")[1]["requests"]
                    if r["method"] == "POST" and r["path"] == PODS and r["code"] == 201]
        wait_for(lambda: len(creates()) >= 2 * jobs, timeout=120, what="every attempt's pod")
        log = kube.call("GET", "/fake/requests")[1]["requests"]
        evicted = {}
        for request in log:
            name = request["path"].split("/")[-2] if request["path"].endswith("/status") else None
            if request["method"] == "PATCH" and name:
                evicted[name] = request["at"]  # the last status write of each pod: the eviction
        created = {r["name"]: r["at"] for r in log if r["method"] == "POST" and r["path"] == PODS and r["code"] == 201}
        by_job = {job: WorkerName.of(job) for job in attempts.values()}
        first_call = {}
        for r in github.control("state")["reruns"]:
            if r["runId"] in runs:
                first_call[r["runId"]] = min(r["at"], first_call.get(r["runId"], r["at"]))
        to_call, to_pod = [], []
        for run, job in runs.items():
            start = evicted[pods[job]]
            to_call.append((first_call[run] - start) * 1000)
            to_pod.append((created[by_job[attempts[run]]] - start) * 1000)
        calls_per_run = len([r for r in github.control("state")["reruns"] if r["runId"] in runs]) / jobs
        return {"to_call_ms": to_call, "to_pod_ms": to_pod, "rerun_calls_per_run": calls_per_run}
    finally:
        if process and process.poll() is None:
            process.terminate()
            process.wait(timeout=20)
        github.stop()
        kube.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agc", default=str(ROOT / ".build" / "release" / "agc"))
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rounds = [one_round(args.agc, args.jobs) for _ in range(args.rounds)]
    result = {"jobs": args.jobs, "rounds": args.rounds}
    for key in ("to_call_ms", "to_pod_ms"):
        result[key.replace("_ms", "_p50_ms")] = statistics.median(percentile(r[key], 0.5) for r in rounds)
        result[key.replace("_ms", "_max_ms")] = statistics.median(max(r[key]) for r in rounds)
    result["rerun_calls_per_run"] = statistics.median(r["rerun_calls_per_run"] for r in rounds)
    if args.json:
        print(json.dumps(result, sort_keys=True))
        return
    print(f"| measure ({args.jobs} jobs evicted at once, median of {args.rounds} rounds) | p50 ms | max ms |")
    print("|---|---:|---:|")
    print(f"| eviction -> first rerun-failed-jobs call (contract: 5 s) | {result['to_call_p50_ms']:.0f} | {result['to_call_max_ms']:.0f} |")
    print(f"| eviction -> the re-run job's pod created | {result['to_pod_p50_ms']:.0f} | {result['to_pod_max_ms']:.0f} |")
    print(f"| re-run calls per run | {result['rerun_calls_per_run']:.2f} | |")


if __name__ == "__main__":
    main()

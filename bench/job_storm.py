#!/usr/bin/env python3
"""bench/job-storm: jobs through a whole tenant gateway (spec/agc.md section 9), on one machine.

It starts the fake GitHub behind nghttpx (TLS and HTTP/2, as GitHub serves), the fake API
server, the tenant's egress proxy and an AGC whose GitHub traffic all goes through that proxy
(HTTPS_PROXY, CONNECT). A kubelet simulator moves every worker pod Pending -> Running ->
Succeeded after configurable delays, telling the fake GitHub the job started and finished; on a
chosen fraction of first attempts it takes the pod away instead, in turn by eviction, preemption
(DisruptionTarget, deleted) and OOM kill, GitHub concluding the job failed, and the AGC must re-run
each of those exactly once. Jobs are enqueued at a fixed
rate (and optionally a burst at the start) across the runner groups.

Reported, from the fakes' own records (their clocks and request logs), as a table or, with
--json, one JSON object: jobs/h completed; job assigned -> pod created p50/p99; GitHub requests
per job by endpoint (long polls and the once-per-set bootstrap left out); lost jobs (queued, no
attempt ever succeeded), duplicated pods (a job's pod created twice); disrupted jobs, how many
were re-run and how long eviction -> the re-run's pod took; AGC and proxy RSS and CPU seconds;
the proxy's per-tenant bytes.

Loopback only; everything it starts it stops. `make bench-jobs` runs it with the defaults
(`BENCH_JOBS_ARGS="..."` passes flags through).
"""
import argparse
import contextlib
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "Tests" / "integration"))
sys.path.insert(0, str(ROOT / "bench"))
import conftest  # noqa: E402  (the tests' own helpers and fake drivers)
from agc_burst import cpu_seconds, percentile, start_agc  # noqa: E402
from agc_recovery import MERGE, PODS, stamp  # noqa: E402
from agc_classic_idle import free_port, http2_front  # noqa: E402
from conftest import tenant_config, wait_for  # noqa: E402
from idle_memory import rss_kib  # noqa: E402
from test_agc import BOOTSTRAP, GitHubFake, workers  # noqa: E402
from test_gmc_controller import Fake as KubeFake  # noqa: E402

JOB_ID = "actions-gateway.github.com/job-id"


class Kubelet(threading.Thread):
    """Runs every worker pod it finds: Running after `pending` s (the job started at GitHub),
    then Succeeded after `run` s (completed succeeded), or, for the chosen first attempts,
    Failed / Evicted (completed failed), which the AGC must re-run."""

    def __init__(self, kube, github, pending, run, disrupt, seed, originals, poll=0.2):
        super().__init__(daemon=True)
        self.poll = poll
        self.originals = originals  # job ids enqueued by the storm: only first attempts are evicted
        self.kube, self.github, self.pending, self.run_for, self.disrupt = kube, github, pending, run, disrupt
        self.random = random.Random(seed)
        self.pods = {}  # pod name -> {"job", "seen", "stage", "evict"}
        self.evicted = {}  # job id -> eviction time
        self.errors = []
        self.stopping = threading.Event()

    # What Kubernetes does to a pod it takes away, in turn (spec/agc.md section 5's causes).
    kinds = ("eviction", "preemption", "oom")

    def disrupt_pod(self, name, kind):
        def terminated(code, reason=None):
            state = {"exitCode": code, "finishedAt": stamp(), **({"reason": reason} if reason else {})}
            return [{"name": "runner", "state": {"terminated": state}}]
        if kind == "eviction":  # the kubelet under node pressure
            self.status(name, {"phase": "Failed", "reason": "Evicted", "containerStatuses": terminated(137)})
        elif kind == "preemption":  # the scheduler makes room for a higher priority: marked, deleted, stopped
            target = [{"type": "PodScheduled", "status": "True"}, {"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler"}]
            self.status(name, {"conditions": target})
            self.kube.call("DELETE", f"{PODS}/{name}")
            self.status(name, {"phase": "Succeeded", "conditions": target, "containerStatuses": terminated(0)})
        else:  # the runner container went over its memory limit
            self.status(name, {"phase": "Failed", "containerStatuses": terminated(137, "OOMKilled")})

    def status(self, name, status):
        code, _ = self.kube.call("PATCH", f"{PODS}/{name}/status", {"status": status}, content_type=MERGE)
        return code == 200

    def run(self):
        while not self.stopping.is_set():
            try:
                self.step(time.monotonic())
            except Exception as error:  # a harness fault must show in the report, not hang it
                self.errors.append(repr(error))
            self.stopping.wait(self.poll)

    def step(self, now):
        for pod in workers(self.kube):
            name, job = pod["metadata"]["name"], pod["metadata"]["labels"].get(JOB_ID)
            if name not in self.pods and pod.get("status", {}).get("phase") not in ("Succeeded", "Failed"):
                self.pods[name] = {"job": job, "seen": now, "stage": "pending", "tier": pod["spec"].get("priorityClassName"),
                                   "evict": job in self.originals and job not in self.evicted and self.random.random() < self.disrupt}
        for name, entry in self.pods.items():
            if entry["stage"] == "pending" and now - entry["seen"] >= self.pending:
                if self.status(name, {"phase": "Running", "containerStatuses": [
                        {"name": "runner", "state": {"running": {"startedAt": stamp()}}}]}):
                    self.github.control("start", {"jobId": entry["job"]})
                entry["stage"] = "running"
            elif entry["stage"] == "running" and now - entry["seen"] >= self.pending + self.run_for:
                if entry["evict"]:
                    self.disrupt_pod(name, self.kinds[len(self.evicted) % len(self.kinds)])
                    self.evicted[entry["job"]] = time.time()
                    self.github.control("complete", {"jobId": entry["job"], "result": "failed"})
                else:
                    self.status(name, {"phase": "Succeeded", "containerStatuses": [
                        {"name": "runner", "state": {"terminated": {"exitCode": 0, "finishedAt": stamp()}}}]})
                    self.github.control("complete", {"jobId": entry["job"], "result": "succeeded"})
                entry["stage"] = "done"


class Gateway:
    """The running parts of one tenant's gateway on this machine (see `gateway`)."""

    def __init__(self, **parts):
        self.__dict__.update(parts)

    def enqueue(self, name, count=1):
        ids = self.github.control("enqueue", {"scaleSet": name, "count": count})["jobIds"]
        self.originals.update(ids)
        return [(job, name) for job in ids]


@contextlib.contextmanager
def gateway(args, agc_admin="127.0.0.1:0", agc_log=None):
    """The fake GitHub behind nghttpx, the fake API server, the egress proxy, the AGC (GitHub
    traffic through the proxy) and the kubelet simulator, all stopped on exit."""
    with tempfile.TemporaryDirectory(prefix="job-storm-") as tmp, contextlib.ExitStack() as stack:
        tmp = Path(tmp)
        front_port = free_port()
        kube = KubeFake()
        stack.callback(kube.stop)
        github = GitHubFake(tmp, hold=args.hold, extra=("--public-url", f"https://127.0.0.1:{front_port}"))
        stack.callback(github.stop)
        cert = stack.enter_context(http2_front(tmp, int(github.base.rsplit(":", 1)[1]), front_port))
        conftest.BIN = args.proxy
        proxy = conftest.Proxy(tenant_config())
        stack.callback(proxy.stop)
        names = [f"g{index}" for index in range(args.groups)]
        groups = [{"name": name, "runnerLabels": [name], "maxWorkers": args.max_workers, "completedPodTTL": "0s"} for name in names]
        if args.tiers:  # a floor tier for the first quarter of each group's workers, a standard tier above it
            for name, value in (("tier-a", 1000), ("tier-b", 100)):
                kube.call("POST", "/apis/scheduling.k8s.io/v1/priorityclasses", {"metadata": {"name": name}, "value": value})
            for group in groups:
                group["priorityTiers"] = [{"priorityClassName": "tier-a", "threshold": max(args.max_workers // 4, 1)},
                                          {"priorityClassName": "tier-b", "threshold": args.max_workers}]
        if args.quota_pods:  # the namespace's shared quota, which the groups' tiers live under
            kube.call("POST", "/api/v1/namespaces", {"metadata": {"name": "team-a"}})
            kube.call("POST", "/api/v1/namespaces/team-a/resourcequotas", {"metadata": {"name": "workers"},
                                                                           "spec": {"hard": {"pods": str(args.quota_pods)}}})
        agc = start_agc(args.agc, kube, github, max_workers=args.max_workers, groups=groups,
                        api_url=f"https://127.0.0.1:{front_port}/api/v3", extra=("--github-ca", str(cert)),
                        https_proxy=f"http://127.0.0.1:{proxy.port}", admin=agc_admin, **({"stderr": agc_log} if agc_log else {}))
        stack.callback(lambda: (agc.terminate(), agc.wait(timeout=30)) if agc.poll() is None else None)
        wait_for(lambda: len(github.control("state")["sessions"]) == len(names), timeout=60, what="a queue session per group")
        originals = set()
        kubelet = Kubelet(kube, github, args.pending_ms / 1000, args.run_ms / 1000, args.disrupt, args.seed, originals,
                          poll=getattr(args, "kubelet_poll_ms", 200) / 1000)
        kubelet.start()
        stack.callback(kubelet.stopping.set)
        yield Gateway(kube=kube, github=github, proxy=proxy, agc=agc, kubelet=kubelet, names=names, originals=originals, tmp=tmp)


def storm(args):
    with gateway(args) as parts:
        kube, github, proxy, agc, kubelet, names = parts.kube, parts.github, parts.proxy, parts.agc, parts.kubelet, parts.names
        # The harness's own parts are measured too: at high rates a Python fake, not the AGC, is
        # what saturates first (each is one process on a 2-core machine).
        pids = {"agc": agc.pid, "proxy": proxy.process.pid, "fake_github": github.process.pid, "fake_apiserver": kube.process.pid,
                "driver_and_kubelet": os.getpid()}
        cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
        enqueued = []  # (job id, group)
        enqueue = parts.enqueue
        started = time.monotonic()
        if args.burst:
            for index in range(args.burst):
                name = names[index % len(names)]
                enqueued += enqueue(name)
        due = 0.0
        while time.monotonic() - started < args.seconds:
            elapsed = time.monotonic() - started
            while due <= elapsed * args.rate:  # a fixed rate, caught up after any stall
                name = names[len(enqueued) % len(names)]
                enqueued += enqueue(name)
                due += 1
            time.sleep(min(0.05, 1 / max(args.rate, 1)))
        enqueue_end = time.monotonic()

        def finished():
            jobs = github.control("state")["jobs"]
            return all(j["state"] == "completed" and (j.get("result") == "succeeded" or any(
                k.get("rerunOf") == j["jobId"] for k in jobs.values())) for j in jobs.values())
        try:
            wait_for(finished, timeout=args.drain, interval=0.5, what="every job and re-run completed")
        except AssertionError:
            pass  # reported as lost below
        end = time.monotonic()
        rss = {"agc": rss_kib(agc.pid), "proxy": rss_kib(proxy.process.pid)}
        cpu = {name: round((cpu_seconds(pid) - cpu0[name]) / (time.monotonic() - started), 3) for name, pid in pids.items()}
        kubelet.stopping.set()
        kubelet.join(timeout=5)
        state = github.control("state")
        log = kube.call("GET", "/fake/requests")[1]["requests"]
        proxy_metrics = proxy.metrics()
    return report(args, enqueued, state, log, kubelet, rss, cpu, proxy_metrics, end - started, enqueue_end - started)


def report(args, enqueued, state, log, kubelet, rss, cpu, proxy_metrics, elapsed, enqueue_seconds):
    jobs = state["jobs"]
    creates = [r for r in log if r["method"] == "POST" and r["path"] == PODS and r["code"] == 201]
    created_at = {}
    creates_per_job = Counter()
    job_of_pod = {name: entry["job"] for name, entry in kubelet.pods.items()}
    for request in creates:
        job = job_of_pod.get(request["name"])
        if job is not None:
            creates_per_job[job] += 1
            created_at.setdefault(job, request["at"])
    attempts = {}  # original job -> its attempts, in order
    for job in jobs.values():
        origin = job
        while origin.get("rerunOf"):
            origin = jobs[origin["rerunOf"]]
        attempts.setdefault(origin["jobId"], []).append(job)
    lost = [job for job, _ in enqueued if not any(a.get("result") == "succeeded" for a in attempts.get(job, []))]
    completed = sum(1 for j in jobs.values() if j["state"] == "completed")
    latencies = [(created_at[j["jobId"]] - j["assignedAt"]) * 1000 for j in jobs.values() if j["jobId"] in created_at and j.get("assignedAt")]
    reruns = [a for job in kubelet.evicted for a in attempts.get(job, []) if a.get("rerunOf")]
    rerun_latency = [(created_at[a["jobId"]] - kubelet.evicted[a["rerunOf"]]) * 1000 for a in reruns if a["jobId"] in created_at]
    calls = Counter(c["endpoint"] for c in state["calls"] if c["endpoint"] not in BOOTSTRAP | {"poll"})
    tenant_bytes = {key: value for key, value in proxy_metrics.items() if "bytes" in key and "tenant=" in key}
    return {
        "seconds": round(enqueue_seconds, 1), "groups": args.groups, "rate_per_second": args.rate, "burst": args.burst,
        "jobs_enqueued": len(enqueued), "jobs_completed": completed,
        "jobs_per_hour": round(completed / elapsed * 3600) if elapsed else 0,
        "assigned_to_pod_p50_ms": round(percentile(latencies, 0.50), 1) if latencies else None,
        "assigned_to_pod_p99_ms": round(percentile(latencies, 0.99), 1) if latencies else None,
        "github_requests_per_job": round(sum(calls.values()) / max(completed, 1), 2),
        "github_requests_by_endpoint": dict(sorted(calls.items())),
        "lost": len(lost), "duplicated": sum(1 for count in creates_per_job.values() if count > 1),
        "disrupted": len(kubelet.evicted), "rerun": len({a["rerunOf"] for a in reruns}),
        "rerun_attempts": len(reruns),
        "rerun_pod_p50_ms": round(statistics.median(rerun_latency), 1) if rerun_latency else None,
        "agc_rss_kib": rss["agc"], "proxy_rss_kib": rss["proxy"],
        "agc_cpu_seconds": round(cpu["agc"] * elapsed, 2), "proxy_cpu_seconds": round(cpu["proxy"] * elapsed, 2),
        "cpu_cores_used": cpu, "nghttpx_front": "not measured (C, event-driven)",
        "proxy_tenant_bytes": tenant_bytes, "harness_errors": kubelet.errors[:5],
        "pods_by_tier": dict(sorted(Counter(str(entry["tier"]) for entry in kubelet.pods.values()).items())),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agc", default=str(ROOT / ".build" / "release" / "agc"))
    parser.add_argument("--proxy", default=str(ROOT / ".build" / "release" / "egress-proxy"))
    parser.add_argument("--seconds", type=float, default=300, help="how long jobs are enqueued")
    parser.add_argument("--rate", type=float, default=6.0, help="jobs enqueued per second (6/s = 21,600/h)")
    parser.add_argument("--burst", type=int, default=0, help="jobs enqueued at once at the start")
    parser.add_argument("--groups", type=int, default=2)
    parser.add_argument("--max-workers", type=int, default=200, help="per group")
    parser.add_argument("--tiers", action=argparse.BooleanOptionalAction, default=True,
                        help="two priority tiers per group (tier-a for the first quarter of --max-workers)")
    parser.add_argument("--quota-pods", type=int, default=0, help="a ResourceQuota on pods in the namespace (0: none)")
    parser.add_argument("--kubelet-poll-ms", type=float, default=200,
                        help="how often the kubelet simulator lists pods (each list is the fake API server's heaviest call)")
    parser.add_argument("--pending-ms", type=float, default=200, help="pod Pending before Running")
    parser.add_argument("--run-ms", type=float, default=2000, help="job run time")
    parser.add_argument("--disrupt", type=float, default=0.05, help="fraction of first attempts evicted")
    parser.add_argument("--hold", type=float, default=5.0, help="seconds the fake holds an empty queue poll")
    parser.add_argument("--drain", type=float, default=120, help="seconds to wait for the last jobs and re-runs")
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = storm(args)
    if args.json:
        print(json.dumps(result, sort_keys=True))
        return
    print(f"| measure ({result['seconds']} s at {args.rate}/s over {args.groups} groups, burst {args.burst}) | value |")
    print("|---|---:|")
    for key, value in result.items():
        if key not in ("seconds", "groups", "rate_per_second", "burst"):
            print(f"| {key} | {value} |")


if __name__ == "__main__":
    main()

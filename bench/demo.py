#!/usr/bin/env python3
"""make demo: the whole gateway working on one machine, with no cluster and no GitHub.

It starts the same parts as bench/job_storm.py: the fake GitHub (behind nghttpx, TLS and
HTTP/2), the fake API server, the tenant's egress proxy, and an AGC whose GitHub traffic goes
through that proxy. It adds the GMC, which reconciles the example gateway. The gateway has two
runner groups, each with a floor tier and a standard tier, under a shared pod quota. A kubelet
simulator runs the worker pods and takes about one in ten away (eviction, preemption, OOM kill)
so you can watch the AGC re-run it. Jobs are enqueued every few seconds.

The terminal shows, each second, jobs queued at GitHub, pods by group and tier, jobs done, and
disruptions with their re-runs, plus the URLs of the AGC's /jobs and /metrics. Ctrl-C stops
everything it started.
"""
import argparse
import json
import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from agc_classic_idle import free_port  # noqa: E402
from job_storm import gateway  # noqa: E402

GROUP = "actions-gateway.github.com/runner-group"
GATEWAY = "/apis/actions-gateway.github.com/v1alpha1/namespaces/team-a/actionsgateways/gw"


def view(parts, started, urls, last_events):
    state = parts.github.control("state")
    set_names = {s["id"]: s["name"] for s in state["scaleSets"]}
    jobs = list(state["jobs"].values())
    queued = Counter(set_names.get(j["scaleSetId"]) for j in jobs if j["state"] == "queued")
    done = Counter(set_names.get(j["scaleSetId"]) for j in jobs if j["state"] == "completed" and j.get("result") == "succeeded")
    reruns = {j["rerunOf"] for j in jobs if j.get("rerunOf")}
    pods = Counter()
    for pod in parts.kube.call("GET", "/api/v1/namespaces/team-a/pods")[1].get("items", []):
        if pod.get("status", {}).get("phase") not in ("Succeeded", "Failed"):
            pods[(pod["metadata"].get("labels", {}).get(GROUP), pod["spec"].get("priorityClassName"))] += 1
    group_of = {j["jobId"]: set_names.get(j["scaleSetId"]) for j in jobs}
    disrupted = Counter(group_of.get(job) for job in parts.kubelet.evicted)
    rerun = Counter(group_of.get(job) for job in parts.kubelet.evicted if job in reruns)
    conditions = parts.kube.call("GET", GATEWAY)[1].get("status", {}).get("conditions", [])
    lines = [f"actions-gateway demo: one tenant, no cluster, no GitHub        up {time.monotonic() - started:5.0f} s   Ctrl-C stops",
             ""]
    lines += [f"  {name:<6} {url}" for name, url in urls]
    lines += ["", "  gateway team-a/gw: " + "  ".join(f"{c['type']}={c['status']}" for c in conditions),
              "  (no cluster runs the Deployments the GMC made, so Ready and *Available stay False; this demo runs them itself)", ""]
    lines.append(f"  {'group':<6} {'queued':>7} {'pods tier-a':>12} {'pods tier-b':>12} {'done':>6} {'disrupted -> re-run':>20}")
    for name in parts.names:
        lines.append(f"  {name:<6} {queued[name]:>7} {pods[(name, 'tier-a')]:>12} {pods[(name, 'tier-b')]:>12} {done[name]:>6} "
                     f"{disrupted[name]:>11} -> {rerun[name]:<6}")
    lines += ["", "  recent:"] + [f"    {event}" for event in last_events[-5:]]
    return "\033[H\033[2J" + "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agc", default=str(ROOT / ".build" / "release" / "agc"))
    parser.add_argument("--gmc", default=str(ROOT / ".build" / "release" / "gmc"))
    parser.add_argument("--proxy", default=str(ROOT / ".build" / "release" / "egress-proxy"))
    parser.add_argument("--every", type=float, default=3.0, help="seconds between enqueues (1-3 jobs each)")
    parser.add_argument("--seconds", type=float, default=0, help="stop after this long (0: at Ctrl-C)")
    options = parser.parse_args()
    args = argparse.Namespace(agc=options.agc, proxy=options.proxy, groups=2, max_workers=8, tiers=True, quota_pods=12,
                              pending_ms=1500, run_ms=12000, disrupt=0.1, hold=5.0, seed=int(time.time()))
    agc_port, gmc_port = free_port(), free_port()
    log_path = Path("/tmp/actions-gateway-demo.log")
    with open(log_path, "w") as log, gateway(args, agc_admin=f"127.0.0.1:{agc_port}", agc_log=log) as parts:
        gmc = subprocess.Popen([options.gmc, "run", "--api-server", parts.kube.url, "--metrics-addr", f"127.0.0.1:{gmc_port}",
                                "--allowed-priority-classes", "tier-a,tier-b"], stderr=log)
        proxy_host, proxy_admin = parts.proxy.admin_address
        urls = [("AGC", f"http://127.0.0.1:{agc_port}/jobs   http://127.0.0.1:{agc_port}/metrics"),
                ("proxy", f"http://{proxy_host}:{proxy_admin}/metrics   (the tenant's bytes: egress_proxy_bytes_total)"),
                ("GMC", f"http://127.0.0.1:{gmc_port}/metrics"), ("logs", str(log_path))]
        chooser = random.Random(args.seed)
        started, next_enqueue, events, seen = time.monotonic(), 0.0, [], set()
        try:
            while not options.seconds or time.monotonic() - started < options.seconds:
                now = time.monotonic() - started
                if now >= next_enqueue:
                    name, count = chooser.choice(parts.names), chooser.randint(1, 3)
                    parts.enqueue(name, count)
                    events.append(f"{time.strftime('%H:%M:%S')} {count} job(s) queued for {name}")
                    next_enqueue = now + options.every
                for job in parts.kubelet.evicted:
                    if job not in seen:
                        seen.add(job)
                        events.append(f"{time.strftime('%H:%M:%S')} job {job[:8]} lost its pod; the AGC re-runs it")
                sys.stdout.write(view(parts, started, urls, events))
                sys.stdout.flush()
                time.sleep(1)
        except KeyboardInterrupt:
            pass
        finally:
            gmc.terminate()
            gmc.wait(timeout=15)
    print(json.dumps({"stopped": True, "log": str(log_path)}))


if __name__ == "__main__":
    main()

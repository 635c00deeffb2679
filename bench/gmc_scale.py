#!/usr/bin/env python3
"""The GMC at scale: N ActionsGateways created at once against the fake API server
(Tests/fakes/kube_apiserver.py), with a release `gmc`. Reports:

- time from the first create to every gateway's status.observedGeneration == 1;
- the fake's own counters for that convergence (API reads by verb, writes) and the GMC's
  reconciles (its gmc_reconcile_total);
- API requests per steady-state reconcile: after convergence every gateway gets an annotation
  (no spec change, so nothing to do) and the fake counts what the reconciles that queues cost,
  less the bench's own patches (the target is 0 reads and 0 writes);
- GMC RSS and CPU seconds once converged.

`--bin` picks the binary, so an older build can be measured the same way. Loopback only;
everything it starts it stops. `make bench-gmc` runs it with the defaults.
"""
import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "Tests" / "integration"))
sys.path.insert(0, str(ROOT / "bench"))
from agc_burst import cpu_seconds  # noqa: E402
from conftest import wait_for  # noqa: E402
from idle_memory import rss_kib  # noqa: E402
from test_gmc_controller import Fake, gateway, reconcile_count  # noqa: E402

GATEWAYS = "/apis/actions-gateway.github.com/v1alpha1/namespaces/team-a/actionsgateways"


def admin_address(process):
    """The admin endpoint's address from the GMC's first log lines (it binds port 0)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            break
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        for key in ("admin", "address", "metrics"):
            if isinstance(entry.get(key), str) and ":" in entry[key]:
                return entry[key]
    raise RuntimeError("gmc printed no admin address")


def measure(binary, count):
    fake, gmc = Fake(), None
    try:
        for namespace in ["system", "team-a"]:
            fake.call("POST", "/api/v1/namespaces", {"metadata": {"name": namespace}})
        gmc = subprocess.Popen([binary, "run", "--api-server", fake.url, "--metrics-addr", "127.0.0.1:0", "--workers", "8"], stderr=subprocess.PIPE, text=True)
        admin = admin_address(gmc)
        # Keep reading its log, so a full pipe can never stall it.
        threading.Thread(target=lambda: [None for _ in gmc.stderr], daemon=True).start()
        wait_for(lambda: reconcile_count(admin) >= 0, timeout=30, what="gmc admin")
        before = fake.call("GET", "/fake/stats")[1]
        started = time.monotonic()
        for index in range(count):
            fake.call("POST", GATEWAYS, gateway(f"g{index}"))

        def converged():
            status, gateways = fake.call("GET", GATEWAYS)
            return status == 200 and len(gateways["items"]) == count and all(
                (g.get("status") or {}).get("observedGeneration") == 1 for g in gateways["items"])
        wait_for(converged, timeout=600, interval=0.25, what=f"{count} gateways reconciled")
        elapsed = time.monotonic() - started
        # Let the last status writes' own events settle before reading the counters.
        settled = {"last": -1.0}

        def quiet():
            current = reconcile_count(admin)
            done, settled["last"] = current == settled["last"], current
            return done
        wait_for(quiet, timeout=120, interval=1.0, what="reconciles settled")
        after = fake.call("GET", "/fake/stats")[1]
        reconciles = reconcile_count(admin)
        rss, cpu = rss_kib(gmc.pid), cpu_seconds(gmc.pid)

        # Steady state: a change that asks nothing of the GMC queues every gateway again.
        steady_before = fake.call("GET", "/fake/stats")[1]
        for index in range(count):
            fake.call("PATCH", f"{GATEWAYS}/g{index}", {"metadata": {"annotations": {"bench/touched": "1"}}},
                      content_type="application/merge-patch+json")
        wait_for(lambda: reconcile_count(admin) >= reconciles + count, timeout=300, interval=0.5,
                 what="a reconcile of every touched gateway")
        wait_for(quiet, timeout=120, interval=1.0, what="resync settled")
        steady_after = fake.call("GET", "/fake/stats")[1]
        steady_reconciles = reconcile_count(admin) - reconciles

        def delta(a, b, key):
            return b.get(key, 0) - a.get(key, 0)
        return {
            "gateways": count,
            "converged_seconds": round(elapsed, 2),
            "convergence_reads": {verb: delta(before, after, verb) for verb in ("get", "list", "watch")},
            "convergence_writes": delta(before, after, "writes"),
            "reconciles_to_converge": int(reconciles),
            "steady_reconciles": int(steady_reconciles),
            "steady_requests_per_reconcile": round((sum(delta(steady_before, steady_after, k) for k in ("get", "list", "writes"))
                                                    - count) / max(steady_reconciles, 1), 3),
            "gmc_rss_kib": rss,
            "gmc_cpu_seconds": round(cpu, 2),
        }
    finally:
        if gmc:
            gmc.kill()
            gmc.wait()
        fake.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bin", default=str(ROOT / ".build" / "release" / "gmc"))
    parser.add_argument("--gateways", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = measure(args.bin, args.gateways)
    if args.json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key:34} {value}")


if __name__ == "__main__":
    main()

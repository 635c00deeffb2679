"""bench/job_storm.py kept from rotting: a few seconds of the storm through the whole gateway (the
fake GitHub behind TLS/HTTP/2, the egress proxy, the AGC, the kubelet simulator with evictions),
asserting what the fakes saw: every job ran, none twice, every eviction re-run once, and the
AGC's GitHub bytes went through the proxy."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def test_a_short_storm_loses_and_duplicates_nothing_and_reruns_every_eviction():
    proxy = os.environ.get("EGRESS_PROXY_BIN") or str(ROOT / ".build" / "debug" / "egress-proxy")
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "job_storm.py"), "--agc", str(ROOT / ".build" / "debug" / "agc"),
                          "--proxy", proxy, "--seconds", "6", "--rate", "4", "--burst", "10", "--disrupt", "0.3",
                          "--run-ms", "300", "--pending-ms", "100", "--drain", "90", "--json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["harness_errors"] == []
    assert result["jobs_enqueued"] >= 30
    assert result["lost"] == 0 and result["duplicated"] == 0, result
    assert result["disrupted"] > 0 and result["rerun"] == result["disrupted"], "every eviction re-run"
    assert result["rerun_attempts"] == result["disrupted"], "and each exactly once"
    assert result["jobs_completed"] == result["jobs_enqueued"] + result["rerun_attempts"]
    assert sum(v for k, v in result["proxy_tenant_bytes"].items() if "team-a" in k) > 0, "GitHub traffic went through the proxy"

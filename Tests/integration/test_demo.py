"""make demo kept working: a few seconds of bench/demo.py with the debug binaries. The view must
show the GMC's conditions on the gateway, both groups, and jobs done, and Ctrl-C's path (here:
--seconds) must stop everything it started."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def test_the_demo_shows_the_gateway_working_and_stops_cleanly():
    debug = ROOT / ".build" / "debug"
    proxy = os.environ.get("EGRESS_PROXY_BIN") or str(debug / "egress-proxy")
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "demo.py"), "--agc", str(debug / "agc"), "--gmc", str(debug / "gmc"),
                          "--proxy", proxy, "--seconds", "25", "--every", "1"], capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    frames = out.stdout.split("\033[H\033[2J")
    last = frames[-1]
    assert "gateway team-a/gw: " in last and "GitHubAuthenticated=True" in last, last
    rows = {line.split()[0]: line.split() for line in last.splitlines() if line.strip().startswith(("g0 ", "g1 "))}
    assert set(rows) == {"g0", "g1"}, last
    assert sum(int(row[4]) for row in rows.values()) > 0, "jobs done: " + last
    assert json.loads(last.strip().splitlines()[-1]) == {"stopped": True, "log": "/tmp/actions-gateway-demo.log"}

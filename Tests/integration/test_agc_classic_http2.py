"""Classic sessions as they meet GitHub: the broker over TLS and HTTP/2 (nghttpx in front of the
fake), every byte through the tenant's egress proxy (HTTPS_PROXY, CONNECT). The AGC's long polls
then ride its own HTTP/2 client (OutboundPool's multiplexer), not curl: jobs must still be
acquired, renewed and completed exactly once. Assertions read what the fakes and the proxy saw;
the AGC's own counter only tells which transport carried the polls."""
import re
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import conftest  # noqa: E402
from agc_burst import start_agc  # noqa: E402
from agc_classic_idle import free_port, http2_front  # noqa: E402
from conftest import tenant_config, wait_for  # noqa: E402
from test_agc import AGC, GitHubFake, workers  # noqa: E402
from test_agc_classic import classic, finish, live_sessions, payload_of  # noqa: E402
from test_gmc_controller import Fake as KubeFake  # noqa: E402


def agc_metric(admin, name):
    text = urllib.request.urlopen(f"http://{admin}/metrics", timeout=5).read().decode()
    match = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(match.group(1)) if match else None


def test_classic_jobs_over_http2_through_the_egress_proxy(tmp_path):
    front_port = free_port()
    kube = KubeFake()
    github = GitHubFake(tmp_path, hold=2, extra=("--agent-key-bits", "1024", "--public-url", f"https://127.0.0.1:{front_port}"))
    proxy = conftest.Proxy(tenant_config())
    admin_port = free_port()
    agc = None
    try:
        with http2_front(tmp_path, int(github.base.rsplit(":", 1)[1]), front_port) as cert:
            group = {"name": "cpu", "runnerLabels": ["linux"], "acquisition": "classic", "minListeners": 4, "maxListeners": 4,
                     "maxWorkers": 10, "completedPodTTL": "0s"}
            agc = start_agc(AGC, kube, github, max_workers=10, groups=[group], api_url=f"https://127.0.0.1:{front_port}/api/v3",
                            extra=("--github-ca", str(cert)), https_proxy=f"http://127.0.0.1:{proxy.port}",
                            admin=f"127.0.0.1:{admin_port}")
            wait_for(lambda: len(live_sessions(github)) == 4, timeout=60, what="four virtual sessions")
            plans = [github.control("classic/enqueue", {"repository": "acme/widgets", "runId": 100 + n})["planIds"][0] for n in range(3)]
            wait_for(lambda: len(workers(kube)) == 3, timeout=60, what="three worker pods")
            pods = workers(kube)
            assert sorted(payload_of(kube, pod)["plan"]["planId"] for pod in pods) == sorted(plans), "one pod per plan"
            requests = [payload_of(kube, pod)["requestId"] for pod in pods]
            wait_for(lambda: {r["requestId"] for r in classic(github)["renewals"] if r["ok"]} >= set(requests), timeout=90,
                     what="every job renewed with its job token")
            for pod, request in zip(pods, requests):
                github.control("classic/run", {"requestId": request, "result": "succeeded"})
                finish(kube, pod)
            wait_for(lambda: all(classic(github)["plans"][p]["conclusion"] == "success" for p in plans), timeout=30,
                     what="three plans concluded")
            assert not any(classic(github)["plans"][p]["falseGreen"] for p in plans)
            wait_for(lambda: not workers(kube), timeout=30, what="the pods reaped")

            # Polls kept coming (the fake holds each 2 s) and every one went through the proxy,
            # which saw a handful of tunnels for them all: shared HTTP/2 connections.
            def polls():
                return sum(1 for c in github.control("state")["calls"] if c["endpoint"] == "broker_poll")
            wait_for(lambda: polls() >= 12, timeout=30, what="a dozen polls answered")
            polls = polls()
            metrics = proxy.metrics()
            tunnels = sum(v for k, v in metrics.items() if k.startswith("egress_proxy_tunnels_total") and "established" in k)
            assert 0 < tunnels < polls, (tunnels, polls)
            assert sum(v for k, v in metrics.items() if "bytes" in k and "team-a" in k) > 0
            carried = agc_metric(f"127.0.0.1:{admin_port}", "agc_github_outbound_multiplexed_requests_total")
            assert carried is not None and carried >= 12, "the polls rode the AGC's own HTTP/2 client"
            agc.terminate()
            assert agc.wait(timeout=30) == 0
            wait_for(lambda: not live_sessions(github), timeout=10, what="sessions deleted on SIGTERM")
    finally:
        if agc and agc.poll() is None:
            agc.terminate()
            agc.wait(timeout=30)
        proxy.stop()
        github.stop()
        kube.stop()

#!/usr/bin/env python3
"""Webhook deliveries per second through `gmc run --webhook-addr`: signed workflow_job `queued`
deliveries (each with its own X-GitHub-Delivery, so none is a replay) from several client
processes, one connection per delivery as GitHub sends them, against a GMC whose cache holds
`--gateways` gateways (the fake API server), logging at info (a line per routed job, as in
production). Every answer must be 202 "routed"; the rate, the
GMC's CPU seconds and RSS, and its own routed counter are printed.

With --wake, the GMC also signs and sends a wake per routed job (`--wake-key`) to a sink
process standing in for the AGCs (it answers 202 and counts), and the wakes' outcomes are
printed too: what a wake costs the router.

Usage: python3 bench/webhook_bench.py [--gmc .build/release/gmc] [--deliveries 20000] [--clients 3] [--wake]"""
import argparse
import http.server
import hashlib
import hmac
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
FAKE = os.path.join(ROOT, "Tests", "fakes", "kube_apiserver.py")
SECRET = b"bench-secret"


def delivery_bytes(index):
    body = json.dumps({"action": "queued", "organization": {"login": "org-7"}, "repository": {"owner": {"login": "org-7"}},
                       "workflow_job": {"id": 100000 + index, "run_id": 9, "labels": ["self-hosted", "linux"],
                                        "created_at": "2026-12-07T10:00:00Z"}}).encode()
    signature = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
    head = (f"POST /webhook HTTP/1.1\r\nHost: gmc\r\nContent-Type: application/json\r\nX-GitHub-Event: workflow_job\r\n"
            f"X-GitHub-Delivery: bench-{index}\r\nX-Hub-Signature-256: {signature}\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


def client(address, indices, results):
    requests = [delivery_bytes(i) for i in indices]
    ok = 0
    start = time.monotonic()
    for request in requests:
        with socket.create_connection(address) as sock:
            sock.sendall(request)
            reply = b""
            while True:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                reply += chunk
        ok += reply.startswith(b"HTTP/1.1 202") and reply.endswith(b"routed\n")
    results.put((ok, len(requests), time.monotonic() - start))


def wake_sink(port_queue, counter):
    """Stands in for every AGC: 202 to each POST /wake, counted."""
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with counter.get_lock():
                counter.value += 1
            self.send_response(202)
            self.send_header("Content-Length", "9")
            self.end_headers()
            self.wfile.write(b"accepted\n")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port_queue.put(server.server_address[1])
    server.serve_forever()


def proc_stat(pid):
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    with open(f"/proc/{pid}/status") as handle:
        rss = next(int(line.split()[1]) for line in handle if line.startswith("VmRSS:"))
    return cpu, rss


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--gmc", default=os.path.join(ROOT, ".build", "release", "gmc"))
    parser.add_argument("--deliveries", type=int, default=20000)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--gateways", type=int, default=200)
    parser.add_argument("--wake", action="store_true", help="sign and send a wake per routed job to a sink")
    args = parser.parse_args()

    # The fake's own log (tracebacks of watches cut when the GMC is stopped) is not the bench's.
    fake = subprocess.Popen([sys.executable, FAKE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    kube = f"http://127.0.0.1:{json.loads(fake.stdout.readline())['port']}"

    def call(method, path, body):
        request = urllib.request.Request(kube + path, data=json.dumps(body).encode(), method=method,
                                         headers={"Content-Type": "application/json"})
        urllib.request.urlopen(request, timeout=10).read()

    call("POST", "/api/v1/namespaces", {"metadata": {"name": "bench"}})
    for index in range(args.gateways):
        call("POST", "/apis/actions-gateway.github.com/v1alpha1/namespaces/bench/actionsgateways", {
            "apiVersion": "actions-gateway.github.com/v1alpha1", "kind": "ActionsGateway", "metadata": {"name": f"gw-{index}"},
            "spec": {"gitHubAppRef": {"name": "app"}, "gitHubURL": f"https://github.com/org-{index}",
                     "runnerGroups": [{"name": "cpu", "runnerLabels": ["linux"]}]}})
    secrets = tempfile.mkdtemp(prefix="webhook-bench-")
    with open(os.path.join(secrets, "github.com"), "wb") as handle:
        handle.write(SECRET)
    wake_args, sink, received = [], None, multiprocessing.Value("i", 0)
    if args.wake:
        key = os.path.join(secrets, ".wake.pem")  # a dot file: the secrets directory skips it
        subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", key], check=True)
        ports = multiprocessing.Queue()
        sink = multiprocessing.Process(target=wake_sink, args=(ports, received), daemon=True)
        sink.start()
        wake_args = ["--wake-key", key, "--agc-url-template", f"http://127.0.0.1:{ports.get(timeout=10)}"]
    gmc = subprocess.Popen([args.gmc, "run", "--api-server", kube, "--metrics-addr", "127.0.0.1:0", "--webhook-addr", "127.0.0.1:0",
                            "--webhook-secrets", secrets, *wake_args], stderr=subprocess.PIPE, text=True)
    try:
        started = {}
        for line in gmc.stderr:
            started = json.loads(line) if line.startswith("{") else {}
            if started.get("msg") == "gmc started":
                break
        # Its log (one line per routed job, as in production) is drained, so a full pipe never stalls it.
        threading.Thread(target=lambda: [None for _ in gmc.stderr], daemon=True).start()
        host, port = started["webhook"].rsplit(":", 1)
        address = (host, int(port))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # until the cache has listed (a delivery then routes)
            with socket.create_connection(address) as sock:
                sock.sendall(delivery_bytes(-1))
                if b"routed" in sock.recv(4096):
                    break
            time.sleep(0.1)
        cpu_before, _ = proc_stat(gmc.pid)
        results = multiprocessing.Queue()
        share = args.deliveries // args.clients
        workers = [multiprocessing.Process(target=client, args=(address, range(c * share, (c + 1) * share), results))
                   for c in range(args.clients)]
        start = time.monotonic()
        for worker in workers:
            worker.start()
        outcomes = [results.get() for _ in workers]
        elapsed = time.monotonic() - start
        for worker in workers:
            worker.join()
        cpu_after, rss = proc_stat(gmc.pid)
        ok = sum(o[0] for o in outcomes)
        total = sum(o[1] for o in outcomes)
        metrics = urllib.request.urlopen(f"http://{started['admin']}/metrics", timeout=5).read().decode()
        routed = next(float(l.split()[-1]) for l in metrics.splitlines() if l.startswith('gmc_webhook_deliveries_total{outcome="routed"}'))
        wakes = {}
        if args.wake:
            time.sleep(3)  # the last wakes' answers (each has a 3 s deadline)
            metrics = urllib.request.urlopen(f"http://{started['admin']}/metrics", timeout=5).read().decode()
            wakes = {l.split('"')[1]: float(l.split()[-1]) for l in metrics.splitlines() if l.startswith("gmc_agc_wakes_total{")}
            wakes["sink_received"] = received.value
        print(json.dumps({"wakes": wakes, "deliveries": total, "routed_answers": ok, "gmc_routed_counter": routed, "seconds": round(elapsed, 3),
                          "deliveries_per_second": round(total / elapsed), "gmc_cpu_seconds": round(cpu_after - cpu_before, 2),
                          "gmc_cpu_ms_per_delivery": round((cpu_after - cpu_before) * 1000 / total, 3), "gmc_rss_kib": rss,
                          "gateways": args.gateways, "clients": args.clients}))
        if ok != total:
            sys.exit(f"{total - ok} deliveries were not answered 202 routed")
    finally:
        gmc.kill()
        gmc.wait()
        if sink is not None:
            sink.kill()
        fake.stdin.close()
        fake.kill()
        fake.wait()


if __name__ == "__main__":
    main()

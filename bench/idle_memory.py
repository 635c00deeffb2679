#!/usr/bin/env python3
"""Proxy memory per idle tunnel: RSS after N tunnels are open and idle, minus the RSS
before any tunnel, divided by N. Loopback only; stops everything it starts.

Each tunnel does one round trip first, so both relay directions have used (and returned)
a pooled buffer: an idle tunnel should hold none.
"""
import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def main(args):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    async def echo(reader, writer):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0, backlog=4096)
    echo_port = server.sockets[0].getsockname()[1]
    config = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
    config.write("""listen: 127.0.0.1:0
admin: 127.0.0.1:0
tenants:
  - name: bench
    allow: [{cidr: 127.0.0.0/8, ports: ["*"]}]
    allowPrivate: [127.0.0.0/8]
""")
    config.close()
    proxy = subprocess.Popen([args.bin, "--config", config.name, "--loops", str(args.loops), "--log-level", "info"],
                             stderr=subprocess.PIPE, text=True)
    try:
        # The proxy logs its bound addresses in its "listening" line (the only info line it
        # writes before a tunnel; audit lines are info too, so read stderr only until then).
        port = None
        for line in proxy.stderr:
            record = json.loads(line) if line.startswith("{") else {}
            if record.get("msg") == "listening":
                port = int(record["listen"].rsplit(":", 1)[1])
                break
        if port is None:
            raise RuntimeError("proxy did not start")
        # Keep draining its log (audit lines), so a full pipe never blocks the proxy.
        threading.Thread(target=lambda: [None for _ in proxy.stderr], daemon=True).start()
        baseline = rss_kib(proxy.pid)
        connections = []
        for start in range(0, args.tunnels, 200):
            async def one():
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(f"CONNECT 127.0.0.1:{echo_port} HTTP/1.1\r\n\r\n".encode())
                await reader.readuntil(b"\r\n\r\n")
                writer.write(b"x" * 64)
                await reader.readexactly(64)
                return reader, writer
            connections += await asyncio.gather(*[one() for _ in range(min(200, args.tunnels - start))])
        await asyncio.sleep(0.5)  # let the proxy settle before reading RSS (not a test wait)
        held = rss_kib(proxy.pid)
        result = {
            "tunnels": len(connections), "loops": args.loops, "baseline_rss_kib": baseline, "held_rss_kib": held,
            "per_tunnel_bytes": round((held - baseline) * 1024 / len(connections)),
        }
        print(json.dumps(result))
        for _, writer in connections:
            writer.close()
    finally:
        proxy.terminate()
        # Keep serving the echo side while the proxy drains its tunnels.
        await asyncio.get_running_loop().run_in_executor(None, proxy.wait, 60)
        server.close()
        os.unlink(config.name)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", default=".build/release/egress-proxy")
    parser.add_argument("--tunnels", type=int, default=1000)
    parser.add_argument("--loops", type=int, default=2)
    asyncio.run(main(parser.parse_args()))

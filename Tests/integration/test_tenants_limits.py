"""Tenant isolation, per-tenant and process limits, descriptor exhaustion. Loopback only:
127.0.0.0/8 is all on `lo`, so 127.0.0.3 and 127.0.0.4 serve as two tenants' egress IPs."""
import base64
import hashlib
import resource
import socket

from conftest import EchoServer, Proxy, open_tunnel, raw_request, read_head, recv_exactly, wait_for


def sha(secret):
    return hashlib.sha256(secret.encode()).hexdigest()


def connect(proxy, target, user=None, secret=None):
    auth = ""
    if user is not None:
        auth = "Proxy-Authorization: Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode() + "\r\n"
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\n{auth}\r\n".encode())
    head, _ = read_head(sock)
    return sock, head


def status(data):
    return int(data.split(b" ", 2)[1])


def two_tenants(server_a, server_b, secret_file):
    return f"""listen: 127.0.0.1:0
admin: 127.0.0.1:0
tenants:
  - name: team-a
    credentials: {{sha256: {sha("alpha-secret")}}}
    allow: [{{cidr: 127.0.0.1/32, ports: [{server_a}]}}]
    allowPrivate: [127.0.0.0/8]
    egressAddress: 127.0.0.3
  - name: team-b
    credentials: {{secretFile: {secret_file}}}
    allow: [{{cidr: 127.0.0.1/32, ports: [{server_b}]}}]
    allowPrivate: [127.0.0.0/8]
    egressAddress: 127.0.0.4
"""


def test_tenant_isolation_and_egress_addresses(tmp_path):
    a = EchoServer()
    b = EchoServer()
    secret_file = tmp_path / "team-b"
    secret_file.write_text("bravo-secret\n")
    proxy = Proxy(two_tenants(a.port, b.port, secret_file))
    try:
        sock, data = connect(proxy, f"127.0.0.1:{a.port}", "team-a", "alpha-secret")
        assert status(data) == 200
        sock.sendall(b"a")
        assert recv_exactly(sock, 1) == b"a"
        sock.close()
        assert a.peers[-1][0] == "127.0.0.3", "team-a leaves from its egress address"

        sock, data = connect(proxy, f"127.0.0.1:{b.port}", "team-b", "bravo-secret")
        assert status(data) == 200
        sock.close()
        wait_for(lambda: b.peers, what="b connection")
        assert b.peers[-1][0] == "127.0.0.4"

        # A's credentials never reach B's destination (or B's egress address), and vice versa.
        for user, secret, port in [("team-a", "alpha-secret", b.port), ("team-b", "bravo-secret", a.port)]:
            sock, data = connect(proxy, f"127.0.0.1:{port}", user, secret)
            assert status(data) == 403
            sock.close()
        assert len(a.peers) == 1 and len(b.peers) == 1

        for user, secret in [("team-a", "bravo-secret"), ("team-a", "alpha-secreT"), ("team-c", "alpha-secret"),
                             ("team-b", "bravo-secret\n"), (None, None)]:
            sock, data = connect(proxy, f"127.0.0.1:{a.port}", user, secret)
            assert status(data) == 407, (user, secret)
            assert b'Proxy-Authenticate: Basic realm="egress"' in data
            sock.close()
        metrics = proxy.metrics()
        assert metrics['egress_proxy_tunnels_total{tenant="unknown",result="auth_failed"}'] == 5
        # No secret, in any form, in any log line.
        wait_for(lambda: len(proxy.records("tunnel")) >= 9, what="audit lines")
        text = "\n".join(str(r) for r in proxy.lines)
        for needle in ["alpha-secret", "bravo-secret", base64.b64encode(b"team-a:alpha-secret").decode(), sha("alpha-secret")]:
            assert needle not in text
    finally:
        proxy.stop()
        a.close()
        b.close()


def test_tenant_max_tunnels_503_then_recovers(echo_server):
    config = f"""listen: 127.0.0.1:0
admin: 127.0.0.1:0
tenants:
  - name: small
    maxTunnels: 3
    allow: [{{cidr: 127.0.0.0/8, ports: ["*"]}}]
    allowPrivate: [127.0.0.0/8]
"""
    proxy = Proxy(config)
    try:
        held = [open_tunnel(proxy.port, f"127.0.0.1:{echo_server.port}")[0] for _ in range(3)]
        sock, status_line, _ = open_tunnel(proxy.port, f"127.0.0.1:{echo_server.port}")
        assert "503" in status_line
        sock.close()
        held.pop().close()
        wait_for(lambda: proxy.metrics()['egress_proxy_tunnels_active{tenant="small"}'] == 2, what="slot freed")
        sock, status_line, _ = open_tunnel(proxy.port, f"127.0.0.1:{echo_server.port}")
        assert status_line.endswith("200 Connection established")
        held.append(sock)
        assert proxy.metrics()['egress_proxy_tunnels_total{tenant="small",result="over_limit"}'] == 1
        for sock in held:
            sock.sendall(b"ok")
            assert recv_exactly(sock, 2) == b"ok"
            sock.close()
    finally:
        proxy.stop()


def test_process_max_tunnels_503(echo_server):
    config = f"""listen: 127.0.0.1:0
admin: 127.0.0.1:0
limits: {{maxTunnels: 2}}
tenants:
  - name: t
    allow: [{{cidr: 127.0.0.0/8, ports: ["*"]}}]
    allowPrivate: [127.0.0.0/8]
"""
    proxy = Proxy(config)
    try:
        held = [open_tunnel(proxy.port, f"127.0.0.1:{echo_server.port}")[0] for _ in range(2)]
        response = raw_request(proxy.port, f"CONNECT 127.0.0.1:{echo_server.port} HTTP/1.1\r\n\r\n".encode())
        assert response.startswith(b"HTTP/1.1 503 ")
        held.pop().close()
        sock = wait_for(lambda: (r := open_tunnel(proxy.port, f"127.0.0.1:{echo_server.port}")) and
                        " 200 " in r[1] and r[0], what="capacity back")
        sock.close()
        held[0].close()
    finally:
        proxy.stop()


def test_connect_rate_429_with_retry_after(echo_server):
    config = f"""listen: 127.0.0.1:0
admin: 127.0.0.1:0
tenants:
  - name: slow
    connectRate: {{perSecond: 0.5, burst: 2}}
    allow: [{{cidr: 127.0.0.0/8, ports: ["*"]}}]
    allowPrivate: [127.0.0.0/8]
"""
    proxy = Proxy(config)
    try:
        for _ in range(2):
            sock, status_line, _ = open_tunnel(proxy.port, f"127.0.0.1:{echo_server.port}")
            assert " 200 " in status_line
            sock.close()
        response = raw_request(proxy.port, f"CONNECT 127.0.0.1:{echo_server.port} HTTP/1.1\r\n\r\n".encode())
        assert response.startswith(b"HTTP/1.1 429 Too Many Requests\r\n")
        retry = int(response.split(b"Retry-After: ")[1].split(b"\r\n")[0])
        assert 1 <= retry <= 2
        assert proxy.metrics()['egress_proxy_tunnels_total{tenant="slow",result="rate_limited"}'] == 1
    finally:
        proxy.stop()


def test_descriptor_exhaustion_degrades_and_recovers(echo_server):
    limit = 200

    def lower_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    config = """listen: 127.0.0.1:0
admin: 127.0.0.1:0
tenants:
  - name: t
    allow: [{cidr: 127.0.0.0/8, ports: ["*"]}]
    allowPrivate: [127.0.0.0/8]
"""
    proxy = Proxy(config, loops=1, preexec_fn=lower_limit)
    try:
        held = []
        refused = 0
        for _ in range(limit):
            sock, status_line, _ = open_tunnel(proxy.port, f"127.0.0.1:{echo_server.port}", timeout=10)
            if " 200 " in status_line:
                held.append(sock)
            else:
                assert " 503 " in status_line, status_line
                refused += 1
                sock.close()
        assert refused > 0, "the descriptor limit must have been reached"
        assert 10 < len(held) < limit // 2
        for index, sock in enumerate(held):
            sock.sendall(b"alive")
            assert recv_exactly(sock, 5) == b"alive", f"open tunnel {index} unaffected"
        assert proxy.process.poll() is None
        for sock in held[:5]:
            sock.close()
        sock = wait_for(lambda: (r := open_tunnel(proxy.port, f"127.0.0.1:{echo_server.port}")) and
                        (" 200 " in r[1] or r[0].close()) and r[0], what="recovery")
        sock.sendall(b"back")
        assert recv_exactly(sock, 4) == b"back"
        sock.close()
        for sock in held[5:]:
            sock.close()
    finally:
        proxy.stop()

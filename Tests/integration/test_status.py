"""Every status code of spec section 2 that this issue owns, over raw sockets."""
import http.server
import socket
import threading

import pytest
import requests

from conftest import Proxy, closed_port, raw_request, tenant_config, wait_for


def status_of(response):
    return int(response.split(b" ", 2)[1])


def test_denied_destination_gets_403_and_is_counted():
    # Only a name is allowed; a loopback literal matches no rule (and never leaves the host).
    proxy = Proxy(tenant_config(allow_loopback=False).replace(
        "allow: []", "allow:\n      - host: allowed.example"))
    try:
        check_denied(proxy)
    finally:
        proxy.stop()


def check_denied(proxy):
    before = proxy.metrics()
    response = raw_request(proxy.port, b"CONNECT 127.0.0.1:9 HTTP/1.1\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 403 Forbidden\r\n")
    assert b"Connection: close" in response
    assert b"127.0.0.1" not in response, "the body never echoes details"
    after = wait_for(lambda: (m := proxy.metrics()) and
                     m['egress_proxy_denied_total{tenant="team-a",reason="not_allowed"}'] >
                     before['egress_proxy_denied_total{tenant="team-a",reason="not_allowed"}'] and m,
                     what="denied counter")
    key = 'egress_proxy_tunnels_total{tenant="team-a",result="denied"}'
    assert after[key] == before[key] + 1
    record = wait_for(lambda: proxy.find("tunnel", result="denied"), what="audit line")
    assert record["reason"] == "not_allowed" and record["status"] == 403


def test_port_outside_the_rule_is_403():
    instance = Proxy(tenant_config(allow_loopback=False).replace(
        "allow: []", "allow:\n      - cidr: 127.0.0.0/8\n        ports: [1]"))
    try:
        response = raw_request(instance.port, b"CONNECT 127.0.0.1:2 HTTP/1.1\r\n\r\n")
        assert status_of(response) == 403
        wait_for(lambda: instance.metrics()['egress_proxy_denied_total{tenant="team-a",reason="port_not_allowed"}'] == 1,
                 what="port_not_allowed")
    finally:
        instance.stop()


def test_private_address_is_403_without_allow_private():
    config = tenant_config().replace('    allowPrivate: [127.0.0.0/8, "::1/128"]\n', "")
    instance = Proxy(config)
    try:
        response = raw_request(instance.port, b"CONNECT 127.0.0.1:9 HTTP/1.1\r\n\r\n")
        assert status_of(response) == 403
        wait_for(lambda: instance.metrics()['egress_proxy_denied_total{tenant="team-a",reason="private_address"}'] == 1,
                 what="private_address")
    finally:
        instance.stop()


def test_proxy_own_ports_are_denied(proxy):
    for port in (proxy.port, proxy.admin_address[1]):
        response = raw_request(proxy.port, f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n".encode())
        assert status_of(response) == 403, port


def test_closed_port_gets_502(proxy):
    port = closed_port()
    response = raw_request(proxy.port, f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n".encode())
    assert response.startswith(b"HTTP/1.1 502 Bad Gateway\r\n")
    assert b"refused" not in response.lower(), "kernel error text stays in the log"
    wait_for(lambda: proxy.metrics()['egress_proxy_tunnels_total{tenant="team-a",result="dial_failed"}'] == 1,
             what="dial_failed")


@pytest.mark.parametrize("payload,status", [
    (b"CONNECT github.com HTTP/1.1\r\n\r\n", 400),
    (b"CONNECT github.com:0 HTTP/1.1\r\n\r\n", 400),
    (b"CONNECT github.com:65536 HTTP/1.1\r\n\r\n", 400),
    (b"CONNECT user@github.com:443 HTTP/1.1\r\n\r\n", 400),
    (b"CONNECT github.com:443/x HTTP/1.1\r\n\r\n", 400),
    (b"CONNECT 127.1:443 HTTP/1.1\r\n\r\n", 400),
    (b"garbage\r\n\r\n", 400),
    (b"CONNECT github.com:443 HTTP/1.1\nHost: x\n\n", 400),
    (b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", 405),
    (b"BREW http://localhost/ HTTP/1.1\r\n\r\n", 405),
    (b"CONNECT github.com:443 HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n", 431),
])
def test_refusals(proxy, payload, status):
    response = raw_request(proxy.port, payload)
    assert status_of(response) == status, response[:80]
    assert b"\r\nConnection: close\r\n" in response


def test_header_timeout_is_408():
    instance = Proxy(tenant_config(timeouts="{header: 300ms, quiescence: 200ms}"))
    try:
        with socket.create_connection(("127.0.0.1", instance.port), timeout=10) as sock:
            sock.sendall(b"CONNECT localhost:1 HTTP/1.1\r\n")  # never finished
            response = sock.recv(4096)
        assert status_of(response) == 408
        wait_for(lambda: instance.metrics()['egress_proxy_tunnels_total{tenant="team-a",result="timeout"}'] == 1,
                 what="timeout counter")
    finally:
        instance.stop()


def test_credentials_required_when_no_tenant_matches():
    config = """listen: 127.0.0.1:0
admin: 127.0.0.1:0
tenants:
  - name: locked
    credentials: {sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08}
    allow: [{cidr: 127.0.0.0/8, ports: ["*"]}]
"""
    instance = Proxy(config)
    try:
        response = raw_request(instance.port, b"CONNECT 127.0.0.1:9 HTTP/1.1\r\n\r\n")
        assert status_of(response) == 407
        assert b'Proxy-Authenticate: Basic realm="egress"' in response
    finally:
        instance.stop()


def test_plain_http_forwarding(proxy, tmp_path):
    (tmp_path / "hello.txt").write_bytes(b"plain http through the proxy\n")
    seen = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(tmp_path), **kwargs)

        def do_GET(self):
            seen.append((self.path, dict(self.headers)))
            super().do_GET()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        proxies = {"http": f"http://127.0.0.1:{proxy.port}"}
        response = requests.get(f"http://127.0.0.1:{port}/hello.txt", proxies=proxies, timeout=10,
                                headers={"Proxy-Authorization": "Basic c2VjcmV0"})
        assert response.status_code == 200
        assert response.text == "plain http through the proxy\n"
        path, headers = seen[0]
        assert path == "/hello.txt", "absolute form rewritten to origin form"
        assert headers.get("Host") == f"127.0.0.1:{port}"
        assert "Proxy-Authorization" not in headers, "proxy credentials never reach the origin"
        assert headers.get("Connection") == "close"
        # A chunked request body is refused rather than forwarded blindly.
        chunked = raw_request(proxy.port, f"POST http://127.0.0.1:{port}/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".encode())
        assert status_of(chunked) == 411
    finally:
        server.shutdown()

"""A tenant's `parentProxy` (spec/egress-proxy.md section 3): its tunnels are CONNECTed onward through
a second proxy, for corporate egress, with the whole policy still decided by ours first. The parent is
a second egress-proxy (a real proxy, which logs what it was asked), or a scripted one where the test
needs exact bytes; the clients are curl and raw sockets."""
import base64
import hashlib
import socket
import subprocess
import threading

import pytest

from conftest import EchoServer, Proxy, closed_port, open_tunnel, read_head, recv_exactly, wait_for


def child_config(parent, allow="[{cidr: 127.0.0.0/8, ports: ['*']}]", allow_private="[127.0.0.0/8]"):
    return f"""listen: 127.0.0.1:0
admin: 127.0.0.1:0
tenants:
  - name: team-a
    allow: {allow}
    allowPrivate: {allow_private}
    parentProxy: "{parent}"
"""


def parent_config(credentials=""):
    return f"""listen: 127.0.0.1:0
admin: 127.0.0.1:0
tenants:
  - name: corp{credentials}
    allow: [{{cidr: 127.0.0.0/8, ports: ['*']}}, {{host: localhost, ports: ['*']}}]
    allowPrivate: [127.0.0.0/8]
"""


@pytest.fixture
def echo():
    server = EchoServer()
    yield server
    server.close()


class ScriptedParent:
    """A parent proxy that records each request head and answers with `reply` (then echoes)."""

    def __init__(self, reply):
        self.reply = reply
        self.heads = []
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            with connection:
                head, rest = read_head(connection)
                self.heads.append(head)
                connection.sendall(self.reply)
                data = rest
                while True:
                    if data:
                        connection.sendall(data)
                    try:
                        data = connection.recv(65536)
                    except OSError:
                        break
                    if not data:
                        break

    def close(self):
        self.listener.close()


def test_a_chained_connect_reaches_the_echo_server_through_the_parent(echo):
    parent = Proxy(parent_config())
    child = Proxy(child_config(f"http://127.0.0.1:{parent.port}"))
    try:
        sock, status, rest = open_tunnel(child.port, f"127.0.0.1:{echo.port}")
        assert status == "HTTP/1.1 200 Connection established" and rest == b""
        payload = bytes(range(256)) * 64
        sock.sendall(payload)
        assert recv_exactly(sock, len(payload)) == payload
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(1) == b""
        sock.close()
        # The parent was asked for the destination by name and dialed it; ours dialed the parent.
        upstream = wait_for(lambda: parent.find("tunnel", result="established"), what="the parent's audit line")
        assert upstream["destination"] == f"127.0.0.1:{echo.port}" and upstream["dialed"] == f"127.0.0.1:{echo.port}"
        ours = wait_for(lambda: child.find("tunnel", result="established"), what="our audit line")
        assert ours["parent"] == f"127.0.0.1:{parent.port}" and ours["dialed"] == f"127.0.0.1:{parent.port}"
        assert ours["bytes_up"] == len(payload) and ours["bytes_down"] == len(payload), ours
        assert child.metrics()['egress_proxy_bytes_total{tenant="team-a",direction="downstream"}'] == len(payload)
    finally:
        child.stop()
        parent.stop()


def test_curl_fetches_through_both_proxies_with_the_parents_credentials():
    import http.server

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "5")
            self.end_headers()
            self.wfile.write(b"hello")

        def log_message(self, *args):
            pass

    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    secret = "p@ss:word"
    digest = hashlib.sha256(secret.encode()).hexdigest()
    parent = Proxy(parent_config(credentials=f"\n    credentials: {{sha256: {digest}}}"))
    # The password is percent-encoded in the URL, as curl and every proxy URL parser expect.
    child = Proxy(child_config(f"http://corp:p%40ss%3Aword@127.0.0.1:{parent.port}/"))
    try:
        result = subprocess.run(["curl", "-sv", "-p", "--max-time", "10", "-x", f"http://127.0.0.1:{child.port}",
                                 f"http://localhost:{web.server_address[1]}/"], capture_output=True, text=True)
        assert result.returncode == 0 and result.stdout == "hello", result.stderr
        record = wait_for(lambda: parent.find("tunnel", result="established"), what="the parent admitted us")
        assert record["tenant"] == "corp" and record["destination"] == f"localhost:{web.server_address[1]}"
    finally:
        child.stop()
        parent.stop()
        web.shutdown()
        web.server_close()


def test_our_policy_is_decided_before_the_parent_is_asked(echo):
    parent = Proxy(parent_config())
    try:
        # Not on the allowlist: 403 from us, the parent never hears of it.
        denied = Proxy(child_config(f"http://127.0.0.1:{parent.port}", allow="[{host: github.com}]"))
        try:
            sock, status, _ = open_tunnel(denied.port, f"127.0.0.1:{echo.port}")
            sock.close()
            assert status == "HTTP/1.1 403 Forbidden"
            assert wait_for(lambda: denied.find("tunnel", reason="not_allowed"), what="audit")
        finally:
            denied.stop()
        # Allowed, but a private address without allowPrivate: the SSRF check holds through a parent.
        private = Proxy(child_config(f"http://127.0.0.1:{parent.port}", allow_private="[]"))
        try:
            sock, status, _ = open_tunnel(private.port, f"127.0.0.1:{echo.port}")
            sock.close()
            assert status == "HTTP/1.1 403 Forbidden"
            assert wait_for(lambda: private.find("tunnel", reason="private_address"), what="audit")
        finally:
            private.stop()
        assert not parent.records("tunnel"), "the parent was never asked"
    finally:
        parent.stop()


def test_a_parents_refusal_and_a_dead_parent_are_502_with_the_reason():
    refusing = ScriptedParent(b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic\r\n\r\n")
    child = Proxy(child_config(f"http://127.0.0.1:{refusing.port}"))
    try:
        result = subprocess.run(["curl", "-sv", "-p", "--max-time", "10", "-x", f"http://127.0.0.1:{child.port}",
                                 "http://127.0.0.1:9/"], capture_output=True, text=True)
        assert "< HTTP/1.1 502 Bad Gateway" in result.stderr and "< X-Egress-Proxy-Error: parent_refused" in result.stderr
        record = wait_for(lambda: child.find("tunnel", reason="parent_refused"), what="audit")
        assert record["error"] == "HTTP/1.1 407 Proxy Authentication Required" and record["result"] == "dial_failed"
        assert refusing.heads == [b"CONNECT 127.0.0.1:9 HTTP/1.1\r\nHost: 127.0.0.1:9\r\n\r\n"]
    finally:
        child.stop()
        refusing.close()
    dead = Proxy(child_config(f"http://127.0.0.1:{closed_port()}"))
    try:
        sock, status, _ = open_tunnel(dead.port, "127.0.0.1:9")
        sock.close()
        assert status == "HTTP/1.1 502 Bad Gateway"
        assert wait_for(lambda: dead.find("tunnel", reason="dial_failed"), what="audit")["result"] == "dial_failed"
    finally:
        dead.stop()


def test_bytes_the_parent_sends_after_its_200_reach_the_client_after_ours():
    banner = b"SSH-2.0-destination-speaks-first\r\n"
    parent = ScriptedParent(b"HTTP/1.0 200 OK\r\nVia: corp\r\n\r\n" + banner)
    child = Proxy(child_config(f"http://user:secret@127.0.0.1:{parent.port}"))
    try:
        sock, status, rest = open_tunnel(child.port, "127.0.0.1:22")
        assert status == "HTTP/1.1 200 Connection established"
        rest += recv_exactly(sock, len(banner) - len(rest))
        assert rest == banner, "the parent's head is ours to read; what follows it is the destination's"
        sock.sendall(b"ping")
        assert recv_exactly(sock, 4) == b"ping"
        sock.close()
        expected = "Basic " + base64.b64encode(b"user:secret").decode()
        assert f"Proxy-Authorization: {expected}".encode() in parent.heads[0]
        record = wait_for(lambda: child.find("tunnel", result="established", reason="completed"), what="audit")
        assert record["bytes_down"] == len(banner) + 4, "the parent's reply head is not counted, its destination bytes are"
    finally:
        child.stop()
        parent.close()


@pytest.mark.parametrize("value, message", [
    ("https://corp:8443", "https:// parents are not supported"),
    ("http://corp", "the port is required"),
    ("http://corp:8080/path", "no path"),
    ("socks5://corp:1080", "expected http://host:port"),
    ("http://user@corp:8080", "credentials must be user:password"),
])
def test_a_bad_parent_url_is_a_config_error_naming_the_key(tmp_path, value, message):
    from conftest import BIN
    path = tmp_path / "config.yaml"
    path.write_text(child_config(value))
    result = subprocess.run([BIN, "--check-config", "--config", str(path)], capture_output=True, text=True)
    assert result.returncode != 0
    assert "tenants[0].parentProxy" in result.stderr and message in result.stderr, result.stderr

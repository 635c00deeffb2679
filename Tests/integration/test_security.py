"""Regression tests for the proxy side of issue 9: each defends a class of hostile client input,
and each asserts on what the other side (an origin, a second tenant, the admin endpoint) saw."""
import socket
import threading

import pytest

from conftest import Proxy, raw_request, tenant_config, wait_for


class RecordingOrigin:
    """A raw TCP origin for one connection: reads a request head and its Content-Length body,
    answers, half-closes, then keeps recording until the proxy closes, so any byte the proxy
    sends after the request (a smuggled second request) lands in `received` too."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.received = []
        self.first_bytes = threading.Event()
        self.done = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        try:
            connection, _ = self.sock.accept()
        except OSError:
            return
        data = b""
        with connection:
            connection.settimeout(10)
            try:
                while b"\r\n\r\n" not in data:
                    chunk = connection.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                    self.first_bytes.set()
                head, _, rest = data.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip())
                while len(rest) < length:
                    chunk = connection.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                    rest += chunk
                connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
                connection.shutdown(socket.SHUT_WR)
                while chunk := connection.recv(65536):
                    data += chunk
            except OSError:
                pass
        self.received.append(data)
        self.done.set()

    def close(self):
        self.sock.close()


# Every way a client could try to send a second request past the first one's policy decision:
# pipelined in the same segment or in a later one, with a body or none, with Connection naming
# the framing fields so a naive hop-by-hop filter would drop them.
SMUGGLED = b"GET http://169.254.169.254/latest/meta-data/ HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n"


@pytest.mark.parametrize("body", [b"", b"hello", b"x" * 3000], ids=["no-body", "5B", "3000B"])
@pytest.mark.parametrize("connection", [None, "content-length", "Content-Length, Host", "host, keep-alive"])
@pytest.mark.parametrize("later", [False, True])
def test_forwarding_sends_exactly_head_and_body(proxy, body, connection, later):
    origin = RecordingOrigin()
    try:
        head = f"POST http://127.0.0.1:{origin.port}/submit HTTP/1.1\r\nHost: 127.0.0.1:{origin.port}\r\n"
        head += f"Content-Length: {len(body)}\r\n"
        if connection:
            head += f"Connection: {connection}\r\n"
        head = head.encode() + b"\r\n"
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as client:
            if later:
                client.sendall(head + body)
                assert origin.first_bytes.wait(10), "the origin saw the request"
                client.sendall(SMUGGLED)
            else:
                client.sendall(head + body + SMUGGLED)
            response = b""
            while chunk := client.recv(65536):
                response += chunk
        assert origin.done.wait(10)
        seen = origin.received[0]
        request_head, _, seen_body = seen.partition(b"\r\n\r\n")
        assert seen_body == body, f"the origin got exactly the body, nothing after it: {seen_body[:80]!r}"
        lines = request_head.split(b"\r\n")
        assert lines[0] == b"POST /submit HTTP/1.1"
        assert f"Content-Length: {len(body)}".encode() in lines, "framing survives any Connection header"
        assert sum(1 for line in lines if line.lower().startswith(b"host:")) == 1
        assert b"169.254.169.254" not in seen
        assert response.startswith(b"HTTP/1.1 200 OK")
    finally:
        origin.close()


def admin_raw(proxy, request):
    host, port = proxy.admin_address
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/tunnels", "/no-such-path"])
def test_admin_head_has_the_get_head_and_no_body(proxy, path):
    get = admin_raw(proxy, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    head = admin_raw(proxy, f"HEAD {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    get_head, _, get_body = get.partition(b"\r\n\r\n")
    head_head, sep, head_body = head.partition(b"\r\n\r\n")
    assert sep and head_body == b"", f"HEAD {path} sent a body: {head_body[:60]!r}"
    assert head_head.split(b"\r\n")[0] == get_head.split(b"\r\n")[0], "same status line"
    if path in ("/healthz", "/no-such-path"):  # bodies that do not change between two requests
        assert f"Content-Length: {len(get_body)}".encode() in head_head.split(b"\r\n")


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "TRACE", "CONNECT"])
def test_admin_refuses_every_method_but_get_and_head(proxy, method):
    response = admin_raw(proxy, f"{method} /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode())
    assert response.startswith(b"HTTP/1.1 405 ")

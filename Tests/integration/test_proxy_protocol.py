"""PROXY protocol v1 and v2 on the listener (spec/egress-proxy.md section 3, `proxyProtocol`):
from a trusted balancer the header names the client, and `sources` tenancy follows it; from
anyone else it is never believed. The test client plays the balancer on 127.0.0.1."""
import socket
import struct

from conftest import Proxy, read_head, wait_for

CONFIG = """listen: 127.0.0.1:0
admin: 127.0.0.1:0
{trusted}
tenants:
  - name: team-a
    sources: [203.0.113.0/24]
    allow: [{{cidr: 127.0.0.0/8, ports: ["*"]}}]
    allowPrivate: [127.0.0.0/8]
  - name: team-b
    sources: ["2001:db8::/32"]
    allow: [{{cidr: 127.0.0.0/8, ports: ["*"]}}]
    allowPrivate: [127.0.0.0/8]
"""
TRUSTED = "proxyProtocol: {trustedSources: [127.0.0.0/8]}"
V2 = b"\r\n\r\n\x00\r\nQUIT\n"


def v1(source, port):
    family = "TCP6" if ":" in source else "TCP4"
    return f"PROXY {family} {source} 127.0.0.1 {port} 3128\r\n".encode()


def v2(source, port):
    if ":" in source:
        block = socket.inet_pton(socket.AF_INET6, source) + socket.inet_pton(socket.AF_INET6, "::1") + struct.pack("!HH", port, 3128)
        return V2 + bytes([0x21, 0x21]) + struct.pack("!H", len(block)) + block
    block = socket.inet_aton(source) + socket.inet_aton("127.0.0.1") + struct.pack("!HH", port, 3128)
    return V2 + bytes([0x21, 0x11]) + struct.pack("!H", len(block)) + block


def connect_through(proxy, header, target):
    """Sends `header` (possibly in two writes, as a slow balancer would), then CONNECT; returns
    the status line and the socket."""
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    if header:
        sock.sendall(header[:5])
        sock.sendall(header[5:])
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    head, _ = read_head(sock)
    return head.split(b"\r\n", 1)[0].decode(), sock


def test_a_trusted_balancer_names_the_client_and_picks_its_tenant(echo_server):
    proxy = Proxy(CONFIG.format(trusted=TRUSTED))
    target = f"127.0.0.1:{echo_server.port}"
    try:
        for header, client, tenant in ((v1("203.0.113.7", 51234), "203.0.113.7:51234", "team-a"),
                                       (v2("203.0.113.9", 40000), "203.0.113.9:40000", "team-a"),
                                       (v1("2001:db8::5", 443), "[2001:db8::5]:443", "team-b"),
                                       (v2("2001:db8::6", 444), "[2001:db8::6]:444", "team-b")):
            status, sock = connect_through(proxy, header, target)
            assert status == "HTTP/1.1 200 Connection established", status
            sock.sendall(b"ping")
            assert sock.recv(4) == b"ping", "the tunnel relays after the header was consumed"
            sock.close()
            record = wait_for(lambda: proxy.find("tunnel", client=client), what=f"the audit line of {client}")
            assert record["tenant"] == tenant and record["result"] == "established", record
        # No header from the balancer's own address: judged as itself (no `sources` match: 407).
        status, sock = connect_through(proxy, b"", target)
        assert status.startswith("HTTP/1.1 407"), status
        sock.close()
        # A header that is not one: 400, with the reason.
        status, sock = connect_through(proxy, b"PROXY TCP4 999.1.1.1 127.0.0.1 1 2\r\n", target)
        assert status.startswith("HTTP/1.1 400"), status
        sock.close()
        assert wait_for(lambda: proxy.find("tunnel", reason="bad_proxy_protocol"), what="the refusal's audit line")
    finally:
        proxy.stop()


def test_an_untrusted_client_cannot_claim_a_source(echo_server):
    proxy = Proxy(CONFIG.format(trusted=""))
    target = f"127.0.0.1:{echo_server.port}"
    try:
        for header in (v1("203.0.113.7", 51234), v2("203.0.113.7", 51234)):
            status, sock = connect_through(proxy, header, target)
            assert not status.startswith("HTTP/1.1 200"), status
            sock.close()
        assert not proxy.find("tunnel", result="established")
        assert not proxy.find("tunnel", client="203.0.113.7:51234"), "the claimed source was never used"
    finally:
        proxy.stop()

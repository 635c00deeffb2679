"""Tunnel behaviour over loopback: volume, concurrency, early data, half-close."""
import asyncio
import hashlib
import json
import re
import socket
import threading

from conftest import EchoServer, open_tunnel, pattern_bytes, recv_exactly, wait_for

MiB = 1 << 20


def test_100_mib_each_way_byte_for_byte(proxy, echo_server):
    payload = pattern_bytes(100 * MiB, "both-ways")
    sock, status, rest = open_tunnel(proxy.port, f"127.0.0.1:{echo_server.port}", timeout=60)
    assert status == "HTTP/1.1 200 Connection established"
    received = hashlib.sha256(rest)
    count = len(rest)

    def send():
        view = memoryview(payload)
        for offset in range(0, len(payload), MiB):
            sock.sendall(view[offset:offset + MiB])
        sock.shutdown(socket.SHUT_WR)

    sender = threading.Thread(target=send)
    sender.start()
    while True:
        chunk = sock.recv(1 << 20)
        if not chunk:
            break
        received.update(chunk)
        count += len(chunk)
    sender.join()
    sock.close()
    assert count == len(payload)
    assert received.hexdigest() == hashlib.sha256(payload).hexdigest()
    metrics = wait_for(lambda: (m := proxy.metrics()) and m['egress_proxy_tunnels_active{tenant="team-a"}'] == 0 and m,
                       what="tunnel closed")
    assert metrics['egress_proxy_bytes_total{tenant="team-a",direction="upstream"}'] >= 100 * MiB
    assert metrics['egress_proxy_bytes_total{tenant="team-a",direction="downstream"}'] >= 100 * MiB


def test_1000_concurrent_tunnels_all_correct(proxy, echo_server):
    count = 1000

    async def one(index, opened, release):
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(f"CONNECT 127.0.0.1:{echo_server.port} HTTP/1.1\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        assert head == b"HTTP/1.1 200 Connection established\r\n\r\n"
        opened.append(index)
        await release.wait()
        message = f"tunnel-{index}-".encode() * 50
        writer.write(message)
        echoed = await reader.readexactly(len(message))
        writer.close()
        return echoed == message

    async def main():
        opened = []
        release = asyncio.Event()
        tasks = [asyncio.create_task(one(i, opened, release)) for i in range(count)]
        while len(opened) < count:
            done = [t for t in tasks if t.done() and t.exception()]
            if done:
                raise done[0].exception()
            await asyncio.sleep(0.01)
        # All 1,000 are open at the same time.
        active = proxy.metrics()['egress_proxy_tunnels_active{tenant="team-a"}']
        release.set()
        results = await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)
        return active, results

    active, results = asyncio.run(main())
    assert active == count
    assert all(results) and len(results) == count


def test_early_data_is_forwarded(proxy, echo_server):
    hello = b"\x16\x03\x01early-client-hello-bytes"
    sock, status, rest = open_tunnel(proxy.port, f"127.0.0.1:{echo_server.port}", extra=hello)
    assert status.endswith("200 Connection established")
    echoed = rest + recv_exactly(sock, len(hello) - len(rest))
    assert echoed == hello
    sock.close()


def test_half_close_is_preserved_both_ways(proxy):
    # Client FIN first: the server must see EOF, and may still answer afterwards.
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    sock, status, _ = open_tunnel(proxy.port, f"127.0.0.1:{port}")
    assert status.endswith("200 Connection established")
    upstream, _ = server.accept()
    sock.sendall(b"request")
    sock.shutdown(socket.SHUT_WR)
    assert recv_exactly(upstream, 7) == b"request"
    assert upstream.recv(1) == b"", "client FIN must reach the destination"
    upstream.sendall(b"answer after client FIN")
    upstream.shutdown(socket.SHUT_WR)
    assert recv_exactly(sock, 23) == b"answer after client FIN"
    assert sock.recv(1) == b""
    upstream.close()
    sock.close()

    # Destination FIN first: the client sees EOF and can still send.
    sock, status, _ = open_tunnel(proxy.port, f"127.0.0.1:{port}")
    upstream, _ = server.accept()
    upstream.sendall(b"bye")
    upstream.shutdown(socket.SHUT_WR)
    assert recv_exactly(sock, 3) == b"bye"
    assert sock.recv(1) == b""
    sock.sendall(b"late")
    assert recv_exactly(upstream, 4) == b"late"
    sock.close()
    assert upstream.recv(1) == b""
    upstream.close()
    server.close()


def test_http_1_0_connect(proxy, echo_server):
    sock, status, _ = open_tunnel(proxy.port, f"127.0.0.1:{echo_server.port}", version="HTTP/1.0")
    assert status == "HTTP/1.1 200 Connection established"
    sock.sendall(b"ping")
    assert recv_exactly(sock, 4) == b"ping"
    sock.close()


def test_ipv6_literal(proxy):
    try:
        server = EchoServer(family=socket.AF_INET6, host="::1")
    except OSError as error:
        raise AssertionError(f"::1 must exist on the test machine: {error}")
    try:
        sock, status, _ = open_tunnel(proxy.port, f"[::1]:{server.port}")
        assert status.endswith("200 Connection established")
        sock.sendall(b"v6")
        assert recv_exactly(sock, 2) == b"v6"
        sock.close()
    finally:
        server.close()


def test_reset_by_destination_closes_client(proxy):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    sock, status, _ = open_tunnel(proxy.port, f"127.0.0.1:{server.getsockname()[1]}")
    upstream, _ = server.accept()
    upstream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    upstream.close()  # RST
    try:
        data = sock.recv(10)
    except ConnectionResetError:
        data = b""
    assert data == b""
    sock.close()
    server.close()
    wait_for(lambda: proxy.metrics()['egress_proxy_tunnels_active{tenant="team-a"}'] == 0, what="tunnel closed")


def pipe_descriptors(pid):
    """The proxy's open pipes past its standard streams (so splice pipes, pooled or in use)."""
    import os
    links = []
    for name in os.listdir(f"/proc/{pid}/fd"):
        if int(name) <= 2:
            continue  # stderr is a pipe to the test
        try:
            links.append(os.readlink(f"/proc/{pid}/fd/{name}"))
        except OSError:
            pass
    return sum(1 for link in links if link.startswith("pipe:"))


import pytest  # noqa: E402


@pytest.mark.parametrize("splice", [True, False])
def test_the_splice_setting_decides_whether_bulk_bytes_use_pipes(echo_server, splice):
    from conftest import Proxy, tenant_config
    text = tenant_config().replace("tenants:", f"splice: {'true' if splice else 'false'}\ntenants:")
    instance = Proxy(text)
    try:
        assert pipe_descriptors(instance.process.pid) == 0, "no pipe before any bulk transfer"
        payload = pattern_bytes(8 * MiB, f"splice-{splice}")
        sock, status, _ = open_tunnel(instance.port, f"127.0.0.1:{echo_server.port}", timeout=30)
        assert status == "HTTP/1.1 200 Connection established"
        sender = threading.Thread(target=lambda: (sock.sendall(payload), sock.shutdown(socket.SHUT_WR)))
        sender.start()
        received = recv_exactly(sock, len(payload))
        sender.join()
        sock.close()
        assert received == payload, "byte for byte either way"
        pipes = pipe_descriptors(instance.process.pid)
        # Pooled pipes outlive the tunnel (the pool keeps them for the next one).
        assert (pipes >= 2) if splice else (pipes == 0), pipes
    finally:
        instance.stop()


def test_audit_lines_name_each_tunnel_and_time_its_lookup_and_dial(proxy, echo_server):
    """Each audit line has a tunnel_id unique in the process and the one /tunnels shows while
    it is open; a name's lookup is timed (dns_ms), an IP literal's is not; the dial is timed."""
    held, status, _ = open_tunnel(proxy.port, f"localhost:{echo_server.port}")
    assert " 200 " in status
    listed = wait_for(lambda: json.loads(proxy.admin("/tunnels")[1]), what="the open tunnel listed")
    held.close()
    for _ in range(2):
        sock, status, _ = open_tunnel(proxy.port, f"127.0.0.1:{echo_server.port}")
        assert " 200 " in status
        sock.close()
    lines = wait_for(lambda: (lambda r: r if len(r) == 3 else None)(proxy.records("tunnel")), what="three audit lines")
    ids = [line["tunnel_id"] for line in lines]
    assert len(set(ids)) == 3 and all(re.fullmatch(r"\d+-\d+", i) for i in ids), ids
    by_name = next(line for line in lines if line["destination"].startswith("localhost:"))
    assert by_name["tunnel_id"] == listed[0]["id"], "the /tunnels row and the audit line are the same tunnel"
    assert isinstance(by_name["dns_ms"], int) and by_name["dns_ms"] >= 0
    literals = [line for line in lines if line["destination"].startswith("127.0.0.1:")]
    assert len(literals) == 2 and all("dns_ms" not in line for line in literals)
    assert all(isinstance(line["connect_ms"], int) and line["connect_ms"] >= 0 for line in lines)

"""Regression tests for the proxy side of issue 9: each defends a class of hostile client input,
and each asserts on what the other side (an origin, a second tenant, the admin endpoint) saw."""
import base64
import hashlib
import json
import os
import resource
import socket
import subprocess
import sys
import threading

import pytest

from conftest import HELPER, NetworkNamespace, Proxy, open_tunnel, raw_request, read_head, recv_exactly, tenant_config, wait_for


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


# --- resolver starvation (inside a network namespace: the names here must never leave the host)

VICTIM_IP = "198.51.100.9"
FAKE_DNS = os.path.join(os.path.dirname(__file__), "..", "fakes", "dns_server.py")
CAP = 4        # lookups in flight per tenant (ProxyLoop.resolverLimits)
QUEUED = 128   # lookups waiting per tenant


def basic(name):
    return base64.b64encode(f"{name}:{name}-secret".encode()).decode()


def two_tenants(dial):
    def sha(name):
        return hashlib.sha256(f"{name}-secret".encode()).hexdigest()
    return f"""listen: 127.0.0.1:0
admin: 127.0.0.1:0
timeouts: {{dial: {dial}}}
tenants:
  - name: hostile
    credentials: {{sha256: {sha("hostile")}}}
    allow:
      - host: "*.hole.test"
  - name: victim
    credentials: {{sha256: {sha("victim")}}}
    allow:
      - host: victim.test
        ports: ["*"]
"""


class BlackHoleDNS:
    """The fake DNS server inside a namespace whose resolv.conf points at it with a 30 s
    timeout: a held query keeps its getaddrinfo (and the resolver thread) busy for the test."""

    def __init__(self, namespace):
        with open(f"{namespace.etc}/resolv.conf", "w") as f:
            f.write("nameserver 127.0.0.1\noptions timeout:30 attempts:1\n")
        self.process = namespace.popen(sys.executable, FAKE_DNS, "127.0.0.1", "53", stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, text=True)
        assert json.loads(self.process.stdout.readline()) == {"listening": 53}
        self.lines = []
        self.lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.process.stdout:
            with self.lock:
                self.lines.append(json.loads(line))

    def names(self, suffix=""):
        with self.lock:
            return {line["name"] for line in self.lines if "name" in line and line["name"].endswith(suffix)}

    def command(self, text):
        self.process.stdin.write(text + "\n")
        self.process.stdin.flush()

    def close(self):
        self.process.stdin.close()
        self.process.wait(timeout=10)


class Flood:
    """netns_helper's flood: many CONNECTs as one tenant, replies collected as they come."""

    def __init__(self, namespace, proxy, auth, targets):
        address = f"{proxy.proxy_address[0]}:{proxy.port}"
        self.process = namespace.popen(sys.executable, HELPER, "flood", address, auth, json.dumps(targets),
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.replies = []
        self.closed = threading.Event()
        assert json.loads(self.process.stdout.readline()) == {"sent": len(targets)}
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.process.stdout:
            record = json.loads(line)
            if "closed" in record:
                self.closed.set()
            else:
                self.replies.append(record)

    def close_all(self):
        self.process.stdin.write("close\n")
        self.process.stdin.flush()
        assert self.closed.wait(15)
        self.process.stdin.close()
        self.process.wait(timeout=10)


@pytest.fixture
def dns_namespace():
    namespace = NetworkNamespace(addresses=[VICTIM_IP + "/32"], hosts=[(VICTIM_IP, "victim.test")])
    dns = BlackHoleDNS(namespace)
    echo = namespace.popen(sys.executable, HELPER, "echo", VICTIM_IP, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           text=True)
    port = int(echo.stdout.readline())
    yield namespace, dns, port
    echo.stdin.close()
    echo.kill()
    echo.wait()
    dns.close()
    namespace.close()


def victim_connects(namespace, proxy, echo_port):
    address = f"{proxy.proxy_address[0]}:{proxy.port}"
    result = namespace.run(sys.executable, HELPER, "probe", address, json.dumps([f"victim.test:{echo_port}"]),
                           json.dumps([f"Proxy-Authorization: Basic {basic('victim')}"]), capture_output=True, text=True)
    [probe] = json.loads(result.stdout)
    return probe["status"] == "HTTP/1.1 200 Connection established" and probe["echoed"]


def hostile_status(namespace, proxy, target):
    address = f"{proxy.proxy_address[0]}:{proxy.port}"
    result = namespace.run(sys.executable, HELPER, "probe", address, json.dumps([target]),
                           json.dumps([f"Proxy-Authorization: Basic {basic('hostile')}"]), capture_output=True, text=True)
    return json.loads(result.stdout)[0]["status"]


def open_tunnels(proxy, tenant):
    _, body = proxy.admin("/tunnels")
    return [row for row in json.loads(body) if row.get("tenant") == tenant]


def test_black_holed_dns_of_one_tenant_leaves_another_unaffected(dns_namespace):
    namespace, dns, echo_port = dns_namespace
    proxy = Proxy(two_tenants("3s"), netns=namespace.name)
    try:
        assert victim_connects(namespace, proxy, echo_port), "baseline"
        flood = Flood(namespace, proxy, basic("hostile"), [f"n{i}.hole.test:443" for i in range(40)])
        wait_for(lambda: len(dns.names(".hole.test")) >= CAP, what="the hostile tenant's lookups reach DNS")
        # While every one of those lookups hangs, the other tenant's CONNECT goes through (with a
        # single shared FIFO it waited behind them for the resolver's whole timeout).
        assert victim_connects(namespace, proxy, echo_port)
        in_flight = dns.names(".hole.test")
        assert len(in_flight) == CAP, f"at most {CAP} lookups of one tenant run at once: {sorted(in_flight)}"
        # A name that matches no allow rule is refused without a lookup.
        assert hostile_status(namespace, proxy, "unlisted.example.test:443").split()[1] == "403"
        assert "unlisted.example.test" not in dns.names()

        flood.close_all()  # half reset, half FIN: the reset ones go at once, the FIN ones at the dial timeout
        wait_for(lambda: not open_tunnels(proxy, "hostile"), timeout=20, what="abandoned tunnels closed")
        dns.command("release")
        # One tenant's lookups start in submission order, so once this one reaches DNS, every
        # lookup queued before it has either run or been dropped.
        assert hostile_status(namespace, proxy, "sentinel.hole.test:443").split()[1] == "502"
        assert "sentinel.hole.test" in dns.names()
        assert dns.names(".hole.test") - {"sentinel.hole.test"} == in_flight, \
            "lookups whose clients left never reached DNS"
        metrics = proxy.metrics()
        assert metrics['egress_proxy_tunnels_total{tenant="victim",result="established"}'] == 2
    finally:
        proxy.stop()


def test_a_tenants_lookup_backlog_is_bounded_and_refused_at_once(dns_namespace):
    namespace, dns, echo_port = dns_namespace
    proxy = Proxy(two_tenants("60s"), netns=namespace.name)
    try:
        total = CAP + QUEUED + 40
        flood = Flood(namespace, proxy, basic("hostile"), [f"q{i}.hole.test:443" for i in range(total)])
        wait_for(lambda: len(flood.replies) >= total - CAP - QUEUED, timeout=20, what="refusals past the bound")
        statuses = [reply["status"] for reply in flood.replies]
        assert statuses == ["HTTP/1.1 503 Service Unavailable"] * (total - CAP - QUEUED)
        refused = wait_for(lambda: len(r := [x for x in proxy.records("tunnel") if x.get("reason") == "dns_queue_full"])
                           >= total - CAP - QUEUED and r, what="audit lines")
        assert all(record["tenant"] == "hostile" and record["status"] == 503 for record in refused)
        assert victim_connects(namespace, proxy, echo_port), "the other tenant still resolves and connects"
        assert len(dns.names(".hole.test")) == CAP
        flood.close_all()
        dns.command("release")
    finally:
        proxy.stop()


# --- the proxy's own ports, at every local spelling (inside a namespace with only lo up)

LATE_IP = "198.51.100.20"  # added to lo after the proxy started

SELF_CONFIG = """listen: 0.0.0.0:0
admin: 0.0.0.0:0
tenants:
  - name: wide
    allow:
      - cidr: 0.0.0.0/0
        ports: ["*"]
      - cidr: "::/0"
        ports: ["*"]
    allowPrivate: [127.0.0.0/8, "::1/128", 0.0.0.0/8, "::/128"]
"""


def test_no_local_spelling_reaches_the_proxys_own_ports():
    namespace = NetworkNamespace(addresses=["198.51.100.8/32"], hosts=[("127.0.0.3", "self.test")])
    echo = namespace.popen(sys.executable, HELPER, "echo", "0.0.0.0", stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           text=True)
    try:
        echo_port = int(echo.stdout.readline())
        proxy = Proxy(SELF_CONFIG, netns=namespace.name)
        try:
            namespace.run("ip", "addr", "add", LATE_IP + "/32", "dev", "lo")
            ports = {"own": proxy.port, "admin": proxy.admin_address[1], "echo": echo_port}
            refused = [
                "127.0.0.1:{own}", "127.0.0.2:{own}", "127.9.8.7:{admin}", "127.255.255.254:{own}",
                "[::ffff:127.0.0.2]:{own}", "[::ffff:7f01:203]:{admin}", "[::1]:{admin}", "[::]:{own}",
                "0.0.0.0:{admin}", "0.1.2.3:{own}", "self.test:{own}", "198.51.100.8:{admin}",
                "[::ffff:198.51.100.8]:{own}", LATE_IP + ":{admin}", "[::ffff:" + LATE_IP + "]:{own}",
            ]
            # The same spellings on a port the proxy does not own are this tenant's business
            # (it allows loopback explicitly): only the proxy's own ports are refused.
            allowed = ["127.0.0.2:{echo}", "[::ffff:127.0.0.1]:{echo}", LATE_IP + ":{echo}", "self.test:{echo}"]
            targets = [t.format(**ports) for t in refused + allowed]
            address = f"127.0.0.1:{proxy.port}"
            result = namespace.run(sys.executable, HELPER, "probe", address, json.dumps(targets),
                                   capture_output=True, text=True)
            results = json.loads(result.stdout)
            wrong = [r for r in results[:len(refused)] if not r["status"].startswith("HTTP/1.1 403 ")]
            assert not wrong, f"reached the proxy's own ports: {wrong}"
            for r in results[len(refused):]:
                assert r["status"] == "HTTP/1.1 200 Connection established" and r["echoed"], r
            wait_for(lambda: proxy.metrics().get('egress_proxy_denied_total{tenant="wide",reason="private_address"}')
                     == len(refused), what="every refusal counted as private_address")
        finally:
            proxy.stop()
    finally:
        echo.stdin.close()
        echo.kill()
        echo.wait()
        namespace.close()


# --- descriptors and the admin endpoint

def healthy(proxy):
    status, body = proxy.admin("/healthz")
    return status == 200 and body == "ok\n"


def test_descriptor_exhaustion_is_a_503_and_the_admin_endpoint_keeps_answering(echo_server):
    limit = 320
    proxy = Proxy(tenant_config(), preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit)))
    tunnels, refused, silent, admins = [], 0, [], []
    try:
        cap = proxy.find("listening")["maxTunnels"]
        assert 0 < cap and cap * 2 < limit, "two sockets per tunnel fit below the limit"
        assert proxy.find("maxTunnels lowered to fit the descriptor limit")["configured"] == 20000
        # Far more tunnels than the limit could hold: the first `cap` are established, the rest
        # get a clean 503 (never a reset or silence from EMFILE), and the proxy stays healthy.
        for _ in range(limit):
            sock, status, _ = open_tunnel(proxy.port, f"127.0.0.1:{echo_server.port}")
            if status == "HTTP/1.1 200 Connection established":
                tunnels.append(sock)
            else:
                assert status == "HTTP/1.1 503 Service Unavailable", status
                refused += 1
                sock.close()
        assert len(tunnels) == cap and refused == limit - cap
        # Connections that never send a request are refused the same way.
        for _ in range(64):
            silent.append(socket.create_connection(("127.0.0.1", proxy.port), timeout=10))
        for sock in silent:
            assert read_head(sock)[0].startswith(b"HTTP/1.1 503 ")
        # Silent admin clients beyond the admin cap do not lock the health checks out.
        host, port = proxy.admin_address
        for _ in range(80):
            admins.append(socket.create_connection((host, port), timeout=10))
        assert healthy(proxy)
        assert proxy.metrics()['egress_proxy_tunnels_active{tenant="team-a"}'] == cap
        for sock in tunnels[:5]:
            sock.sendall(b"still relaying")
            assert recv_exactly(sock, 14) == b"still relaying"
        records = proxy.records("tunnel")
        assert not [r for r in records if r.get("reason") == "out_of_descriptors"], "never ran out of descriptors"
        assert sum(1 for r in records if r.get("reason") == "process_max_tunnels") >= refused
    finally:
        for sock in tunnels + silent + admins:
            sock.close()
        proxy.stop()


# --- connections that never finish their request head

def silent_from(source, port, count):
    return [socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0)) for _ in range(count)]


def waiting_heads(proxy):
    _, body = proxy.admin("/tunnels")
    return [row for row in json.loads(body) if row["state"] == "reading_head"]


def connect_from(source, proxy, echo_server):
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10, source_address=(source, 0))
    target = f"127.0.0.1:{echo_server.port}"
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    head, _ = read_head(sock)
    sock.sendall(b"ping")
    ok = head.startswith(b"HTTP/1.1 200 ") and recv_exactly(sock, 4) == b"ping"
    sock.close()
    return ok


# A quarter of maxTunnels (25) may wait for a head, 12 per source. The header timeout is long so
# only displacement, never the timeout, ends a silent connection here (however slow the machine).
SMALL = tenant_config(timeouts="{header: 120s}", extra="limits: {maxTunnels: 100}\n")
GRACE = 1.0  # seconds a connection may wait for its head before a newcomer can displace it


@pytest.mark.parametrize("sources", [["127.0.0.1"], [f"127.0.1.{i}" for i in range(1, 41)]], ids=["one-source", "40-sources"])
def test_silent_connections_cannot_take_the_tunnel_slots(echo_server, sources):
    proxy = Proxy(SMALL)
    silent = []
    try:
        # Three times maxTunnels silent connections: slots run out (the extra ones get 503).
        for source in sources:
            silent += silent_from(source, proxy.port, 300 // len(sources))
        wait_for(lambda: (w := waiting_heads(proxy)) and min(row["ageSeconds"] for row in w) > GRACE,
                 what="the silent connections are past the grace period")
        # A real client, from the same address as the silent ones or from another, still gets
        # its tunnel: it displaces the oldest silent connection (of its source, else of all).
        assert connect_from(sources[0], proxy, echo_server)
        assert connect_from("127.0.0.99", proxy, echo_server)
        # More silent connections from one source displace that source's oldest ones.
        before = len([r for r in proxy.records("tunnel") if r.get("reason") == "pending_evicted"])
        silent += silent_from(sources[0], proxy.port, 30)
        evicted = wait_for(lambda: len(e := [r for r in proxy.records("tunnel") if r.get("reason") == "pending_evicted"])
                           >= before + 30 and e, what="displaced connections")
        assert all(r["status"] == 408 and r["client"].rsplit(":", 1)[0] in sources for r in evicted)
        assert len(waiting_heads(proxy)) <= 100
        metrics = proxy.metrics()
        assert metrics['egress_proxy_tunnels_total{tenant="team-a",result="established"}'] == 2
    finally:
        for sock in silent:
            sock.close()
        proxy.stop()


# --- the refusal's reason, where the client can see it

@pytest.mark.parametrize("request_bytes, status, reason", [
    (b"CONNECT 10.0.0.1:443 HTTP/1.1\r\n\r\n", 403, "not_allowed"),
    (b"CONNECT 127.0.0.1:0 HTTP/1.1\r\n\r\n", 400, "authority_portZero"),
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 405, None),
    (b"CONNECT localhost:1 HTTP/1.1\r\nProxy-Authorization: Basic eDp5\r\n\r\n", None, None),
])
def test_every_refusal_names_its_reason_in_a_header(request_bytes, status, reason):
    proxy = Proxy(tenant_config(allow_loopback=False).replace("allow: []", "allow:\n      - host: allowed.example"))
    try:
        response = raw_request(proxy.port, request_bytes)
        head = response.partition(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
        code = int(head[0].split()[1])
        assert code >= 400
        if status:
            assert code == status
        headers = dict(line.split(": ", 1) for line in head[1:])
        record = wait_for(lambda: proxy.records("tunnel") and proxy.records("tunnel")[-1], what="audit line")
        assert headers.get("X-Egress-Proxy-Error") == record["reason"], (headers, record)
        if reason:
            assert record["reason"] == reason
        assert "X-Egress-Proxy-Error" not in response.partition(b"\r\n\r\n")[2].decode("latin-1"), "head only"
    finally:
        proxy.stop()


def test_curl_shows_the_reason_of_a_refused_connect():
    proxy = Proxy(tenant_config(allow_loopback=False).replace("allow: []", "allow:\n      - host: allowed.example"))
    try:
        result = subprocess.run(["curl", "-sv", "--max-time", "10", "-x", f"http://127.0.0.1:{proxy.port}",
                                 "https://metadata.internal.example/"], capture_output=True, text=True)
        assert result.returncode != 0
        assert "< HTTP/1.1 403 Forbidden" in result.stderr
        assert "< X-Egress-Proxy-Error: not_allowed" in result.stderr, result.stderr
    finally:
        proxy.stop()

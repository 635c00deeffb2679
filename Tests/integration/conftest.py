"""Fixtures for black-box tests of the egress-proxy binary.

Every server here listens on 127.0.0.1 (or ::1) on port 0 and is stopped by its fixture.
Nothing waits by sleeping: helpers poll a condition until a deadline.
"""
import hashlib
import json
import os
import re
import resource
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request

import sys

import pytest

HELPER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "netns_helper.py")

BIN = os.environ.get("EGRESS_PROXY_BIN") or os.path.join(
    os.path.dirname(__file__), "..", "..", ".build", "debug", "egress-proxy")


def raise_fd_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


raise_fd_limit()


def wait_for(predicate, timeout=10.0, interval=0.02, what="condition"):
    """Polls `predicate` until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class Proxy:
    """A running egress-proxy process with its log lines collected from stderr."""

    def __init__(self, config_text, extra_args=(), loops=2, netns=None, preexec_fn=None):
        self.netns = netns
        self.dir = tempfile.mkdtemp(prefix="egress-test-")
        self.config_path = os.path.join(self.dir, "config.yaml")
        with open(self.config_path, "w") as f:
            f.write(config_text)
        self.lines = []
        self.lock = threading.Lock()
        args = [BIN, "--config", self.config_path, "--loops", str(loops)] + list(extra_args)
        if netns:
            args = ["ip", "netns", "exec", netns] + args
        self.process = subprocess.Popen(args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                                        preexec_fn=preexec_fn)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        started = wait_for(lambda: self.find("listening"), what="proxy start")
        self.proxy_address = split_address(started["listen"])
        self.admin_address = split_address(started["admin"])

    def _read(self):
        for line in self.process.stderr:
            try:
                record = json.loads(line)
            except ValueError:
                record = {"msg": "(not json)", "raw": line}
            with self.lock:
                self.lines.append(record)

    def find(self, msg, **fields):
        with self.lock:
            for record in self.lines:
                if record.get("msg") == msg and all(record.get(k) == v for k, v in fields.items()):
                    return record
        return None

    def records(self, msg):
        with self.lock:
            return [r for r in self.lines if r.get("msg") == msg]

    @property
    def port(self):
        return self.proxy_address[1]

    def admin(self, path):
        """(status, body) of an admin GET (from inside the proxy's namespace when it has one)."""
        host, port = self.admin_address
        if self.netns:
            body = subprocess.run(["ip", "netns", "exec", self.netns, sys.executable, HELPER, "get",
                                   f"http://{host}:{port}{path}"], capture_output=True, text=True, check=True).stdout
            return 200, body
        try:
            with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def metrics(self):
        status, body = self.admin("/metrics")
        assert status == 200
        return parse_metrics(body)

    def signal(self, sig):
        self.process.send_signal(sig)

    def stop(self):
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)


def split_address(text):
    match = re.match(r"^\[(.*)\]:(\d+)$", text) or re.match(r"^(.*):(\d+)$", text)
    return match.group(1), int(match.group(2))


def parse_metrics(text):
    """{'name{labels}': value} from Prometheus text."""
    values = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        values[key] = float(value)
    return values


def tenant_config(allow_loopback=True, timeouts="{quiescence: 200ms, linger: 2s, drain: 10s}", extra=""):
    allow = """
      - host: localhost
        ports: ["*"]
      - cidr: 127.0.0.0/8
        ports: ["*"]
      - cidr: "::1/128"
        ports: ["*"]
""" if allow_loopback else "[]"
    return f"""listen: 127.0.0.1:0
admin: 127.0.0.1:0
timeouts: {timeouts}
tenants:
  - name: team-a
    allow: {allow}
    allowPrivate: [127.0.0.0/8, "::1/128"]
{extra}"""


@pytest.fixture
def proxy():
    instance = Proxy(tenant_config())
    yield instance
    instance.stop()


@pytest.fixture(scope="session")
def tls_files():
    directory = tempfile.mkdtemp(prefix="egress-tls-")
    cert = os.path.join(directory, "cert.pem")
    key = os.path.join(directory, "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True)
    return cert, key


@pytest.fixture
def s_server(tls_files):
    """`openssl s_server -www` on 127.0.0.1, port 0; yields the port."""
    cert, key = tls_files
    process = subprocess.Popen(
        ["openssl", "s_server", "-accept", "127.0.0.1:0", "-cert", cert, "-key", key, "-www"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)
    port = None
    for line in process.stdout:
        match = re.match(r"ACCEPT .*:(\d+)", line)
        if match:
            port = int(match.group(1))
            break
    assert port, "s_server did not report its port"
    threading.Thread(target=lambda: [None for _ in process.stdout], daemon=True).start()
    yield port
    process.kill()
    process.wait()


class EchoServer:
    """Threaded TCP echo server on loopback: echoes until the client's FIN, then closes."""

    def __init__(self, family=socket.AF_INET, host="127.0.0.1"):
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((host, 0))
        self.listener.listen(2048)
        self.port = self.listener.getsockname()[1]
        self.peers = []
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                connection, peer = self.listener.accept()
            except OSError:
                return
            self.peers.append(peer)
            threading.Thread(target=self._echo, args=(connection,), daemon=True).start()

    @staticmethod
    def _echo(connection):
        with connection:
            while True:
                try:
                    data = connection.recv(65536)
                except OSError:
                    return
                if not data:
                    try:
                        connection.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                    return
                connection.sendall(data)

    def close(self):
        self.listener.close()


@pytest.fixture
def echo_server():
    server = EchoServer()
    yield server
    server.close()


def open_tunnel(proxy_port, target, version="HTTP/1.1", extra=b"", host="127.0.0.1", timeout=10):
    """CONNECTs through the proxy; returns (socket, status line, bytes after the head)."""
    sock = socket.create_connection((host, proxy_port), timeout=timeout)
    sock.sendall(f"CONNECT {target} {version}\r\nHost: {target}\r\n\r\n".encode() + extra)
    head, rest = read_head(sock)
    return sock, head.split(b"\r\n", 1)[0].decode(), rest


def read_head(sock):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head + b"\r\n\r\n", rest


def recv_exactly(sock, count):
    data = bytearray()
    while len(data) < count:
        chunk = sock.recv(min(1 << 20, count - len(data)))
        if not chunk:
            break
        data += chunk
    return bytes(data)


def raw_request(proxy_port, payload, timeout=10):
    """Sends raw bytes, returns everything the proxy answers until it closes."""
    with socket.create_connection(("127.0.0.1", proxy_port), timeout=timeout) as sock:
        sock.sendall(payload)
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return data
            data += chunk


def closed_port():
    """A loopback port with nothing listening (bound, then closed)."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return port


def pattern_bytes(size, seed):
    """Deterministic pseudo-random bytes (for byte-for-byte comparisons)."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}-{counter}".encode()).digest() * 32
        counter += 1
    return bytes(out[:size])


class NetworkNamespace:
    """A network namespace with only `lo` up, extra addresses on `lo`, and its own hosts file
    (which `ip netns exec` mounts over /etc/hosts) and resolv.conf (a resolver on 127.0.0.1
    that refuses at once). Nothing inside can reach a real host."""

    def __init__(self, addresses=(), hosts=()):
        self.name = f"egress-{os.getpid()}-{int(time.monotonic() * 1000) % 100000}"
        self.etc = f"/etc/netns/{self.name}"
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        try:
            os.makedirs(self.etc, exist_ok=True)
            with open(f"{self.etc}/hosts", "w") as f:
                f.write("127.0.0.1 localhost\n::1 localhost\n")
                for address, name in hosts:
                    f.write(f"{address} {name}\n")
            with open(f"{self.etc}/resolv.conf", "w") as f:
                f.write("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
            self.run("ip", "link", "set", "lo", "up")
            for address in addresses:
                self.run("ip", "addr", "add", address, "dev", "lo")
        except Exception:
            self.close()
            raise

    def run(self, *args, **kwargs):
        return subprocess.run(["ip", "netns", "exec", self.name] + list(args), check=True, **kwargs)

    def popen(self, *args, **kwargs):
        return subprocess.Popen(["ip", "netns", "exec", self.name] + list(args), **kwargs)

    def close(self):
        subprocess.run(["ip", "netns", "del", self.name], check=False)
        subprocess.run(["rm", "-rf", self.etc], check=False)

"""SSRF defence: hostile CONNECT targets against a tenant that allows everything (0.0.0.0/0 and
::/0, any port), run entirely inside a network namespace with only `lo` up, so a wrong "allow"
fails loudly instead of reaching a real host."""
import json
import subprocess
import sys

import pytest

from conftest import HELPER, NetworkNamespace, Proxy, wait_for

ALLOWED_IP = "198.51.100.7"   # TEST-NET-2, on the namespace's lo: the one reachable "public" host
PROXY_IP = "198.51.100.8"     # the proxy listens here, so its own ports are a public address

HOSTS = [
    ("127.0.0.1", "evil-loopback.test"),
    ("169.254.169.254", "metadata.test"),
    ("10.0.0.1", "private.test"),
    ("192.168.1.1", "home.test"),
    ("::1", "v6-loopback.test"),
    ("::ffff:127.0.0.1", "mapped.test"),
    ("fd00:ec2::254", "imds6.test"),
    ("0.0.0.0", "zero.test"),
    (ALLOWED_IP, "allowed.test"),
    (ALLOWED_IP, "mixed.test"),
    ("10.0.0.2", "mixed.test"),
]

# (target, status, reason in the audit line or None). {own} / {admin} are the proxy's ports.
HOSTILE = [
    # loopback, every spelling
    ("127.0.0.1:443", 403, "private_address"),
    ("127.0.0.1:22", 403, "private_address"),
    ("127.255.255.254:443", 403, "private_address"),
    ("127.1:443", 400, "authority_badIPv4"),
    ("127.0.1:443", 400, "authority_badIPv4"),
    ("2130706433:443", 400, "authority_badIPv4"),
    ("0x7f000001:443", 400, "authority_badIPv4"),
    ("0x7f.0.0.1:443", 400, "authority_badIPv4"),
    ("0X7F.0.0.1:443", 400, "authority_badIPv4"),
    ("0177.0.0.1:443", 400, "authority_badIPv4"),
    ("017700000001:443", 400, "authority_badIPv4"),
    ("127.0.0.01:443", 400, "authority_badIPv4"),
    ("127.000.000.001:443", 400, "authority_badIPv4"),
    ("127.0.0.1.:443", 403, "private_address"),
    ("[::1]:443", 403, "private_address"),
    ("[0:0:0:0:0:0:0:1]:443", 403, "private_address"),
    ("[::]:443", 403, "private_address"),
    ("[::ffff:127.0.0.1]:443", 403, "private_address"),
    ("[::ffff:7f00:1]:443", 403, "private_address"),
    ("[::127.0.0.1]:443", 403, "private_address"),
    ("[0::ffff:127.0.0.1]:443", 403, "private_address"),
    ("[::1%25lo]:443", 400, "authority_percentEncoding"),
    ("[::1%lo]:443", 400, "authority_percentEncoding"),
    ("[fe80::1%25eth0]:443", 400, "authority_percentEncoding"),
    ("::1:443", 400, "authority_badIPv6"),
    ("[127.0.0.1]:443", 400, "authority_badIPv6"),
    ("localhost:443", 403, "private_address"),
    ("LOCALHOST:443", 403, "private_address"),
    ("localhost.:443", 403, "private_address"),
    ("evil-loopback.test:443", 403, "private_address"),
    ("Evil-Loopback.TEST.:443", 403, "private_address"),
    ("v6-loopback.test:443", 403, "private_address"),
    ("mapped.test:443", 403, "private_address"),
    ("zero.test:443", 403, "private_address"),
    ("0.0.0.0:443", 403, "private_address"),
    ("0:443", 400, "authority_badIPv4"),
    # private, shared, link-local, metadata, multicast, reserved
    ("10.0.0.1:443", 403, "private_address"),
    ("10.255.255.255:80", 403, "private_address"),
    ("172.16.0.1:443", 403, "private_address"),
    ("172.31.255.254:443", 403, "private_address"),
    ("192.168.0.1:443", 403, "private_address"),
    ("100.64.0.1:443", 403, "private_address"),
    ("100.127.255.254:443", 403, "private_address"),
    ("169.254.169.254:80", 403, "private_address"),
    ("169.254.0.1:443", 403, "private_address"),
    ("192.0.0.1:443", 403, "private_address"),
    ("198.18.0.1:443", 403, "private_address"),
    ("198.19.255.254:443", 403, "private_address"),
    ("224.0.0.1:443", 403, "private_address"),
    ("239.255.255.250:1900", 403, "private_address"),
    ("240.0.0.1:443", 403, "private_address"),
    ("255.255.255.255:443", 403, "private_address"),
    ("[::ffff:10.0.0.1]:443", 403, "private_address"),
    ("[::ffff:169.254.169.254]:80", 403, "private_address"),
    ("[::ffff:a9fe:a9fe]:80", 403, "private_address"),
    ("[64:ff9b::a9fe:a9fe]:80", 403, "private_address"),
    ("[fe80::1]:443", 403, "private_address"),
    ("[fc00::1]:443", 403, "private_address"),
    ("[fd00:ec2::254]:80", 403, "private_address"),
    ("[ff02::1]:443", 403, "private_address"),
    ("metadata.test:80", 403, "private_address"),
    ("METADATA.test.:80", 403, "private_address"),
    ("private.test:443", 403, "private_address"),
    ("home.test:443", 403, "private_address"),
    ("imds6.test:80", 403, "private_address"),
    # syntax: userinfo, encoding, lengths, ports
    ("user@127.0.0.1:443", 400, "authority_userinfo"),
    ("user:pass@allowed.test:{echo}", 400, "authority_userinfo"),
    ("allowed.test@127.0.0.1:443", 400, "authority_userinfo"),
    ("%31%32%37.0.0.1:443", 400, "authority_percentEncoding"),
    ("allowed%2etest:443", 400, "authority_percentEncoding"),
    ("allowed..test:443", 400, "authority_emptyLabel"),
    (".allowed.test:443", 400, "authority_emptyLabel"),
    ("allowed.test..:443", 400, "authority_emptyLabel"),
    ("a" * 64 + ".test:443", 400, "authority_labelTooLong"),
    (".".join(["a" * 63] * 4) + ".test:443", 400, "authority_nameTooLong"),
    ("allowed.test:0", 400, "authority_portZero"),
    ("allowed.test:65536", 400, "authority_badPort"),
    ("allowed.test:99999", 400, "authority_badPort"),
    ("allowed.test:-1", 400, "authority_badPort"),
    ("allowed.test", 400, "authority_missingPort"),
    ("allowed.test:443/x", 400, "connect_target"),
    ("allowed.test:https", 400, "authority_badPort"),
    ("allowed\u00e9.test:443", 400, "target"),
    # the proxy's own endpoints, on a public address
    (PROXY_IP + ":{own}", 403, "private_address"),
    (PROXY_IP + ":{admin}", 403, "private_address"),
    ("[::ffff:" + PROXY_IP + "]:{own}", 403, "private_address"),
]

ALLOWED = [
    ALLOWED_IP + ":{echo}",
    "allowed.test:{echo}",
    "ALLOWED.Test.:{echo}",
    "mixed.test:{echo}",
    "[::ffff:" + ALLOWED_IP + "]:{echo}",
]


@pytest.fixture(scope="module")
def namespace():
    ns = NetworkNamespace(addresses=[ALLOWED_IP + "/32", PROXY_IP + "/32"], hosts=HOSTS)
    yield ns
    ns.close()


@pytest.fixture(scope="module")
def echo_port(namespace):
    process = namespace.popen(sys.executable, HELPER, "echo", ALLOWED_IP, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    port = int(process.stdout.readline())
    yield port
    process.stdin.close()
    process.kill()
    process.wait()


WIDE = f"""listen: {PROXY_IP}:0
admin: {PROXY_IP}:0
tenants:
  - name: wide
    allow:
      - cidr: 0.0.0.0/0
        ports: ["*"]
      - cidr: "::/0"
        ports: ["*"]
"""


def probe(namespace, proxy, targets):
    address = f"{proxy.proxy_address[0]}:{proxy.port}"
    result = namespace.run(sys.executable, HELPER, "probe", address, json.dumps(targets), capture_output=True, text=True)
    return json.loads(result.stdout)


def test_hostile_targets_are_refused_with_their_reason(namespace, echo_port):
    assert len(HOSTILE) >= 60
    proxy = Proxy(WIDE, netns=namespace.name)
    try:
        ports = {"own": proxy.port, "admin": proxy.admin_address[1], "echo": echo_port}
        targets = [target.format(**ports) for target, _, _ in HOSTILE]
        results = probe(namespace, proxy, targets)
        audit = {}
        wait_for(lambda: len(proxy.records("tunnel")) >= len(targets), what="one audit line per refusal")
        for record in proxy.records("tunnel"):
            audit[int(record["client"].rsplit(":", 1)[1])] = record
        failures = []
        for (target, status, reason), result in zip(HOSTILE, results):
            got = int(result["status"].split()[1]) if result["status"] else None
            record = audit.get(result["port"], {})
            if got != status or record.get("reason") != reason:
                failures.append(f"{target!r}: got {result['status']!r} reason {record.get('reason')!r}, "
                                f"want {status} {reason}")
        assert not failures, "\n".join(failures)
        metrics = proxy.metrics()
        assert metrics['egress_proxy_tunnels_total{tenant="wide",result="established"}'] == 0
        assert metrics['egress_proxy_denied_total{tenant="wide",reason="private_address"}'] == \
            sum(1 for _, status, reason in HOSTILE if reason == "private_address")
    finally:
        proxy.stop()


def test_allowed_targets_work_and_dial_the_checked_address(namespace, echo_port):
    proxy = Proxy(WIDE, netns=namespace.name)
    try:
        targets = [target.format(echo=echo_port) for target in ALLOWED]
        results = probe(namespace, proxy, targets)
        for result in results:
            assert " 200 " in result["status"], result
            assert result["echoed"], result
        wait_for(lambda: len(proxy.records("tunnel")) == len(targets), what="audit lines")
        for record in proxy.records("tunnel"):
            assert record["dialed"].endswith(f"{ALLOWED_IP}:{echo_port}") or \
                record["dialed"] == f"[::ffff:{ALLOWED_IP}]:{echo_port}", record
    finally:
        proxy.stop()


def test_names_are_checked_per_address_not_per_name(namespace, echo_port):
    """A name whose only addresses are private is refused even when allowed by name."""
    config = WIDE.replace("""      - cidr: 0.0.0.0/0
        ports: ["*"]
      - cidr: "::/0"
        ports: ["*"]""", """      - host: "*.test"
        ports: ["*"]""")
    proxy = Proxy(config, netns=namespace.name)
    try:
        results = probe(namespace, proxy, ["metadata.test:80", "allowed.test:%d" % echo_port, "evil.example:443"])
        assert [int(r["status"].split()[1]) for r in results] == [403, 200, 403]
    finally:
        proxy.stop()

"""The fake DNS server (Tests/fakes/dns_server.py) on its own: the proxy's resolver tests
trust it to hold queries until released and then answer NXDOMAIN, so that is checked here
with hand-built RFC 1035 queries, independent of any resolver."""
import json
import os
import socket
import struct
import subprocess
import sys

FAKE = os.path.join(os.path.dirname(__file__), "..", "fakes", "dns_server.py")


def query(ident, name, qtype=1):
    header = struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0)
    question = b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\0"
    return header + question + struct.pack("!HH", qtype, 1)


def test_holds_until_released_then_answers_nxdomain():
    fake = subprocess.Popen([sys.executable, FAKE, "127.0.0.1", "0"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        port = json.loads(fake.stdout.readline())["listening"]
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.settimeout(10)
        client.sendto(query(0x1234, "Held.Example"), ("127.0.0.1", port))
        assert json.loads(fake.stdout.readline()) == {"id": 0x1234, "name": "held.example", "qtype": 1, "held": True}
        client.sendto(b"\x00\x01", ("127.0.0.1", port))
        assert json.loads(fake.stdout.readline()) == {"malformed": True}
        client.setblocking(False)
        try:
            early = client.recv(512)
        except BlockingIOError:
            early = None
        assert early is None, "a held query is not answered"
        client.settimeout(10)
        fake.stdin.write("release\n")
        fake.stdin.flush()
        assert json.loads(fake.stdout.readline()) == {"released": 1}
        answer = client.recv(512)
        ident, flags, qd, an, ns, ar = struct.unpack("!HHHHHH", answer[:12])
        assert ident == 0x1234 and flags & 0x8000 and flags & 0xF == 3
        assert (qd, an, ns, ar) == (1, 0, 0, 0)
        assert answer[12:] == query(0x1234, "Held.Example")[12:], "the question is echoed"
        client.sendto(query(7, "later.example", qtype=28), ("127.0.0.1", port))
        assert json.loads(fake.stdout.readline())["held"] is False
        assert struct.unpack("!H", client.recv(512)[:2])[0] == 7
    finally:
        fake.stdin.close()
        fake.wait(timeout=10)

#!/usr/bin/env python3
"""A DNS server over UDP that black-holes every query until told otherwise, written from
RFC 1035 (message format, section 4.1) for the proxy's resolver-starvation tests.

    dns_server.py HOST PORT

Prints {"listening": PORT} on stdout, then one JSON line per query received:
{"id": N, "name": "a.example", "qtype": 1, "held": true}. Commands on stdin, one per line:

    release   answer every held query with NXDOMAIN, and every later query at once
    hold      hold later queries again (the default at start)

Exits when stdin closes. Malformed datagrams are logged as {"malformed": true} and dropped.
"""
import json
import socket
import struct
import sys
import threading

lock = threading.Lock()
held = []          # (address, query bytes) not answered yet
holding = [True]


def parse_question(message):
    """(id, name, qtype, end of the question section) of a query, or None."""
    if len(message) < 12:
        return None
    ident, _flags, qdcount = struct.unpack("!HHH", message[:6])
    if qdcount != 1:
        return None
    labels, offset = [], 12
    while True:
        if offset >= len(message):
            return None
        length = message[offset]
        offset += 1
        if length == 0:
            break
        if length > 63 or offset + length > len(message):
            return None  # compression pointers never appear in a question we send ourselves
        labels.append(message[offset:offset + length].decode("ascii", "replace").lower())
        offset += length
    if offset + 4 > len(message):
        return None
    qtype, _qclass = struct.unpack("!HH", message[offset:offset + 4])
    return ident, ".".join(labels), qtype, offset + 4


def nxdomain(query, question_end):
    """The query's header and question with QR=1, RD copied, RA=1, RCODE=3 and no records."""
    ident, flags = struct.unpack("!HH", query[:4])
    flags = 0x8000 | (flags & 0x0100) | 0x0080 | 3
    return struct.pack("!HHHHHH", ident, flags, 1, 0, 0, 0) + query[12:question_end]


def emit(record):
    with lock:
        sys.stdout.write(json.dumps(record) + "\n")
        sys.stdout.flush()


def serve(sock):
    while True:
        try:
            query, address = sock.recvfrom(4096)
        except OSError:
            return
        question = parse_question(query)
        if question is None:
            emit({"malformed": True})
            continue
        ident, name, qtype, end = question
        with lock:
            hold = holding[0]
            if hold:
                held.append((address, query, end))
        emit({"id": ident, "name": name, "qtype": qtype, "held": hold})
        if not hold:
            sock.sendto(nxdomain(query, end), address)


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, port))
    emit({"listening": sock.getsockname()[1]})
    threading.Thread(target=serve, args=(sock,), daemon=True).start()
    for line in sys.stdin:
        command = line.strip()
        if command == "release":
            with lock:
                holding[0] = False
                pending = list(held)
                held.clear()
            for address, query, end in pending:
                sock.sendto(nxdomain(query, end), address)
            emit({"released": len(pending)})
        elif command == "hold":
            with lock:
                holding[0] = True
            emit({"holding": True})
    sock.close()


if __name__ == "__main__":
    main()

"""Runs inside a test network namespace (`ip netns exec NS python3 netns_helper.py ...`).

  echo HOST            serve a TCP echo on HOST:0, print the port, run until stdin closes
  probe PROXY TARGETS  CONNECT to each target (JSON list) through PROXY (host:port); print one
                       JSON result per target: status line, local port, and for 200 whether an
                       echo round trip worked
  get URL              print the body of an HTTP GET (admin endpoints)
  flood PROXY AUTH TARGETS
                       open one connection per target (JSON list) and send its CONNECT with
                       `Proxy-Authorization: Basic AUTH`; print {"sent": N}, then one JSON line
                       per reply that arrives ({"index", "status"}); on "close" from stdin close
                       them all (even indexes with a FIN, odd with a reset) and print {"closed": N}
PROBE OPTIONS: a 4th argument to probe is extra header lines (JSON list of "Name: value").
"""
import select
import struct
import json
import socket
import sys
import threading
import urllib.request


def echo(host):
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    listener.bind((host, 0))
    listener.listen(128)
    print(listener.getsockname()[1], flush=True)

    def serve(connection):
        with connection:
            while data := connection.recv(65536):
                connection.sendall(data)

    def accept():
        while True:
            connection, _ = listener.accept()
            threading.Thread(target=serve, args=(connection,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    sys.stdin.read()  # the test closes our stdin to stop us


def probe(proxy, targets, headers=()):
    host, port = proxy.rsplit(":", 1)
    results = []
    for target in targets:
        with socket.create_connection((host, int(port)), timeout=15) as sock:
            local_port = sock.getsockname()[1]
            extra = "".join(f"{line}\r\n" for line in headers)
            sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{extra}\r\n".encode("latin-1"))
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
            status = data.split(b"\r\n", 1)[0].decode("latin-1")
            echoed = None
            if " 200 " in status:
                sock.sendall(b"ping")
                echoed = sock.recv(4) == b"ping"
        results.append({"target": target, "status": status, "port": local_port, "echoed": echoed})
    print(json.dumps(results))


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            sys.stdout.write(response.read().decode())
    except urllib.error.HTTPError as error:
        sys.stdout.write(error.read().decode())


def flood(proxy, auth, targets):
    host, port = proxy.rsplit(":", 1)
    sockets = []
    for target in targets:
        sock = socket.create_connection((host, int(port)), timeout=15)
        sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"
                     f"Proxy-Authorization: Basic {auth}\r\n\r\n".encode("latin-1"))
        sockets.append(sock)
    print(json.dumps({"sent": len(sockets)}), flush=True)
    index_of = {sock.fileno(): index for index, sock in enumerate(sockets)}
    open_ones = {sock.fileno(): sock for sock in sockets}
    while True:
        readable, _, _ = select.select(list(open_ones.values()) + [sys.stdin], [], [])
        if sys.stdin in readable:
            break
        for sock in readable:
            data = sock.recv(4096)
            status = data.split(b"\r\n", 1)[0].decode("latin-1") if data else ""
            print(json.dumps({"index": index_of[sock.fileno()], "status": status}), flush=True)
            del open_ones[sock.fileno()]
    sys.stdin.readline()
    for index, sock in enumerate(sockets):
        if index % 2:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    print(json.dumps({"closed": len(sockets)}), flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    command = sys.argv[1]
    if command == "echo":
        echo(sys.argv[2])
    elif command == "probe":
        probe(sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4]) if len(sys.argv) > 4 else ())
    elif command == "flood":
        flood(sys.argv[2], sys.argv[3], json.loads(sys.argv[4]))
    elif command == "get":
        get(sys.argv[2])

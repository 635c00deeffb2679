#!/usr/bin/env python3
"""Loopback HTTP/1.1 test server over TLS (or plain with --plain) for the outbound pool's
tests. Prints {"port": N} on stdout, serves until stdin closes.

Routes: /hello, /echo (POST body back), /hang (never answers), /slow?ms=N, /once/<code>?key=K
(answers <code> the first time for K, with Retry-After: 1 for 429, then 200), /lines?n=N
(N newline-delimited JSON lines, chunked), /truncated (promises 1000 bytes, sends 10, closes),
/stats (connections accepted so far, as JSON).
"""
import argparse
import json
import socket
import ssl
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

seen = set()
lock = threading.Lock()
connections = [0]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with lock:
            connections[0] += 1

    def log_message(self, *args):
        pass

    def reply(self, code, body=b"", headers=()):
        self.send_response(code)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        if self.path.startswith("/once/"):
            return self.do_GET()
        self.reply(200, body, [("X-Method", "POST")])

    def do_GET(self):
        url = urllib.parse.urlparse(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        if url.path == "/hello":
            self.reply(200, b"hello", [("x-ratelimit-remaining", "4999"), ("x-ratelimit-reset", "1700000000")])
        elif url.path == "/hang":
            time.sleep(30)
        elif url.path == "/slow":
            time.sleep(int(query.get("ms", "100")) / 1000)
            self.reply(200, b"slow")
        elif url.path.startswith("/once/"):
            code = int(url.path.rsplit("/", 1)[1])
            key = query.get("key", "")
            with lock:
                first = key not in seen
                seen.add(key)
            if first:
                self.reply(code, b"try again", [("Retry-After", "1")] if code == 429 else [])
            else:
                self.reply(200, b"recovered")
        elif url.path == "/lines":
            count = int(query.get("n", "10"))
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            batch = []
            for index in range(count):
                batch.append(json.dumps({"type": "ADDED", "index": index, "pad": "x" * 40}) + "\n")
                if len(batch) == 100 or index == count - 1:
                    data = "".join(batch).encode()
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                    batch = []
            self.wfile.write(b"0\r\n\r\n")
        elif url.path == "/truncated":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"0123456789")
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)
        elif url.path == "/stats":
            with lock:
                self.reply(200, json.dumps({"connections": connections[0]}).encode())
        else:
            self.reply(404, b"not found")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--plain", action="store_true")
    args = parser.parse_args()
    class Server(ThreadingHTTPServer):
        request_queue_size = 2048  # a thousand clients may connect at once
        daemon_threads = True

    server = Server(("127.0.0.1", 0), Handler)
    if not args.plain:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.cert, args.key)
        # Handshake in each connection's own thread, not serially in the accept loop.
        server.socket = context.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    print(json.dumps({"port": server.server_address[1]}), flush=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sys.stdin.read()
    server.shutdown()


if __name__ == "__main__":
    main()

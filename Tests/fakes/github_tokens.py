#!/usr/bin/env python3
"""A fake of GitHub's installation-token endpoint for GitHubKit's tests (loopback, plain HTTP).

POST /app/installations/<id>/access_tokens verifies the App JWT with the `cryptography`
package (never with the code under test): RS256 signature against --public-key, `iss` equal to
--app-id, `iat` in the past, `exp` after now and at most 10 minutes after `iat`. It answers 201
with a fresh token expiring --ttl seconds from now, or 401 with the reason. GET /stats gives
how many tokens were issued and how many requests were refused. POST /clock?advance=N moves
the fake's clock N seconds ahead, so a test can move time on both sides without waiting.
Prints {"port": N}; serves until stdin closes.
"""
import argparse
import base64
import json
import sys
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

state = {"issued": 0, "refused": 0, "reasons": [], "offset": 0}
lock = threading.Lock()


def b64url_decode(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, code, payload):
        body = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def refuse(self, reason):
        with lock:
            state["refused"] += 1
            state["reasons"].append(reason)
        self.reply(401, {"message": reason})

    def do_GET(self):
        if self.path == "/stats":
            with lock:
                self.reply(200, dict(state))
        else:
            self.reply(404, {"message": "Not Found"})

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        self.rfile.read(length)
        if self.path.startswith("/clock?advance="):
            with lock:
                state["offset"] += int(self.path.split("=", 1)[1])
            return self.reply(200, {"offset": state["offset"]})
        parts = self.path.strip("/").split("/")
        if len(parts) != 4 or parts[0] != "app" or parts[1] != "installations" or parts[3] != "access_tokens":
            return self.reply(404, {"message": "Not Found"})
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            return self.refuse("no bearer token")
        try:
            header_b64, claims_b64, signature_b64 = auth[7:].split(".")
            header = json.loads(b64url_decode(header_b64))
            claims = json.loads(b64url_decode(claims_b64))
            if header.get("alg") != "RS256":
                return self.refuse("alg is not RS256")
            PUBLIC_KEY.verify(b64url_decode(signature_b64), f"{header_b64}.{claims_b64}".encode(),
                              padding.PKCS1v15(), hashes.SHA256())
        except Exception as error:  # any parse or signature failure is a 401
            return self.refuse(f"bad jwt: {type(error).__name__}")
        with lock:
            now = int(time.time()) + state["offset"]
        if str(claims.get("iss")) != ARGS.app_id:
            return self.refuse("wrong iss")
        if not claims.get("iat", now + 1) <= now:
            return self.refuse("iat in the future")
        if not claims.get("exp", 0) > now:
            return self.refuse("expired")
        if claims["exp"] - claims["iat"] > 600:
            return self.refuse("exp more than 10 minutes after iat")
        with lock:
            state["issued"] += 1
            number = state["issued"]
        expires = datetime.fromtimestamp(now + ARGS.ttl, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.reply(201, {"token": f"ghs_fake{number}", "expires_at": expires, "installation": parts[2]})


def main():
    global ARGS, PUBLIC_KEY
    parser = argparse.ArgumentParser()
    parser.add_argument("--public-key", required=True)
    parser.add_argument("--app-id", required=True)
    parser.add_argument("--ttl", type=int, default=3600)
    ARGS = parser.parse_args()
    with open(ARGS.public_key, "rb") as f:
        PUBLIC_KEY = serialization.load_pem_public_key(f.read())
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(json.dumps({"port": server.server_address[1]}), flush=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sys.stdin.read()


if __name__ == "__main__":
    main()

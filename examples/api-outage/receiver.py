"""A webhook receiver for runbox's notifications, as docs/oncall.md describes
one: it verifies the `Runbox-Signature` HMAC, refuses stale timestamps, drops
duplicates by `Idempotency-Key`, and prints what is asked of the on-call
human. Usage: receiver.py KEY_FILE PORT_FILE (it writes the port it listens on).
"""

import hashlib
import hmac
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

SECRET = open(sys.argv[1], "rb").read().strip()
SEEN = set()


def verified(signature: str, body: bytes) -> bool:
    parts = dict(p.split("=", 1) for p in signature.split(",") if "=" in p)
    try:
        t = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(time.time() - t) > 300:
        return False
    mac = hmac.new(SECRET, f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(mac, parts.get("v1", ""))


class Hook(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if not verified(self.headers.get("Runbox-Signature", ""), body):
            self.send_response(401)
            self.end_headers()
            return
        key = self.headers.get("Idempotency-Key", "")
        if key not in SEEN:
            SEEN.add(key)
            n = json.loads(body)
            inc = n.get("incident") or {}
            print(f"[receiver] {n['event']} on {inc.get('id', '-')}: {n['message']}", flush=True)
            print(f"[receiver]   asked: {n['asked']}", flush=True)
            for c in n["commands"]:
                print(f"[receiver]   $ {c}", flush=True)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


server = HTTPServer(("127.0.0.1", 0), Hook)
with open(sys.argv[2], "w") as f:
    f.write(str(server.server_address[1]))
server.serve_forever()

"""A webhook receiver for Studio Core's tests that checks every delivery with the
Standard Webhooks project's own Python library (`standardwebhooks` from PyPI), not
with anything Studio Core wrote.

    python receiver.py SECRET   # prints the port it listens on, then serves

POST paths choose how it answers:
  /ok                 204
  /flaky/N            500 to the first N attempts of each webhook-id, then 204
  /gone               410
  /redirect           302 to /ok (which must not be followed)
  /slow-first/S       the first attempt of each webhook-id waits S seconds, then 204
GET /log answers every delivery seen so far, as JSON: arrival time, path, headers
that matter, whether the signature verified (and why not), the parsed body, and
the status answered (null while a slow answer is still pending).
"""
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks import Webhook

SECRET = sys.argv[1]
LOCK = threading.Lock()
LOG = []
SEEN = {}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _answer(self, code, body=b"", headers=()):
        self.send_response(code)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)

    def do_GET(self):
        if self.path != "/log":
            return self._answer(404)
        with LOCK:
            body = json.dumps(LOG).encode()
        self._answer(200, body, [("Content-Type", "application/json")])

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        headers = {k.lower(): v for k, v in self.headers.items()}
        entry = {
            "at": time.time(),
            "path": self.path,
            "id": headers.get("webhook-id"),
            "timestamp": headers.get("webhook-timestamp"),
            "signature": headers.get("webhook-signature"),
            "content_type": headers.get("content-type"),
            "verified": False,
            "error": None,
            "body": None,
            "status": None,
        }
        try:
            entry["body"] = Webhook(SECRET).verify(raw, headers)
            entry["verified"] = True
        except Exception as e:  # noqa: BLE001 - the reason is what the test reads
            entry["error"] = "%s: %s" % (type(e).__name__, e)
            try:
                entry["body"] = json.loads(raw)
            except ValueError:
                pass
        with LOCK:
            LOG.append(entry)
            n = SEEN.get(entry["id"], 0)
            SEEN[entry["id"]] = n + 1
        parts = self.path.strip("/").split("/")
        code = 204
        extra = []
        if parts[0] == "flaky" and n < int(parts[1]):
            code = 500
        elif parts[0] == "gone":
            code = 410
        elif parts[0] == "redirect":
            code = 302
            extra = [("Location", "/ok")]
        elif parts[0] == "slow-first" and n == 0:
            time.sleep(float(parts[1]))
        with LOCK:
            entry["status"] = code
        body = b"receiver says no" if code == 500 else b""
        self._answer(code, body, extra)


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
print(server.server_address[1], flush=True)
server.serve_forever()

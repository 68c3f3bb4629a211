"""A flaky HTTP receiver of outbox events, for tests/it/outbox.rs.

    python3 outbox_receiver.py PORT LOG [FAIL_SHARE] [SLOW_SHARE] [REFUSED_AGGREGATE]

Each POST is answered 500 with probability FAIL_SHARE, after a 1.5 s pause with probability
SLOW_SHARE, else 200; every event of REFUSED_AGGREGATE is answered 503. A request it acknowledges is appended to LOG first, as one line
`id aggregateid seq idempotency-key` (so the log's order is the order of first acknowledgements).
A request whose body is not the documented JSON, or whose Idempotency-Key differs from its id,
is logged as `BAD ...` and answered 400.
"""

import json
import random
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

port, log_path = int(sys.argv[1]), sys.argv[2]
fail_share = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
slow_share = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
refused = sys.argv[5] if len(sys.argv) > 5 else None
lock = threading.Lock()
log = open(log_path, "a", buffering=1)
FIELDS = {"id", "aggregatetype", "aggregateid", "type", "payload", "seq", "commit_ts", "source"}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, code):
        body = b"{}"
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(n)
        key = self.headers.get("Idempotency-Key", "")
        try:
            event = json.loads(raw)
            missing = FIELDS - set(event)
            if missing or event["id"] != key:
                raise ValueError(f"missing {sorted(missing)} or key {key!r}")
        except Exception as e:  # noqa: BLE001 - any bad body is logged
            with lock:
                log.write(f"BAD {e} {raw[:200]!r}\n")
            self.answer(400)
            return
        if event["aggregateid"] == refused or random.random() < fail_share:
            self.answer(500)
            return
        if random.random() < slow_share:
            time.sleep(1.5)
        with lock:
            log.write(f"{event['id']} {event['aggregateid']} {event['seq']} {key}\n")
        self.answer(200)


class Server(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # a client gone mid-request (binlake killed, a timed-out attempt): nothing to log


Server(("127.0.0.1", port), Handler).serve_forever()

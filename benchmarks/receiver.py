"""The re-delivery benchmark's webhook receiver: ``python -m benchmarks.receiver --delay 0.02``.

A ``ThreadingHTTPServer`` on 127.0.0.1 (one thread per connection, HTTP/1.1 keep-alive),
run in a process of its own so that it does not share the sender's GIL. It prints
``PORT <n>`` once it listens, then serves:

- ``POST /hook``: waits ``--delay`` seconds (a receiver's own work), then answers 200,
  or 503 while it is *down*; it counts, per ``Safereplay-Reaction`` header, every
  request and every ``Idempotency-Key`` it acknowledged (answered 200 to);
- ``POST /down``, ``POST /up``: start and end an outage (503 to every hook call);
- ``GET /stats?reaction=NAME``: ``{"requests", "refused", "acknowledged", "distinct",
  "connections"}`` as JSON (``distinct``: distinct keys acknowledged; ``connections``:
  connections accepted since the receiver started, all reactions).

It does not verify signatures: the benchmark measures the sender.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections import Counter, defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

__all__ = ["main"]


class Tally:
    """What the receiver saw, per reaction, under one lock."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.down = False
        self.lock = threading.Lock()
        self.requests: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
        self.acknowledged: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.connections = 0

    def stats(self, reaction: str) -> dict[str, int]:
        with self.lock:
            keys = self.acknowledged.get(reaction, Counter())
            return {
                "requests": self.requests[reaction],
                "refused": self.refused[reaction],
                "acknowledged": sum(keys.values()),
                "distinct": len(keys),
                "connections": self.connections,
            }


def handler_for(tally: Tally) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as a real receiver would offer

        def setup(self) -> None:
            super().setup()
            with tally.lock:
                tally.connections += 1

        def log_message(self, format: str, *args: object) -> None:
            return None

        def _answer(self, status: int, body: bytes = b"") -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            path = urlsplit(self.path).path
            if path in ("/down", "/up"):
                tally.down = path == "/down"
                self._answer(204)
                return
            if path != "/hook":
                self._answer(404)
                return
            reaction = self.headers.get("Safereplay-Reaction", "")
            key = self.headers.get("Idempotency-Key", "")
            time.sleep(tally.delay)
            with tally.lock:
                tally.requests[reaction] += 1
                down = tally.down
                if down:
                    tally.refused[reaction] += 1
                else:
                    tally.acknowledged[reaction][key] += 1
            self._answer(503 if down else 200)

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            if parts.path != "/stats":
                self._answer(404)
                return
            reaction = parse_qs(parts.query).get("reaction", [""])[0]
            self._answer(200, json.dumps(tally.stats(reaction)).encode())

    return Handler


class Server(ThreadingHTTPServer):
    daemon_threads = True
    # The default backlog (5) refuses connections when 32 senders connect at once.
    request_queue_size = 256


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.receiver")
    parser.add_argument("--delay", type=float, default=0.02, help="seconds before each answer")
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    args = parser.parse_args(argv)
    server = Server(("127.0.0.1", args.port), handler_for(Tally(args.delay)))
    print(f"PORT {server.server_address[1]}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

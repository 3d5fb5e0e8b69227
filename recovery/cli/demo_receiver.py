"""The demo's downstream service: a webhook receiver on 127.0.0.1 that can be taken down.

A stand-in for the CRM of the story (``http.server`` in a thread of the demo's
process, on a free port): it checks each request's signature, answers 503 while
it is "down", and remembers the idempotency keys it acknowledged, so the demo can
show that nothing was missed and nothing was processed twice.
"""

from __future__ import annotations

import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from safereplay.reactions.webhook import SIGNATURE_HEADER, WebhookSecret, verify_signature

__all__ = ["DemoReceiver"]


class DemoReceiver:
    """Start with :meth:`start`; set :attr:`down` to answer 503; :meth:`stop` at the end."""

    def __init__(self, secret: WebhookSecret) -> None:
        self.secret = secret
        self.down = False
        #: Idempotency key -> times acknowledged (a repeat of a key is dropped, not
        #: processed again, as a receiver honouring idempotency keys would).
        self.acknowledged: Counter[str] = Counter()
        self.refused = 0
        self.unsigned = 0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "the receiver is not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}/hooks/run-completions"

    @property
    def processed(self) -> int:
        """Distinct deliveries processed (one per idempotency key)."""
        with self._lock:
            return len(self.acknowledged)

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status = receiver.receive(
                    self.headers.get("Idempotency-Key", ""),
                    body,
                    self.headers.get(SIGNATURE_HEADER, ""),
                )
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return None  # the demo tells the story; no access log on the terminal

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="demo-receiver", daemon=True
        )
        self._thread.start()

    def receive(self, key: str, body: bytes, signature: str) -> int:
        """The status answered to one request."""
        with self._lock:
            if self.down:
                self.refused += 1
                return 503
            if not key or not verify_signature(self.secret, signature, body):
                self.unsigned += 1
                return 401
            self.acknowledged[key] += 1
            return 200

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

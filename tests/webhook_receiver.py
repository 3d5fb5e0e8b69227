"""A real HTTP receiver for the webhook tests: Starlette under uvicorn on 127.0.0.1.

Started by a test in a thread of its own on a free port; it records every request
(its idempotency key, body, and whether the signature verifies) and answers as its
``mode`` says: ``ok`` (200), a status to answer with (``503``, ``429``, ``400``),
``slow`` (waits ``delay`` seconds first), or ``fail_first`` (503 for the first
``failures`` requests of each key, then 200); with ``hang_first`` its very first
request waits ``delay`` seconds before answering. :meth:`Receiver.stop` takes it down
(later calls are refused); :meth:`Receiver.start` brings it back on the same port.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from safereplay.reactions import WebhookSecret, verify_signature
from safereplay.reactions.webhook import SIGNATURE_HEADER


@dataclass(frozen=True)
class Received:
    key: str
    body: bytes
    signed: bool
    headers: dict[str, str]


@dataclass
class Receiver:
    secret: WebhookSecret
    mode: str | int = "ok"
    delay: float = 2.0
    failures: int = 0
    hang_first: bool = False
    port: int = 0
    received: list[Received] = field(default_factory=list)
    acknowledged: list[str] = field(default_factory=list)
    _server: uvicorn.Server | None = None
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _seen: Counter[str] = field(default_factory=Counter)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/runs?token=secret-in-the-url"

    async def hook(self, request: Request) -> Response:
        body = await request.body()
        key = request.headers.get("idempotency-key", "")
        signed = verify_signature(self.secret, request.headers.get(SIGNATURE_HEADER, ""), body)
        with self._lock:
            self.received.append(Received(key, body, signed, dict(request.headers)))
            self._seen[key] += 1
            seen = self._seen[key]
        first = len(self.received) == 1
        if self.mode == "slow" or (self.hang_first and first):
            # Held, until the delay passes or the caller goes away (then unanswered).
            deadline = time.monotonic() + self.delay
            while time.monotonic() < deadline:
                if await request.is_disconnected():
                    return Response(status_code=499)
                await asyncio.sleep(0.02)
        status = 200
        if isinstance(self.mode, int):
            status = self.mode
        elif self.mode == "fail_first" and seen <= self.failures:
            status = 503
        if status == 200:
            with self._lock:
                self.acknowledged.append(key)
        return Response(status_code=status)

    def start(self) -> Receiver:
        if not self.port:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                self.port = probe.getsockname()[1]
        app = Starlette(routes=[Route("/hooks/runs", self.hook, methods=["POST"])])
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", timeout_graceful_shutdown=1
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the test receiver did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=30)
            self._server = self._thread = None

    def keys(self) -> list[str]:
        with self._lock:
            return [r.key for r in self.received]

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def serve(argv: list[str] | None = None) -> None:
    """``python tests/webhook_receiver.py PORT SECRET_FILE [LIFETIME]``: a receiver in a
    process of its own (the runbook's test starts one), answering 200 until killed
    or ``LIFETIME`` seconds [600] have passed; each acknowledged key is printed."""
    import sys
    from pathlib import Path

    args = sys.argv[1:] if argv is None else argv
    port, secret_file = int(args[0]), Path(args[1])
    lifetime = float(args[2]) if len(args) > 2 else 600.0
    receiver = Receiver(WebhookSecret.from_file(secret_file), port=port).start()
    try:
        time.sleep(lifetime)
    finally:
        receiver.stop()
        for key in receiver.acknowledged:
            print(key, flush=True)


if __name__ == "__main__":
    serve()

"""A cap on request bodies, checked before anything reads them.

Every body the API takes is a small JSON object (a reason, a few parameters), but
nothing else stops a client from sending a gigabyte that the framework would hold
in memory to parse. A body over the cap is refused with 413 and the API's error
shape, whether it says its length up front (``Content-Length``) or streams it.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["DEFAULT_MAX_BODY_BYTES", "BodyLimit"]

#: 64 KiB: far above any body the API takes (the longest is a reason of 1,000
#: characters with a template's settings), far below what could strain a server.
DEFAULT_MAX_BODY_BYTES = 65_536


class BodyLimit:
    """ASGI middleware refusing request bodies over ``max_bytes`` (default 64 KiB)."""

    def __init__(self, app: ASGIApp, *, max_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        if declared is not None or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            # Its length is known and within the cap (a client sending more than it
            # declared is cut off by the server), or it has no body.
            await self.app(scope, receive, send)
            return
        # A streamed body: read it here, up to the cap, before the app sees any of it.
        chunks: list[bytes] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, receive, send)  # the client went away
                return
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > self.max_bytes:
                await self._refuse(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        whole: Message = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return whole
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send) -> None:
        message = f"the request body is over {self.max_bytes:,} bytes: refused unread"
        body = json.dumps(
            {"error": {"code": "invalid", "status": 413, "message": message}}
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

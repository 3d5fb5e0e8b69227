"""The web dashboard: its page, its static files, and the headers that protect them.

The page (``GET /``) and its files (``/static/*``) are public: they hold no data.
Everything they show comes from the API, which the page's scripts call with the
token the operator signed in with (kept in ``sessionStorage``, sent as
``Authorization: Bearer``, never in a URL).

Every file is in the package (``static/``): nothing is fetched from the internet,
so the dashboard works on an isolated network, and the page's Content-Security-
Policy can allow its own origin only (no inline script, no framing).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["PAGE_POLICY", "STATIC", "SecurityHeaders", "install_dashboard"]

#: The package folder of the page, its styles and its scripts.
STATIC = Path(__file__).resolve().parent / "static"

#: The page's Content-Security-Policy: its own origin only, no inline script or
#: style, never framed (clickjacking), forms post to itself only.
PAGE_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)

Headers = tuple[tuple[bytes, bytes], ...]

_EVERY_RESPONSE: Headers = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
)
_PAGE: Headers = ((b"content-security-policy", PAGE_POLICY.encode()),)
# API answers change with every call and may be private: no cache keeps them.
_API: Headers = ((b"cache-control", b"no-store"),)


class SecurityHeaders:
    """ASGI middleware: headers every response gets, plus the page's policy on the page
    and its files, and ``no-store`` on API answers.

    The API's own documentation (``/api/docs``) loads FastAPI's Swagger UI, which
    its page takes from a CDN: the page's policy would break it, so it is not given it.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        extra: Headers = _EVERY_RESPONSE
        if path == "/" or path.startswith("/static/"):
            extra += _PAGE
        elif (path.startswith("/api/") and path != "/api/docs") or path == "/metrics":
            extra += _API

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                headers = list(message.get("headers", []))
                headers += [(k, v) for k, v in extra if k not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def install_dashboard(app: FastAPI) -> None:
    """Serve the page at ``/`` and its files at ``/static``, with the headers above."""

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(SecurityHeaders)

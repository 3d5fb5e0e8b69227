"""CLI: serve, the HTTP API, ``/metrics`` and the web dashboard (uvicorn)."""

from __future__ import annotations

import ipaddress
import json
import sys
from typing import Annotated

import typer

from safereplay.recovery.api.app import ServeOptions, create_app
from safereplay.recovery.cli.security import Json
from safereplay.recovery.cli.support import EXIT_INVALID, console, fail, recovery_context

__all__ = ["register"]

DEFAULT_PORT = 8321


def loopback(host: str) -> bool:
    """Is ``host`` reachable from this machine only?"""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve_command(
    host: Annotated[
        str, typer.Option(help="Address to listen on (loopback unless --allow-remote).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = DEFAULT_PORT,
    allow_remote: Annotated[
        bool,
        typer.Option(
            "--allow-remote",
            help="Allow listening on an address other machines can reach (put TLS in front).",
        ),
    ] = False,
    contexts: Annotated[
        int, typer.Option(help="Database connections shared by requests.", min=1, max=64)
    ] = 4,
    as_json: Json = False,
) -> None:
    """Serve the HTTP API, /metrics and the dashboard until Ctrl-C.

    Open http://127.0.0.1:8321/ and sign in with an API token. The API's schema is
    at /openapi.json; every call takes `Authorization: Bearer <token>`.
    """
    if not loopback(host) and not allow_remote:
        fail(
            f"--host {host} can be reached from other machines: add --allow-remote to "
            "mean it (and put TLS in front: tokens travel in every request)",
            EXIT_INVALID,
        )
    import uvicorn  # the server is only needed here

    # Fail now, with the CLI's message, if the store or the schema is not usable.
    with recovery_context():
        pass
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/"
    if as_json:
        sys.stdout.write(json.dumps({"serving": url, "openapi": url + "openapi.json"}) + "\n")
        sys.stdout.flush()
    else:
        console.print(f"serving the dashboard at {url} (API schema: {url}openapi.json)")
    app = create_app(options=ServeOptions(contexts=contexts))
    # uvicorn handles SIGINT/SIGTERM itself: it stops accepting, finishes requests, exits 0.
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_command)

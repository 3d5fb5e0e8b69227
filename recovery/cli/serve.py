"""CLI: serve, the HTTP API, ``/metrics`` and the web dashboard (uvicorn).

With ``--workers N`` it also runs N local ``safereplay worker`` processes, which
pick up any job the serve's principal (its environment's token) may operate on, so
a rebuild started through the API runs without a terminal of its own. They are
started once the server listens, never restarted (one that exits is reported),
and stopped with SIGTERM (each gives its partition back) when the server stops.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Annotated

import typer

from safereplay.domain import ConfigurationError
from safereplay.recovery.api.app import ServeOptions, create_app
from safereplay.recovery.cli.local_workers import WorkerProcess, stop_workers
from safereplay.recovery.cli.security import Json
from safereplay.recovery.cli.support import (
    EXIT_INVALID,
    cli_caller,
    console,
    error_console,
    fail,
    recovery_context,
)
from safereplay.recovery.operations.context import RecoveryContext
from safereplay.recovery.operations.slos import SLOSampler
from safereplay.recovery.settings import ServeSettings, SLOSettings

if TYPE_CHECKING:
    import uvicorn
    from fastapi import FastAPI

__all__ = ["LocalWorkers", "loopback", "refuse_plaintext_remote", "register", "server"]

logger = logging.getLogger(__name__)

DEFAULT_PORT = 8321
#: ``sampled_by`` of the SLO samples the server takes (their breaches' actor is ``system``).
SAMPLED_BY = "safereplay serve"
#: How long a stopping worker may take to give its partition back before it is killed
#: (its lease then expires and another worker takes the partition over).
STOP_WAIT_SECONDS = 60.0


def loopback(host: str) -> bool:
    """Is ``host`` reachable from this machine only?"""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class LocalWorkers:
    """``count`` ``safereplay worker`` processes (no ``--job``: they run until stopped).

    They inherit this process's environment, so they authenticate with its token
    (SAFEREPLAY_TOKEN or SAFEREPLAY_TOKEN_FILE), never one on a command line.
    """

    def __init__(self, count: int) -> None:
        self.count = count
        self.processes: list[WorkerProcess] = []
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None
        self._reported: set[int] = set()

    def start(self) -> None:
        command = [sys.executable, "-m", "safereplay.recovery.cli", "worker"]
        self.processes = [
            WorkerProcess(command, number=n, env=None) for n in range(1, self.count + 1)
        ]
        if self.processes:
            self._watcher = threading.Thread(target=self._watch, name="workers", daemon=True)
            self._watcher.start()

    def _watch(self) -> None:
        while not self._stopping.wait(1.0):
            self._report_exited()

    def _report_exited(self) -> None:
        """Say when a worker has exited on its own: it is not restarted."""
        for process in self.processes:
            if process.number in self._reported or process.poll() is None:
                continue
            self._reported.add(process.number)
            why = process.failure() or f"worker {process.number} (pid {process.pid}) exited"
            error_console.print(
                f"[red]error:[/] {why}; it is not restarted", highlight=False, soft_wrap=True
            )

    def stop(self) -> None:
        """SIGTERM to each worker still running; wait for them (kill a stuck one)."""
        self._stopping.set()
        if self._watcher is not None:
            self._watcher.join()
        self._report_exited()
        stop_workers(self.processes, kill_after=STOP_WAIT_SECONDS)


def refuse_plaintext_remote(
    host: str, settings: ServeSettings, *, allow_remote: bool, allow_plaintext: bool
) -> str | None:
    """Why ``serve`` must not listen on ``host`` (None: it may).

    Loopback (127.0.0.0/8, ::1, localhost) is always allowed. Any other address
    needs ``--allow-remote`` (it is meant), and TLS (``SAFEREPLAY_SERVE_TLS_*``)
    unless plaintext is allowed explicitly (``--allow-plaintext-remote``, which
    also means ``--allow-remote``, or ``SAFEREPLAY_SERVE_ALLOW_PLAINTEXT_REMOTE``):
    every request carries a token.
    """
    if loopback(host):
        return None
    allow_plaintext = allow_plaintext or settings.allow_plaintext_remote
    if not allow_remote and not allow_plaintext:
        return (
            f"--host {host} can be reached from other machines: add --allow-remote to "
            "mean it (with TLS: SAFEREPLAY_SERVE_TLS_CERT_FILE and "
            "SAFEREPLAY_SERVE_TLS_KEY_FILE; tokens travel in every request)"
        )
    if not settings.tls and not allow_plaintext:
        return (
            f"--host {host} can be reached from other machines and no TLS is configured: "
            "set SAFEREPLAY_SERVE_TLS_CERT_FILE and SAFEREPLAY_SERVE_TLS_KEY_FILE (tokens "
            "travel in every request), or add --allow-plaintext-remote (or set "
            "SAFEREPLAY_SERVE_ALLOW_PLAINTEXT_REMOTE=true) when TLS ends in front of it"
        )
    return None


def server(
    app: FastAPI,
    host: str,
    port: int,
    on_listening: Callable[[], None],
    *,
    tls: ServeSettings | None = None,
) -> uvicorn.Server:
    """The uvicorn server of ``serve`` (HTTPS with ``tls``'s certificate and key)."""
    import uvicorn  # the server is only needed here

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if not self.should_exit:
                on_listening()

    cert = key = None
    if tls is not None and tls.tls_cert_file is not None and tls.tls_key_file is not None:
        cert, key = str(tls.tls_cert_file), str(tls.tls_key_file)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        ssl_certfile=cert,
        ssl_keyfile=key,
    )
    return Server(config)


def _bound_socket(host: str, port: int) -> socket.socket:
    """The server's socket, bound before anything is said or started: a port already
    taken is refused with a message (exit 2), not a log line from deep in uvicorn."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    # As uvicorn does: a restarted server may bind while old connections linger.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        fail(
            f"cannot listen on {host}:{port}: {exc.strerror or exc} (is another server "
            "using that port? choose another with --port)",
            EXIT_INVALID,
        )
    return sock


@contextlib.contextmanager
def _stops_quietly() -> Iterator[None]:
    """uvicorn stops on SIGINT/SIGTERM, then raises the signal again for the handler
    it found: this one lets the command finish (stop its workers, exit 0) instead of
    dying (SIGTERM) or printing "Aborted!" (SIGINT)."""
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.getsignal(sig) for sig in signals}
    for sig in signals:
        signal.signal(sig, lambda signum, frame: None)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def serve_command(
    host: Annotated[
        str, typer.Option(help="Address to listen on (loopback unless --allow-remote).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = DEFAULT_PORT,
    allow_remote: Annotated[
        bool,
        typer.Option(
            "--allow-remote",
            help="Allow listening on an address other machines can reach (with TLS: "
            "SAFEREPLAY_SERVE_TLS_CERT_FILE and SAFEREPLAY_SERVE_TLS_KEY_FILE).",
        ),
    ] = False,
    allow_plaintext_remote: Annotated[
        bool,
        typer.Option(
            "--allow-plaintext-remote",
            help="Allow listening beyond loopback without TLS (only behind a proxy that "
            "ends TLS); logged as a warning.",
        ),
    ] = False,
    contexts: Annotated[
        int, typer.Option(help="Database connections shared by requests.", min=1, max=64)
    ] = 4,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            "-w",
            min=0,
            max=64,
            help="Local `safereplay worker` processes to run jobs started through the API, "
            "as this environment's principal (0: leave jobs to workers run elsewhere).",
        ),
    ] = 0,
    as_json: Json = False,
) -> None:
    """Serve the HTTP API, /metrics and the dashboard until Ctrl-C or SIGTERM (exit 0).

    Open http://127.0.0.1:8321/ and sign in with an API token. The API's schema is
    at /openapi.json; every call takes `Authorization: Bearer <token>`. Jobs started
    through the API are only planned: run `safereplay worker` elsewhere, or give
    --workers N to run N workers here (they stop with the server).
    """
    try:
        settings = ServeSettings.from_env()
    except ConfigurationError as exc:
        fail(str(exc), EXIT_INVALID)
    refused = refuse_plaintext_remote(
        host, settings, allow_remote=allow_remote, allow_plaintext=allow_plaintext_remote
    )
    if refused is not None:
        fail(refused, EXIT_INVALID)
    if not loopback(host) and not settings.tls:
        warning = (
            f"serving plain HTTP on {host}, reachable from other machines: tokens travel "
            "unencrypted unless TLS ends in front of this server"
        )
        logger.warning(warning)
        error_console.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
    # Fail now, with the CLI's message, if the store or the schema is not usable, or
    # (with workers) if there is no token for them to sign in with.
    with recovery_context() as context:
        principal = cli_caller(context, "serve").name if workers else None
        slo_settings = SLOSettings.from_env()
    scheme = "https" if settings.tls else "http"
    url = f"{scheme}://{'[' + host + ']' if ':' in host else host}:{port}/"
    sock = _bound_socket(host, port)
    local = LocalWorkers(workers)

    def sample_failed(exc: Exception) -> None:
        error_console.print(f"[red]error:[/] SLO sample failed: {exc}", highlight=False)

    # The replay SLOs are measured continuously while the server runs (docs/slo.md).
    sampler = SLOSampler(
        RecoveryContext.from_env,
        sampled_by=SAMPLED_BY,
        on_error=sample_failed,
        settings=slo_settings,
    )

    def listening() -> None:
        local.start()
        sampler.start()
        pids = [p.pid for p in local.processes]
        if as_json:
            said = {"serving": url, "openapi": url + "openapi.json", "workers": pids}
            sys.stdout.write(json.dumps(said) + "\n")
            sys.stdout.flush()
            return
        console.print(f"serving the dashboard at {url} (API schema: {url}openapi.json)")
        if pids:
            console.print(
                f"{len(pids)} local worker(s) (pids {', '.join(map(str, pids))}) run the jobs "
                f"{principal!r} may operate on; they stop with the server",
                highlight=False,
            )

    running = server(
        create_app(options=ServeOptions(contexts=contexts)), host, port, listening, tls=settings
    )
    try:
        with _stops_quietly():
            running.run(sockets=[sock])
    finally:
        sampler.stop()
        local.stop()
        sock.close()


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_command)

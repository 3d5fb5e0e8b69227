"""An API world: a recorded workload, three principals, and a test client per backend.

``ApiWorld`` holds the store's settings, a recovery context to check the database
with, and a client for the app :func:`~safereplay.recovery.api.create_app` makes
over the same store; ``headers(who)`` is the ``Authorization`` header of
``admin`` (ada), ``viewer`` (vic) or ``stranger`` (mallory, no grant).

:func:`api_world_over_tls` is the same world served by ``safereplay serve``'s
uvicorn server over HTTPS (a certificate the test makes, see ``tls_fixtures``),
with a client that verifies it against the test's CA: a contract subclassed with
``over_tls = True`` runs every one of its tests once more that way.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from recovery_fixtures import principals_world
from tls_fixtures import make_certificates

from safereplay.domain import AutomationApp, DomainSettings
from safereplay.domain.workload import record_workload
from safereplay.recovery.api.app import create_app
from safereplay.recovery.cli.serve import server
from safereplay.recovery.operations.context import RecoveryContext
from safereplay.recovery.security.access import VerifiedSecrets
from safereplay.recovery.security.audit import AuditKey
from safereplay.recovery.settings import RecoverySettings, ServeSettings

#: Generous: the machine is slow and shared.
STARTUP_SECONDS = 120.0


@dataclass
class ApiWorld:
    settings: DomainSettings
    context: RecoveryContext
    envs: dict[str, dict[str, str]]
    #: A TestClient, or an HTTPS client of a served app (which has ``.app`` too).
    client: httpx.Client

    def headers(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.envs[who]['SAFEREPLAY_TOKEN']}"}

    def get(self, who: str, path: str, **kwargs: Any) -> Any:
        return self.client.get(path, headers=self.headers(who), **kwargs)

    def post(self, who: str, path: str, body: Any = None, **kwargs: Any) -> Any:
        return self.client.post(path, headers=self.headers(who), json=body, **kwargs)

    def audit_actions(self) -> list[tuple[str, str, str]]:
        """(actor, action, outcome) of every audit entry, oldest first."""
        return [(e.actor, e.action, e.outcome) for e in self.context.audit.entries()]


def _world(
    settings: DomainSettings, tmp_path: Path
) -> tuple[
    RecoveryContext, dict[str, dict[str, str]], Callable[[VerifiedSecrets], RecoveryContext]
]:
    key = tmp_path / "audit.key"
    AuditKey.generate().save(key)
    with AutomationApp(settings) as application:
        record_workload(application, workflows=2, runs_per_workflow=3, seed=5)
    context, envs = principals_world(settings, key)

    def new_context(verified: VerifiedSecrets) -> RecoveryContext:
        return RecoveryContext(
            domain=settings,
            recovery=RecoverySettings(audit_key_file=key),
            verified_secrets=verified,
        )

    return context, envs, new_context


def api_world(settings: DomainSettings, tmp_path: Path) -> Iterator[ApiWorld]:
    """A world over ``settings``: two workflows' runs recorded, nothing built yet."""
    context, envs, new_context = _world(settings, tmp_path)
    with TestClient(create_app(new_context=new_context), raise_server_exceptions=False) as client:
        yield ApiWorld(settings, context, envs, client)
    context.close()


class _ServedClient(httpx.Client):
    """An HTTPS client of a served app, which it names as a TestClient does."""

    app: Any


def api_world_over_tls(settings: DomainSettings, tmp_path: Path) -> Iterator[ApiWorld]:
    """The world of :func:`api_world`, served over HTTPS on 127.0.0.1 by ``serve``'s
    server (in a thread), with a client that trusts only the test's own CA."""
    context, envs, new_context = _world(settings, tmp_path)
    certificates = make_certificates(tmp_path / "tls")
    tls = ServeSettings(tls_cert_file=certificates.cert, tls_key_file=certificates.key)
    app = create_app(new_context=new_context)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    listening = threading.Event()
    running = server(app, "127.0.0.1", port, listening.set, tls=tls)
    thread = threading.Thread(target=running.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    client = _ServedClient(
        base_url=f"https://127.0.0.1:{port}", verify=certificates.client_context(), timeout=60
    )
    client.app = app
    try:
        assert listening.wait(STARTUP_SECONDS), "the HTTPS server did not start"
        yield ApiWorld(settings, context, envs, client)
    finally:
        client.close()
        running.should_exit = True
        thread.join(STARTUP_SECONDS)
        sock.close()
        context.close()


class ApiContract:
    """Subclassed per backend: ``settings`` gives the store's settings."""

    def settings(self, request: pytest.FixtureRequest, tmp_path: Path) -> DomainSettings:
        raise NotImplementedError

    #: True: every test of the contract talks to a server over HTTPS (api_world_over_tls).
    over_tls = False

    @pytest.fixture
    def world(self, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ApiWorld]:
        make = api_world_over_tls if self.over_tls else api_world
        yield from make(self.settings(request, tmp_path), tmp_path)


def sqlite_settings(request: pytest.FixtureRequest, tmp_path: Path) -> DomainSettings:
    return DomainSettings.from_env(
        backend="sqlite",
        sqlite_path=tmp_path / "events.db",
        key_file=request.getfixturevalue("key_file"),
    )


def postgres_settings(request: pytest.FixtureRequest, tmp_path: Path) -> DomainSettings:
    settings: DomainSettings = request.getfixturevalue("postgres_settings")()
    return settings

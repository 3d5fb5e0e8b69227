"""An API world: a recorded workload, three principals, and a test client per backend.

``ApiWorld`` holds the store's settings, a recovery context to check the database
with, and a client for the app :func:`~safereplay.recovery.api.create_app` makes
over the same store; ``headers(who)`` is the ``Authorization`` header of
``admin`` (ada), ``viewer`` (vic) or ``stranger`` (mallory, no grant).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from recovery_fixtures import principals_world

from safereplay.domain import AutomationApp, DomainSettings
from safereplay.domain.workload import record_workload
from safereplay.recovery.api.app import create_app
from safereplay.recovery.operations.context import RecoveryContext
from safereplay.recovery.security.access import VerifiedSecrets
from safereplay.recovery.security.audit import AuditKey
from safereplay.recovery.settings import RecoverySettings


@dataclass
class ApiWorld:
    settings: DomainSettings
    context: RecoveryContext
    envs: dict[str, dict[str, str]]
    client: TestClient

    def headers(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.envs[who]['SAFEREPLAY_TOKEN']}"}

    def get(self, who: str, path: str, **kwargs: Any) -> Any:
        return self.client.get(path, headers=self.headers(who), **kwargs)

    def post(self, who: str, path: str, body: Any = None, **kwargs: Any) -> Any:
        return self.client.post(path, headers=self.headers(who), json=body, **kwargs)

    def audit_actions(self) -> list[tuple[str, str, str]]:
        """(actor, action, outcome) of every audit entry, oldest first."""
        return [(e.actor, e.action, e.outcome) for e in self.context.audit.entries()]


def api_world(settings: DomainSettings, tmp_path: Path) -> Iterator[ApiWorld]:
    """A world over ``settings``: two workflows' runs recorded, nothing built yet."""
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

    with TestClient(create_app(new_context=new_context), raise_server_exceptions=False) as client:
        yield ApiWorld(settings, context, envs, client)
    context.close()


class ApiContract:
    """Subclassed per backend: ``settings`` gives the store's settings."""

    def settings(self, request: pytest.FixtureRequest, tmp_path: Path) -> DomainSettings:
        raise NotImplementedError

    @pytest.fixture
    def world(self, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ApiWorld]:
        yield from api_world(self.settings(request, tmp_path), tmp_path)


def sqlite_settings(request: pytest.FixtureRequest, tmp_path: Path) -> DomainSettings:
    return DomainSettings.from_env(
        backend="sqlite",
        sqlite_path=tmp_path / "events.db",
        key_file=request.getfixturevalue("key_file"),
    )


def postgres_settings(request: pytest.FixtureRequest, tmp_path: Path) -> DomainSettings:
    settings: DomainSettings = request.getfixturevalue("postgres_settings")()
    return settings

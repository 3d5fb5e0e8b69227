"""Helpers of the hostile-data scenarios: raw access to stored rows, secrets to look
for in messages, Hypothesis budgets scaled by the trial mode."""

from __future__ import annotations

import base64
import contextlib
import secrets
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import psycopg
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from projection_fixtures import Log, PostgresBackend, events_table
from psycopg import sql
from reliability_trials import long_mode_trials

from safereplay.domain import DomainSettings, KeyRing
from safereplay.projections.sqltemplate import postgres_statement, sqlite_statement

#: Hypothesis examples per property and trial, by default.
DEFAULT_EXAMPLES = 15


def max_examples(default: int = DEFAULT_EXAMPLES) -> int:
    """Examples per trial: ``default``, twice that in the long mode, whose N trials
    each run the property again with a seed of their own (N x 2 x ``default`` in
    all: many, without the square of N)."""
    return default if long_mode_trials() is None else 2 * default


# -- stored rows, read and written behind the application's back ------------------------------


def stored_rows(log: Log) -> list[dict[str, Any]]:
    """Every stored event row: position, aggregate, version, topic, state (raw bytes)."""
    if isinstance(log.backend, PostgresBackend):
        query = sql.SQL(
            "SELECT notification_id, originator_id, originator_version, topic, state "
            "FROM {} ORDER BY notification_id"
        ).format(events_table(log))
        with log.backend.connect() as conn:
            found = conn.execute(query).fetchall()
    else:
        with closing(sqlite3.connect(log.settings.sqlite_path)) as conn:
            found = conn.execute(
                "SELECT rowid, originator_id, originator_version, topic, state "
                "FROM stored_events ORDER BY rowid"
            ).fetchall()
    return [
        {"position": p, "aggregate": str(a), "version": v, "topic": t, "state": bytes(s)}
        for p, a, v, t, s in found
    ]


# -- secrets that must never show ------------------------------------------------------------


def key_texts(*rings: KeyRing | None) -> list[str]:
    """Every spelling of the rings' key bytes a message could leak."""
    texts: list[str] = []
    for ring in rings:
        for key in (ring.keys if ring else {}).values():
            texts += [
                base64.b64encode(key).decode().rstrip("="),
                base64.urlsafe_b64encode(key).decode().rstrip("="),
                key.hex(),
            ]
    return texts


def leaks(text: str, secrets: list[str]) -> list[str]:
    """The secrets (shown by their first characters only) that ``text`` contains."""
    return [s[:6] + "..." for s in secrets if s and s in text]


def select(log: Log, template: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Rows of a statement template (``{projection_parked}`` names safereplay's table) run straight
    on the log's database: what is stored, not what the code under test says."""
    if isinstance(log.backend, PostgresBackend):
        statement = postgres_statement(template, log.settings.postgres_schema)
        with log.backend.connect() as conn:
            cursor = conn.execute(statement, params or None)
            names = [d.name for d in cursor.description or ()]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    with closing(sqlite3.connect(log.settings.sqlite_path)) as conn:
        cursor = conn.execute(sqlite_statement(template), params or {})
        names = [d[0] for d in cursor.description or ()]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


# -- one API world per test class: a workload, three principals, the app's context maker ------


@contextlib.contextmanager
def surface_world(backend: str, directory: Path) -> Iterator[tuple[Any, Any]]:
    """``(ApiWorld, new_context)`` over a new store of ``backend`` ("sqlite" or
    "postgres") in ``directory``, the app not started (a test starts it when it calls
    it: its background work would contend with direct calls for SQLite's lock)."""
    import httpx
    from api_fixtures import ApiWorld, _world
    from conftest import require_postgres

    key_file = directory / "keyring.json"
    KeyRing.generate("k1").save(key_file)
    dsn, schema = None, None
    if backend == "sqlite":
        settings = DomainSettings.from_env(
            backend="sqlite", sqlite_path=directory / "events.db", key_file=key_file
        )
    else:
        dsn, schema = require_postgres(), f"h_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        settings = DomainSettings.from_env(
            backend="postgres", postgres_dsn=dsn, postgres_schema=schema, key_file=key_file
        )
    context, envs, new_context = _world(settings, directory)
    try:
        yield ApiWorld(settings, context, envs, httpx.Client()), new_context
    finally:
        context.close()
        if dsn is not None and schema is not None:
            with psycopg.connect(dsn, autocommit=True) as conn:
                drop = sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE")
                conn.execute(drop.format(sql.Identifier(schema)))


# -- Hypothesis ---------------------------------------------------------------------------

#: A string that must never come back in a message: planted in hostile input.
CANARY = f"canary-{secrets.token_hex(8)}"

json_leaf = st.one_of(  # JSON scalars, the canary among them
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=20),
    st.just(CANARY),
)


def nested(depth: int, leaf: Any) -> Any:
    """``leaf`` inside ``depth`` levels of objects and arrays, alternately."""
    value = leaf
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


def hypothesis_settings(default: int = DEFAULT_EXAMPLES) -> settings:
    """Hypothesis settings of a scenario's property: ``max_examples(default)``
    examples, no deadline (the machine is shared), no example database (a trial's
    seed replays it)."""
    return settings(
        max_examples=max_examples(default),
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )

"""Helpers of the hostile-data scenarios: raw access to stored rows, secrets to look
for in messages, Hypothesis budgets scaled by the trial mode."""

from __future__ import annotations

import base64
import sqlite3
from contextlib import closing
from typing import Any

from projection_fixtures import Log, PostgresBackend
from psycopg import sql
from trials import long_mode_trials

from safereplay.domain import KeyRing
from safereplay.projections.sqltemplate import postgres_statement, sqlite_statement

#: Hypothesis examples per property: few by default, many in the long mode.
DEFAULT_EXAMPLES = 25


def max_examples(default: int = DEFAULT_EXAMPLES) -> int:
    """``default`` examples, or 10 per long-mode trial (at least ``default``)."""
    long = long_mode_trials()
    return default if long is None else max(default, 10 * long)


# -- stored rows, read and written behind the application's back ------------------------------


def _events_table(log: Log) -> sql.Identifier:
    settings = log.settings
    return sql.Identifier(settings.postgres_schema, f"{settings.application_name}_events")


def stored_rows(log: Log) -> list[dict[str, Any]]:
    """Every stored event row: position, aggregate, version, topic, state (raw bytes)."""
    if isinstance(log.backend, PostgresBackend):
        query = sql.SQL(
            "SELECT notification_id, originator_id, originator_version, topic, state "
            "FROM {} ORDER BY notification_id"
        ).format(_events_table(log))
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


def write_state(log: Log, position: int, state: bytes) -> None:
    """Overwrite one row's stored state, as someone with database access would."""
    if isinstance(log.backend, PostgresBackend):
        query = sql.SQL("UPDATE {} SET state = %s WHERE notification_id = %s").format(
            _events_table(log)
        )
        with log.backend.connect() as conn:
            conn.execute(query, (state, position))
        return
    with closing(sqlite3.connect(log.settings.sqlite_path)) as conn, conn:
        conn.execute("UPDATE stored_events SET state = ? WHERE rowid = ?", (state, position))


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

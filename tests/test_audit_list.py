"""`audit list` on a tampered trail: a row whose parameters a database owner rewrote into
invalid JSON (guards bypassed) is listed, marked unreadable, pointing to `audit verify`,
with exit code 1 — never a traceback (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import psycopg
from test_every_operation_denied import world  # noqa: F401 - the fixture
from typer.testing import CliRunner

from safereplay.recovery.cli.app import app
from safereplay.recovery.database import (
    PostgresDatabase,
    SQLiteDatabase,
    postgres_statement,
    sqlite_statement,
)
from safereplay.recovery.operations.context import RecoveryContext

REWRITE = "UPDATE {audit_entries} SET parameters = '{{not json' WHERE seq = %(seq)s"


def rewrite_as_owner(context: RecoveryContext, seq: int) -> None:
    """Invalid JSON into entry ``seq``, past the append-only guards, as an owner could."""
    database = context.database
    if isinstance(database, SQLiteDatabase):
        with sqlite3.connect(database.path) as conn:
            for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'"):
                if "audit" in name:
                    conn.execute(f'DROP TRIGGER "{name}"')
            conn.execute(sqlite_statement(REWRITE), {"seq": seq})
        return
    assert isinstance(database, PostgresDatabase)
    assert context.domain.postgres_dsn is not None
    with psycopg.connect(context.domain.postgres_dsn.get_secret_value()) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute(postgres_statement(REWRITE, database.schema), {"seq": seq})


def test_an_unreadable_row_is_listed_marked_never_raised(
    world: dict[str, Any],  # noqa: F811
) -> None:
    context: RecoveryContext = world["context"]
    env = world["env"] | {"SAFEREPLAY_TOKEN": context.access.issue_token("ada")}
    total = len(context.audit.entries())
    rewrite_as_owner(context, 2)

    human = CliRunner().invoke(app, ["audit", "list"], env=env)
    assert human.exit_code == 1, human.output
    assert human.exception is None or isinstance(human.exception, SystemExit)
    assert "UNREADABLE" in human.output
    assert "audit entries 2 cannot be read" in human.output
    assert "safereplay audit verify" in human.output

    listed = CliRunner().invoke(app, ["audit", "list", "--json"], env=env)
    assert listed.exit_code == 1, listed.output
    rows = json.loads(listed.stdout)
    assert [r["seq"] for r in rows][:total] == list(range(1, total + 1)), "every row listed"
    [marked] = [r for r in rows if "unreadable" in r]
    assert marked["seq"] == 2 and "audit verify" in marked["unreadable"]

    verified = CliRunner().invoke(app, ["audit", "verify"], env=env)
    assert verified.exit_code == 1 and "TAMPERED at entry 2" in verified.output

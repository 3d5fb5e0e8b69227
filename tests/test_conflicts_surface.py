"""Integrity conflicts from the command line and the API, on SQLite and PostgreSQL.

A viewer lists open conflicts (where and why, never a payload); resolving one is an
operator's act, refused to a viewer (403, audited as denied), audited with its
reason when done; a conflict resolved twice is a 409, an unknown one a 404. The
CLI's ``conflicts list`` / ``conflicts resolve`` and ``status`` show the same.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from typing import Any

import psycopg
import pytest
from api_fixtures import ApiContract, ApiWorld, postgres_settings, sqlite_settings
from typer.testing import CliRunner

from safereplay.projections.sqltemplate import postgres_statement, sqlite_statement
from safereplay.recovery.cli.app import app
from safereplay.recovery.database import PostgresDatabase, SQLiteDatabase
from safereplay.recovery.errors import JobConflict
from safereplay.recovery.jobs.conflicts import Conflict, NewConflict
from safereplay.recovery.operations.catalog import open_operations

pytestmark = pytest.mark.usefixtures("clean_safereplay_environment")


def drill_conflict(world: ApiWorld) -> Conflict:
    return world.context.conflicts.raise_conflict(
        NewConflict(
            subject="drill:run_status",
            kind="drill",
            reason="checksum of build 2 differs from the live build's (drill d1)",
            projection="run_status",
            build=2,
        )
    )


def cli(world: ApiWorld, who: str, *args: str) -> Any:
    return CliRunner().invoke(app, list(args), env=world.envs[who])


def rewrite_audit(world: ApiWorld, statement: str) -> None:
    """Run SQL on the audit tables with the append-only guards bypassed, as a database
    owner could."""
    database = world.context.database
    if isinstance(database, SQLiteDatabase):
        with contextlib.closing(sqlite3.connect(database.path)) as conn, conn:
            triggers = conn.execute(
                "SELECT name, sql FROM sqlite_master WHERE type = 'trigger'"
            ).fetchall()
            for name, _ in triggers:
                conn.execute(f'DROP TRIGGER "{name}"')
            conn.execute(sqlite_statement(statement))
            for _, ddl in triggers:
                conn.execute(ddl)
        return
    assert isinstance(database, PostgresDatabase)
    assert world.settings.postgres_dsn is not None
    with psycopg.connect(world.settings.postgres_dsn.get_secret_value()) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute(postgres_statement(statement, database.schema))


class ConflictsSurfaceContract(ApiContract):
    def test_an_audit_chain_that_fails_to_verify_pauses_recovery_work(
        self, world: ApiWorld
    ) -> None:
        admin = world.context.access.authenticate(world.envs["admin"]["SAFEREPLAY_TOKEN"])
        operations = open_operations(world.context)
        rewrite_audit(world, "UPDATE {audit_entries} SET reason = 'rewritten' WHERE seq = 1")
        assert not operations.run(admin, "audit.verify").ok
        [conflict] = world.context.conflicts.list()
        assert (conflict.kind, conflict.subject) == ("audit", "audit")
        assert "does not verify" in conflict.reason

        with pytest.raises(JobConflict, match=f"paused by conflict {conflict.conflict_id}"):
            operations.run(admin, "rebuild", reason="after the incident", projection="run_status")
        assert world.context.jobs.list_jobs() == [], "no job was started"
        operations.run(
            admin,
            "conflicts.resolve",
            reason="trail restored from backup and anchored",
            conflict_id=conflict.conflict_id,
            action="retry",
        )
        started = operations.run(admin, "rebuild", reason="now", projection="run_status")
        assert started["job_id"]

    def test_api_lists_and_an_operator_resolves_with_a_reason(self, world: ApiWorld) -> None:
        conflict = drill_conflict(world)
        listed = world.get("viewer", "/api/conflicts")
        assert listed.status_code == 200, listed.text
        [shown] = listed.json()
        assert (shown["conflict_id"], shown["kind"], shown["state"]) == (
            conflict.conflict_id,
            "drill",
            "open",
        )
        path = f"/api/conflicts/{conflict.conflict_id}/resolve"
        denied = world.post("viewer", path, {"reason": "x", "action": "retry"})
        assert denied.status_code == 403, denied.text
        parked = world.post("admin", path, {"reason": "x", "action": "park"})
        assert parked.status_code == 409, "a drill conflict names no event to park"
        bad = world.post("admin", path, {"reason": "x", "action": "ignore"})
        assert bad.status_code == 422, bad.text

        done = world.post("admin", path, {"reason": "drill re-run after fix", "action": "retry"})
        assert done.status_code == 200, done.text
        assert (done.json()["resolution"], done.json()["resolved_by"]) == ("retry", "ada")
        assert world.get("viewer", "/api/conflicts").json() == []
        again = world.post("admin", path, {"reason": "x", "action": "retry"})
        assert again.status_code == 409, again.text
        missing = world.post(
            "admin", "/api/conflicts/nope/resolve", {"reason": "x", "action": "retry"}
        )
        assert missing.status_code == 404, missing.text

        entries = [
            (e.actor, e.outcome, e.reason)
            for e in world.context.audit.entries()
            if e.action == "conflicts.resolve"
        ]
        assert ("vic", "denied", "x") in entries
        assert ("ada", "succeeded", "drill re-run after fix") in entries

    def test_cli_lists_resolves_and_status_shows_the_pause(self, world: ApiWorld) -> None:
        conflict = drill_conflict(world)
        listed = cli(world, "viewer", "conflicts", "list", "--json")
        assert listed.exit_code == 0, listed.output
        assert [c["conflict_id"] for c in json.loads(listed.output)] == [conflict.conflict_id]
        status = cli(world, "viewer", "status")
        assert status.exit_code == 0, status.output
        assert f"paused by conflict {conflict.conflict_id}" in status.output

        denied = cli(
            world,
            "viewer",
            "conflicts",
            "resolve",
            conflict.conflict_id,
            "--action",
            "retry",
            "-r",
            "x",
        )
        assert denied.exit_code == 3, denied.output
        done = cli(
            world,
            "admin",
            "conflicts",
            "resolve",
            conflict.conflict_id,
            "--action",
            "retry",
            "-r",
            "drill re-run",
        )
        assert done.exit_code == 0, done.output
        assert f"conflict {conflict.conflict_id} resolved (retry)" in done.output
        assert "no open conflicts" in cli(world, "viewer", "conflicts", "list").output


class TestSQLiteConflictsSurface(ConflictsSurfaceContract):
    settings = staticmethod(sqlite_settings)


@pytest.mark.postgres
class TestPostgresConflictsSurface(ConflictsSurfaceContract):
    settings = staticmethod(postgres_settings)

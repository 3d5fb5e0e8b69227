"""Integrity conflicts from the command line and the API, on SQLite and PostgreSQL.

A viewer lists open conflicts (where and why, never a payload); resolving one is an
operator's act, refused to a viewer (403, audited as denied), audited with its
reason when done; a conflict resolved twice is a 409, an unknown one a 404. The
CLI's ``conflicts list`` / ``conflicts resolve`` and ``status`` show the same.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from api_fixtures import ApiContract, ApiWorld, postgres_settings, sqlite_settings
from typer.testing import CliRunner

from safereplay.recovery.cli.app import app
from safereplay.recovery.jobs.conflicts import Conflict, NewConflict

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


class ConflictsSurfaceContract(ApiContract):
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

"""Drills: a sandbox rebuild compared with the live build, on SQLite and PostgreSQL.

One contract, one subclass per backend. The live store is dumped before and
after every drill: a drill only ever reads it.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import pytest
from psycopg import sql
from typer.testing import CliRunner

from safereplay.domain import AutomationApp, DomainSettings
from safereplay.domain.workload import record_workload
from safereplay.projections import (
    EventSource,
    FailedSteps,
    ProjectionRunner,
    ProjectionStore,
    RunStatusBoard,
    WorkflowStatistics,
    open_source,
    open_store,
    partition_of,
)
from safereplay.recovery.cli.app import app as cli_app
from safereplay.recovery.drills.digests import RowDifference
from safereplay.recovery.drills.drill import DrillStore, require_matching_drill, run_drill
from safereplay.recovery.errors import DrillConflict, InvalidRequest
from safereplay.recovery.operations.catalog import open_operations
from safereplay.recovery.operations.context import RecoveryContext
from safereplay.recovery.operations.drills import live_reader, new_sandbox
from safereplay.recovery.security.access import AccessDenied, Principal, Role
from safereplay.recovery.security.audit import AuditKey
from safereplay.recovery.settings import RecoverySettings

OLGA = Principal("olga", "person")  # operator
VIC = Principal("vic", "person")  # viewer
RUNS = "run_status__runs__b1"


@dataclass
class World:
    settings: DomainSettings
    app: AutomationApp
    store: ProjectionStore
    source: EventSource
    context: RecoveryContext
    audit_key: str

    def catch_up_live(self) -> int:
        for projection in (RunStatusBoard(), WorkflowStatistics(), FailedSteps()):
            ProjectionRunner(projection, source=self.source, store=self.store).catch_up()
        return self.store.checkpoints("run_status")[0].position

    def drill(self, principal: Principal = OLGA, **parameters: Any) -> Any:
        parameters.setdefault("projection", "run_status")
        return open_operations(self.context).run(principal, "drill", reason="drill", **parameters)

    def a_run(self, index: int = 0) -> str:
        return sorted(str(row["run_id"]) for row in self.store.rows(RunStatusBoard, "runs"))[index]


class LiveStore:
    """A recorded workload, its live projections and a recovery context, on one backend;
    subclasses say how to reach their database."""

    @pytest.fixture
    def settings(self) -> DomainSettings:
        raise NotImplementedError

    def execute(
        self, world: World, statement: str, params: Sequence[Any] = (), *, table: str = RUNS
    ) -> None:
        """Run ``statement`` on the live store; ``{t}`` names a table of it."""
        raise NotImplementedError

    def dump(self, world: World) -> dict[str, list[str]]:
        """Every row of every table but the audit trail, the drill record and its conflict."""
        raise NotImplementedError

    def leftover_sandboxes(self, world: World) -> list[str]:
        raise NotImplementedError

    def env(self, world: World) -> dict[str, str]:
        raise NotImplementedError

    def cli(self, world: World, token: str, *args: str) -> tuple[int, str]:
        """``safereplay ARGS`` against this store as the token's principal: (exit code, output)."""
        env = {**self.env(world), "SAFEREPLAY_TOKEN": token}
        result = CliRunner().invoke(cli_app, list(args), env=env)
        return result.exit_code, result.output

    @pytest.fixture
    def world(
        self, settings: DomainSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> Iterator[World]:
        # Sandboxes of SQLite drills land here, where the test can look for leftovers.
        (tmp_path / "tmp").mkdir()
        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
        app = AutomationApp(settings)
        record_workload(app, workflows=2, runs_per_workflow=6, seed=11)
        audit_key = base64.b64encode(AuditKey.generate().key).decode("ascii")
        context = RecoveryContext(
            domain=settings, recovery=RecoverySettings.from_env(audit_key=audit_key)
        )
        world = World(settings, app, open_store(settings), open_source(app), context, audit_key)
        world.catch_up_live()
        access = context.access
        for principal, role in ((OLGA, Role.OPERATOR), (VIC, Role.VIEWER)):
            access.add_principal(principal.name, kind="person", created_by="setup")
            access.grant(principal.name, role, "projection:*", granted_by="setup")
        open_operations(context)
        yield world
        context.close()
        world.source.close()
        world.store.close()
        app.close()


class DrillContract(LiveStore):
    """What a drill does on every backend."""

    # -- matches -------------------------------------------------------------------------

    def test_an_untouched_build_matches_and_nothing_live_changes(self, world: World) -> None:
        position = world.store.checkpoints("run_status")[0].position
        before = self.dump(world)

        result = world.drill()

        assert result.match, result.summary()
        assert (result.projection, result.build, result.position) == ("run_status", 1, position)
        assert result.partition_count == 4
        assert [(c.table, c.partition) for c in result.comparisons] == [
            ("runs", p) for p in range(4)
        ]
        assert sum(c.live_rows for c in result.comparisons) == 12
        assert all(c.live_checksum == c.sandbox_checksum for c in result.comparisons)
        assert result.events_applied > 0
        assert self.dump(world) == before, "a drill writes nothing live"
        assert self.leftover_sandboxes(world) == []

        drills = DrillStore(world.context.database)
        latest = drills.latest_matching_drill("run_status", 1)
        assert latest is not None and latest.drill_id == result.drill_id
        assert latest.comparisons == result.comparisons, "recorded as it was found"
        assert require_matching_drill(drills, required=True, projection="run_status", build=1)
        intent, entry = world.context.audit.entries(action="drill")
        assert intent.outcome == "started"
        assert (entry.actor, entry.outcome, entry.scope) == (
            "olga",
            "succeeded",
            "projection:run_status",
        )

    def test_checksums_are_deterministic_and_cross_partition_rows_compare_too(
        self, world: World
    ) -> None:
        first = world.drill(projection="workflow_stats", partitions=2)
        second = world.drill(projection="workflow_stats", partitions=2)
        assert first.match and second.match
        assert [c.live_checksum for c in first.comparisons] == [
            c.live_checksum for c in second.comparisons
        ]
        assert {c.table for c in first.comparisons} == {t.name for t in WorkflowStatistics.tables}

    # -- divergences ---------------------------------------------------------------------

    def test_a_corrupted_row_is_named_by_partition_and_key(self, world: World) -> None:
        changed, deleted = world.a_run(0), world.a_run(5)
        self.execute(
            world,
            "UPDATE {t} SET steps_succeeded = steps_succeeded + 1 WHERE run_id = %s",
            (changed,),
        )
        self.execute(world, "DELETE FROM {t} WHERE run_id = %s", (deleted,))
        corrupted = self.dump(world)

        result = world.drill()

        assert not result.match
        expected = {
            partition_of(UUID(changed), 4): [RowDifference((changed,), "differs")],
            partition_of(UUID(deleted), 4): [RowDifference((deleted,), "missing in live")],
        }
        if len(expected) == 1:  # both rows fell in one partition
            expected = {
                partition_of(UUID(changed), 4): sorted(
                    [
                        RowDifference((changed,), "differs"),
                        RowDifference((deleted,), "missing in live"),
                    ],
                    key=lambda d: json.dumps(list(d.key)),
                )
            }
        assert {c.partition: list(c.differences) for c in result.divergent} == expected
        assert all(c.match for c in result.comparisons if c.partition not in expected)
        assert self.dump(world) == corrupted, "live stays byte-for-byte as it was"
        assert self.leftover_sandboxes(world) == []

        drills = DrillStore(world.context.database)
        assert drills.latest_matching_drill("run_status", 1) is None
        with pytest.raises(InvalidRequest, match="needs a matching drill before build 1"):
            require_matching_drill(drills, required=True, projection="run_status", build=1)
        assert (
            require_matching_drill(drills, required=False, projection="run_status", build=1) is None
        )

    def test_the_cli_prints_the_comparison_and_exits_1_on_divergence(self, world: World) -> None:
        olga = world.context.access.issue_token("olga")
        vic = world.context.access.issue_token("vic")

        code, out = self.cli(world, olga, "drill", "run_status", "-r", "monthly drill")
        assert code == 0, out
        assert "the sandbox rebuild matches" in out

        victim = world.a_run(3)
        self.execute(world, "UPDATE {t} SET status = 'tampered' WHERE run_id = %s", (victim,))
        code, out = self.cli(
            world, olga, "drill", "run_status", "-r", "after the incident", "--json"
        )
        assert code == 1, out
        report = json.loads(out)
        assert report["match"] is False
        (bad,) = [c for c in report["comparisons"] if not c["match"]]
        assert bad["partition"] == partition_of(UUID(victim), 4)
        assert bad["differences"] == [{"key": [victim], "kind": "differs"}]
        assert "tampered" not in out, "keys only, never row values"

        code, out = self.cli(world, vic, "drill", "run_status", "-r", "curious")
        assert code == 3
        code, out = self.cli(world, vic, "drills", "run_status", "--json")
        assert code == 0, out
        assert [d["match"] for d in json.loads(out)] == [False, True]

    def test_a_divergent_drill_pauses_swaps_until_an_operator_resolves_it(
        self, world: World
    ) -> None:
        olga = world.context.access.issue_token("olga")
        victim = world.a_run(3)
        self.execute(world, "UPDATE {t} SET status = 'tampered' WHERE run_id = %s", (victim,))
        code, out = self.cli(world, olga, "drill", "run_status", "-r", "after the incident")
        assert code == 1, out
        [conflict] = world.context.conflicts.list()
        assert (conflict.kind, conflict.projection) == ("drill", "run_status")
        assert "DIVERGENCE" in conflict.reason and "tampered" not in conflict.reason

        code, out = self.cli(world, olga, "swap", "run_status", "-r", "swap anyway")
        assert code == 5, out
        assert f"paused by conflict {conflict.conflict_id}" in " ".join(out.split())
        code, out = self.cli(
            world, olga, "conflicts", "resolve", conflict.conflict_id, "--action", "park", "-r", "x"
        )
        assert code == 5, "a drill's conflict names no event to park"
        code, out = self.cli(
            world,
            olga,
            "conflicts",
            "resolve",
            conflict.conflict_id,
            "--action",
            "retry",
            "-r",
            "row repaired, drill re-run",
        )
        assert code == 0, out
        code, out = self.cli(world, olga, "swap", "run_status", "-r", "swap anyway")
        assert "paused by conflict" not in out  # refused for its own reasons, if any

    # -- refusals and limits -------------------------------------------------------------

    def test_a_viewer_is_denied_and_the_denial_is_audited(self, world: World) -> None:
        before = self.dump(world)
        with pytest.raises(AccessDenied, match="'vic' may not drill on 'projection:run_status'"):
            world.drill(VIC)
        (entry,) = world.context.audit.entries(action="drill")
        assert (entry.actor, entry.outcome) == ("vic", "denied")
        assert DrillStore(world.context.database).drills("run_status") == []
        assert self.leftover_sandboxes(world) == []
        assert self.dump(world) == before

    def test_the_live_store_cannot_be_written_through_the_drill_reader(self, world: World) -> None:
        with live_reader(world.context).view() as view:
            assert len(list(view.rows("run_status", 1, RunStatusBoard.tables[0]))) == 12
            with pytest.raises((sqlite3.OperationalError, psycopg.errors.ReadOnlySqlTransaction)):
                view.query("DELETE FROM {table}", RUNS)
        assert len(world.store.rows(RunStatusBoard, "runs")) == 12

    def test_a_build_a_job_is_moving_is_refused(self, world: World) -> None:
        world.store.repartition("run_status", 1, 2)
        self.execute(
            world,
            "UPDATE {t} SET position = position - 1 WHERE partition_index = 1",
            table="safereplay_projection_positions",
        )
        with pytest.raises(InvalidRequest, match="partitions at different positions"):
            world.drill()
        with pytest.raises(InvalidRequest, match="unknown projection 'nope'"):
            world.drill(projection="nope")
        with pytest.raises(InvalidRequest, match="has no build 7"):
            world.drill(build=7)
        assert self.leftover_sandboxes(world) == []

    def test_live_moving_during_the_drill_is_followed_to_one_snapshot(self, world: World) -> None:
        start = world.store.checkpoints("run_status")[0].position
        moved: list[int] = []

        def live_moves(attempt: int) -> None:
            if attempt == 1:
                record_workload(world.app, workflows=1, runs_per_workflow=3, seed=99)
                moved.append(world.catch_up_live())

        result = run_drill(
            RunStatusBoard(),
            live=live_reader(world.context),
            source=world.source,
            sandbox=new_sandbox(world.context),
            principal="olga",
            before_snapshot=live_moves,
        )
        assert moved and moved[0] > start
        assert result.match, result.summary()
        assert (result.position, result.attempts) == (moved[0], 1)
        assert sum(c.live_rows for c in result.comparisons) == 15
        assert self.leftover_sandboxes(world) == []

    def test_a_drill_that_cannot_reach_the_live_position_gives_up_and_cleans_up(
        self, world: World
    ) -> None:
        capped = CappedSource(world.source, cap=world.source.head())
        attempts: list[int] = []

        def live_moves(attempt: int) -> None:
            attempts.append(attempt)
            record_workload(world.app, workflows=1, runs_per_workflow=1, seed=attempt)
            world.catch_up_live()

        sandbox = new_sandbox(world.context)
        with pytest.raises(DrillConflict, match=r"kept moving .* \(3 snapshots\)"):
            run_drill(
                RunStatusBoard(),
                live=live_reader(world.context),
                source=capped,
                sandbox=sandbox,
                principal="olga",
                max_attempts=3,
                before_snapshot=live_moves,
            )
        assert attempts == [1, 2, 3]
        assert not sandbox.exists()
        assert self.leftover_sandboxes(world) == []


class CappedSource(EventSource):
    """The real log, but its high-water mark never passes ``cap``."""

    def __init__(self, inner: EventSource, *, cap: int) -> None:
        super().__init__(inner.watermark, inner.mapper)
        self.inner = inner
        self.cap = cap

    @property
    def description(self) -> str:
        return self.inner.description

    def high_water_mark(self) -> int:
        return min(self.inner.high_water_mark(), self.cap)

    def head(self) -> int:
        return self.inner.head()

    def read(self, **options: Any) -> Any:
        return self.inner.read(**options)

    def count(self, **options: Any) -> int:
        return self.inner.count(**options)

    def close(self) -> None:
        pass


class SQLiteLiveStore(LiveStore):
    @pytest.fixture
    def settings(self, sqlite_settings: Any) -> DomainSettings:
        settings: DomainSettings = sqlite_settings()
        return settings

    def _connect(self, world: World) -> sqlite3.Connection:
        return sqlite3.connect(world.settings.sqlite_path, isolation_level=None)

    def execute(
        self, world: World, statement: str, params: Sequence[Any] = (), *, table: str = RUNS
    ) -> None:
        with self._connect(world) as conn:
            conn.execute(statement.replace("%s", "?").format(t=f'"{table}"'), tuple(params))

    def dump(self, world: World) -> dict[str, list[str]]:
        with self._connect(world) as conn:
            names = [
                r[0]
                for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                if not r[0].startswith(
                    ("safereplay_audit", "safereplay_drills", "safereplay_conflicts")
                )
            ]
            return {
                name: sorted(repr(row) for row in conn.execute(f'SELECT * FROM "{name}"'))
                for name in names
            }

    def leftover_sandboxes(self, world: World) -> list[str]:
        return [p.name for p in Path(str(tempfile.tempdir)).iterdir()]

    def env(self, world: World) -> dict[str, str]:
        return {
            "SAFEREPLAY_BACKEND": "sqlite",
            "SAFEREPLAY_SQLITE_PATH": str(world.settings.sqlite_path),
            "SAFEREPLAY_KEY_FILE": str(world.settings.key_file),
            "SAFEREPLAY_AUDIT_KEY": world.audit_key,
        }


class PostgresLiveStore(LiveStore):
    @pytest.fixture
    def settings(self, postgres_settings: Any) -> DomainSettings:
        settings: DomainSettings = postgres_settings()
        return settings

    def _connect(self, world: World) -> psycopg.Connection[Any]:
        dsn = world.settings.postgres_dsn
        assert dsn is not None
        return psycopg.connect(dsn.get_secret_value(), autocommit=True)

    def execute(
        self, world: World, statement: str, params: Sequence[Any] = (), *, table: str = RUNS
    ) -> None:
        schema = world.settings.postgres_schema
        with self._connect(world) as conn:
            conn.execute(sql.SQL(statement).format(t=sql.Identifier(schema, table)), tuple(params))

    def dump(self, world: World) -> dict[str, list[str]]:
        schema = world.settings.postgres_schema
        with self._connect(world) as conn:
            names = [
                r[0]
                for r in conn.execute(
                    "SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,)
                )
                if not r[0].startswith(
                    ("safereplay_audit", "safereplay_drills", "safereplay_conflicts")
                )
            ]
            return {
                name: sorted(
                    repr(row)
                    for row in conn.execute(
                        sql.SQL("SELECT * FROM {}").format(sql.Identifier(schema, name))
                    )
                )
                for name in names
            }

    def leftover_sandboxes(self, world: World) -> list[str]:
        with self._connect(world) as conn:
            rows = conn.execute(
                "SELECT nspname FROM pg_namespace WHERE nspname LIKE %s",
                (f"{world.settings.postgres_schema}_drill_%",),
            ).fetchall()
        return [r[0] for r in rows]

    def env(self, world: World) -> dict[str, str]:
        dsn = world.settings.postgres_dsn
        assert dsn is not None
        return {
            "SAFEREPLAY_BACKEND": "postgres",
            "SAFEREPLAY_POSTGRES_DSN": dsn.get_secret_value(),
            "SAFEREPLAY_POSTGRES_SCHEMA": world.settings.postgres_schema,
            "SAFEREPLAY_KEY_FILE": str(world.settings.key_file),
            "SAFEREPLAY_AUDIT_KEY": world.audit_key,
        }


class TestSQLiteDrill(SQLiteLiveStore, DrillContract):
    pass


class TestPostgresDrill(PostgresLiveStore, DrillContract):
    pass

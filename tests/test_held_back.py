"""Events held back above a position in doubt, end to end on PostgreSQL (issue #15).

``safereplay status`` and ``safereplay catch-up`` must never call a projection
caught up, or "not behind", while events committed above a hole still in doubt
are unreadable: they are backlog, *held back*. And under writers that keep a
transaction open at every instant, the high-water mark (in new processes each
time) and a catch-up must still reach every committed position, and never skip
one.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from eventsourcing.utils import Environment, EnvType
from psycopg import sql
from recovery_fixtures import bootstrap_args, bootstrapped_token
from typer.testing import CliRunner

from safereplay.domain import AutomationApp, DomainSettings
from safereplay.domain.workload import record_workload
from safereplay.projections import PostgresHighWaterMark, ProjectionSettings
from safereplay.projections.reference import RunStatusBoard
from safereplay.recovery.cli.app import app as cli
from safereplay.recovery.security.audit import AuditKey

pytestmark = pytest.mark.postgres

#: A ceiling for waits on a busy 2-core machine, far above the liveness bound these
#: tests exercise (hole_proof_refresh + hole_wait + the longest writer transaction,
#: about 4 s here; docs/gaps.md): reaching it means the mark is stuck, not slow.
CEILING = 60.0


class DbFunctionsApp(AutomationApp):
    """Inserts through eventsourcing's function, without the table lock (as with
    POSTGRES_ENABLE_DB_FUNCTIONS=y): its events commit while other writers are open."""

    def construct_env(self, name: str, env: EnvType | None = None) -> Environment:
        environment = super().construct_env(name, env)
        environment["POSTGRES_ENABLE_DB_FUNCTIONS"] = "y"
        return environment


@dataclass
class World:
    app: DbFunctionsApp
    settings: DomainSettings
    env: dict[str, str]

    @property
    def dsn(self) -> str:
        assert self.settings.postgres_dsn is not None
        return self.settings.postgres_dsn.get_secret_value()

    @property
    def schema(self) -> str:
        return self.settings.postgres_schema

    @property
    def table(self) -> str:
        return f"{self.settings.application_name}_events"

    def connect(self, *, autocommit: bool = True) -> psycopg.Connection[Any]:
        return psycopg.connect(self.dsn, autocommit=autocommit)

    def insert(self, conn: psycopg.Connection[Any]) -> int:
        """A raw event (a topic no projection handles) in ``conn``'s transaction."""
        [[position]] = conn.execute(
            sql.SQL(
                "INSERT INTO {} (originator_id, originator_version, topic, state) "
                "VALUES (gen_random_uuid(), 1, 'tests.Raw', '\\x00'::bytea) "
                "RETURNING notification_id"
            ).format(sql.Identifier(self.schema, self.table))
        ).fetchall()
        return int(position)

    def committed(self) -> set[int]:
        with self.connect() as conn:
            query = sql.SQL("SELECT notification_id FROM {}").format(
                sql.Identifier(self.schema, self.table)
            )
            return {int(r[0]) for r in conn.execute(query)}

    def new_mark(self) -> PostgresHighWaterMark:
        """The mark as a new process builds it: default settings, a new connection."""
        options = ProjectionSettings().watermark_options()
        return PostgresHighWaterMark(self.dsn, schema=self.schema, table=self.table, **options)

    def submit_runs(self, count: int, seed: int) -> None:
        record_workload(self.app, workflows=1, runs_per_workflow=count, seed=seed)


def run(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    """(exit code, stdout, stdout and stderr)."""
    result = CliRunner().invoke(cli, list(args), env=env)
    return result.exit_code, result.stdout, result.output


@pytest.fixture
def world(postgres_settings: Any, tmp_path: Path) -> Iterator[World]:
    settings = postgres_settings()
    app = DbFunctionsApp(settings)
    record_workload(app, workflows=2, runs_per_workflow=4, seed=3)
    audit_key = tmp_path / "audit.key"
    AuditKey.generate().save(audit_key)
    assert settings.postgres_dsn is not None
    env = {
        "SAFEREPLAY_BACKEND": "postgres",
        "SAFEREPLAY_POSTGRES_DSN": settings.postgres_dsn.get_secret_value(),
        "SAFEREPLAY_POSTGRES_SCHEMA": settings.postgres_schema,
        "SAFEREPLAY_KEY_FILE": str(settings.key_file),
        "SAFEREPLAY_AUDIT_KEY_FILE": str(audit_key),
    }
    code, out, _ = run(env, *bootstrap_args("root"))
    assert code == 0, out
    env["SAFEREPLAY_TOKEN"] = bootstrapped_token(out)
    yield World(app, settings, env)
    app.close()


def status(world: World) -> dict[str, Any]:
    code, out, everything = run(world.env, "status", "--json", "-p", "run_status")
    assert code == 0, everything
    report: dict[str, Any] = json.loads(out)
    return report


def applied_up_to(world: World, position: int) -> int:
    """How many events run_status handles at positions <= ``position``."""
    with world.connect() as conn:
        [[count]] = conn.execute(
            sql.SQL(
                "SELECT count(*) FROM {} WHERE notification_id <= %s AND topic = ANY(%s)"
            ).format(sql.Identifier(world.schema, world.table)),
            (position, list(RunStatusBoard.topics)),
        ).fetchall()
    return int(count)


def test_status_and_catch_up_never_call_a_held_back_backlog_zero(world: World) -> None:
    """A writer keeps a position in doubt while events commit above it."""
    code, _, out = run(world.env, "catch-up", "run_status", "-w", "1", "-r", "start")
    assert code == 0, out
    quick = world.env | {"SAFEREPLAY_CATCH_UP_WAIT": "0.2"}

    # At the safe head, events held back above it: backlog, and never "not behind".
    with world.connect(autocommit=False) as slow:
        doubt = world.insert(slow)
        world.submit_runs(2, seed=5)
        head, safe = max(world.committed()), doubt - 1
        report = status(world)
        assert (report["head_position"], report["high_water_mark"]) == (head, safe)
        assert report["held_back"] == head - safe > 0
        assert report["held_back_since"] is not None
        [board] = report["projections"]
        assert (board["position"], board["backlog"], board["held_back"]) == (
            safe,
            head - safe,
            head - safe,
        ), "held back is backlog"
        [part] = board["partitions"]
        assert (part["backlog"], part["held_back"]) == (head - safe, head - safe)
        code, _, table = run(world.env, "status")
        assert code == 0 and f"{head - safe} held back for" in table, table

        code, out, everything = run(quick, "catch-up", "run_status", "-w", "0", "-r", "x", "--json")
        assert code == 1, everything
        summary = json.loads(out)
        assert summary["job_id"] is None and summary["state"].startswith("held back")
        assert (summary["held_back"], summary["safe_head"], summary["head"]) == (
            head - safe,
            safe,
            head,
        )
        assert "not behind" not in everything and "not caught up" in everything
        # Not decided within SAFEREPLAY_CATCH_UP_WAIT: an integrity conflict (pause,
        # the default), naming the first position in doubt; nothing above it applied.
        code, out, everything = run(world.env, "conflicts", "list", "--json")
        assert code == 0, everything
        [hole] = json.loads(out)
        assert (hole["kind"], hole["projection"], hole["position"]) == (
            "hole",
            "run_status",
            doubt,
        )
        assert hole["conflict_id"] == summary["conflict_id"]
        slow.commit()
    code, _, everything = run(
        world.env, "conflicts", "resolve", hole["conflict_id"], "--action", "retry", "-r", "ok"
    )
    assert code == 0, everything

    # Behind the safe head, and events held back above it: the job goes to the safe
    # head, and the command says the projection will not be caught up (exit 1).
    world.submit_runs(2, seed=6)
    with world.connect(autocommit=False) as slow:
        doubt = world.insert(slow)
        world.submit_runs(2, seed=7)
        head, safe = max(world.committed()), doubt - 1
        code, out, everything = run(quick, "catch-up", "run_status", "-w", "0", "-r", "x", "--json")
        assert code == 1, everything
        planned = json.loads(out)
        assert (planned["target_position"], planned["held_back"]) == (safe, head - safe)
        assert f"{head - safe} position(s)" in everything and "not caught up" in everything
        slow.commit()
    code, _, everything = run(
        world.env, "worker", "--job", planned["job_id"], "--exit-when-idle", "--json"
    )
    assert code == 0, everything
    board = status(world)["projections"][0]
    assert (board["position"], board["backlog"], board["held_back"]) == (safe, head - safe, 0)

    # Nothing in doubt: the catch-up waits for nothing and reaches the head.
    code, _, everything = run(world.env, "catch-up", "run_status", "-w", "1", "-r", "x")
    assert code == 0, everything
    board = status(world)["projections"][0]
    assert (board["position"], board["backlog"], board["held_back"]) == (head, 0, 0)
    assert board["events_applied"] == applied_up_to(world, head)
    code, _, everything = run(world.env, "catch-up", "run_status", "-w", "1", "-r", "x")
    assert code == 0 and "not needed: the projection is not behind" in everything


class OverlappingWriters:
    """Two writer threads, one of which has a transaction open at every instant.

    Each inserts in a new transaction, then commits only once the other writer has
    opened a newer one (counted, under a condition), and not before ``hold``
    seconds: so every transaction lasts at least ``2 * hold`` and overlaps the next.
    ``hold`` only paces them; the overlap comes from the counting. One exception:
    a writer whose partner cannot open (its insert queued behind a lock that waits
    for the open writer, such as DDL on the events table) commits after
    ``4 * hold`` rather than deadlock with it.
    """

    def __init__(self, world: World, *, hold: float) -> None:
        self._world = world
        self._hold = hold
        self._changed = threading.Condition()
        self._opened = 0
        self._stop = threading.Event()
        self._errors: list[BaseException] = []
        self.turnovers = 0
        self._threads = [threading.Thread(target=self._write, daemon=True) for _ in range(2)]

    def __enter__(self) -> OverlappingWriters:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        with self._changed:
            self._changed.notify_all()
        for thread in self._threads:
            thread.join(CEILING)
        assert not self._errors, self._errors

    def _write(self) -> None:
        try:
            with self._world.connect(autocommit=False) as conn:
                while not self._stop.is_set():
                    self._world.insert(conn)
                    with self._changed:
                        self._opened += 1
                        mine = self._opened
                        self._changed.notify_all()
                        self._changed.wait_for(
                            lambda n=mine: self._opened > n or self._stop.is_set(),
                            4 * self._hold,
                        )
                    self._stop.wait(self._hold)
                    conn.commit()
                    with self._changed:
                        self.turnovers += 1
                        self._changed.notify_all()
        except BaseException as exc:
            self._errors.append(exc)
            raise

    def wait_for(self, turnovers: int) -> None:
        with self._changed:
            assert self._changed.wait_for(lambda: self.turnovers >= turnovers, CEILING)


def test_the_mark_and_a_catch_up_reach_every_committed_position_under_overlapping_writers(
    world: World,
) -> None:
    """The reported case: a dead hole, and two writers of which one always has a
    transaction open (each held at least 2 s). With the default settings, a new
    process each time (like ``safereplay status`` run again and again) moves the
    mark past every position committed before it started; a catch-up waits for the
    mark and reaches the head as it was. Nothing is ever skipped."""
    seen: set[int] = set()
    handed_out = 0
    with world.connect() as reader, OverlappingWriters(world, hold=1.0) as writers:
        writers.wait_for(1)
        with world.connect(autocommit=False) as doomed:
            dead = world.insert(doomed)
            doomed.rollback()
        world.submit_runs(3, seed=8)
        writers.wait_for(writers.turnovers + 2)  # the hole is among committed ids
        target = max(world.committed())

        started = time.monotonic()
        while handed_out < target:
            mark = world.new_mark()
            try:
                value = mark.advance()
            finally:
                mark.close()
            assert value >= handed_out, "the mark went backwards"
            seen.update(
                r[0]
                for r in reader.execute(
                    sql.SQL(
                        "SELECT notification_id FROM {} WHERE notification_id > %s "
                        "AND notification_id <= %s"
                    ).format(sql.Identifier(world.schema, world.table)),
                    (handed_out, value),
                )
            )
            handed_out = value
            assert time.monotonic() - started < CEILING, f"mark stuck at {value} < {target}"

        world.submit_runs(2, seed=9)
        head = max(world.committed())
        env = world.env | {"SAFEREPLAY_CATCH_UP_WAIT": str(CEILING)}
        code, out, everything = run(
            env, "catch-up", "run_status", "-n", "2", "-w", "1", "-r", "x", "--json"
        )
        assert code == 0, everything
        job = json.loads(out)
        assert job["job"]["state"] == "completed"
        reached = job["job"]["target_position"]
        assert reached >= head, "the catch-up waited for the mark to pass the head"
        assert {p["position"] for p in job["partitions"]} == {reached}
    # No event was skipped: each committed position below a mark was there when the
    # mark was handed out, the projection applied every event up to its target, and
    # the only recorded hole is the rolled-back one.
    committed = world.committed()
    assert {p for p in committed if p <= handed_out} <= seen
    board = status(world)["projections"][0]
    assert board["events_applied"] == applied_up_to(world, reached)
    mark = world.new_mark()
    assert mark.advance() == max(committed)
    assert [h.position for h in mark.skipped_holes()] == [dead]
    assert mark.filled_holes() == []
    mark.close()

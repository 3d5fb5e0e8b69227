"""Writers and database checks of the concurrency scenarios (PostgreSQL).

:class:`OutOfOrderCommitters` are writer threads that each insert a whole, self-contained
piece of the workload (a workflow created, given steps and published, and one of its
runs played to its end) into the events table **in a transaction they hold open** for a
random time, then commit it or roll it back. Later positions commit first whenever a
longer hold overlaps a shorter one; a rolled-back transaction leaves a hole for good.
The events are the domain's own (the application's mapper encodes them, cipher and all),
and each transaction holds everything its aggregates need, so a rollback never leaves
an event whose run or workflow is missing: the log stays one the clean folds can fold.

The checks read the database with plain SQL (events table, positions registry, the
projection's physical tables, the job tables) and compare with the clean folds of
``projection_fixtures`` computed over the stored events: never through the runner.
"""

from __future__ import annotations

import contextlib
import random
import sqlite3
import statistics
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from eventsourcing.utils import get_topic
from projection_fixtures import EXPECTED, Log, PostgresBackend
from psycopg import sql

from safereplay.domain import AutomationApp, Envelope
from safereplay.domain.automation import Run, Workflow
from safereplay.domain.workload import RunBuilder, build_workflow, plan_run, plan_workflow
from safereplay.projections import REFERENCE_PROJECTIONS, Projection
from safereplay.projections.store import BUILDS_TABLE, PARKED_TABLE, POSITIONS_TABLE
from safereplay.projections.tables import physical_table_name

PROJECTIONS = {p.name: p for p in REFERENCE_PROJECTIONS}

#: A ceiling for waits on a busy 2-core machine: reaching it means stuck, not slow.
CEILING = 90.0

#: Counter columns of each projection's tables: one more or one less than the fold is
#: an event applied twice or lost (a full equality with the fold is checked as well).
#: Written out here, not imported from ``safereplay.projections.reference``: the oracle
#: does not take the code under test's word for which columns count.
COUNTERS: dict[str, dict[str, tuple[str, ...]]] = {
    "run_status": {"runs": ("steps_succeeded", "failures")},
    "workflow_stats": {
        "workflows": (
            "runs_started",
            "runs_succeeded",
            "runs_failed",
            "runs_cancelled",
            "step_failures",
            "retries",
            "total_duration_ms",
        )
    },
    "failed_steps": {"failures": ()},
}


def events_table(log: Log) -> sql.Identifier:
    return sql.Identifier(log.settings.postgres_schema, f"{log.settings.application_name}_events")


def connect(log: Log, *, autocommit: bool = True) -> psycopg.Connection[Any]:
    dsn = log.settings.postgres_dsn
    assert dsn is not None
    return psycopg.connect(dsn.get_secret_value(), autocommit=autocommit)


@dataclass
class Unit:
    """One held transaction: the positions it took and what became of it."""

    positions: list[int]
    held: float
    committed: bool
    commit_order: int = 0


@dataclass
class CommitterFigures:
    units: list[Unit] = field(default_factory=list)

    @property
    def committed(self) -> list[Unit]:
        return [u for u in self.units if u.committed]

    @property
    def rolled_back(self) -> list[Unit]:
        return [u for u in self.units if not u.committed]

    @property
    def overtaken(self) -> int:
        """Committed units that committed after a unit holding higher positions did:
        a reader saw a later position before this earlier one existed."""
        done = sorted(self.committed, key=lambda u: u.commit_order)
        count, highest = 0, 0
        for unit in done:
            if unit.positions and min(unit.positions) < highest:
                count += 1
            highest = max(highest, max(unit.positions, default=0))
        return count

    @property
    def events(self) -> int:
        return sum(len(u.positions) for u in self.committed)


class OutOfOrderCommitters:
    """``threads`` writers, each in a loop: open a transaction, insert one unit of the
    workload, hold it open ``uniform(0, max_hold)`` seconds (with probability
    ``held_share``; else end it at once), then roll it back with ``rollback`` probability (and
    always its second one), else commit. ``pause`` seconds between units, or ``rate``
    events per second over all threads, pace them.
    """

    def __init__(
        self,
        log: Log,
        rng: random.Random,
        *,
        threads: int = 3,
        max_hold: float = 0.6,
        held_share: float = 0.6,
        rollback: float = 0.2,
        pause: float = 0.02,
        runs_per_unit: int = 1,
        rate: float | None = None,
    ) -> None:
        self.log = log
        self.app: AutomationApp = log.app
        self.max_hold = max_hold
        self.held_share = held_share
        self.rollback = rollback
        self.pause = pause
        self.runs_per_unit = runs_per_unit
        #: Events per second over all threads (None: as fast as the pauses allow).
        self.rate = rate
        self.started = time.monotonic()
        self.stopped: float | None = None
        self.figures = CommitterFigures()
        self.stop_event = threading.Event()
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._commits = 0
        self._seeds = [rng.randrange(2**32) for _ in range(threads)]
        self._threads = [
            threading.Thread(target=self._write, args=(seed,), daemon=True) for seed in self._seeds
        ]
        self._insert = sql.SQL(
            "INSERT INTO {} (originator_id, originator_version, topic, state) "
            "VALUES (%s, %s, %s, %s) RETURNING notification_id"
        ).format(events_table(log))

    def unit(self, rng: random.Random, index: int) -> list[Any]:
        """A workflow and its runs, played to their ends: their pending domain events."""
        plan = plan_workflow(index, rng)
        workflow = build_workflow(plan, source="reliability")
        events: list[Any] = list(workflow.collect_events())
        for _ in range(self.runs_per_unit):
            builder = RunBuilder(workflow, plan_run(plan, rng, source="reliability"))
            while not builder.done:
                events.extend(builder.play().collect_events())
        return events

    def _write(self, seed: int) -> None:
        rng = random.Random(seed)
        written = 0
        share = None if self.rate is None else self.rate / len(self._threads)
        try:
            with connect(self.log, autocommit=False) as conn:
                index = 0
                while not self.stop_event.is_set():
                    index += 1
                    stored = [self.app.mapper.to_stored_event(e) for e in self.unit(rng, index)]
                    positions: list[int] = []
                    for event in stored:
                        [[position]] = conn.execute(
                            self._insert,
                            (
                                event.originator_id,
                                event.originator_version,
                                event.topic,
                                event.state,
                            ),
                        ).fetchall()
                        positions.append(int(position))
                    hold = rng.uniform(0, self.max_hold) if rng.random() < self.held_share else 0
                    self.stop_event.wait(hold)
                    # Each thread's second transaction is rolled back whatever the draw
                    # (when rollbacks are on): every trial has a hole for good.
                    forced = self.rollback > 0 and index == 2
                    committed = not forced and rng.random() >= self.rollback
                    # The commit and its order are taken under one lock: the order is
                    # the order in which transactions became visible.
                    with self._lock:
                        if committed:
                            conn.commit()
                        else:
                            conn.rollback()
                        self._commits += 1
                        self.figures.units.append(
                            Unit(positions, hold, committed, commit_order=self._commits)
                        )
                    written += len(positions)
                    if share is None:
                        self.stop_event.wait(self.pause)
                    else:  # paced: this thread's share of the rate, on average
                        due = self.started + written / share
                        self.stop_event.wait(max(self.pause, due - time.monotonic()))
        except BaseException as exc:
            self.errors.append(exc)

    def wait_for(self, units: int, *, timeout: float = CEILING) -> None:
        deadline = time.monotonic() + timeout
        while len(self.figures.committed) < units:
            assert not self.errors, self.errors
            assert time.monotonic() < deadline, f"writers made fewer than {units} units"
            time.sleep(0.01)

    def __enter__(self) -> OutOfOrderCommitters:
        self.started = time.monotonic()
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        for thread in self._threads:
            thread.join(CEILING)
        self.stopped = time.monotonic()
        assert not self.errors, self.errors

    @property
    def events_per_second(self) -> float:
        """The rate the committed events were written at."""
        elapsed = (self.stopped or time.monotonic()) - self.started
        return self.figures.events / elapsed if elapsed > 0 else 0.0

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- checks in the database ---------------------------------------------------------------


@dataclass
class Accounting:
    """A build checked against the clean fold: events it should hold, and what differs."""

    events: int
    losses: int
    duplicates: int
    detail: list[str]


def query(
    log: Log, template: str, params: Sequence[Any] = (), **tables: str
) -> list[tuple[Any, ...]]:
    """Plain SQL on either backend: ``{name}`` slots are the tables given (quoted, in the
    log's schema on PostgreSQL), ``{events}`` the events table (``position`` is its
    notification id), ``%s`` the parameters."""
    if isinstance(log.backend, PostgresBackend):
        schema = log.settings.postgres_schema
        identifiers: dict[str, Any] = {k: sql.Identifier(schema, v) for k, v in tables.items()}
        identifiers["events"] = sql.SQL("(SELECT notification_id AS position, * FROM {}) e").format(
            events_table(log)
        )
        with connect(log) as conn:
            return [tuple(r) for r in conn.execute(sql.SQL(template).format(**identifiers), params)]
    names = {k: f'"{v}"' for k, v in tables.items()}
    names["events"] = "(SELECT rowid AS position, * FROM stored_events) e"
    with contextlib.closing(sqlite3.connect(log.settings.sqlite_path, timeout=60)) as conn:
        rows = conn.execute(template.format(**names).replace("%s", "?"), list(params))
        return [tuple(r) for r in rows.fetchall()]


def committed_positions(log: Log) -> list[int]:
    return [int(r[0]) for r in query(log, "SELECT position FROM {events} ORDER BY position")]


def handled_events(log: Log, projection: type[Projection], upto: int) -> int:
    """Stored events of the projection's topics at positions <= ``upto`` (SQL)."""
    topics = sorted(projection.topics)
    marks = ", ".join(["%s"] * len(topics))
    [[count]] = query(
        log,
        f"SELECT count(*) FROM {{events}} WHERE position <= %s AND topic IN ({marks})",
        [upto, *topics],
    )
    return int(count)


def checkpoints(log: Log, projection: str, build: int) -> list[tuple[int, int, int, int]]:
    """(partition_index, position, events_applied, events_parked) of a build (SQL)."""
    rows = query(
        log,
        "SELECT partition_index, position, events_applied, events_parked FROM {positions} "
        "WHERE projection = %s AND build = %s ORDER BY partition_index",
        [projection, build],
        positions=POSITIONS_TABLE,
    )
    return [(int(a), int(b), int(c), int(d)) for a, b, c, d in rows]


def builds(log: Log, projection: str) -> dict[int, str]:
    """Build -> status, from the builds registry (SQL)."""
    rows = query(
        log,
        "SELECT build, status FROM {builds} WHERE projection = %s",
        [projection],
        builds=BUILDS_TABLE,
    )
    return {int(b): str(s) for b, s in rows}


def live_build(log: Log, projection: str) -> int | None:
    live = [b for b, status in builds(log, projection).items() if status == "live"]
    assert len(live) <= 1, f"{projection} has builds {live} live at once"
    return live[0] if live else None


def table_rows(log: Log, projection: str, table: str, build: int) -> list[dict[str, Any]]:
    """A projection table's rows straight from its physical table (SQL)."""
    cls = {t.name: t for t in PROJECTIONS[projection].tables}[table]
    columns = [*cls.key_names, *cls.value_names]
    listed = ", ".join(f'"{c}"' for c in columns)
    rows = query(
        log,
        f"SELECT {listed} FROM {{table}}",
        table=physical_table_name(projection, table, build),
    )
    return [dict(zip(columns, row, strict=True)) for row in rows]


def topic_count(envelopes: Sequence[Envelope], *classes: type[Any]) -> int:
    topics = {get_topic(c) for c in classes}
    return sum(1 for e in envelopes if e.topic in topics)


def account(log: Log, projection: type[Projection], build: int, actual: Any) -> Accounting:
    """Check build ``build`` of ``projection`` against the clean fold, in the database.

    Its partitions must sit at one position P, no event parked; the fold is of the stored
    events up to P. Losses and duplicates are counted three ways, each from SQL: the
    build's ``events_applied`` against the stored events it handles up to P; each counter
    column's total against the fold's; rows missing or extra. ``actual`` is the build's
    rows as the store decodes them (``table_state``), compared whole with the fold.
    """
    marks = checkpoints(log, projection.name, build)
    assert marks, f"build {build} of {projection.name} has no positions"
    positions = {p for _, p, _, _ in marks}
    assert len(positions) == 1, f"build {build} is not at one position: {marks}"
    (upto,) = positions
    parked = sum(m[3] for m in marks)
    applied = sum(m[2] for m in marks)
    should = handled_events(log, projection, upto)
    losses = max(0, should - applied - parked)
    duplicates = max(0, applied + parked - should)
    detail: list[str] = []
    # ``events_parked`` counts the events ever parked (a redrive applies them later
    # without moving it): what must be none is a parked event still unresolved.
    [[waiting]] = query(
        log,
        "SELECT count(*) FROM {parked} WHERE projection = %s AND build = %s "
        "AND resolved_at IS NULL",
        [projection.name, build],
        parked=PARKED_TABLE,
    )
    if waiting:
        detail.append(f"{waiting} event(s) parked, unresolved")
    if should != applied + parked:
        detail.append(f"events_applied {applied} + parked {parked} != {should} stored")
    envelopes = [e for e in log.envelopes() if (e.position or 0) <= upto]
    expected = EXPECTED[projection.name](envelopes)
    for table, columns in COUNTERS.get(projection.name, {}).items():
        rows = table_rows(log, projection.name, table, build)
        fold = expected[table]
        missing = len(fold) - len(rows)
        if missing > 0:
            losses += missing
            detail.append(f"{table}: {missing} row(s) missing")
        elif missing < 0:
            duplicates += -missing
            detail.append(f"{table}: {-missing} row(s) more than the fold")
        for column in columns:
            got = sum(r[column] or 0 for r in rows)
            want = sum(r[column] or 0 for r in fold.values())
            if got < want:
                losses += want - got
                detail.append(f"{table}.{column}: {got} < {want}")
            elif got > want:
                duplicates += got - want
                detail.append(f"{table}.{column}: {got} > {want}")
    if actual != expected:
        detail.append("rows differ from the clean fold")
        if not losses and not duplicates:
            losses += 1  # a difference the counters do not see is still a wrong state
    return Accounting(events=should, losses=losses, duplicates=duplicates, detail=detail)


@dataclass
class LagSampler:
    """Samples, in the database, how far a live build's position is behind the head of
    the committed log (in positions), every ``interval`` seconds, in its own thread."""

    log: Log
    projection: str
    interval: float = 0.05
    samples: list[int] = field(default_factory=list)
    heads: list[tuple[float, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.errors: list[BaseException] = []

    def _run(self) -> None:
        positions = sql.Identifier(self.log.settings.postgres_schema, POSITIONS_TABLE)
        builds = sql.Identifier(self.log.settings.postgres_schema, "safereplay_projection_builds")
        query = sql.SQL(
            "SELECT (SELECT coalesce(max(notification_id), 0) FROM {events}), "
            "(SELECT min(p.position) FROM {positions} p JOIN {builds} b "
            "ON b.projection = p.projection AND b.build = p.build "
            "WHERE b.projection = %s AND b.status = 'live')"
        ).format(events=events_table(self.log), positions=positions, builds=builds)
        try:
            with connect(self.log) as conn:
                while not self._stop.is_set():
                    [[head, position]] = conn.execute(query, (self.projection,)).fetchall()
                    if position is not None:
                        self.samples.append(max(0, int(head) - int(position)))
                        self.heads.append((time.monotonic(), int(head)))
                    self._stop.wait(self.interval)
        except BaseException as exc:
            self.errors.append(exc)

    def __enter__(self) -> LagSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(CEILING)

    @property
    def maximum(self) -> int:
        return max(self.samples, default=0)

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else 0.0


__all__ = [
    "CEILING",
    "Accounting",
    "LagSampler",
    "OutOfOrderCommitters",
    "Run",
    "Workflow",
    "account",
    "checkpoints",
    "committed_positions",
    "connect",
    "handled_events",
    "live_build",
    "table_rows",
    "topic_count",
]

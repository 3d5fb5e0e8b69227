"""Helpers for the projection and runner tests: isolated logs per backend, a
reference workload generator, a kitchen-sink test projection and plain folds.

Each :class:`Log` is an event store plus the projection store next to it, fresh
for one test or one Hypothesis example: a new SQLite file, or a new PostgreSQL
schema (dropped afterwards).
"""

from __future__ import annotations

import contextlib
import sqlite3
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from eventsourcing.utils import get_topic
from hypothesis import strategies as st
from psycopg import sql

from safereplay.domain import AutomationApp, DomainSettings, Envelope
from safereplay.domain.automation import Run, Workflow
from safereplay.projections import (
    BatchState,
    EventSource,
    ParkedEvent,
    Partition,
    PostgresEventSource,
    PostgresProjectionStore,
    Projection,
    ProjectionRunner,
    ProjectionStore,
    RunnerOptions,
    SQLiteEventSource,
    SQLiteProjectionStore,
    Table,
    handles,
)
from safereplay.projections.source import ReadAheadMode


class Crash(BaseException):
    """An injected crash: not an Exception, so nothing in the runner swallows it."""


# -- logs per backend ------------------------------------------------------------------------


class Log:
    """One event store and the projection store beside it."""

    def __init__(
        self,
        backend: Backend,
        settings: DomainSettings,
        app_class: type[AutomationApp] = AutomationApp,
    ) -> None:
        self.backend = backend
        self.settings = settings
        self.app = app_class(settings)
        self._closers: list[Any] = [self.app]

    @property
    def name(self) -> str:
        return self.backend.name

    def store(self) -> ProjectionStore:
        store = self.backend.new_store(self.settings)
        self._closers.append(store)
        return store

    def source(self, **options: Any) -> EventSource:
        source = self.backend.new_source(self.settings, self.app, **options)
        self._closers.append(source)
        return source

    def runner(
        self,
        projection: Projection,
        *,
        store: ProjectionStore | None = None,
        source: EventSource | None = None,
        batch_size: int = 100,
        read_ahead: ReadAheadMode | None = None,
        **kwargs: Any,
    ) -> ProjectionRunner:
        options = kwargs.pop(
            "options",
            RunnerOptions(
                batch_size=batch_size,
                read_ahead=read_ahead,
                poll_interval=0.005,
                max_poll_interval=0.05,
                repoll_interval=0.2,
                retry_initial=0.01,
                retry_max=0.1,
                give_up_after=20,
            ),
        )
        return ProjectionRunner(
            projection,
            source=source or self.source(),
            store=store or self.store(),
            options=options,
            **kwargs,
        )

    def envelopes(self) -> list[Envelope]:
        return self.app.read(after=0, limit=10**9)

    def close(self) -> None:
        for closer in reversed(self._closers):
            with contextlib.suppress(Exception):
                closer.close()
        self._closers.clear()


class Backend:
    name: str

    def log(self, app_class: type[AutomationApp] = AutomationApp, **overrides: Any) -> Log:
        raise NotImplementedError

    def new_store(self, settings: DomainSettings) -> ProjectionStore:
        raise NotImplementedError

    def new_source(
        self, settings: DomainSettings, app: AutomationApp, **options: Any
    ) -> EventSource:
        raise NotImplementedError

    @contextlib.contextmanager
    def fresh(
        self, app_class: type[AutomationApp] = AutomationApp, **overrides: Any
    ) -> Iterator[Log]:
        log = self.log(app_class, **overrides)
        try:
            yield log
        finally:
            log.close()
            self.release(log)

    def release(self, log: Log) -> None:
        pass

    def close(self) -> None:
        pass


class SQLiteBackend(Backend):
    name = "sqlite"

    def __init__(self, directory: Path, key_file: Path) -> None:
        self.directory = directory
        self.key_file = key_file

    def log(self, app_class: type[AutomationApp] = AutomationApp, **overrides: Any) -> Log:
        values: dict[str, Any] = {
            "backend": "sqlite",
            "sqlite_path": self.directory / f"events-{uuid.uuid4().hex[:8]}.db",
            "key_file": self.key_file,
        }
        values.update(overrides)
        return Log(self, DomainSettings.from_env(**values), app_class)

    def new_store(self, settings: DomainSettings) -> ProjectionStore:
        return SQLiteProjectionStore(settings.sqlite_path)

    def new_source(
        self, settings: DomainSettings, app: AutomationApp, **options: Any
    ) -> EventSource:
        return SQLiteEventSource(settings.sqlite_path, mapper=app.envelope_mapper, **options)

    def release(self, log: Log) -> None:
        for path in self.directory.glob(f"{log.settings.sqlite_path.name}*"):
            path.unlink()


class PostgresBackend(Backend):
    name = "postgres"

    def __init__(self, dsn: str, key_file: Path) -> None:
        self.dsn = dsn
        self.key_file = key_file
        self.schemas: list[str] = []
        #: Prefix of this test's connection names: tests kill their own connections only.
        self.app_name = f"srtest-{uuid.uuid4().hex[:8]}"

    def connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.dsn, autocommit=True)

    def log(self, app_class: type[AutomationApp] = AutomationApp, **overrides: Any) -> Log:
        schema = f"p_{uuid.uuid4().hex[:12]}"
        with self.connect() as conn:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        self.schemas.append(schema)
        values: dict[str, Any] = {
            "backend": "postgres",
            "postgres_dsn": self.dsn,
            "postgres_schema": schema,
            "key_file": self.key_file,
        }
        values.update(overrides)
        return Log(self, DomainSettings.from_env(**values), app_class)

    def new_store(self, settings: DomainSettings) -> ProjectionStore:
        return PostgresProjectionStore(
            self.dsn, schema=settings.postgres_schema, application_name=self.app_name
        )

    def new_source(
        self, settings: DomainSettings, app: AutomationApp, **options: Any
    ) -> EventSource:
        options.setdefault("hole_wait", 0.05)
        options.setdefault("application_name", self.app_name)
        return PostgresEventSource(
            self.dsn,
            schema=settings.postgres_schema,
            table=f"{settings.application_name}_events",
            mapper=app.envelope_mapper,
            **options,
        )

    def release(self, log: Log) -> None:
        schema = log.settings.postgres_schema
        with self.connect() as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
        self.schemas.remove(schema)

    def close(self) -> None:
        with self.connect() as conn:
            for schema in self.schemas:
                conn.execute(
                    sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
                )
        self.schemas.clear()


# -- the stored rows themselves, as someone with database access sees them ---------------------


def events_table(log: Log) -> sql.Identifier:
    """The PostgreSQL events table of a log's application."""
    settings = log.settings
    return sql.Identifier(settings.postgres_schema, f"{settings.application_name}_events")


def stored_state(log: Log, position: int) -> bytes:
    """One stored row's state (sealed bytes), read straight from the table."""
    if isinstance(log.backend, PostgresBackend):
        query = sql.SQL("SELECT state FROM {} WHERE notification_id = %s").format(events_table(log))
        with log.backend.connect() as conn:
            row = conn.execute(query, (position,)).fetchone()
            assert row is not None
            return bytes(row[0])
    with closing(sqlite3.connect(log.settings.sqlite_path)) as conn:
        (state,) = conn.execute(
            "SELECT state FROM stored_events WHERE rowid = ?", (position,)
        ).fetchone()
        return bytes(state)


def write_state(log: Log, position: int, state: bytes) -> None:
    """Overwrite one row's stored state, as someone with database access would."""
    if isinstance(log.backend, PostgresBackend):
        query = sql.SQL("UPDATE {} SET state = %s WHERE notification_id = %s").format(
            events_table(log)
        )
        with log.backend.connect() as conn:
            conn.execute(query, (state, position))
        return
    with closing(sqlite3.connect(log.settings.sqlite_path)) as conn, conn:
        conn.execute("UPDATE stored_events SET state = ? WHERE rowid = ?", (state, position))


# -- one contract, run on each backend -------------------------------------------------------


class OnSQLite:
    """Mixin: the contract's ``backend`` is a SQLite file per log (list it first)."""

    @pytest.fixture
    def backend(self, tmp_path: Path, key_file: Path) -> Iterator[Backend]:
        backend = SQLiteBackend(tmp_path, key_file)
        yield backend
        backend.close()


class OnPostgres:
    """Mixin: the contract's ``backend`` is a PostgreSQL schema per log (list it first)."""

    @pytest.fixture
    def backend(self, postgres_dsn: str, key_file: Path) -> Iterator[Backend]:
        backend = PostgresBackend(postgres_dsn, key_file)
        yield backend
        backend.close()


# -- a workload from abstract operations --------------------------------------------------------

#: One abstract command: (kind, index, flag). ``index`` picks a workflow or run
#: (modulo how many can take the command); missing prerequisites are recorded
#: first (a workflow is created, given a step and published before a run starts).
Op = tuple[str, int, int]

OPS = st.lists(
    st.tuples(
        st.sampled_from(
            [
                *("workflow", "step", "publish", "archive"),
                *("run", "run", "ok", "ok", "fail", "retry", "done"),
            ]
        ),
        st.integers(0, 7),
        st.integers(0, 2),
    ),
    min_size=3,
    max_size=50,
)


class _Player:
    def __init__(self, app: AutomationApp, source: str) -> None:
        self.app = app
        self.source = source
        self.workflows: list[dict[str, Any]] = []
        self.running: list[str] = []
        self.recorded = 0

    def submit(self, message: dict[str, Any]) -> str:
        aggregate = str(self.app.submit(message, source=self.source))
        self.recorded += 1
        return aggregate

    def create(self) -> dict[str, Any]:
        n = len(self.workflows)
        workflow_id = self.submit(
            {
                "type": "CreateWorkflow",
                "name": f"Workflow {n}",
                "owner": "ops@example.com",
                "trigger": {"kind": "webhook", "path": f"/hooks/{n}"},
            }
        )
        self.workflows.append(
            {"id": workflow_id, "steps": 0, "published": False, "archived": False}
        )
        return self.workflows[-1]

    def workflow(self, index: int) -> dict[str, Any]:
        active = [w for w in self.workflows if not w["archived"]]
        return active[index % len(active)] if active else self.create()

    def step(self, workflow: dict[str, Any], index: int) -> None:
        workflow["steps"] += 1
        self.submit(
            {
                "type": "AddStep",
                "workflow_id": workflow["id"],
                "step_name": f"s{workflow['steps']}",
                "action": "http.request",
                "config": {"url": "https://example.com", "n": index},
                "timeout_seconds": 10 + 5 * index,
            }
        )

    def publish(self, workflow: dict[str, Any], index: int) -> None:
        if not workflow["steps"]:
            self.step(workflow, index)
        self.submit({"type": "PublishWorkflow", "workflow_id": workflow["id"], "note": "go"})
        workflow["published"] = True

    def run(self, index: int) -> str:
        if not self.running or index % 3 == 0:
            workflow = self.workflow(index)
            if not workflow["published"]:
                self.publish(workflow, index)
            self.running.append(
                self.submit(
                    {
                        "type": "StartRun",
                        "workflow_id": workflow["id"],
                        "started_by": "webhook",
                        "trigger_payload": {"n": index},
                    }
                )
            )
        return self.running[index % len(self.running)]

    def play(self, kind: str, index: int, flag: int) -> None:
        if kind == "workflow":
            self.create()
        elif kind == "step":
            self.step(self.workflow(index), index)
        elif kind == "publish":
            self.publish(self.workflow(index), index)
        elif kind == "archive":
            workflow = self.workflow(index)
            self.submit({"type": "ArchiveWorkflow", "workflow_id": workflow["id"], "reason": "old"})
            workflow["archived"] = True
        elif kind == "run":
            self.run(index + 3 - index % 3)  # a new run
        else:
            run = self.run(index)
            if kind == "ok":
                self.submit(
                    {
                        "type": "StepSucceeded",
                        "run_id": run,
                        "step_name": f"s{index}",
                        "attempt": 1 + flag,
                        "duration_ms": 10 * index,
                        "output": {"status": 200},
                    }
                )
            elif kind == "fail":
                self.submit(
                    {
                        "type": "StepFailed",
                        "schema_version": 2,
                        "run_id": run,
                        "step_name": f"s{index}",
                        "attempt": 1 + flag,
                        "duration_ms": 7 * index,
                        "error_code": ["HTTP_502", "RATE_LIMITED", "AUTH_EXPIRED"][flag],
                        "error_message": "upstream said no",
                        "retryable": flag != 2,
                    }
                )
            elif kind == "retry":
                self.submit(
                    {
                        "type": "StepRetried",
                        "run_id": run,
                        "step_name": f"s{index}",
                        "attempt": 2 + flag,
                        "delay_ms": 1000,
                    }
                )
            else:
                self.submit(
                    {
                        "type": "CompleteRun",
                        "run_id": run,
                        "status": ["succeeded", "failed", "cancelled"][flag],
                        "duration_ms": 100 * index,
                    }
                )
                self.running.remove(run)


def play(app: AutomationApp, ops: Sequence[Op], *, source: str = "test") -> int:
    """Record ``ops`` through the validated edge; returns how many events were recorded."""
    player = _Player(app, source)
    for kind, index, flag in ops:
        player.play(kind, index, flag)
    return player.recorded


# -- a projection exercising every kind of write --------------------------------------------------


class Catalog(Projection):
    """Workflows with read-modify-write (get then put), merges of every kind, deletes."""

    name = "catalog"
    version = 1
    tables = (
        Table(
            "workflows",
            key={"workflow_id": "text"},
            values={
                "name": "text",
                "steps": "json",
                "step_count": "integer",
                "revision": "integer",
                "published": "boolean",
                "created_at": "timestamp",
                "min_timeout": "integer",
                "max_timeout": "integer",
                "weight": "real",
                "last_change": "timestamp",
            },
        ),
    )

    @handles(Workflow.Created)
    def created(self, envelope: Envelope, state: BatchState) -> None:
        state.put(
            "workflows",
            envelope.aggregate_id,
            {
                "name": envelope.payload["name"],
                "steps": [],
                "step_count": 0,
                "published": False,
                "created_at": envelope.occurred_at,
            },
        )

    @handles(Workflow.StepAdded)
    def step_added(self, envelope: Envelope, state: BatchState) -> None:
        row = state.get("workflows", envelope.aggregate_id)
        assert row is not None
        row["steps"] = [*row["steps"], envelope.payload["step_name"]]
        row["step_count"] += 1
        state.put("workflows", envelope.aggregate_id, row)
        timeout = envelope.payload["timeout_seconds"]
        state.merge(
            "workflows",
            envelope.aggregate_id,
            minimum={"min_timeout": timeout},
            maximum={"max_timeout": timeout, "last_change": envelope.occurred_at},
            add={"weight": 0.5},
        )

    @handles(Workflow.Published)
    def published(self, envelope: Envelope, state: BatchState) -> None:
        state.merge(
            "workflows",
            envelope.aggregate_id,
            set={"revision": envelope.payload["revision"], "published": True},
            maximum={"last_change": envelope.occurred_at},
        )

    @handles(Workflow.Archived)
    def archived(self, envelope: Envelope, state: BatchState) -> None:
        state.delete("workflows", envelope.aggregate_id)


def parked_event(
    *,
    projection: str,
    position: int,
    partition: Partition,
    aggregate_id: uuid.UUID,
    aggregate_version: int = 1,
    error_type: str = "ValueError",
    error_message: str = "bad",
    attempts: int = 1,
    reason: str = "poison",
    blocked_by: int | None = None,
    seen_at: datetime | None = None,
) -> ParkedEvent:
    """A ``Run.Started`` of build 1 set aside by the failure policy, first and last seen
    at ``seen_at`` (now by default): what a run parks, without running one."""
    seen = seen_at or datetime.now(UTC)
    return ParkedEvent(
        projection=projection,
        build=1,
        position=position,
        partition=partition,
        aggregate_id=aggregate_id,
        aggregate_version=aggregate_version,
        topic="safereplay.domain.automation:Run.Started",
        event_type="Run.Started",
        error_type=error_type,
        error_message=error_message,
        attempts=attempts,
        first_seen_at=seen,
        last_seen_at=seen,
        reason=reason,
        blocked_by=blocked_by,
    )


def topic(cls: type[Any]) -> str:
    return get_topic(cls)


# -- plain folds: what each projection's tables must hold ------------------------------------------


Rows = dict[tuple[Any, ...], dict[str, Any]]


def fold_run_status(envelopes: Sequence[Envelope]) -> Rows:
    rows: Rows = {}
    for e in envelopes:
        key = (str(e.aggregate_id),)
        if e.topic == topic(Run.Started):
            rows[key] = {
                "run_id": key[0],
                "workflow_id": str(e.payload["workflow_id"]),
                "status": "running",
                "steps_succeeded": 0,
                "failures": 0,
                "last_error_code": None,
                "updated_at": e.occurred_at,
            }
        elif e.topic == topic(Run.StepSucceeded):
            rows[key]["steps_succeeded"] += 1
            rows[key]["updated_at"] = e.occurred_at
        elif e.topic == topic(Run.StepFailed):
            rows[key]["failures"] += 1
            rows[key]["last_error_code"] = e.payload["error_code"]
            rows[key]["updated_at"] = e.occurred_at
        elif e.topic == topic(Run.Completed):
            rows[key]["status"] = e.payload["status"]
            rows[key]["updated_at"] = e.occurred_at
    return rows


def fold_workflow_stats(envelopes: Sequence[Envelope]) -> dict[str, Rows]:
    workflows: Rows = {}
    run_workflow: dict[str, str] = {}
    counters = (
        "runs_started",
        "runs_succeeded",
        "runs_failed",
        "runs_cancelled",
        "step_failures",
        "retries",
        "total_duration_ms",
    )

    def row(workflow_id: str) -> dict[str, Any]:
        return workflows.setdefault(
            (workflow_id,),
            {"workflow_id": workflow_id, "name": None, "last_run_at": None}
            | dict.fromkeys(counters, None),
        )

    def add(workflow_id: str, column: str, amount: int) -> None:
        current = row(workflow_id)
        current[column] = (current[column] or 0) + amount

    for e in envelopes:
        run = str(e.aggregate_id)
        if e.topic == topic(Workflow.Created):
            current = row(run)
            current["name"] = e.payload["name"]
            for column in counters:
                current[column] = current[column] or 0
        elif e.topic == topic(Run.Started):
            workflow_id = str(e.payload["workflow_id"])
            run_workflow[run] = workflow_id
            add(workflow_id, "runs_started", 1)
            current = row(workflow_id)
            if current["last_run_at"] is None or e.occurred_at > current["last_run_at"]:
                current["last_run_at"] = e.occurred_at
        elif e.topic == topic(Run.StepFailed):
            add(run_workflow[run], "step_failures", 1)
        elif e.topic == topic(Run.StepRetried):
            add(run_workflow[run], "retries", 1)
        elif e.topic == topic(Run.Completed):
            add(run_workflow[run], "total_duration_ms", int(e.payload["duration_ms"]))
            add(run_workflow[run], f"runs_{e.payload['status']}", 1)
    return {
        "workflows": workflows,
        "run_workflows": {(r,): {"run_id": r, "workflow_id": w} for r, w in run_workflow.items()},
    }


def fold_failed_steps(envelopes: Sequence[Envelope]) -> Rows:
    rows: Rows = {}
    for e in envelopes:
        if e.topic == topic(Run.StepFailed):
            key = (str(e.aggregate_id), e.payload["step_name"], e.payload["attempt"])
            rows[key] = {
                "run_id": key[0],
                "step_name": key[1],
                "attempt": key[2],
                "error_code": e.payload["error_code"],
                "error_message": e.payload["error_message"],
                "retryable": e.payload["retryable"],
                "duration_ms": e.payload["duration_ms"],
                "failed_at": e.occurred_at,
            }
    return rows


def fold_catalog(envelopes: Sequence[Envelope]) -> Rows:
    rows: Rows = {}
    for e in envelopes:
        key = (str(e.aggregate_id),)
        if e.topic == topic(Workflow.Created):
            rows[key] = {
                "workflow_id": key[0],
                "name": e.payload["name"],
                "steps": [],
                "step_count": 0,
                "revision": None,
                "published": False,
                "created_at": e.occurred_at,
                "min_timeout": None,
                "max_timeout": None,
                "weight": None,
                "last_change": None,
            }
        elif e.topic == topic(Workflow.StepAdded) and key in rows:
            row = rows[key]
            timeout = e.payload["timeout_seconds"]
            row["steps"] = [*row["steps"], e.payload["step_name"]]
            row["step_count"] += 1
            row["min_timeout"] = min(timeout, row["min_timeout"] or timeout)
            row["max_timeout"] = max(timeout, row["max_timeout"] or timeout)
            row["weight"] = (row["weight"] or 0) + 0.5
            row["last_change"] = max(e.occurred_at, row["last_change"] or e.occurred_at)
        elif e.topic == topic(Workflow.Published) and key in rows:
            rows[key]["revision"] = e.payload["revision"]
            rows[key]["published"] = True
            rows[key]["last_change"] = max(e.occurred_at, rows[key]["last_change"] or e.occurred_at)
        elif e.topic == topic(Workflow.Archived):
            rows.pop(key, None)
    return rows


#: Projection class -> (table -> plain fold of the log).
EXPECTED: dict[str, Callable[[Sequence[Envelope]], dict[str, Rows]]] = {
    "run_status": lambda es: {"runs": fold_run_status(es)},
    "workflow_stats": fold_workflow_stats,
    "failed_steps": lambda es: {"failures": fold_failed_steps(es)},
    "catalog": lambda es: {"workflows": fold_catalog(es)},
}


def table_state(store: ProjectionStore, projection: type[Projection]) -> dict[str, Rows]:
    """Every table of a projection, rows keyed by their key tuple."""
    return {
        table.name: {
            tuple(row[k] for k in table.key_names): row
            for row in store.rows(projection, table.name)
        }
        for table in projection.tables
    }


def handled_count(projection: type[Projection], envelopes: Sequence[Envelope]) -> int:
    return sum(1 for e in envelopes if e.topic in projection.topics)


# -- batches of row operations and their meaning ----------------------------------------------

ROWS_TABLE = Table(
    "t",
    key={"k": "integer"},
    values={"n": "integer", "r": "real", "hi": "integer", "lo": "integer", "s": "text"},
)
Row = dict[str, Any]


def apply_sequentially(rows: dict[int, Row], op: tuple[Any, ...]) -> None:
    """The meaning of one call, on a plain dict (the specification)."""
    kind, key = op[0], op[1]
    if kind == "put":
        rows[key] = {"k": key, "n": None, "r": None, "hi": None, "lo": None, "s": None} | op[2]
    elif kind == "delete":
        rows.pop(key, None)
    elif kind == "merge":
        add, maximum, minimum, sets = op[2:]
        row = rows.setdefault(
            key, {"k": key, "n": None, "r": None, "hi": None, "lo": None, "s": None}
        )
        for column, delta in add.items():
            row[column] = (row[column] or 0) + delta
        for column, value in maximum.items():
            row[column] = value if row[column] is None else max(row[column], value)
        for column, value in minimum.items():
            row[column] = value if row[column] is None else min(row[column], value)
        row.update(sets)


small = st.integers(-5, 5)
keys = st.integers(0, 1)
#: Text a projection can store on every backend: PostgreSQL's text holds no NUL (a
#: NUL-bearing value is refused there, which is not the property these tests state).
storable_text = st.text(st.characters(blacklist_characters="\x00"), max_size=2)


@st.composite
def merge_ops(draw: st.DrawFn) -> tuple[Any, ...]:
    """A merge naming 1-3 distinct columns, each with an operation its type allows."""
    parts: tuple[dict[str, Any], ...] = ({}, {}, {}, {})  # add, maximum, minimum, set
    columns = ["n", "r", "s"]
    for column in draw(st.lists(st.sampled_from(columns), min_size=1, max_size=2, unique=True)):
        if column == "s":
            parts[3][column] = draw(st.one_of(st.none(), storable_text))
            continue
        kind = draw(st.integers(0, 3))
        parts[kind][column] = draw(st.one_of(st.none(), small) if kind == 3 else small)
    return ("merge", draw(keys), *parts)


BATCH_OPS = st.lists(
    st.one_of(
        merge_ops(),
        merge_ops(),
        st.tuples(st.just("put"), keys, st.fixed_dictionaries({"n": small, "s": storable_text})),
        st.tuples(st.just("delete"), keys),
        st.tuples(st.just("get"), keys),
    ),
    max_size=40,
)

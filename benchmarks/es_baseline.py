"""eventsourcing baselines: the library's own way to project, one transaction per event.

- PostgreSQL: eventsourcing's ``ProjectionRunner`` (an ``ApplicationSubscription``
  over LISTEN/NOTIFY, a thread calling ``Projection.process_event``) with a
  ``PostgresTrackingRecorder`` subclass as the view; each event's handler writes
  the run-status row and the tracking record in one transaction, as the
  library's documentation and examples do.
- SQLite: eventsourcing's SQLite recorder cannot ``subscribe()``, so the nearest
  path is a ``NotificationLogReader`` pull loop (topic-filtered sections of 500)
  feeding the same projection, with a ``SQLiteTrackingRecorder`` subclass view.

Both decode through the application's mapper (our ``EnvelopeMapper``: key ring
decrypt, eventsourcing's ``JSONTranscoder``), i.e. what a user of eventsourcing
would get with safereplay's event store.

``BenchApplication`` adapts our settings-based ``EventStoreApplication`` to the
``application_class(env)`` constructor that ``ProjectionRunner`` calls.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from uuid import UUID

from eventsourcing.application import LocalNotificationLog
from eventsourcing.dispatch import singledispatchmethod
from eventsourcing.persistence import InfrastructureFactory, Tracking
from eventsourcing.postgres import PostgresTrackingRecorder
from eventsourcing.projection import Projection, ProjectionRunner
from eventsourcing.sqlite import SQLiteTrackingRecorder
from eventsourcing.system import NotificationLogReader
from eventsourcing.utils import Environment
from psycopg.conninfo import conninfo_to_dict
from psycopg.sql import SQL, Identifier

from benchmarks.dataset import Store
from benchmarks.raw import PG_VIEW_DDL, SQLITE_UPSERT
from benchmarks.shape import TOPICS
from safereplay.domain import AutomationApp, Run

__all__ = ["plain_postgres_environment", "run_es_postgres", "run_es_sqlite"]

PROJECTION_NAME = "esbench"

_PG_VIEW_TABLE = PG_VIEW_DDL.split(";")[0]
_PG_UPSERT_ONE = """
INSERT INTO {schema}.run_status AS t VALUES (%s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (run_id) DO UPDATE SET
    workflow_id = COALESCE(EXCLUDED.workflow_id, t.workflow_id),
    status = COALESCE(EXCLUDED.status, t.status),
    steps_succeeded = t.steps_succeeded + EXCLUDED.steps_succeeded,
    failures = t.failures + EXCLUDED.failures,
    last_error_code = COALESCE(EXCLUDED.last_error_code, t.last_error_code),
    updated_at = EXCLUDED.updated_at
"""


def application_class(store: Store) -> type[AutomationApp]:
    """An ``application_class(env)`` for ``ProjectionRunner`` over ``store``."""
    settings = store.settings()
    key_ring = store.key_ring()

    class BenchApplication(AutomationApp):
        def __init__(self, env: Any = None) -> None:
            super().__init__(settings, key_ring=key_ring)

    return BenchApplication


class PostgresRunStatusView(PostgresTrackingRecorder):
    """The run-status table plus eventsourcing's tracking table, one transaction per event."""

    def __init__(self, datastore: Any, **kwargs: Any) -> None:
        super().__init__(datastore, **kwargs)
        schema = Identifier(self.datastore.schema)
        self.sql_create_statements.append(
            SQL(_PG_VIEW_TABLE.replace("CREATE TABLE", "CREATE TABLE IF NOT EXISTS")).format(
                schema=schema
            )
        )
        self.upsert = SQL(_PG_UPSERT_ONE).format(schema=schema)

    def apply(self, row: tuple[Any, ...], tracking: Tracking) -> None:
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(self.upsert, row, prepare=True)
            self._insert_tracking(curs, tracking)


class SQLiteRunStatusView(SQLiteTrackingRecorder):
    """The same on SQLite."""

    def construct_create_table_statements(self) -> list[str]:
        statements = super().construct_create_table_statements()
        statements.append(
            "CREATE TABLE IF NOT EXISTS run_status (run_id TEXT PRIMARY KEY, workflow_id TEXT, "
            "status TEXT, steps_succeeded INTEGER NOT NULL, failures INTEGER NOT NULL, "
            "last_error_code TEXT, updated_at TEXT)"
        )
        return statements

    def apply(self, row: tuple[Any, ...], tracking: Tracking) -> None:
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(SQLITE_UPSERT, row)
            self._insert_tracking(curs, tracking)


class RunStatusProjection(Projection[Any]):
    """eventsourcing ``Projection``: one handler per event type, one write per event."""

    name = PROJECTION_NAME
    topics = TOPICS
    #: Events after this position are ignored, so a run over a prefix ends exactly there.
    upto: int | None = None
    #: SQLite stores text; PostgreSQL adapts UUID and datetime itself.
    as_text = False

    def _write(self, event: Any, tracking: Tracking, values: tuple[Any, ...]) -> None:
        if self.upto is not None and tracking.notification_id > self.upto:
            return
        run_id: UUID = event.originator_id
        timestamp = event.timestamp
        if self.as_text:
            row = (str(run_id), *values, timestamp.isoformat())
        else:
            row = (run_id, *values, timestamp)
        self.view.apply(row, tracking)

    @singledispatchmethod
    def process_event(self, domain_event: Any, tracking: Tracking) -> None:
        """Events of other types are not consumed."""

    @process_event.register
    def _started(self, domain_event: Run.Started, tracking: Tracking) -> None:
        workflow_id = domain_event.workflow_id
        self._write(
            domain_event,
            tracking,
            (str(workflow_id) if self.as_text else workflow_id, "running", 0, 0, None),
        )

    @process_event.register
    def _succeeded(self, domain_event: Run.StepSucceeded, tracking: Tracking) -> None:
        self._write(domain_event, tracking, (None, None, 1, 0, None))

    @process_event.register
    def _failed(self, domain_event: Run.StepFailed, tracking: Tracking) -> None:
        self._write(domain_event, tracking, (None, None, 0, 1, domain_event.error_code))

    @process_event.register
    def _completed(self, domain_event: Run.Completed, tracking: Tracking) -> None:
        self._write(domain_event, tracking, (None, domain_event.status, 0, 0, None))


def plain_postgres_environment(dsn: str, schema: str) -> dict[str, str]:
    """eventsourcing's own PostgreSQL settings for ``dsn`` (password included): for a
    plain eventsourcing application, as the baseline and the contract tests run."""
    params = conninfo_to_dict(dsn)
    return {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": str(params.get("dbname", "postgres")),
        "POSTGRES_HOST": str(params.get("host", "127.0.0.1")),
        "POSTGRES_PORT": str(params.get("port", "5432")),
        "POSTGRES_USER": str(params.get("user", "postgres")),
        "POSTGRES_PASSWORD": str(params.get("password", "")),
        "POSTGRES_SCHEMA": schema,
    }


def last_topic_position(store: Store, upto: int) -> int:
    from benchmarks.raw import read_batches

    last = 0
    for rows in read_batches(store, after=max(0, upto - 5000), upto=upto, batch_size=10_000):
        last = rows[-1][0]
    return last


def run_es_postgres(store: Store, *, upto: int, view: dict[str, Any]) -> dict[str, Any]:
    """``ProjectionRunner`` from zero until the view has tracked the prefix's last event."""
    target = last_topic_position(store, upto)
    RunStatusProjection.upto = upto
    RunStatusProjection.as_text = False
    env = plain_postgres_environment(store.postgres_dsn, view["schema"])
    started = time.perf_counter()
    runner = ProjectionRunner(
        application_class=application_class(store),
        projection_class=RunStatusProjection,
        view_class=PostgresRunStatusView,
        env=env,
    )
    with runner:
        # Tracking records name the application by its instance name (eventsourcing's:
        # the class's name), not by the store's application name (its tables).
        app_name = runner.app.name
        while (runner.view.max_tracking_id(app_name) or 0) < target:
            if runner.is_interrupted.is_set():
                runner.run_forever(timeout=0)
                raise RuntimeError("eventsourcing ProjectionRunner stopped early")
            time.sleep(0.02)
        elapsed = time.perf_counter() - started
    return {"seconds": elapsed, "batches": None, "split_ms": None}


def run_es_sqlite(store: Store, *, upto: int, view: dict[str, Any]) -> dict[str, Any]:
    """``NotificationLogReader`` pull loop from zero to ``upto``."""
    RunStatusProjection.upto = upto
    RunStatusProjection.as_text = True
    path = Path(view["path"])
    started = time.perf_counter()
    app = application_class(store)()
    factory = InfrastructureFactory.construct(
        env=Environment(
            PROJECTION_NAME,
            {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(path)},
        )
    )
    recorder = factory.tracking_recorder(SQLiteRunStatusView)
    projection = RunStatusProjection(view=recorder)
    reader = NotificationLogReader(LocalNotificationLog(app.recorder, section_size=500), 500)
    start = recorder.max_tracking_id(app.name) or 0
    to_domain_event = app.mapper.to_domain_event
    for notifications in reader.select(
        start=start, stop=upto, topics=TOPICS, inclusive_of_start=False
    ):
        for notification in notifications:
            projection.process_event(
                to_domain_event(notification), Tracking(app.name, notification.id)
            )
    elapsed = time.perf_counter() - started
    app.close()
    factory.close()
    return {"seconds": elapsed, "batches": None, "split_ms": None}

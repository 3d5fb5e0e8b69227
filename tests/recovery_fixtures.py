"""Recovery test helpers: a log with its job store, registry and workers, per backend.

The job store lives in the projection store's database (as in production): the
same SQLite file, or the same PostgreSQL schema.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from projection_fixtures import EXPECTED, Backend, Log, PostgresBackend, table_state

from projections import (
    REFERENCE_PROJECTIONS,
    EventSource,
    Projection,
    ProjectionStore,
    RunnerOptions,
)
from recovery.jobstore import JobStore
from recovery.postgres import PostgresJobStore
from recovery.registry import ProjectionRegistry
from recovery.sqlite import SQLiteJobStore
from recovery.worker import Worker, WorkerOptions

QUICK_RUNNER = RunnerOptions(
    batch_size=50,
    poll_interval=0.005,
    max_poll_interval=0.05,
    repoll_interval=0.2,
    retry_initial=0.01,
    retry_max=0.1,
    give_up_after=20,
)


class Recovery:
    """A log plus what recovery needs: job store, registry, workers."""

    def __init__(
        self, log: Log, projections: Sequence[type[Projection]] = REFERENCE_PROJECTIONS
    ) -> None:
        self.log = log
        self.store: ProjectionStore = log.store()
        self.source: EventSource = log.source()
        self.jobs: JobStore = new_job_store(log)
        self.jobs.create_tables()
        self.registry = ProjectionRegistry.of(projections)

    def worker(self, *, lease_seconds: float = 5.0, **options: Any) -> Worker:
        """A worker with its own connections (as a separate process would have)."""
        store = self.log.store()
        jobs = new_job_store(self.log)
        log = self.log
        return Worker(
            jobs=jobs,
            store=store,
            open_source=log.source,
            registry=self.registry,
            options=WorkerOptions(
                lease_seconds=lease_seconds, idle_interval=0.02, exit_when_idle=True
            ),
            runner_options=options.pop("runner_options", QUICK_RUNNER),
            **options,
        )

    def expected(self, projection: type[Projection]) -> dict[str, Any]:
        return EXPECTED[projection.name](self.log.envelopes())

    def actual(self, projection: type[Projection], build: int | None = None) -> dict[str, Any]:
        if build is None:
            return table_state(self.store, projection)
        return {
            table.name: {
                tuple(row[k] for k in table.key_names): row
                for row in self.store.rows(projection, table.name, build=build)
            }
            for table in projection.tables
        }

    def close(self) -> None:
        self.jobs.close()


def new_job_store(log: Log) -> JobStore:
    if isinstance(log.backend, PostgresBackend):
        return PostgresJobStore(log.backend.dsn, schema=log.settings.postgres_schema)
    return SQLiteJobStore(log.settings.sqlite_path)


@contextmanager
def fresh_recovery(backend: Backend, **overrides: Any) -> Iterator[Recovery]:
    with backend.fresh(**overrides) as log:
        recovery = Recovery(log)
        try:
            yield recovery
        finally:
            recovery.close()

"""Recovery test helpers: a log with its job store, registry and workers, per backend.

The job store lives in the projection store's database (as in production): the
same SQLite file, or the same PostgreSQL schema.
"""

from __future__ import annotations

import multiprocessing
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, ClassVar, TypeVar
from uuid import UUID

import pytest
from eventsourcing.persistence import Notification
from projection_fixtures import (
    EXPECTED,
    Backend,
    Log,
    PostgresBackend,
    table_state,
)

from safereplay.domain import DomainSettings, Envelope, Run
from safereplay.projections import (
    REFERENCE_PROJECTIONS,
    BatchState,
    EventSource,
    Partition,
    Projection,
    ProjectionStore,
    RunnerOptions,
    Table,
    handles,
)
from safereplay.projections.source import WHOLE
from safereplay.recovery.jobs.builds import SwapResult, swap
from safereplay.recovery.jobs.model import Job, JobState, PartitionProgress
from safereplay.recovery.jobs.plans import JobRequest, start_rebuild, start_redrive
from safereplay.recovery.jobs.postgres import PostgresJobStore
from safereplay.recovery.jobs.sqlite import SQLiteJobStore
from safereplay.recovery.jobs.store import JobStore, SQLJobStore
from safereplay.recovery.jobs.worker import Worker, WorkerOptions
from safereplay.recovery.operations.context import RecoveryContext
from safereplay.recovery.registry import ProjectionRegistry
from safereplay.recovery.settings import RecoverySettings

T = TypeVar("T")

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
        self._workers: list[JobStore] = []

    def rebuild(self, projection: str, request: JobRequest) -> Job:
        return start_rebuild(
            request,
            projection=projection,
            store=self.store,
            source=self.source,
            jobs=self.jobs,
            registry=self.registry,
        )

    def first_build(self, projection: type[Projection]) -> None:
        """Build the live build 1 (a live runner's catch-up), so that a rebuild goes
        beside it: a never-built projection's first rebuild is its live build 1."""
        self.log.runner(projection(), store=self.store).catch_up()

    def redrive(self, projection: str, request: JobRequest) -> Job:
        return start_redrive(
            request, projection=projection, store=self.store, jobs=self.jobs, registry=self.registry
        )

    def swap(self, projection: str) -> SwapResult:
        return swap(
            store=self.store,
            source=self.source,
            jobs=self.jobs,
            registry=self.registry,
            projection=projection,
        )

    def job(self, job: Job) -> Job:
        """The job as stored now."""
        return self.jobs.get_job(job.job_id)

    def partitions(self, job: Job) -> list[PartitionProgress]:
        return self.jobs.partitions(job.job_id)

    def applied(self, projection: type[Projection], build: int) -> int:
        """Events a build applied, over all its partitions (a seal carries them over)."""
        return sum(c.events_applied for c in self.store.checkpoints(projection.name, build=build))

    def positions(self, projection: type[Projection], build: int) -> list[int]:
        return [c.position for c in self.store.checkpoints(projection.name, build=build)]

    def worker(self, *, lease_seconds: float = 5.0, **options: Any) -> Worker:
        """A worker with its own connections (as a separate process would have)."""
        store = self.log.store()
        jobs = new_job_store(self.log)
        self._workers.append(jobs)
        log = self.log
        return Worker(
            jobs=jobs,
            store=store,
            open_source=options.pop("open_source", log.source),
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
        for jobs in self._workers:
            jobs.close()
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


# -- one contract, run on each backend -------------------------------------------------------


class RecoveryContract:
    """A contract's tests get a fresh :class:`Recovery` on the class's backend."""

    @pytest.fixture
    def recovery(self, backend: Backend) -> Iterator[Recovery]:
        with fresh_recovery(backend) as recovery:
            yield recovery


def bootstrap_args(name: str) -> list[str]:
    """``principals bootstrap NAME`` with its token file in a new temporary directory
    (the default, ``./NAME.token``, would be the tests' working directory)."""
    token_file = Path(tempfile.mkdtemp(prefix="safereplay-token-")) / f"{name}.token"
    return ["principals", "bootstrap", name, "--token-file", str(token_file)]


def bootstrapped_token(output: str) -> str:
    """The token ``principals bootstrap`` wrote, read from the file its export line names
    (it is never printed)."""
    [line] = [x for x in output.splitlines() if x.startswith("export SAFEREPLAY_TOKEN_FILE=")]
    path = Path(shlex.split(line.removeprefix("export SAFEREPLAY_TOKEN_FILE="))[0])
    return path.read_text(encoding="ascii").strip()


class FakeClock:
    """Time that moves only when a test moves it (or something sleeps on it): pass it as
    the clock and its :meth:`sleep` as the sleep of throttles, breakers and rates."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def cli_process(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``safereplay ARGS`` in a process of its own (as an operator's shell runs it),
    which must succeed."""
    result = subprocess.run(
        [sys.executable, "-m", "safereplay.recovery.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    return result


def seeded_store_env(directory: Path) -> dict[str, str]:
    """The environment of a new ``safereplay init`` store in ``directory`` holding 600
    seeded events, read in batches of 20 (so a job has many batches to be stopped in)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("SAFEREPLAY_")} | {
        "SAFEREPLAY_APPROVAL_REQUIRED": ""
    }
    base["SAFEREPLAY_PROJECTIONS_BATCH_SIZE"] = "20"
    made = cli_process(base, "init", "--dir", str(directory))
    for line in made.stdout.splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        base[name] = shlex.split(value)[0]
    cli_process(base, "seed", "--events", "600", "-r", "events to rebuild")
    return base


def wait_until(
    condition: Callable[[], T | None], *, timeout: float, what: str, interval: float = 0.01
) -> T:
    """Poll ``condition`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def finished(recovery: Recovery, job: Job, *, timeout: float = 60) -> Job:
    """Wait for a job to end (completed, failed or aborted); returns it."""
    ended = (JobState.COMPLETED, JobState.FAILED, JobState.ABORTED)
    return wait_until(
        lambda: now if (now := recovery.job(job)).state in ended else None,
        timeout=timeout,
        what=f"job {job.job_id} to end",
    )


def expire_leases(recovery: Recovery, job: Job, *, by: float) -> None:
    """Move the expiry of a job's leases ``by`` seconds into the past, as if that much
    time had passed (whichever clock wrote them: the database's or this machine's)."""
    assert isinstance(recovery.jobs, SQLJobStore)
    with recovery.jobs.database.transaction(write=True) as tx:
        changed = tx.execute(
            "UPDATE {job_partitions} SET lease_expires_at = lease_expires_at - %(by)s "
            "WHERE job_id = %(job_id)s AND lease_expires_at IS NOT NULL",
            {"by": by, "job_id": str(job.job_id)},
        )
    assert changed > 0, f"job {job.job_id} holds no lease"


# -- a projection that fails on demand --------------------------------------------------------

RUN_TOPICS = (Run.Started, Run.StepSucceeded, Run.StepFailed, Run.StepRetried, Run.Completed)


class RunCounts(Projection):
    """Counts each run's events (a double-applied event shows), failing on demand.

    ``poison``: the runs whose every event fails (a bug in the handler);
    ``flaky``: positions that fail their first ``flaky_failures`` tries (a dependency
    that is down for a moment). Class-level switches: a test flips them to "fix" it.
    """

    name = "run_counts"
    tables = (Table("runs", key={"run_id": "text"}, values={"events": "integer"}),)
    poison: ClassVar[set[UUID]] = set()
    flaky: ClassVar[set[int]] = set()
    flaky_failures: ClassVar[int] = 2
    tries: ClassVar[Counter[int]] = Counter()

    @classmethod
    def reset(
        cls, *, poison: set[UUID] | None = None, flaky: set[int] | None = None, failures: int = 2
    ) -> None:
        cls.poison, cls.flaky, cls.tries = poison or set(), flaky or set(), Counter()
        cls.flaky_failures = failures

    @handles(*RUN_TOPICS)
    def count(self, envelope: Envelope, state: BatchState) -> None:
        assert envelope.position is not None
        RunCounts.tries[envelope.position] += 1
        if envelope.aggregate_id in self.poison:
            raise ValueError(f"cannot project run {envelope.aggregate_id}")
        if envelope.position in self.flaky and self.tries[envelope.position] <= self.flaky_failures:
            raise ConnectionError("the enrichment service is down")
        state.merge("runs", envelope.aggregate_id, add={"events": 1})


def fold_run_counts(envelopes: Sequence[Envelope]) -> dict[str, dict[tuple[Any, ...], Any]]:
    counts = Counter(str(e.aggregate_id) for e in envelopes if e.topic in RunCounts.topics)
    return {"runs": {(run,): {"run_id": run, "events": n} for run, n in counts.items()}}


EXPECTED.setdefault(RunCounts.name, fold_run_counts)


def recovery_of(recovery: Recovery, *projections: type[Projection]) -> Recovery:
    """Let ``recovery`` know ``projections`` (besides the reference ones)."""
    recovery.registry = ProjectionRegistry.of([*REFERENCE_PROJECTIONS, *projections])
    return recovery


class DroppingSource(EventSource):
    """A source whose ``read`` silently loses one notification; ``count`` does not."""

    def __init__(self, inner: EventSource, drop: int) -> None:
        super().__init__(inner.watermark, inner.mapper)
        self.inner = inner
        self.drop = drop

    @property
    def description(self) -> str:
        return f"{self.inner.description} (losing position {self.drop})"

    def head(self) -> int:
        return self.inner.head()

    def read(
        self,
        *,
        after: int,
        upto: int,
        limit: int,
        topics: Sequence[str] = (),
        partition: Partition = WHOLE,
    ) -> list[Notification]:
        found = self.inner.read(
            after=after, upto=upto, limit=limit, topics=topics, partition=partition
        )
        return [n for n in found if n.id != self.drop]

    def count(
        self,
        *,
        after: int,
        upto: int,
        topics: Sequence[str] = (),
        partition: Partition = WHOLE,
    ) -> int:
        return self.inner.count(after=after, upto=upto, topics=topics, partition=partition)

    def close(self) -> None:
        self.inner.close()


# -- workers in their own OS processes ---------------------------------------------------------


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker process needs, picklable: it builds everything else from settings."""

    settings: DomainSettings
    lease_seconds: float = 1.0
    batch_size: int = 10
    #: Seconds slept after each applied event, so that a job lasts long enough to be hit.
    event_delay: float = 0.0
    #: Exit when nothing is claimable; else run until SIGTERM (as ``safereplay worker``).
    exit_when_idle: bool = True
    #: SIGKILL itself right after its Nth batch commit (before it reports anything).
    kill_after_commits: int | None = None


def run_worker_process(spec: WorkerSpec) -> None:
    """A worker process's main: its own context (stores, source, job store) from settings."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    context = RecoveryContext(domain=spec.settings, recovery=RecoverySettings())
    delay = spec.event_delay
    commits = Counter[str]()

    def slow(point: str) -> None:
        if point == "after_event" and delay:
            time.sleep(delay)
        if point == "after_commit" and spec.kill_after_commits is not None:
            commits[point] += 1
            if commits[point] == spec.kill_after_commits:
                os.kill(os.getpid(), signal.SIGKILL)

    worker = Worker(
        jobs=context.jobs,
        store=context.projection_store,
        open_source=lambda: context.source,
        registry=context.registry,
        options=WorkerOptions(
            lease_seconds=spec.lease_seconds,
            idle_interval=0.05,
            exit_when_idle=spec.exit_when_idle,
        ),
        runner_options=replace(QUICK_RUNNER, batch_size=spec.batch_size),
        faults=slow,
    )
    try:
        worker.run(stop)
    finally:
        worker.close()
        context.close()


def worker_pid(partition: PartitionProgress) -> int | None:
    """The OS process holding a partition's lease (worker ids are host:pid:suffix)."""
    if partition.lease_owner is None or partition.status != "running":
        return None
    return int(partition.lease_owner.split(":")[-2])


def kill(process: BaseProcess | int, sig: int = signal.SIGKILL) -> None:
    """Signal one worker process (by its object or its pid; never a group)."""
    pid = process if isinstance(process, int) else process.pid
    assert pid is not None and pid > 0, f"not a started process: {process}"
    os.kill(pid, sig)


SPAWN = multiprocessing.get_context("spawn")


def spawn_worker(recovery: Recovery, **spec: Any) -> BaseProcess:
    """Start a worker in a fresh OS process (``spec``: :class:`WorkerSpec` fields)."""
    process = SPAWN.Process(
        target=run_worker_process,
        args=(WorkerSpec(recovery.log.settings, **spec),),
        daemon=True,
    )
    process.start()
    return process


def operator_cli_env(
    sqlite_cli_env: dict[str, str], *, workflows: int, runs_per_workflow: int, seed: int
) -> dict[str, str]:
    """``sqlite_cli_env`` with a recorded workload and a bootstrapped admin's token."""
    from typer.testing import CliRunner

    from safereplay.domain import AutomationApp
    from safereplay.domain.workload import record_workload
    from safereplay.recovery.cli.app import app

    settings = DomainSettings.from_env(
        backend="sqlite",
        sqlite_path=sqlite_cli_env["SAFEREPLAY_SQLITE_PATH"],
        key_file=sqlite_cli_env["SAFEREPLAY_KEY_FILE"],
    )
    with AutomationApp(settings) as application:
        record_workload(
            application, workflows=workflows, runs_per_workflow=runs_per_workflow, seed=seed
        )
    result = CliRunner().invoke(app, bootstrap_args("root"), env=sqlite_cli_env)
    assert result.exit_code == 0, result.output
    return {**sqlite_cli_env, "SAFEREPLAY_TOKEN": bootstrapped_token(result.output)}


def backend_env(settings: DomainSettings) -> dict[str, str]:
    """The CLI's environment for a store of these settings (no token, no audit key)."""
    env = {"SAFEREPLAY_BACKEND": settings.backend, "SAFEREPLAY_KEY_FILE": str(settings.key_file)}
    if settings.backend == "sqlite":
        return env | {"SAFEREPLAY_SQLITE_PATH": str(settings.sqlite_path)}
    assert settings.postgres_dsn is not None
    return env | {
        "SAFEREPLAY_POSTGRES_DSN": settings.postgres_dsn.get_secret_value(),
        "SAFEREPLAY_POSTGRES_SCHEMA": settings.postgres_schema,
    }


def principals_world(
    settings: DomainSettings, audit_key_file: Path
) -> tuple[RecoveryContext, dict[str, dict[str, str]]]:
    """A recovery context over ``settings`` with three principals, and each one's CLI
    environment: ``admin`` (ada, the first admin), ``viewer`` (vic, a viewer of every
    projection) and ``stranger`` (mallory, no grant)."""
    from safereplay.recovery.operations.catalog import open_operations
    from safereplay.recovery.operations.security import bootstrap_admin

    context = RecoveryContext(
        domain=settings, recovery=RecoverySettings(audit_key_file=audit_key_file)
    )
    admin_token = bootstrap_admin(context, "ada")
    admin = context.access.authenticate(admin_token)
    run = open_operations(context).run
    run(admin, "principals.add", reason="t", name="vic", kind="person")
    run(admin, "grant", reason="t", name="vic", role="viewer", grant_scope="projection:*")
    viewer_token = run(admin, "token.issue", reason="t", name="vic")
    context.access.add_principal("mallory", kind="person", created_by="ada")
    stranger_token = context.access.issue_token("mallory")
    env = backend_env(settings) | {"SAFEREPLAY_AUDIT_KEY_FILE": str(audit_key_file)}
    return context, {
        "admin": env | {"SAFEREPLAY_TOKEN": admin_token},
        "viewer": env | {"SAFEREPLAY_TOKEN": viewer_token},
        "stranger": env | {"SAFEREPLAY_TOKEN": stranger_token},
    }

"""Job store contract: the same tests for SQLite and PostgreSQL."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from safereplay.recovery.errors import (
    InvalidJobTransition,
    InvalidRequest,
    JobConflict,
    JobNotFound,
)
from safereplay.recovery.jobs.model import JobKind, JobState, PartitionStatus
from safereplay.recovery.jobs.postgres import PostgresJobStore
from safereplay.recovery.jobs.sqlite import SQLiteJobStore
from safereplay.recovery.jobs.store import JobStore, LeaseLost, NewJob


def new_job(projection: str = "run_status", partitions: int = 3, **extra: object) -> NewJob:
    return NewJob(
        kind=JobKind.REBUILD,
        projection=projection,
        build=2,
        partition_count=partitions,
        principal="alice",
        reason="projection code fixed",
        target_position=100,
        **extra,  # type: ignore[arg-type]
    )


class JobStoreContract:
    """Every backend must pass these."""

    @pytest.fixture
    def store(self) -> Iterator[JobStore]:
        raise NotImplementedError

    def test_a_new_job_is_planned_with_pending_partitions(self, store: JobStore) -> None:
        job = store.create_job(new_job())
        assert job.state == JobState.PLANNED
        assert job.principal == "alice" and job.reason == "projection code fixed"
        parts = store.partitions(job.job_id)
        assert [p.partition_index for p in parts] == [0, 1, 2]
        assert {p.status for p in parts} == {PartitionStatus.PENDING}

    def test_only_one_active_job_per_projection(self, store: JobStore) -> None:
        first = store.create_job(new_job())
        with pytest.raises(JobConflict, match="run_status.*already has an active job"):
            store.create_job(new_job())
        store.create_job(new_job(projection="other"))
        store.transition(first.job_id, JobState.ABORTED)
        store.create_job(new_job())

    def test_unknown_job_is_a_clear_error(self, store: JobStore) -> None:
        with pytest.raises(JobNotFound):
            store.get_job(uuid.uuid4())

    def test_state_machine_refuses_illegal_transitions(self, store: JobStore) -> None:
        job = store.create_job(new_job())
        store.transition(job.job_id, JobState.RUNNING)
        store.transition(job.job_id, JobState.PAUSED)
        with pytest.raises(InvalidJobTransition, match="paused: cannot become completed"):
            store.transition(job.job_id, JobState.COMPLETED)
        store.transition(job.job_id, JobState.RUNNING)
        store.transition(job.job_id, JobState.ABORTING)
        store.transition(job.job_id, JobState.ABORTED)
        with pytest.raises(InvalidJobTransition, match="has ended"):
            store.transition(job.job_id, JobState.RUNNING)

    def test_claims_hand_out_each_partition_once(self, store: JobStore) -> None:
        job = store.create_job(new_job())
        claims = [store.claim(f"w{i}", lease_seconds=60) for i in range(4)]
        got = [c for c in claims if c is not None]
        assert sorted(c.partition.partition_index for c in got) == [0, 1, 2]
        assert claims[3] is None
        assert store.get_job(job.job_id).state == JobState.RUNNING

    def test_concurrency_cap_limits_live_leases(self, store: JobStore) -> None:
        store.create_job(new_job(max_concurrent_partitions=2))
        assert store.claim("a", lease_seconds=60) is not None
        assert store.claim("b", lease_seconds=60) is not None
        assert store.claim("c", lease_seconds=60) is None

    def test_expired_lease_is_taken_over_and_the_old_worker_is_fenced(
        self, store: JobStore
    ) -> None:
        store.create_job(new_job(partitions=1))
        stale = store.claim("old", lease_seconds=0.0)
        assert stale is not None
        fresh = store.claim("new", lease_seconds=60)
        assert fresh is not None and fresh.partition.partition_index == 0
        assert fresh.token == stale.token + 1
        with pytest.raises(LeaseLost):
            store.report(stale, position=10, events_applied=5)
        with pytest.raises(LeaseLost):
            store.renew(stale, lease_seconds=60)
        store.report(fresh, position=10, events_applied=5)
        assert store.partitions(fresh.job.job_id)[0].position == 10

    def test_progress_rate_and_completion(self, store: JobStore) -> None:
        job = store.create_job(new_job(partitions=2))
        a = store.claim("a", lease_seconds=60)
        b = store.claim("b", lease_seconds=60)
        assert a is not None and b is not None
        store.report(a, position=100, events_applied=40, parked=1, retries=2)
        store.finish_partition(a, succeeded=True)
        assert store.finalize(job.job_id).state == JobState.RUNNING
        store.report(b, position=100, events_applied=60)
        store.finish_partition(b, succeeded=True)
        status = store.status(job.job_id)
        assert status.job.state == JobState.RUNNING
        assert store.finalize(job.job_id).state == JobState.COMPLETED
        assert status.events_applied == 100
        assert status.parked == 1 and status.retries == 2
        assert status.eta_seconds(store.clock()) == 0.0

    def test_failed_partition_fails_the_job_until_retried_alone(self, store: JobStore) -> None:
        job = store.create_job(new_job(partitions=2))
        a = store.claim("a", lease_seconds=60)
        b = store.claim("b", lease_seconds=60)
        assert a is not None and b is not None
        store.finish_partition(a, succeeded=False, error="HandlerFailed at position 42")
        store.finish_partition(b, succeeded=True)
        failed = store.finalize(job.job_id)
        assert failed.state == JobState.FAILED
        assert "partitions failed: [0]" in (failed.error or "")
        with pytest.raises(InvalidRequest):
            store.retry_partition(job.job_id, 1)
        store.retry_partition(job.job_id, 0)
        assert store.get_job(job.job_id).state == JobState.RUNNING
        again = store.claim("c", lease_seconds=60)
        assert again is not None and again.partition.partition_index == 0

    def test_abort_waits_for_leases_to_be_released(self, store: JobStore) -> None:
        job = store.create_job(new_job(partitions=2))
        a = store.claim("a", lease_seconds=60)
        assert a is not None
        store.transition(job.job_id, JobState.ABORTING)
        assert store.claim("b", lease_seconds=60) is None, "no new claims while aborting"
        assert store.finalize(job.job_id).state == JobState.ABORTING
        store.release(a)
        assert store.finalize(job.job_id).state == JobState.ABORTED

    def test_list_and_breaker(self, store: JobStore) -> None:
        job = store.create_job(new_job())
        store.set_breaker(job.job_id, {"state": "open", "opened_count": 1})
        assert store.get_job(job.job_id).breaker == {"state": "open", "opened_count": 1}
        assert [j.job_id for j in store.list_jobs(projection="run_status")] == [job.job_id]
        assert store.list_jobs(projection="nope") == []


RACERS = 4
RACE_ROUNDS = 10


def _racer(
    backend: str,
    where: str,
    schema: str,
    barrier: Any,
    entered: Any,
    returned: Any,
    results: Any,
) -> None:
    """One worker process: per round, wait for the others, then claim (all at once);
    puts one result per round (the partition index, or None)."""
    try:
        store: JobStore = (
            SQLiteJobStore(where) if backend == "sqlite" else PostgresJobStore(where, schema=schema)
        )
        for _ in range(RACE_ROUNDS):
            barrier.wait(60)  # everyone idle: the test takes the claim locks
            barrier.wait(60)  # go
            with entered.get_lock():
                entered.value += 1
            claim = store.claim(f"pid-{os.getpid()}", lease_seconds=600)
            with returned.get_lock():
                returned.value += 1
            results.put(None if claim is None else claim.partition.partition_index)
        store.close()
    except BaseException as exc:
        barrier.abort()
        results.put(exc)


@contextmanager
def claims_held(backend: str, where: str, schema: str) -> Iterator[None]:
    """Hold what every claim needs: SQLite's write lock; PostgreSQL's job and partition
    rows (a claim that locked nothing would still wait here to update a partition)."""
    if backend == "sqlite":
        lite = sqlite3.connect(where, timeout=60, isolation_level=None)
        try:
            lite.execute("BEGIN IMMEDIATE")
            yield
            lite.execute("COMMIT")
        finally:
            lite.close()
        return
    with psycopg.connect(where) as conn:
        for table in ("safereplay_jobs", "safereplay_job_partitions"):
            conn.execute(
                sql.SQL("SELECT 1 FROM {} FOR UPDATE").format(sql.Identifier(schema, table))
            )
        yield
        conn.commit()


def claims_waiting_on_a_lock(dsn: str, schema: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        [[count]] = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND datname = current_database() AND query LIKE %s",
            (f"%{schema}%",),
        ).fetchall()
    return int(count)


def race_claims(backend: str, where: str, schema: str) -> list[int]:
    """Processes claiming in rounds, all of a round's claims in flight at once.

    Per round the test holds what every claim needs, lets every racer go, waits until
    all of them are inside ``claim`` (on PostgreSQL: all blocked on a lock) and none
    has returned, and only then lets them through together. Returns every partition
    index claimed, checked round by round: never one twice.
    """
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(RACERS + 1)
    entered = context.Value("i", 0)
    returned = context.Value("i", 0)
    results = context.Queue()
    racers = [
        context.Process(
            target=_racer,
            args=(backend, where, schema, barrier, entered, returned, results),
            daemon=True,
        )
        for _ in range(RACERS)
    ]
    for racer in racers:
        racer.start()
    in_flight: list[int] = []
    claimed: list[int] = []
    try:
        for round_ in range(RACE_ROUNDS):
            barrier.wait(60)
            with claims_held(backend, where, schema):
                barrier.wait(60)
                deadline = time.monotonic() + 60
                while entered.value < RACERS * (round_ + 1) or (
                    backend == "postgres" and claims_waiting_on_a_lock(where, schema) < RACERS
                ):
                    assert time.monotonic() < deadline, (
                        f"round {round_}: the racers never were all inside claim() at once "
                        f"({entered.value} entered, {returned.value} returned)"
                    )
                    time.sleep(0.005)
                in_flight.append(entered.value - returned.value)
            outcomes = [results.get(timeout=60) for _ in racers]
            errors = [o for o in outcomes if isinstance(o, BaseException)]
            assert not errors, errors
            claimed += [o for o in outcomes if o is not None]
            assert len(claimed) == len(set(claimed)), f"round {round_}: claimed twice {claimed}"
    finally:
        for racer in racers:
            racer.join(60)
    # The race happened: every round, all the racers were inside claim() at once.
    assert in_flight == [RACERS] * RACE_ROUNDS, in_flight
    return sorted(claimed)


class TestSQLiteJobStore(JobStoreContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[JobStore]:
        store = SQLiteJobStore(tmp_path / "projections.db")
        store.create_tables()
        self.where = str(tmp_path / "projections.db")
        self.schema = ""
        yield store
        store.close()

    def test_workers_in_several_processes_never_claim_the_same_partition(
        self, store: JobStore
    ) -> None:
        store.create_job(new_job(partitions=24))
        claimed = race_claims("sqlite", self.where, self.schema)
        assert claimed == list(range(24)), "each partition claimed once, by one racer"


class TestPostgresJobStore(JobStoreContract):
    @pytest.fixture
    def store(self, postgres_dsn: str, pg_schema: str) -> Iterator[JobStore]:
        store = PostgresJobStore(postgres_dsn, schema=pg_schema)
        store.create_tables()
        self.where = postgres_dsn
        self.schema = pg_schema
        yield store
        store.close()

    def test_workers_in_several_processes_never_claim_the_same_partition(
        self, store: JobStore
    ) -> None:
        store.create_job(new_job(partitions=24))
        claimed = race_claims("postgres", self.where, self.schema)
        assert claimed == list(range(24)), "each partition claimed once, by one racer"

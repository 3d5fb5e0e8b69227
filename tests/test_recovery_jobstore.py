"""Job store contract: the same tests for SQLite and PostgreSQL."""

from __future__ import annotations

import multiprocessing
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

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
        assert status.eta_seconds == 0.0

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


def _claim_many(args: tuple[str, str, str, int]) -> list[int]:
    backend, where, schema, rounds = args
    store: JobStore = (
        SQLiteJobStore(where) if backend == "sqlite" else PostgresJobStore(where, schema=schema)
    )
    got = []
    for _ in range(rounds):
        claim = store.claim(f"pid-{multiprocessing.current_process().pid}", lease_seconds=600)
        if claim is not None:
            got.append(claim.partition.partition_index)
    store.close()
    return got


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
        with multiprocessing.get_context("spawn").Pool(4) as pool:
            results = pool.map(_claim_many, [("sqlite", self.where, self.schema, 10)] * 4)
        claimed = sorted(i for r in results for i in r)
        assert claimed == list(range(24))


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
        with multiprocessing.get_context("spawn").Pool(4) as pool:
            results = pool.map(_claim_many, [("postgres", self.where, self.schema, 10)] * 4)
        claimed = sorted(i for r in results for i in r)
        assert claimed == list(range(24))

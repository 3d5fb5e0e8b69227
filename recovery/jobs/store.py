"""Where jobs, partition leases and progress are kept: one interface, two backends.

The job tables live in the projection store's database, so that a worker on any
machine that can reach that database can take part. Coordination is the
database's own: row locks with ``SKIP LOCKED`` on PostgreSQL, the write lock
(``BEGIN IMMEDIATE``) on SQLite; no coordinator process.

Leases: a claim sets ``lease_owner``, bumps ``lease_token`` and sets an expiry. Any
progress report or completion is conditional on the token, so a worker whose lease
was taken over (it was paused by GC, or partitioned from the network) is fenced
off: its next report raises :class:`LeaseLost` and it stops. The projection's own
position check (committed with its state) is the second, independent guard that
no batch is ever applied twice.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any
from uuid import UUID, uuid4

from safereplay.recovery.database import Database, Tx
from safereplay.recovery.errors import InvalidRequest, JobConflict, JobNotFound, LeaseLost
from safereplay.recovery.jobs.model import (
    Claim,
    Job,
    JobKind,
    JobState,
    JobStatus,
    PartitionProgress,
    PartitionStatus,
    check_transition,
    settled_state,
)

__all__ = ["JobStore", "LeaseLost", "NewJob", "SQLJobStore"]


class NewJob:
    """Parameters of a job to create (keyword-only, validated)."""

    def __init__(
        self,
        *,
        kind: JobKind,
        projection: str,
        build: int,
        partition_count: int,
        principal: str,
        reason: str,
        start_positions: Sequence[int] | None = None,
        target_position: int | None = None,
        range_start: int | None = None,
        range_end: int | None = None,
        max_concurrent_partitions: int | None = None,
        events_per_second: float | None = None,
        parameters: Mapping[str, Any] | None = None,
        held_partitions: Sequence[int] = (),
    ) -> None:
        if partition_count < 1:
            raise ValueError("partition_count must be >= 1")
        if not principal:
            raise ValueError("every job needs the acting principal")
        if not reason.strip():
            raise ValueError("every job needs a reason")
        positions = list(start_positions) if start_positions is not None else [0] * partition_count
        if len(positions) != partition_count:
            raise ValueError("start_positions needs one position per partition")
        self.kind = kind
        self.projection = projection
        self.build = build
        self.partition_count = partition_count
        self.principal = principal
        self.reason = reason
        self.start_positions = positions
        self.target_position = target_position
        self.range_start = range_start
        self.range_end = range_end
        self.max_concurrent_partitions = max_concurrent_partitions
        self.events_per_second = events_per_second
        self.parameters = dict(parameters or {})
        if any(not 0 <= index < partition_count for index in held_partitions):
            raise ValueError("held partitions must be partitions of the job")
        if held_partitions and len(set(held_partitions)) >= partition_count:
            raise ValueError("a staged rollout must leave some partitions to run first")
        #: Partitions that wait (status ``held``) until :meth:`JobStore.release_held`.
        self.held_partitions = frozenset(held_partitions)

    def parameters_json(self) -> str:
        return json.dumps(self.parameters, sort_keys=True, default=str)


class JobStore(ABC):
    """Persisted jobs and partition leases."""

    @abstractmethod
    def create_tables(self) -> None: ...

    @abstractmethod
    def create_job(self, new: NewJob) -> Job:
        """Create a planned job; raises JobConflict if the projection has an active job."""

    @abstractmethod
    def get_job(self, job_id: UUID) -> Job: ...

    @abstractmethod
    def partitions(self, job_id: UUID) -> list[PartitionProgress]: ...

    def status(self, job_id: UUID) -> JobStatus:
        return JobStatus(job=self.get_job(job_id), partitions=self.partitions(job_id))

    @abstractmethod
    def list_jobs(
        self, *, projection: str | None = None, active_only: bool = False, limit: int = 50
    ) -> list[Job]: ...

    @abstractmethod
    def transition(self, job_id: UUID, new_state: JobState, *, error: str | None = None) -> Job:
        """Move a job to ``new_state`` if its state machine allows it (under a row lock)."""

    @abstractmethod
    def claim(
        self, worker_id: str, *, lease_seconds: float, job_id: UUID | None = None
    ) -> Claim | None:
        """Lease one claimable partition of a running job (pending, or lease expired)."""

    @abstractmethod
    def renew(self, claim: Claim, *, lease_seconds: float) -> Claim:
        """Extend the lease; raises LeaseLost if it was taken over."""

    @abstractmethod
    def report(
        self,
        claim: Claim,
        *,
        position: int,
        events_applied: int = 0,
        parked: int = 0,
        retries: int = 0,
        conflicts: int = 0,
        target_position: int | None = None,
        last_error: str | None = None,
    ) -> None:
        """Record progress (deltas for the counters); raises LeaseLost if fenced off."""

    @abstractmethod
    def finish_partition(self, claim: Claim, *, succeeded: bool, error: str | None = None) -> None:
        """Mark the partition completed or failed and drop the lease (fenced)."""

    @abstractmethod
    def release(self, claim: Claim) -> None:
        """Give the partition back (pause/abort/shutdown); it becomes pending again."""

    @abstractmethod
    def release_held(self, job_id: UUID) -> int:
        """Held partitions (a staged rollout's later stage) → pending; returns how many."""

    @abstractmethod
    def retry_partition(self, job_id: UUID, partition_index: int) -> None:
        """Failed partition → pending; a failed job → running."""

    @abstractmethod
    def finalize(self, job_id: UUID) -> Job:
        """Settle the job's state from its partitions (completed/failed/aborted), if due."""

    @abstractmethod
    def set_breaker(self, job_id: UUID, breaker: Mapping[str, Any]) -> None: ...

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


# -- the SQL both backends share -------------------------------------------------------
#
# Statements are written once with psycopg-style named placeholders (%(name)s) and
# {jobs}/{job_partitions} table slots; each backend turns them into its own statements
# (psycopg.sql.Identifier on PostgreSQL, :name placeholders on SQLite).

CREATE_JOBS = """
CREATE TABLE IF NOT EXISTS {jobs} (
    job_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    projection TEXT NOT NULL,
    build INTEGER NOT NULL,
    partition_count INTEGER NOT NULL,
    state TEXT NOT NULL,
    principal TEXT NOT NULL,
    reason TEXT NOT NULL,
    parameters TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    target_position BIGINT,
    range_start BIGINT,
    range_end BIGINT,
    max_concurrent_partitions INTEGER,
    events_per_second DOUBLE PRECISION,
    error TEXT,
    breaker TEXT NOT NULL DEFAULT '{{}}'
)"""

# At most one active job per projection, enforced by the database itself.
CREATE_ONE_ACTIVE_JOB_INDEX = """
CREATE UNIQUE INDEX IF NOT EXISTS {idx_jobs_one_active} ON {jobs} (projection)
WHERE state IN ('planned', 'running', 'paused', 'aborting')"""

CREATE_PARTS = """
CREATE TABLE IF NOT EXISTS {job_partitions} (
    job_id TEXT NOT NULL,
    partition_index INTEGER NOT NULL,
    status TEXT NOT NULL,
    start_position BIGINT NOT NULL,
    position BIGINT NOT NULL,
    target_position BIGINT,
    events_applied BIGINT NOT NULL DEFAULT 0,
    parked BIGINT NOT NULL DEFAULT 0,
    retries BIGINT NOT NULL DEFAULT 0,
    conflicts BIGINT NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_token BIGINT NOT NULL DEFAULT 0,
    lease_expires_at DOUBLE PRECISION,
    started_at DOUBLE PRECISION,
    updated_at DOUBLE PRECISION NOT NULL,
    last_error TEXT,
    PRIMARY KEY (job_id, partition_index)
)"""

INSERT_JOB = """
INSERT INTO {jobs} (job_id, kind, projection, build, partition_count, state, principal, reason,
    parameters, created_at, updated_at, target_position, range_start, range_end,
    max_concurrent_partitions, events_per_second)
VALUES (%(job_id)s, %(kind)s, %(projection)s, %(build)s, %(partition_count)s, 'planned',
    %(principal)s, %(reason)s, %(parameters)s, %(now)s, %(now)s, %(target_position)s,
    %(range_start)s, %(range_end)s, %(max_concurrent_partitions)s, %(events_per_second)s)"""

INSERT_PART = """
INSERT INTO {job_partitions} (job_id, partition_index, status, start_position, position,
    target_position, updated_at)
VALUES (%(job_id)s, %(partition_index)s, %(status)s, %(position)s, %(position)s,
    %(target_position)s, %(now)s)"""
# A staged rollout's later partitions wait as 'held' until the canary verified.
RELEASE_HELD_PARTS = """
UPDATE {job_partitions} SET status = 'pending', updated_at = %(now)s
WHERE job_id = %(job_id)s AND status = 'held'"""

SELECT_JOB = "SELECT * FROM {jobs} WHERE job_id = %(job_id)s"
SELECT_PARTS = "SELECT * FROM {job_partitions} WHERE job_id = %(job_id)s ORDER BY partition_index"
SELECT_CLAIMABLE_JOBS = """
SELECT * FROM {jobs} WHERE state IN ('planned', 'running')
ORDER BY created_at, job_id"""
SELECT_CLAIMABLE_PARTS = """
SELECT * FROM {job_partitions}
WHERE job_id = %(job_id)s
  AND (status = 'pending' OR (status = 'running' AND lease_expires_at < %(now)s))
ORDER BY partition_index"""
COUNT_LIVE_LEASES = """
SELECT COUNT(*) AS n FROM {job_partitions}
WHERE job_id = %(job_id)s AND status = 'running' AND lease_expires_at >= %(now)s"""
UPDATE_JOB_STATE = """
UPDATE {jobs} SET state = %(state)s, updated_at = %(now)s, error = COALESCE(%(error)s, error)
WHERE job_id = %(job_id)s"""
CLAIM_PART = """
UPDATE {job_partitions} SET status = 'running', lease_owner = %(worker_id)s,
    lease_token = lease_token + 1, lease_expires_at = %(expires_at)s,
    started_at = COALESCE(started_at, %(now)s), updated_at = %(now)s
WHERE job_id = %(job_id)s AND partition_index = %(partition_index)s
  AND lease_token = %(seen_token)s"""
RENEW_LEASE = """
UPDATE {job_partitions} SET lease_expires_at = %(expires_at)s, updated_at = %(now)s
WHERE job_id = %(job_id)s AND partition_index = %(partition_index)s
  AND lease_token = %(token)s AND status = 'running'"""
REPORT_PROGRESS = """
UPDATE {job_partitions} SET position = %(position)s,
    events_applied = events_applied + %(events_applied)s, parked = parked + %(parked)s,
    retries = retries + %(retries)s, conflicts = conflicts + %(conflicts)s,
    target_position = COALESCE(%(target_position)s, target_position),
    last_error = COALESCE(%(last_error)s, last_error), updated_at = %(now)s
WHERE job_id = %(job_id)s AND partition_index = %(partition_index)s
  AND lease_token = %(token)s AND status = 'running'"""
FINISH_PART = """
UPDATE {job_partitions} SET status = %(status)s, lease_owner = NULL, lease_expires_at = NULL,
    last_error = COALESCE(%(error)s, last_error), updated_at = %(now)s
WHERE job_id = %(job_id)s AND partition_index = %(partition_index)s
  AND lease_token = %(token)s AND status = 'running'"""
# An aborting job's partition whose lease expired (its worker died) is given back,
# so that the abort can end; a stalled worker that wakes is fenced off (status).
RELEASE_EXPIRED_PARTS = """
UPDATE {job_partitions} SET status = 'pending', lease_owner = NULL, lease_expires_at = NULL,
    updated_at = %(now)s
WHERE job_id = %(job_id)s AND status = 'running' AND lease_expires_at < %(now)s"""
RETRY_PART = """
UPDATE {job_partitions} SET status = 'pending', updated_at = %(now)s
WHERE job_id = %(job_id)s AND partition_index = %(partition_index)s AND status = 'failed'"""
SET_BREAKER = (
    "UPDATE {jobs} SET breaker = %(breaker)s, updated_at = %(now)s WHERE job_id = %(job_id)s"
)


def job_from_row(row: Mapping[str, Any]) -> Job:
    return Job(
        job_id=UUID(row["job_id"]),
        kind=JobKind(row["kind"]),
        projection=row["projection"],
        build=int(row["build"]),
        partition_count=int(row["partition_count"]),
        state=JobState(row["state"]),
        principal=row["principal"],
        reason=row["reason"],
        parameters=json.loads(row["parameters"]),
        created_at=float(row["created_at"]),
        updated_at=float(row["updated_at"]),
        target_position=row["target_position"],
        range_start=row["range_start"],
        range_end=row["range_end"],
        max_concurrent_partitions=row["max_concurrent_partitions"],
        events_per_second=row["events_per_second"],
        error=row["error"],
        breaker=json.loads(row["breaker"] or "{}"),
    )


def partition_from_row(row: Mapping[str, Any]) -> PartitionProgress:
    return PartitionProgress(
        job_id=UUID(row["job_id"]),
        partition_index=int(row["partition_index"]),
        status=PartitionStatus(row["status"]),
        start_position=int(row["start_position"]),
        position=int(row["position"]),
        target_position=row["target_position"],
        events_applied=int(row["events_applied"]),
        parked=int(row["parked"]),
        retries=int(row["retries"]),
        conflicts=int(row["conflicts"]),
        lease_owner=row["lease_owner"],
        lease_token=int(row["lease_token"]),
        lease_expires_at=row["lease_expires_at"],
        started_at=row["started_at"],
        updated_at=float(row["updated_at"]),
        last_error=row["last_error"],
    )


class SQLJobStore(JobStore):
    """The job store, written once over :class:`~safereplay.recovery.database.Database`."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def _transaction(self, *, write: bool) -> AbstractContextManager[Tx]:
        return self.database.transaction(write=write)

    def _is_unique_violation(self, exc: BaseException) -> bool:
        return self.database.is_unique_violation(exc)

    def close(self) -> None:
        self.database.close()

    def create_tables(self) -> None:
        with self._transaction(write=True) as tx:
            tx.execute(CREATE_JOBS)
            tx.execute(CREATE_ONE_ACTIVE_JOB_INDEX)
            tx.execute(CREATE_PARTS)

    def create_job(self, new: NewJob) -> Job:
        job_id = uuid4()
        try:
            with self._transaction(write=True) as tx:
                now = tx.now()
                tx.execute(
                    INSERT_JOB,
                    {
                        "job_id": str(job_id),
                        "kind": str(new.kind),
                        "projection": new.projection,
                        "build": new.build,
                        "partition_count": new.partition_count,
                        "principal": new.principal,
                        "reason": new.reason,
                        "parameters": new.parameters_json(),
                        "now": now,
                        "target_position": new.target_position,
                        "range_start": new.range_start,
                        "range_end": new.range_end,
                        "max_concurrent_partitions": new.max_concurrent_partitions,
                        "events_per_second": new.events_per_second,
                    },
                )
                for index, position in enumerate(new.start_positions):
                    tx.execute(
                        INSERT_PART,
                        {
                            "job_id": str(job_id),
                            "partition_index": index,
                            "status": "held" if index in new.held_partitions else "pending",
                            "position": position,
                            "target_position": new.target_position,
                            "now": now,
                        },
                    )
        except Exception as exc:
            if self._is_unique_violation(exc):
                active = self.list_jobs(projection=new.projection, active_only=True)
                holder = f" (job {active[0].job_id}, {active[0].state})" if active else ""
                raise JobConflict(
                    f"projection {new.projection!r} already has an active job{holder}; "
                    "wait for it, or pause/abort it first"
                ) from exc
            raise
        return self.get_job(job_id)

    def get_job(self, job_id: UUID) -> Job:
        with self._transaction(write=False) as tx:
            rows = tx.rows(SELECT_JOB, {"job_id": str(job_id)})
        if not rows:
            raise JobNotFound(f"no job {job_id}")
        return job_from_row(rows[0])

    def partitions(self, job_id: UUID) -> list[PartitionProgress]:
        with self._transaction(write=False) as tx:
            return [partition_from_row(r) for r in tx.rows(SELECT_PARTS, {"job_id": str(job_id)})]

    def list_jobs(
        self, *, projection: str | None = None, active_only: bool = False, limit: int = 50
    ) -> list[Job]:
        template = "SELECT * FROM {jobs} WHERE 1 = 1"
        params: dict[str, Any] = {"limit": limit}
        if projection is not None:
            template += " AND projection = %(projection)s"
            params["projection"] = projection
        if active_only:
            template += " AND state IN ('planned', 'running', 'paused', 'aborting')"
        template += " ORDER BY created_at DESC, job_id LIMIT %(limit)s"
        with self._transaction(write=False) as tx:
            return [job_from_row(r) for r in tx.rows(template, params)]

    def transition(self, job_id: UUID, new_state: JobState, *, error: str | None = None) -> Job:
        with self._transaction(write=True) as tx:
            rows = tx.rows(SELECT_JOB, {"job_id": str(job_id)}, for_update=True)
            if not rows:
                raise JobNotFound(f"no job {job_id}")
            job = job_from_row(rows[0])
            if job.state != new_state:
                check_transition(job_id, job.state, new_state)
                tx.execute(
                    UPDATE_JOB_STATE,
                    {
                        "state": str(new_state),
                        "now": tx.now(),
                        "error": error,
                        "job_id": str(job_id),
                    },
                )
        return self.get_job(job_id)

    def claim(
        self, worker_id: str, *, lease_seconds: float, job_id: UUID | None = None
    ) -> Claim | None:
        with self._transaction(write=True) as tx:
            now = tx.now()
            # Lock the job rows first: the concurrency cap is then exact, and two
            # workers can never both see the same partition as claimable.
            for job_row in tx.rows(SELECT_CLAIMABLE_JOBS, for_update=True):
                job = job_from_row(job_row)
                if job_id is not None and job.job_id != job_id:
                    continue
                keys = {"job_id": str(job.job_id), "now": now}
                if job.max_concurrent_partitions is not None:
                    live = tx.rows(COUNT_LIVE_LEASES, keys)[0]["n"]
                    if live >= job.max_concurrent_partitions:
                        continue
                for part_row in tx.rows(SELECT_CLAIMABLE_PARTS, keys, for_update=True):
                    part = partition_from_row(part_row)
                    expires_at = now + lease_seconds
                    changed = tx.execute(
                        CLAIM_PART,
                        {
                            **keys,
                            "worker_id": worker_id,
                            "expires_at": expires_at,
                            "partition_index": part.partition_index,
                            "seen_token": part.lease_token,
                        },
                    )
                    if changed != 1:
                        continue
                    if job.state == JobState.PLANNED:
                        tx.execute(UPDATE_JOB_STATE, {**keys, "state": "running", "error": None})
                    claimed = tx.rows(SELECT_PARTS, keys)[part.partition_index]
                    return Claim(
                        job=job_from_row(tx.rows(SELECT_JOB, keys)[0]),
                        partition=partition_from_row(claimed),
                        worker_id=worker_id,
                        token=part.lease_token + 1,
                        expires_at=expires_at,
                    )
        return None

    def _fenced(
        self,
        claim: Claim,
        template: str,
        extra: Mapping[str, Any] | Callable[[float], Mapping[str, Any]],
        *,
        lost: str = "no longer holds",
    ) -> float:
        """Run a token-conditional update; returns the transaction's ``now``.

        ``extra`` holds further parameters, or builds them from ``now``; ``lost``
        says what happened in the :class:`LeaseLost` raised when the update is
        fenced off.
        """
        with self._transaction(write=True) as tx:
            now = tx.now()
            changed = tx.execute(
                template,
                {
                    "job_id": str(claim.job.job_id),
                    "partition_index": claim.partition.partition_index,
                    "token": claim.token,
                    "now": now,
                    **(extra(now) if callable(extra) else extra),
                },
            )
        if changed != 1:
            raise LeaseLost(
                f"worker {claim.worker_id} {lost} partition "
                f"{claim.partition.partition_index} of job {claim.job.job_id}"
            )
        return now

    def renew(self, claim: Claim, *, lease_seconds: float) -> Claim:
        now = self._fenced(
            claim,
            RENEW_LEASE,
            lambda now: {"expires_at": now + lease_seconds},
            lost="lost its lease on",
        )
        return Claim(
            job=claim.job,
            partition=claim.partition,
            worker_id=claim.worker_id,
            token=claim.token,
            expires_at=now + lease_seconds,
        )

    def report(
        self,
        claim: Claim,
        *,
        position: int,
        events_applied: int = 0,
        parked: int = 0,
        retries: int = 0,
        conflicts: int = 0,
        target_position: int | None = None,
        last_error: str | None = None,
    ) -> None:
        self._fenced(
            claim,
            REPORT_PROGRESS,
            {
                "position": position,
                "events_applied": events_applied,
                "parked": parked,
                "retries": retries,
                "conflicts": conflicts,
                "target_position": target_position,
                "last_error": last_error,
            },
        )

    def finish_partition(self, claim: Claim, *, succeeded: bool, error: str | None = None) -> None:
        self._fenced(
            claim, FINISH_PART, {"status": "completed" if succeeded else "failed", "error": error}
        )

    def release(self, claim: Claim) -> None:
        self._fenced(claim, FINISH_PART, {"status": "pending", "error": None})

    def release_held(self, job_id: UUID) -> int:
        with self._transaction(write=True) as tx:
            rows = tx.rows(SELECT_JOB, {"job_id": str(job_id)}, for_update=True)
            if not rows:
                raise JobNotFound(f"no job {job_id}")
            return tx.execute(RELEASE_HELD_PARTS, {"job_id": str(job_id), "now": tx.now()})

    def retry_partition(self, job_id: UUID, partition_index: int) -> None:
        with self._transaction(write=True) as tx:
            rows = tx.rows(SELECT_JOB, {"job_id": str(job_id)}, for_update=True)
            if not rows:
                raise JobNotFound(f"no job {job_id}")
            job = job_from_row(rows[0])
            changed = tx.execute(
                RETRY_PART,
                {"job_id": str(job_id), "partition_index": partition_index, "now": tx.now()},
            )
            if changed != 1:
                raise InvalidRequest(
                    f"partition {partition_index} of job {job_id} is not failed: nothing to retry"
                )
            if job.state == JobState.FAILED:
                tx.execute(
                    UPDATE_JOB_STATE,
                    {"state": "running", "now": tx.now(), "error": None, "job_id": str(job_id)},
                )

    def finalize(self, job_id: UUID) -> Job:
        with self._transaction(write=True) as tx:
            keys = {"job_id": str(job_id)}
            rows = tx.rows(SELECT_JOB, keys, for_update=True)
            if not rows:
                raise JobNotFound(f"no job {job_id}")
            job = job_from_row(rows[0])
            if job.state == JobState.ABORTING:
                tx.execute(RELEASE_EXPIRED_PARTS, {**keys, "now": tx.now()})
            parts = [partition_from_row(r) for r in tx.rows(SELECT_PARTS, keys)]
            new_state = settled_state(job, parts)
            if new_state is not None:
                failed = [p.partition_index for p in parts if p.status == "failed"]
                error = f"partitions failed: {failed}" if new_state == JobState.FAILED else None
                tx.execute(
                    UPDATE_JOB_STATE,
                    {**keys, "state": str(new_state), "now": tx.now(), "error": error},
                )
        return self.get_job(job_id)

    def set_breaker(self, job_id: UUID, breaker: Mapping[str, Any]) -> None:
        with self._transaction(write=True) as tx:
            tx.execute(
                SET_BREAKER,
                {
                    "job_id": str(job_id),
                    "now": tx.now(),
                    "breaker": json.dumps(dict(breaker), sort_keys=True, default=str),
                },
            )

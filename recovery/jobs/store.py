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
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any
from uuid import UUID, uuid4

from safereplay.recovery.database import Database, Tx
from safereplay.recovery.errors import (
    InvalidJobTransition,
    InvalidRequest,
    JobConflict,
    JobNotFound,
    LeaseLost,
)
from safereplay.recovery.jobs import statements as sql
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
        events_in_scope: Sequence[int] | None = None,
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
        if events_in_scope is not None and len(events_in_scope) != partition_count:
            raise ValueError("events_in_scope needs one count per partition")
        #: Each partition's events to read, counted when planned (progress is in events).
        self.events_in_scope = list(events_in_scope) if events_in_scope is not None else None
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

    def clock(self) -> float:
        """Now, by the clock leases are written with (the database's)."""
        return time.time()

    @abstractmethod
    def list_jobs(
        self, *, projection: str | None = None, active_only: bool = False, limit: int = 50
    ) -> list[Job]: ...

    @abstractmethod
    def jobs_with_prefix(self, prefix: str, *, limit: int = 10) -> list[Job]:
        """Jobs whose id starts with ``prefix`` (lower-case hex and dashes only)."""

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
        recent_rate: float | None = None,
    ) -> None:
        """Record progress (deltas for the counters) and the worker's recent events/s;
        raises LeaseLost if fenced off."""

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
        events_in_scope=None if row["events_in_scope"] is None else int(row["events_in_scope"]),
        recent_rate=row["recent_rate"],
        advanced_at=row.get("advanced_at"),
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

    @staticmethod
    def schema_statements() -> list[str]:
        """The tables' DDL (templates), run by the ``recovery`` schema step."""
        return [sql.CREATE_JOBS, sql.CREATE_ONE_ACTIVE_JOB_INDEX, sql.CREATE_PARTS]

    @staticmethod
    def add_progress_columns(cursor: Any, dialect: str, render: Callable[[str], Any]) -> None:
        """Recovery schema version 4 on a version 1 to 3 database: the partitions'
        events in scope and recent rate (version 3) and when their position last
        advanced (version 4), each added unless it is there already."""
        present: set[str] = set()
        if dialect == "sqlite":
            present = {row[1] for row in cursor.execute(render(sql.PART_COLUMNS)).fetchall()}
        for column, statement in sql.ADD_PART_COLUMNS[dialect].items():
            if column not in present:
                cursor.execute(render(statement))

    def create_tables(self) -> None:
        """Run the DDL directly (tools and tests); processes go through the schema
        catalog (:mod:`safereplay.recovery.migrations`)."""
        with self._transaction(write=True) as tx:
            for statement in self.schema_statements():
                tx.execute(statement)

    def create_job(self, new: NewJob) -> Job:
        job_id = uuid4()
        try:
            with self._transaction(write=True) as tx:
                now = tx.now()
                tx.execute(
                    sql.INSERT_JOB,
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
                        sql.INSERT_PART,
                        {
                            "job_id": str(job_id),
                            "partition_index": index,
                            "status": "held" if index in new.held_partitions else "pending",
                            "position": position,
                            "target_position": new.target_position,
                            "now": now,
                            "events_in_scope": None
                            if new.events_in_scope is None
                            else new.events_in_scope[index],
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
            rows = tx.rows(sql.SELECT_JOB, {"job_id": str(job_id)})
        if not rows:
            raise JobNotFound(f"no job {job_id}")
        return job_from_row(rows[0])

    def partitions(self, job_id: UUID) -> list[PartitionProgress]:
        with self._transaction(write=False) as tx:
            return [
                partition_from_row(r) for r in tx.rows(sql.SELECT_PARTS, {"job_id": str(job_id)})
            ]

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

    def clock(self) -> float:
        with self._transaction(write=False) as tx:
            return tx.now()

    def jobs_with_prefix(self, prefix: str, *, limit: int = 10) -> list[Job]:
        if not prefix or any(c not in "0123456789abcdef-" for c in prefix):
            raise InvalidRequest(f"{prefix!r} is not a job id (hexadecimal digits and dashes)")
        template = (
            "SELECT * FROM {jobs} WHERE job_id LIKE %(pattern)s "
            "ORDER BY created_at DESC, job_id LIMIT %(limit)s"
        )
        with self._transaction(write=False) as tx:
            rows = tx.rows(template, {"pattern": f"{prefix}%", "limit": limit})
        return [job_from_row(r) for r in rows]

    def transition(self, job_id: UUID, new_state: JobState, *, error: str | None = None) -> Job:
        with self._transaction(write=True) as tx:
            rows = tx.rows(sql.SELECT_JOB, {"job_id": str(job_id)}, for_update=True)
            if not rows:
                raise JobNotFound(f"no job {job_id}")
            job = job_from_row(rows[0])
            if job.state != new_state:
                check_transition(job_id, job.state, new_state)
                tx.execute(
                    sql.UPDATE_JOB_STATE,
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
            for job_row in tx.rows(sql.SELECT_CLAIMABLE_JOBS, for_update=True):
                job = job_from_row(job_row)
                if job_id is not None and job.job_id != job_id:
                    continue
                keys = {"job_id": str(job.job_id), "now": now}
                if job.max_concurrent_partitions is not None:
                    live = tx.rows(sql.COUNT_LIVE_LEASES, keys)[0]["n"]
                    if live >= job.max_concurrent_partitions:
                        continue
                for part_row in tx.rows(sql.SELECT_CLAIMABLE_PARTS, keys, for_update=True):
                    part = partition_from_row(part_row)
                    expires_at = now + lease_seconds
                    changed = tx.execute(
                        sql.CLAIM_PART,
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
                        tx.execute(
                            sql.UPDATE_JOB_STATE, {**keys, "state": "running", "error": None}
                        )
                    claimed = tx.rows(sql.SELECT_PARTS, keys)[part.partition_index]
                    return Claim(
                        job=job_from_row(tx.rows(sql.SELECT_JOB, keys)[0]),
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
            sql.RENEW_LEASE,
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
        recent_rate: float | None = None,
    ) -> None:
        self._fenced(
            claim,
            sql.REPORT_PROGRESS,
            {
                "position": position,
                "events_applied": events_applied,
                "parked": parked,
                "retries": retries,
                "conflicts": conflicts,
                "target_position": target_position,
                "last_error": last_error,
                "recent_rate": recent_rate,
            },
        )

    def finish_partition(self, claim: Claim, *, succeeded: bool, error: str | None = None) -> None:
        self._fenced(
            claim,
            sql.FINISH_PART,
            {"status": "completed" if succeeded else "failed", "error": error},
        )

    def release(self, claim: Claim) -> None:
        self._fenced(claim, sql.FINISH_PART, {"status": "pending", "error": None})

    def release_held(self, job_id: UUID) -> int:
        with self._transaction(write=True) as tx:
            rows = tx.rows(sql.SELECT_JOB, {"job_id": str(job_id)}, for_update=True)
            if not rows:
                raise JobNotFound(f"no job {job_id}")
            return tx.execute(sql.RELEASE_HELD_PARTS, {"job_id": str(job_id), "now": tx.now()})

    def retry_partition(self, job_id: UUID, partition_index: int) -> None:
        with self._transaction(write=True) as tx:
            rows = tx.rows(sql.SELECT_JOB, {"job_id": str(job_id)}, for_update=True)
            if not rows:
                raise JobNotFound(f"no job {job_id}")
            job = job_from_row(rows[0])
            if job.state in (JobState.COMPLETED, JobState.ABORTED):
                raise InvalidJobTransition(
                    f"job {job_id} has ended ({job.state}): there is no partition to retry"
                )
            changed = tx.execute(
                sql.RETRY_PART,
                {"job_id": str(job_id), "partition_index": partition_index, "now": tx.now()},
            )
            if changed != 1:
                raise InvalidRequest(
                    f"partition {partition_index} of job {job_id} is not failed: nothing to retry"
                )
            if job.state == JobState.FAILED:
                tx.execute(
                    sql.UPDATE_JOB_STATE,
                    {"state": "running", "now": tx.now(), "error": None, "job_id": str(job_id)},
                )

    def finalize(self, job_id: UUID) -> Job:
        with self._transaction(write=True) as tx:
            keys = {"job_id": str(job_id)}
            rows = tx.rows(sql.SELECT_JOB, keys, for_update=True)
            if not rows:
                raise JobNotFound(f"no job {job_id}")
            job = job_from_row(rows[0])
            if job.state == JobState.ABORTING:
                tx.execute(sql.RELEASE_EXPIRED_PARTS, {**keys, "now": tx.now()})
            parts = [partition_from_row(r) for r in tx.rows(sql.SELECT_PARTS, keys)]
            new_state = settled_state(job, parts)
            if new_state is not None:
                failed = [p.partition_index for p in parts if p.status == "failed"]
                error = f"partitions failed: {failed}" if new_state == JobState.FAILED else None
                tx.execute(
                    sql.UPDATE_JOB_STATE,
                    {**keys, "state": str(new_state), "now": tx.now(), "error": error},
                )
        return self.get_job(job_id)

    def set_breaker(self, job_id: UUID, breaker: Mapping[str, Any]) -> None:
        with self._transaction(write=True) as tx:
            tx.execute(
                sql.SET_BREAKER,
                {
                    "job_id": str(job_id),
                    "now": tx.now(),
                    "breaker": json.dumps(dict(breaker), sort_keys=True, default=str),
                },
            )

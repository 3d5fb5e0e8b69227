"""Jobs: every rebuild, catch-up, replay and redrive is a persisted job.

A job's state machine::

    planned ──▶ running ◀──▶ paused
       │          │  │          │
       │          │  └──▶ aborting ──▶ aborted
       │          ├──▶ completed
       │          └──▶ failed ──▶ running   (operator retries failed partitions)
       └──▶ aborted

Workers on any machine see ``paused``/``aborting`` at their next batch boundary.
Each partition of a job is leased by at most one worker at a time; a lease that
is not renewed expires and another worker takes the partition over from its
last committed position.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from uuid import UUID

from safereplay.recovery.errors import InvalidJobTransition

__all__ = [
    "ACTIVE_STATES",
    "Claim",
    "Job",
    "JobKind",
    "JobState",
    "JobStatus",
    "PartitionProgress",
    "PartitionStatus",
    "check_transition",
    "settled_state",
]


class JobKind(StrEnum):
    REBUILD = "rebuild"
    CATCH_UP = "catch-up"
    REPLAY = "replay"
    REDRIVE = "redrive"


class JobState(StrEnum):
    PLANNED = "planned"
    RUNNING = "running"
    PAUSED = "paused"
    ABORTING = "aborting"
    ABORTED = "aborted"
    COMPLETED = "completed"
    FAILED = "failed"


class PartitionStatus(StrEnum):
    HELD = "held"  # a staged rollout's later stage, waiting for the canary
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


ACTIVE_STATES = frozenset({JobState.PLANNED, JobState.RUNNING, JobState.PAUSED, JobState.ABORTING})

_TRANSITIONS: Mapping[JobState, frozenset[JobState]] = {
    JobState.PLANNED: frozenset({JobState.RUNNING, JobState.ABORTED, JobState.PAUSED}),
    JobState.RUNNING: frozenset(
        {JobState.PAUSED, JobState.ABORTING, JobState.COMPLETED, JobState.FAILED}
    ),
    JobState.PAUSED: frozenset({JobState.RUNNING, JobState.ABORTING}),
    JobState.ABORTING: frozenset({JobState.ABORTED}),
    JobState.FAILED: frozenset({JobState.RUNNING, JobState.ABORTED}),
    JobState.ABORTED: frozenset(),
    JobState.COMPLETED: frozenset(),
}


def check_transition(job_id: UUID, current: JobState, new: JobState) -> None:
    if new not in _TRANSITIONS[current]:
        allowed = ", ".join(sorted(_TRANSITIONS[current])) or "none (it has ended)"
        raise InvalidJobTransition(
            f"job {job_id} is {current}: cannot become {new} (allowed: {allowed})"
        )


@dataclass(frozen=True)
class Job:
    job_id: UUID
    kind: JobKind
    projection: str
    build: int
    partition_count: int
    state: JobState
    principal: str
    reason: str
    parameters: Mapping[str, Any]
    created_at: float
    updated_at: float
    target_position: int | None = None
    range_start: int | None = None
    range_end: int | None = None
    max_concurrent_partitions: int | None = None
    events_per_second: float | None = None
    error: str | None = None
    breaker: Mapping[str, Any] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES


@dataclass(frozen=True)
class PartitionProgress:
    job_id: UUID
    partition_index: int
    status: PartitionStatus
    start_position: int
    position: int
    target_position: int | None
    events_applied: int
    parked: int
    retries: int
    conflicts: int
    lease_owner: str | None
    lease_token: int
    lease_expires_at: float | None
    started_at: float | None
    updated_at: float
    last_error: str | None

    def rate(self) -> float | None:
        """Positions per second since the partition started (None before it has)."""
        if self.started_at is None or self.updated_at <= self.started_at:
            return None
        return (self.position - self.start_position) / (self.updated_at - self.started_at)

    def events_rate(self) -> float | None:
        if self.started_at is None or self.updated_at <= self.started_at:
            return None
        return self.events_applied / (self.updated_at - self.started_at)

    def remaining(self) -> int | None:
        if self.target_position is None:
            return None
        return max(0, self.target_position - self.position)

    def eta_seconds(self) -> float | None:
        remaining = self.remaining()
        rate = self.rate()
        if remaining is None:
            return None
        if remaining == 0:
            return 0.0
        if not rate:
            return None
        return remaining / rate


@dataclass(frozen=True)
class JobStatus:
    """A job with its partitions: what ``safereplay jobs`` shows."""

    job: Job
    partitions: Sequence[PartitionProgress]

    @property
    def events_applied(self) -> int:
        return sum(p.events_applied for p in self.partitions)

    @property
    def parked(self) -> int:
        return sum(p.parked for p in self.partitions)

    @property
    def retries(self) -> int:
        return sum(p.retries for p in self.partitions)

    @property
    def conflicts(self) -> int:
        return sum(p.conflicts for p in self.partitions)

    @property
    def events_per_second(self) -> float:
        return sum(p.events_rate() or 0.0 for p in self.partitions if p.status == "running")

    def live_leases(self, now: float) -> int:
        """Partitions a worker holds now (its lease not yet expired at ``now``)."""
        return sum(
            1
            for p in self.partitions
            if p.status == PartitionStatus.RUNNING
            and p.lease_expires_at is not None
            and p.lease_expires_at > now
        )

    def stalled(self, now: float) -> bool:
        """Running, work left, and no live worker: every lease released or expired.

        Nothing moves until a worker joins (``safereplay worker --job J``, or the
        command that started the job, run again); it has no ETA.
        """
        if self.job.state != JobState.RUNNING or self.live_leases(now):
            return False
        return any(
            p.status in (PartitionStatus.PENDING, PartitionStatus.RUNNING) for p in self.partitions
        )

    @property
    def eta_seconds(self) -> float | None:
        """The slowest unfinished partition's ETA (partitions run in parallel)."""
        etas = [
            p.eta_seconds()
            for p in self.partitions
            if p.status in (PartitionStatus.PENDING, PartitionStatus.RUNNING)
        ]
        if not etas:
            return 0.0
        if any(eta is None for eta in etas):
            return None
        return max(eta for eta in etas if eta is not None)


@dataclass(frozen=True)
class Claim:
    """A worker's lease on one partition of a job; ``token`` fences stale workers."""

    job: Job
    partition: PartitionProgress
    worker_id: str
    token: int
    expires_at: float


def settled_state(job: Job, partitions: Sequence[PartitionProgress]) -> JobState | None:
    """The state a job should move to given its partitions, or None if it stays."""
    leased = any(p.status == PartitionStatus.RUNNING for p in partitions)
    if job.state == JobState.ABORTING:
        return None if leased else JobState.ABORTED
    if job.state != JobState.RUNNING:
        return None
    if all(p.status == PartitionStatus.COMPLETED for p in partitions):
        return JobState.COMPLETED
    unfinished = any(
        p.status in (PartitionStatus.HELD, PartitionStatus.PENDING, PartitionStatus.RUNNING)
        for p in partitions
    )
    if not unfinished and any(p.status == PartitionStatus.FAILED for p in partitions):
        return JobState.FAILED
    return None

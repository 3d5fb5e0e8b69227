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
    #: Paused by an integrity conflict (:mod:`safereplay.recovery.jobs.conflicts`): no
    #: worker claims it until an operator resolves the conflict.
    CONFLICT = "conflict"


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
    """One partition's progress. Progress is counted in *events*, not positions:
    ``events_done`` (applied or parked) against ``events_in_scope`` (the stored
    events of the projection's types in the partition's range, counted once when
    the job was planned). A log with holes, other event types or other
    partitions' aggregates would otherwise show "21731/21731" long before the end.
    """

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
    #: Events this partition reads, counted when the job was planned (None: a job
    #: planned before progress was counted in events; positions stand in for them).
    events_in_scope: int | None = None
    #: Events/s over the worker's recent window (see resilience.throttle.RecentRate), as last
    #: reported; only meaningful while a worker holds the lease.
    recent_rate: float | None = None
    #: When its position last moved forward (or it was claimed); ``updated_at`` is the
    #: worker's heartbeat (every renewal and report moves it). None: never claimed.
    advanced_at: float | None = None

    @property
    def events_done(self) -> int:
        """Events applied or parked: both are done with (the completeness check's sum)."""
        return self.events_applied + self.parked

    @property
    def scope(self) -> int:
        """Events in scope (positions in range for a job planned without a count)."""
        if self.events_in_scope is not None:
            return self.events_in_scope
        return max(0, (self.target_position or 0) - self.start_position)

    @property
    def done(self) -> int:
        """Progress against :attr:`scope`: a completed partition is all done."""
        if self.status == PartitionStatus.COMPLETED:
            return self.scope
        if self.events_in_scope is None:
            return max(0, self.position - self.start_position)
        return min(self.events_done, self.scope)

    def live(self, now: float) -> bool:
        """A worker holds it now (its lease has not expired at ``now``)."""
        return (
            self.status == PartitionStatus.RUNNING
            and self.lease_expires_at is not None
            and self.lease_expires_at > now
        )

    def remaining(self) -> int:
        return max(0, self.scope - self.done)

    def rate(self, now: float) -> float | None:
        """Events/s now: the worker's recent rate while it holds the lease, else None."""
        return self.recent_rate if self.live(now) else None

    def eta_seconds(self, now: float) -> float | None:
        remaining = self.remaining()
        if remaining == 0:
            return 0.0
        rate = self.rate(now)
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
    def events_done(self) -> int:
        """Progress of the job, in events (see :attr:`PartitionProgress.done`)."""
        return sum(p.done for p in self.partitions)

    @property
    def events_in_scope(self) -> int:
        return sum(p.scope for p in self.partitions)

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
    def paused_by_conflict(self) -> list[int]:
        """Partitions an open integrity conflict holds (``safereplay conflicts list``)."""
        return [p.partition_index for p in self.partitions if p.status == PartitionStatus.CONFLICT]

    def started_at(self) -> float | None:
        started = [p.started_at for p in self.partitions if p.started_at is not None]
        return min(started) if started else None

    def events_per_second(self, now: float) -> float:
        """Running: the sum of the live partitions' recent rates (what the throttle
        caps). Ended: the average, events done over the time from the first claim
        to the end."""
        if not self.job.active:
            started = self.started_at()
            elapsed = self.job.updated_at - started if started is not None else 0.0
            return self.events_applied / elapsed if elapsed > 0 else 0.0
        return sum(p.rate(now) or 0.0 for p in self.partitions)

    def live_leases(self, now: float) -> int:
        """Partitions a worker holds now (its lease not yet expired at ``now``)."""
        return sum(1 for p in self.partitions if p.live(now))

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

    def eta_seconds(self, now: float) -> float | None:
        """Events left over the job's rate now (None: no rate yet, or nothing runs)."""
        if self.job.state == JobState.COMPLETED:
            return 0.0
        remaining = sum(
            p.remaining()
            for p in self.partitions
            if p.status in (PartitionStatus.PENDING, PartitionStatus.RUNNING, PartitionStatus.HELD)
        )
        if remaining == 0:
            return 0.0
        if self.stalled(now):
            return None
        rate = self.events_per_second(now)
        return remaining / rate if rate > 0 else None


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
        p.status
        in (
            PartitionStatus.HELD,
            PartitionStatus.PENDING,
            PartitionStatus.RUNNING,
            PartitionStatus.CONFLICT,  # waits for an operator, not failed
        )
        for p in partitions
    )
    if not unfinished and any(p.status == PartitionStatus.FAILED for p in partitions):
        return JobState.FAILED
    return None

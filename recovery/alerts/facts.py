"""What the rules look at: a snapshot of facts read from the database, as plain values.

The rules (:mod:`safereplay.recovery.alerts.rules`) are pure functions of a
:class:`Snapshot`; :mod:`safereplay.recovery.alerts.reader` builds one from a
store. Tests build them by hand: every rule can be tried on any facts without a
database or a clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["Finding", "JobFacts", "ProjectionFacts", "RunnerFacts", "Sample", "Snapshot"]

Severity = Literal["warning", "critical"]


@dataclass(frozen=True)
class RunnerFacts:
    """A running job partition (``kind="worker"``) or live follower (``"follower"``).

    ``heartbeat_at``: when it last said it was alive (a lease renewal or progress
    report; a follower's beat). ``advanced_at``: when its position last moved
    forward. ``backlog``: positions or events it still has to go (0: nothing to do,
    so standing still is no stall). ``alive``: its lease has not expired (a worker),
    it has not stopped (a follower).
    """

    kind: Literal["worker", "follower"]
    projection: str
    partition: str
    position: int
    heartbeat_at: float
    advanced_at: float
    backlog: int
    alive: bool = True
    job_id: str | None = None

    @property
    def subject(self) -> str:
        """What an alert about this runner is about (one open alert per rule and subject)."""
        if self.job_id is not None:
            return f"job:{self.job_id}/partition:{self.partition}"
        return f"follower:{self.projection}/{self.partition}"


@dataclass(frozen=True)
class Sample:
    """A projection's cumulative figures at one moment (one per evaluation at most
    every few seconds): the log's head, the live build's position, events parked on
    it so far (re-driven and skipped ones included) and retries of its runners."""

    at: float
    head: int
    position: int
    parked: int
    retries: int

    @property
    def lag(self) -> int:
        return max(0, self.head - self.position)


@dataclass(frozen=True)
class ProjectionFacts:
    """A projection's samples, oldest first; the last one is now."""

    projection: str
    samples: Sequence[Sample]


@dataclass(frozen=True)
class JobFacts:
    """A job: when it was planned, and what it applied against what it was planned for."""

    job_id: str
    projection: str
    kind: str
    state: str
    created_at: float
    active: bool
    events_applied: int
    events_in_scope: int


@dataclass(frozen=True)
class Snapshot:
    """Everything the rules look at, taken at ``now`` (the database's clock)."""

    now: float
    runners: Sequence[RunnerFacts] = ()
    projections: Sequence[ProjectionFacts] = ()
    jobs: Sequence[JobFacts] = field(default_factory=tuple)


@dataclass(frozen=True)
class Finding:
    """A rule's verdict on one subject: what an open alert holds."""

    rule: str
    subject: str
    severity: Severity
    message: str
    value: float
    threshold: float
    projection: str | None = None
    job_id: str | None = None

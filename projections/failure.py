"""The failure-policy seam: what the runner does when an event cannot be applied.

When a handler raises (or an event cannot be decrypted or decoded), the runner
discards the batch's buffer, re-applies and commits the events before the failing
one, and then asks a :class:`FailurePolicy` for a :class:`Decision` about the
failing event:

- ``Decision.retry(delay)``: wait ``delay`` seconds (interruptible by stop), then
  apply the event again; the next failure of it comes with ``attempt + 1``;
- ``Decision.park(reason)``: record the event as parked (position, aggregate,
  event type, error type and message, attempts; never the payload) in the same
  transaction as the position that moves past it. Later events of the same
  aggregate are then parked behind it without calling the handler, so that
  per-aggregate order holds while other aggregates move on;
- ``Decision.fail(reason)``: stop with :class:`~safereplay.projections.errors.HandlerFailed`.

The default, :class:`FailFast`, fails at once. Richer policies (retry-then-fail,
retry-then-park, circuit breaking) plug in without any change to the runner.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable
from uuid import UUID

from safereplay.domain.envelope import Envelope

__all__ = ["Decision", "EventFailure", "EventRef", "FailFast", "FailurePolicy"]

Action = Literal["retry", "park", "fail"]


@dataclass(frozen=True)
class EventRef:
    """Where an event is, and what it is: no payload."""

    position: int
    aggregate_id: UUID
    aggregate_version: int
    topic: str

    @property
    def event_type(self) -> str:
        """The event class's qualified name (from the topic ``module:Qual.Name``)."""
        return self.topic.rpartition(":")[2] or self.topic


@dataclass(frozen=True)
class EventFailure:
    """One failure to apply one event, as handed to a :class:`FailurePolicy`.

    ``stage`` is ``"decode"`` when the event could not be decrypted or decoded
    (``envelope`` is then None), ``"apply"`` when the handler raised. ``attempt``
    is 1 for the first failure of this event in this runner.
    """

    projection: str
    build: int
    partition_index: int
    partition_count: int
    event: EventRef
    envelope: Envelope | None
    error: BaseException
    attempt: int
    stage: Literal["decode", "apply"]


@dataclass(frozen=True)
class Decision:
    """What to do with a failed event: retry after ``delay`` seconds, park, or fail."""

    action: Action
    delay: float = 0.0
    reason: str = ""

    def __post_init__(self) -> None:
        if self.action not in ("retry", "park", "fail"):
            raise ValueError(f"unknown decision {self.action!r}")
        if self.delay < 0:
            raise ValueError("a retry delay cannot be negative")

    @classmethod
    def retry(cls, delay: float = 0.0, reason: str = "") -> Decision:
        return cls("retry", delay, reason)

    @classmethod
    def park(cls, reason: str = "") -> Decision:
        return cls("park", 0.0, reason)

    @classmethod
    def fail(cls, reason: str = "") -> Decision:
        return cls("fail", 0.0, reason)


@runtime_checkable
class FailurePolicy(Protocol):
    """Decides what happens to an event that could not be applied."""

    def decide(self, failure: EventFailure) -> Decision: ...


class FailFast:
    """The default policy: stop at the first failure."""

    def decide(self, failure: EventFailure) -> Decision:
        return Decision.fail("the default failure policy stops at the first failure")

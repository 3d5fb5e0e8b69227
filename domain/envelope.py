"""The event envelope: what every stored event carries besides its payload.

Recorded with the event (inside its encrypted state):

- ``occurred_at`` — timezone-aware UTC timestamp (eventsourcing's ``timestamp``);
- ``source`` — the component or actor that recorded it;
- ``correlation_id`` — shared by every event caused, directly or not, by one request;
- ``causation_id`` — the command (or event) that directly caused it, if known;
- ``schema_version`` — the event class's ``class_version`` when it was written.

Derived, identical on every read and every replay:

- ``event_id`` — UUIDv5 of ``(aggregate id, version)``: the same event always has
  the same id, so a replayed event is recognisably the one seen before;
- ``position`` — its notification id in the application's notification log.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID, uuid4, uuid5

__all__ = [
    "EVENT_ID_NAMESPACE",
    "Envelope",
    "RecordingContext",
    "current_recording_context",
    "event_id_for",
    "recording",
]

#: Namespace of deterministic event ids (uuid5 over "aggregate-id/version").
EVENT_ID_NAMESPACE = UUID("5a4e7e1b-9d3c-4f3e-8f1a-2b6c0d9e7a10")


def event_id_for(aggregate_id: UUID | str, version: int) -> UUID:
    """The deterministic id of the event at ``version`` of ``aggregate_id``."""
    return uuid5(EVENT_ID_NAMESPACE, f"{aggregate_id}/{version}")


@dataclass(frozen=True)
class RecordingContext:
    """Who is recording, and on whose behalf; stamped on every event recorded inside it."""

    source: str
    correlation_id: UUID
    causation_id: UUID | None = None


_context: contextvars.ContextVar[RecordingContext | None] = contextvars.ContextVar(
    "safereplay_recording_context", default=None
)


def current_recording_context() -> RecordingContext:
    """The active context, or a fresh one (source ``"unspecified"``) outside any."""
    ctx = _context.get()
    if ctx is None:
        return RecordingContext(source="unspecified", correlation_id=uuid4())
    return ctx


@contextmanager
def recording(
    *, source: str, correlation_id: UUID | None = None, causation_id: UUID | None = None
) -> Iterator[RecordingContext]:
    """Stamp events triggered inside the block with this source and correlation.

    A context variable rather than a parameter threaded through every aggregate
    method: it is per thread and per asyncio task, so concurrent requests never
    see each other's metadata.
    """
    if not source:
        raise ValueError("source must not be empty")
    ctx = RecordingContext(
        source=source, correlation_id=correlation_id or uuid4(), causation_id=causation_id
    )
    token = _context.set(ctx)
    try:
        yield ctx
    finally:
        _context.reset(token)


@dataclass(frozen=True)
class Envelope:
    """One stored event as a reader sees it: metadata plus the decoded event."""

    position: int | None
    event_id: UUID
    aggregate_id: UUID
    aggregate_version: int
    topic: str
    event_type: str
    schema_version: int
    occurred_at: datetime
    source: str
    correlation_id: UUID
    causation_id: UUID | None
    payload: Mapping[str, Any]
    event: Any

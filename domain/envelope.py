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
from collections.abc import Callable, Iterator, Mapping
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
    "derived_envelope",
    "event_id_for",
    "payload_value",
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


# -- fast construction, derived fields on first read ----------------------------------------
#
# A catch-up decodes tens of thousands of envelopes a second and most handlers read
# a few fields of each. The readers' constructor (derived_envelope) therefore leaves
# out what is derived from the rest — the uuid5 event id, the correlation id of an
# event recorded without one, the payload (the state less the envelope fields) —
# and each is computed on its first read, then kept. Envelope stays a frozen
# dataclass with the same fields, equality, repr and dataclasses.asdict.


class _Derived:
    """A data descriptor over one field: the stored value, else computed and kept."""

    __slots__ = ("compute", "name")

    def __init__(self, name: str, compute: Callable[[dict[str, Any]], Any]) -> None:
        self.name = name
        self.compute = compute

    def __get__(self, obj: Any, owner: type[Any] | None = None) -> Any:
        if obj is None:
            return self
        values: dict[str, Any] = obj.__dict__
        try:
            return values[self.name]
        except KeyError:
            value = values[self.name] = self.compute(values)
            return value

    def __set__(self, obj: Any, value: Any) -> None:
        # Reached only through object.__setattr__ (the dataclass __init__); assigning
        # on an instance raises FrozenInstanceError in Envelope.__setattr__ first.
        obj.__dict__[self.name] = value


def _event_id(values: dict[str, Any]) -> UUID:
    return event_id_for(values["aggregate_id"], values["aggregate_version"])


def _correlation_id(values: dict[str, Any]) -> UUID:
    # An event recorded without a correlation id is its own correlation.
    value: UUID = values["_recorded_correlation_id"] or _event_id(values)
    return value


def _payload(values: dict[str, Any]) -> Mapping[str, Any]:
    payload = dict(values["_state"])
    for name in values["_envelope_fields"]:
        payload.pop(name, None)
    return payload


for _name, _compute in (
    ("event_id", _event_id),
    ("correlation_id", _correlation_id),
    ("payload", _payload),
):
    setattr(Envelope, _name, _Derived(_name, _compute))


def payload_value(envelope: Envelope, name: str) -> Any:
    """``envelope.payload[name]`` (``KeyError`` included).

    A handler that reads one or two payload values would otherwise make the payload
    of a derived envelope (a copy of the state): a name that is not an envelope
    field is read from the state itself while the payload is not made yet.
    """
    values = envelope.__dict__
    if "payload" not in values:
        state = values.get("_state")
        if state is not None and name not in values["_envelope_fields"]:
            return state[name]
    return envelope.payload[name]


def derived_envelope(
    position: int | None,
    aggregate_id: UUID,
    aggregate_version: int,
    topic: str,
    event_type: str,
    schema_version: int,
    occurred_at: datetime,
    source: str,
    correlation_id: Any,
    causation_id: UUID | None,
    state: Mapping[str, Any],
    envelope_fields: frozenset[str],
    event: Any,
) -> Envelope:
    """An envelope whose ``event_id``, ``payload`` and (when ``correlation_id`` is
    falsy) ``correlation_id`` are derived on first read.

    ``payload`` is ``state`` less ``envelope_fields``; ``correlation_id`` falls back
    to the event id. Equal to the :class:`Envelope` built with those values.
    """
    values: dict[str, Any] = {
        "position": position,
        "aggregate_id": aggregate_id,
        "aggregate_version": aggregate_version,
        "topic": topic,
        "event_type": event_type,
        "schema_version": schema_version,
        "occurred_at": occurred_at,
        "source": source,
        "causation_id": causation_id,
        "event": event,
        "_recorded_correlation_id": correlation_id,
        "_state": state,
        "_envelope_fields": envelope_fields,
    }
    if correlation_id:
        values["correlation_id"] = correlation_id
    envelope = object.__new__(Envelope)
    object.__setattr__(envelope, "__dict__", values)
    return envelope

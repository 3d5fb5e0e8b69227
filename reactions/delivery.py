"""What a reaction sends, and what came of it: :class:`Delivery` and :class:`DeliveryOutcome`.

A :class:`Delivery` is one event owed to one destination by one reaction. Its
:attr:`~Delivery.idempotency_key` is derived, never drawn: a UUIDv5 of
``(reaction name, destination name, event id)`` (:func:`idempotency_key`), so the
same event sent to the same destination by the same reaction carries the same key
on every attempt, after every crash and on every re-delivery, and a receiver that
remembers keys can drop the repeats that at-least-once delivery may produce. The
reaction's *version* is deliberately not part of it: a new version of a reaction
re-sending an event is still the same delivery to the receiver.

The payload is the decrypted event's *public form* (:func:`public_form`): the
envelope's identifying fields and the event's own payload, as JSON types. It lives
only in memory, for the call: the ledger never stores it (see
:mod:`safereplay.reactions.ledger`), and no message or log line carries it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal
from uuid import UUID, uuid5

import orjson

from safereplay.domain.envelope import Envelope

__all__ = [
    "IDEMPOTENCY_NAMESPACE",
    "Delivery",
    "DeliveryOutcome",
    "OutcomeKind",
    "idempotency_key",
    "public_form",
]

#: Namespace of idempotency keys (uuid5 over ``reaction/destination/event id``).
IDEMPOTENCY_NAMESPACE = UUID("0b8f3a52-6c1e-5d7a-9e24-7f31c2a4d0e9")

#: Longest ``detail`` an outcome keeps (a line for an operator, not a response body).
MAX_DETAIL = 300


def idempotency_key(reaction: str, destination: str, event_id: UUID) -> str:
    """The key of ``event_id``'s delivery to ``destination`` by ``reaction`` (a UUID string)."""
    return str(uuid5(IDEMPOTENCY_NAMESPACE, f"{reaction}/{destination}/{event_id}"))


def public_form(envelope: Envelope) -> dict[str, Any]:
    """The decrypted event as JSON types: what a delivery sends by default.

    ``event_id``, ``position``, ``aggregate_id``, ``aggregate_version``,
    ``event_type``, ``occurred_at`` (ISO 8601), ``correlation_id``,
    ``causation_id`` and ``payload`` (the event's own fields; UUIDs and times as
    strings). Not included: the topic (a Python module path), the recording
    ``source`` and the schema version (the event class's internals).
    """
    form = {
        "event_id": envelope.event_id,
        "position": envelope.position,
        "aggregate_id": envelope.aggregate_id,
        "aggregate_version": envelope.aggregate_version,
        "event_type": envelope.event_type,
        "occurred_at": envelope.occurred_at,
        "correlation_id": envelope.correlation_id,
        "causation_id": envelope.causation_id,
        "payload": dict(envelope.payload),
    }
    # One JSON round trip: UUIDs, datetimes and nested values come back as JSON types
    # (anything else by its str()), so every destination sends the same shapes.
    value: dict[str, Any] = orjson.loads(
        orjson.dumps(form, default=str, option=orjson.OPT_NON_STR_KEYS)
    )
    return value


@dataclass(frozen=True)
class Delivery:
    """One event owed to one destination by one reaction.

    ``payload`` is read-only (a mapping proxy over the public form, or over what the
    reaction chose to send). Build one with :meth:`of` so that the key is derived.
    """

    reaction: str
    destination: str
    event_id: UUID
    position: int
    aggregate_id: UUID
    aggregate_version: int
    event_type: str
    idempotency_key: str
    payload: Mapping[str, Any] = field(repr=False, compare=False, hash=False)

    @classmethod
    def of(
        cls,
        reaction: str,
        destination: str,
        envelope: Envelope,
        payload: Mapping[str, Any] | None = None,
    ) -> Delivery:
        """``envelope`` owed to ``destination``: ``payload`` (default: its public form)."""
        if envelope.position is None:
            raise ValueError("a delivery is of an event read from the log (it has a position)")
        body = public_form(envelope) if payload is None else dict(payload)
        return cls(
            reaction=reaction,
            destination=destination,
            event_id=envelope.event_id,
            position=envelope.position,
            aggregate_id=envelope.aggregate_id,
            aggregate_version=envelope.aggregate_version,
            event_type=envelope.event_type,
            idempotency_key=idempotency_key(reaction, destination, envelope.event_id),
            payload=MappingProxyType(body),
        )


#: ``delivered``: the destination acknowledged it. ``retryable``: it failed in a way
#: that may pass (timeout, 5xx, connection refused). ``permanent``: it never will as
#: sent (a 4xx the receiver will repeat): parked at once, without retries.
OutcomeKind = Literal["delivered", "retryable", "permanent"]


@dataclass(frozen=True)
class DeliveryOutcome:
    """What one attempt to send a delivery came to.

    ``status`` is the destination's own code when it has one (an HTTP status), else
    None. ``detail`` is one bounded line for operators: a status text or an error
    type, never a response body, a payload or a secret.
    """

    kind: OutcomeKind
    status: int | None = None
    detail: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("delivered", "retryable", "permanent"):
            raise ValueError(f"unknown outcome {self.kind!r}")
        line = self.detail.strip().splitlines()[0] if self.detail.strip() else ""
        if len(line) > MAX_DETAIL:
            line = line[: MAX_DETAIL - 1] + "…"
        object.__setattr__(self, "detail", line)

    @property
    def delivered(self) -> bool:
        return self.kind == "delivered"

    @classmethod
    def ok(cls, status: int | None = None, detail: str = "") -> DeliveryOutcome:
        return cls("delivered", status, detail)

    @classmethod
    def retry(cls, status: int | None = None, detail: str = "") -> DeliveryOutcome:
        return cls("retryable", status, detail)

    @classmethod
    def permanent(cls, status: int | None = None, detail: str = "") -> DeliveryOutcome:
        return cls("permanent", status, detail)

"""Base aggregate and event classes that stamp the envelope onto every event."""

from __future__ import annotations

from typing import Any, ClassVar
from uuid import UUID

from eventsourcing.domain import Aggregate

from safereplay.domain.envelope import current_recording_context, event_id_for

__all__ = ["ENVELOPE_FIELDS", "EnvelopedAggregate"]

#: Fields of every event that belong to the envelope rather than to the payload.
ENVELOPE_FIELDS = frozenset(
    {
        "originator_id",
        "originator_version",
        "originator_topic",
        "timestamp",
        "source",
        "correlation_id",
        "causation_id",
    }
)


class EnvelopedAggregate(Aggregate):
    """An eventsourcing ``Aggregate`` whose events carry source and correlation.

    Subclass it and trigger events with :meth:`trigger_event` (or create with
    :meth:`_create`) as with any eventsourcing aggregate; the metadata comes
    from :func:`safereplay.domain.envelope.recording`.
    """

    class Event(Aggregate.Event):
        # Declared without defaults and always supplied by trigger_event/_create,
        # so subclasses may still declare payload fields without defaults.
        source: str
        correlation_id: UUID
        causation_id: UUID | None

        #: Names this event type at the edge (JSON imports); defaults to the class name.
        edge_name: ClassVar[str] = ""

        @property
        def event_id(self) -> UUID:
            return event_id_for(self.originator_id, self.originator_version)

    class Created(Event, Aggregate.Created):
        pass

    @staticmethod
    def _envelope_kwargs() -> dict[str, Any]:
        ctx = current_recording_context()
        return {
            "source": ctx.source,
            "correlation_id": ctx.correlation_id,
            "causation_id": ctx.causation_id,
        }

    @classmethod
    def _create(cls, event_class: Any, *, id: Any = None, **kwargs: Any) -> Any:
        for key, value in cls._envelope_kwargs().items():
            kwargs.setdefault(key, value)
        return super()._create(event_class, id=id, **kwargs)

    def trigger_event(self, event_class: Any, **kwargs: Any) -> None:
        for key, value in self._envelope_kwargs().items():
            kwargs.setdefault(key, value)
        super().trigger_event(event_class, **kwargs)

"""Where events come from: the notification log, read in bounded, filtered batches.

An :class:`EventSource` reads one application's notification log. It never reads
past the log's high-water mark (:mod:`safereplay.projections.watermark`): a runner asks
:meth:`EventSource.high_water_mark` first and reads ``after < position <= mark``.
Filtering happens in the database, by topic (the event types the projection
handles) and by partition (a stable hash of the aggregate id), so a worker is
shipped only the rows it applies.

The partition of an aggregate is ``int.from_bytes(id.bytes[:4], "big") % count``:
the first 32 bits of the UUID, which are random for the UUIDv4 and UUIDv5 ids
eventsourcing and safereplay use. Both backends compute it in SQL (see
:mod:`safereplay.projections.source_sql`); :func:`partition_of` is the same
function in Python.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal
from uuid import UUID

from eventsourcing.persistence import Notification

from safereplay.domain.envelope import Envelope
from safereplay.domain.mapper import EnvelopeMapper
from safereplay.projections.errors import ProjectionError
from safereplay.projections.watermark import HighWaterMark, SkippedHole

__all__ = [
    "READ_AHEAD_MODES",
    "EventSource",
    "Partition",
    "ReadAheadMode",
    "notification_of",
    "partition_of",
]

#: How a runner reads ahead (:mod:`safereplay.projections.read_ahead`).
ReadAheadMode = Literal["off", "read", "decode"]
READ_AHEAD_MODES: tuple[ReadAheadMode, ...] = ("off", "read", "decode")

#: The largest partition count: partitions are taken from 32 bits of the id.
MAX_PARTITIONS = 4096


def partition_of(aggregate_id: UUID, count: int) -> int:
    """The partition (``0 <= p < count``) of an aggregate."""
    return int.from_bytes(aggregate_id.bytes[:4], "big") % count


@dataclass(frozen=True, order=True)
class Partition:
    """Partition ``index`` of ``count``; ``Partition()`` is the whole log."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.count <= MAX_PARTITIONS:
            raise ValueError(f"partition count must be between 1 and {MAX_PARTITIONS}")
        if not 0 <= self.index < self.count:
            raise ValueError(f"partition index must be between 0 and {self.count - 1}")

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def is_whole(self) -> bool:
        return self.count == 1

    def contains(self, aggregate_id: UUID) -> bool:
        return self.count == 1 or partition_of(aggregate_id, self.count) == self.index

    @classmethod
    def all(cls, count: int) -> tuple[Partition, ...]:
        """Every partition of a ``count``-way split."""
        return tuple(cls(i, count) for i in range(count))


#: The whole log as one partition.
WHOLE = Partition()

_new_object = object.__new__
_set_attribute = object.__setattr__


def notification_of(
    position: int, originator_id: UUID, version: int, topic: str, state: bytes
) -> Notification:
    """``Notification(id=position, ...)``, equal to it, for the sources' read paths:
    without the frozen dataclass's ``__init__``, which sets each field through
    ``object.__setattr__`` (three times the cost, per event)."""
    notification: Notification = _new_object(Notification)
    _set_attribute(
        notification,
        "__dict__",
        {
            "originator_id": originator_id,
            "originator_version": version,
            "topic": topic,
            "state": state,
            "id": position,
        },
    )
    return notification


class EventSource(ABC):
    """One application's notification log, read in batches below its high-water mark.

    ``mapper`` decrypts and decodes; a source without one can still report the head
    and the high-water mark (``safereplay status`` needs no key ring).
    """

    #: How a runner reads ahead from this source by default (measured per backend:
    #: docs/benchmarks.md): off here; a source whose reads and commits wait on a server
    #: with the GIL released says otherwise.
    read_ahead: ReadAheadMode = "off"

    def __init__(self, watermark: HighWaterMark, mapper: EnvelopeMapper | None) -> None:
        self.watermark = watermark
        self.mapper = mapper

    @property
    @abstractmethod
    def description(self) -> str:
        """Which log this is (no secrets), for messages."""

    def high_water_mark(self) -> int:
        """The safe head: every position ``<=`` it is committed or a dead hole."""
        return self.watermark.advance()

    def skipped_holes(self, *, after: int = 0, upto: int | None = None) -> list[SkippedHole]:
        return self.watermark.skipped_holes(after=after, upto=upto)

    def held_since(self) -> datetime | None:
        """When the oldest position above the mark still in doubt was first seen
        (None when nothing holds the mark back); see :meth:`high_water_mark`."""
        return self.watermark.held_since()

    @abstractmethod
    def head(self) -> int:
        """The largest position in the log (0 when empty); may be above the mark."""

    @abstractmethod
    def read(
        self,
        *,
        after: int,
        upto: int,
        limit: int,
        topics: Sequence[str] = (),
        partition: Partition = WHOLE,
    ) -> list[Notification]:
        """Notifications with ``after < position <= upto``, in position order.

        Only ``topics`` (all when empty) and only aggregates of ``partition``; at
        most ``limit``.
        """

    @abstractmethod
    def count(
        self, *, after: int, upto: int, topics: Sequence[str] = (), partition: Partition = WHOLE
    ) -> int:
        """How many notifications :meth:`read` would return without a limit."""

    def count_by_partition(
        self, *, after: int, upto: int, partitions: int, topics: Sequence[str] = ()
    ) -> list[int]:
        """:meth:`count` of each of ``partitions`` partitions, by index. This default
        counts one partition after another; an SQL source counts them in one scan."""
        return [
            self.count(after=after, upto=upto, topics=topics, partition=partition)
            for partition in Partition.all(partitions)
        ]

    @property
    def notifies(self) -> bool:
        """True when :meth:`wait` is woken by the database (else it only sleeps)."""
        return False

    def wait(self, timeout: float, stop: threading.Event | None = None) -> bool:
        """Block until new events may have been committed, ``timeout`` passes or
        ``stop`` is set. True when woken by a notification.

        The default has no notifications: it sleeps. A caller must re-poll after
        any return: a notification is only a hint.
        """
        (stop or threading.Event()).wait(timeout)
        return False

    def decode(self, notification: Notification) -> Envelope:
        """Decrypt and decode one notification into an envelope with its position."""
        if self.mapper is None:
            raise ProjectionError(
                f"{self.description} was opened without a mapper (key ring): it cannot "
                "decode events"
            )
        return self.mapper.to_envelope(notification)

    def ensure_schema(self) -> None:
        """Check (and set up, if allowed) the tables the source's watermark keeps."""
        self.watermark.ensure_schema()

    def close(self) -> None:
        self.watermark.close()

    def __enter__(self) -> EventSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

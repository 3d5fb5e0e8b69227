"""The event sources' SQL, written once for both backends (see :mod:`~.sqltemplate`).

Reads of eventsourcing's notification log: its head, and the count and the rows
of a range ``after < position <= upto``, filtered in the database by topic and
by partition (:mod:`safereplay.projections.source`). The slot ``{events}`` is the
log's table. Placeholders are positional: a read binds a list of topics, whose
length shapes the statement on SQLite.

Where the backends differ, both spellings sit side by side (:data:`POSITION`,
:data:`TOPIC_FILTER`, :data:`PARTITION_FILTER`), with the reason. A source renders
each statement once per filter shape (:func:`range_statements`) and keeps it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from safereplay.projections.source import Partition
from safereplay.projections.sqltemplate import Q, Renderer, slots

__all__ = [
    "PARTITION_FILTER",
    "PARTITION_HASH",
    "POSITION",
    "TOPIC_FILTER",
    "count_by_partition_statement",
    "head_statement",
    "partition_hash",
    "range_parameters",
    "range_statements",
]

Dialect = Literal["sqlite", "postgres"]

# -- where the backends differ ----------------------------------------------------------

#: The position column. eventsourcing's SQLite recorder numbers notifications by
#: the table's ``rowid``; its PostgreSQL recorder by a ``notification_id`` sequence.
POSITION: Mapping[Dialect, str] = {"sqlite": "rowid", "postgres": "notification_id"}

#: Keep the projection's topics. PostgreSQL binds them as one array; SQLite has
#: no arrays: one placeholder per topic (slot ``{topics}``), a statement per count.
TOPIC_FILTER: Mapping[Dialect, str] = {
    "postgres": " AND topic = ANY(%s)",
    "sqlite": " AND topic IN ({topics})",
}

#: Keep one partition (bound: the partition count, then the index). Both compute
#: :func:`~safereplay.projections.source.partition_of` (the id's first 32 bits,
#: modulo the count): PostgreSQL in SQL (:data:`PARTITION_HASH`, slot ``{hash}``),
#: SQLite, which has no bit strings, with the function ``safereplay_partition``
#: that the source registers on its connection.
PARTITION_FILTER: Mapping[Dialect, str] = {
    "postgres": " AND {hash} %% %s = %s",
    "sqlite": " AND safereplay_partition(originator_id, %s) = %s",
}

#: The partition of a row (bound: the partition count), as :data:`PARTITION_FILTER`
#: computes it.
PARTITION_OF: Mapping[Dialect, str] = {
    "postgres": "{hash} %% %s",
    "sqlite": "safereplay_partition(originator_id, %s)",
}

#: PostgreSQL: the partition hash of a uuid ``{column}``, without the modulo.
PARTITION_HASH = "(('x' || substr({column}::text, 1, 8))::bit(32)::bigint)"

# -- the statements ---------------------------------------------------------------------

HEAD = "SELECT MAX({position}) FROM {events}"
_RANGE = " FROM {events} WHERE {position} > %s AND {position} <= %s{topics}{partition}"
COUNT = "SELECT COUNT(*)" + _RANGE
#: Every partition's count in one scan of the range (a plan's scope: one scan, not one
#: per partition, which on a big log is what planning costs).
COUNT_BY_PARTITION = "SELECT {partition_of}, COUNT(*)" + _RANGE + " GROUP BY 1"
READ = (
    "SELECT {position}, originator_id, originator_version, topic, state"
    + _RANGE
    + " ORDER BY {position} LIMIT %s"
)


def head_statement(r: Renderer[Q], events: str) -> Q:
    return r.render(HEAD, events=r.table(events), position=r.name(POSITION[r.dialect]))


def partition_hash(r: Renderer[Q], column: str = "originator_id") -> Q:
    """PostgreSQL's partition hash of ``column`` (:data:`PARTITION_HASH`)."""
    return r.render(PARTITION_HASH, column=r.name(column))


def _topic_filter(r: Renderer[Q], topics: int) -> Q:
    if not topics:
        return r.text("")
    marks = r.join((r.render("%s") for _ in range(topics)), ", ")
    return r.render(TOPIC_FILTER[r.dialect], topics=marks)


def _with_partition_hash(r: Renderer[Q], template: str) -> Q:
    """``template`` rendered, with PostgreSQL's partition hash in its ``{hash}`` slot."""
    hashed = {"hash": partition_hash(r)} if "hash" in slots(template) else {}
    return r.render(template, **hashed)


def count_by_partition_statement(r: Renderer[Q], events: str, *, topics: int) -> Q:
    """``(partition, count)`` rows of a range, for ``topics`` topics (0: all); bind the
    partition count, then :func:`range_parameters` of the whole log."""
    return r.render(
        COUNT_BY_PARTITION,
        partition_of=_with_partition_hash(r, PARTITION_OF[r.dialect]),
        events=r.table(events),
        position=r.name(POSITION[r.dialect]),
        topics=_topic_filter(r, topics),
        partition=r.text(""),
    )


def range_statements(r: Renderer[Q], events: str, *, topics: int, whole: bool) -> tuple[Q, Q]:
    """``(count, read)`` of a range, for ``topics`` topics (0: all) and a partition
    (or the ``whole`` log); bind :func:`range_parameters` (and the limit, to read)."""
    topic_filter = _topic_filter(r, topics)
    partition_filter = r.text("") if whole else _with_partition_hash(r, PARTITION_FILTER[r.dialect])
    pieces = {
        "events": r.table(events),
        "position": r.name(POSITION[r.dialect]),
        "topics": topic_filter,
        "partition": partition_filter,
    }
    return r.render(COUNT, **pieces), r.render(READ, **pieces)


def range_parameters(
    dialect: Dialect, after: int, upto: int, topics: Sequence[str], partition: Partition
) -> list[Any]:
    """The parameters of :func:`range_statements`' statements, the read's limit excepted."""
    params: list[Any] = [after, upto]
    if topics:
        params += [list(topics)] if dialect == "postgres" else topics
    if not partition.is_whole:
        params += [partition.count, partition.index]
    return params

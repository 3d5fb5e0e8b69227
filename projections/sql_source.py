"""The event sources' reads, written once for both SQL backends.

:class:`SQLEventSource` counts and reads a range of the notification log with
:mod:`~safereplay.projections.source_sql`'s statements, rendered by the backend's
renderer once per filter shape and kept. A backend
(:mod:`~safereplay.projections.sqlite_source`,
:mod:`~safereplay.projections.postgres_source`) gives it what is its own: how a
statement runs on its connection (:meth:`~SQLEventSource._fetch`: errors
translated, a log whose table does not exist yet read as empty), how many topic
placeholders a statement has (:meth:`~SQLEventSource._topic_shape`), and how its
rows become notifications (:meth:`~SQLEventSource._notifications`, where each
driver returns ids and states its own way). A read calls each hook once, never
per row.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import Any, Generic

from eventsourcing.persistence import Notification

from safereplay.domain.mapper import EnvelopeMapper
from safereplay.projections.source import WHOLE, EventSource, Partition
from safereplay.projections.source_sql import (
    count_by_partition_statement,
    head_statement,
    range_parameters,
    range_statements,
)
from safereplay.projections.sqltemplate import Q, Renderer
from safereplay.projections.watermark import HighWaterMark

__all__ = ["SQLEventSource"]


class SQLEventSource(EventSource, Generic[Q]):
    """A notification log in the SQL table ``table``, its backend's hooks abstract."""

    def __init__(
        self,
        watermark: HighWaterMark,
        mapper: EnvelopeMapper | None,
        *,
        renderer: Renderer[Q],
        table: str,
    ) -> None:
        super().__init__(watermark, mapper)
        self.table = table
        self._render: Renderer[Q] = renderer
        self._head: Q = head_statement(renderer, table)
        #: (count, read) per (topic placeholders, whole log?).
        self._statements: dict[tuple[int, bool], tuple[Q, Q]] = {}

    # -- the backend's hooks --------------------------------------------------------------

    @staticmethod
    @abstractmethod
    def _topic_shape(topics: Sequence[str]) -> int:
        """How many topic placeholders a statement for ``topics`` has (0: all topics)."""

    @abstractmethod
    def _fetch(
        self, what: str, statement: Q, params: Sequence[Any], *, binary: bool = False
    ) -> list[Any]:
        """The rows of ``statement``, none when the log's table does not exist yet;
        ``binary``: the rows' states are read, as bytes where the driver can."""

    @abstractmethod
    def _notifications(self, rows: list[Any]) -> list[Notification]:
        """The rows of a read (position, id, version, topic, state) as notifications."""

    # -- reads ----------------------------------------------------------------------------

    def _range(self, topics: Sequence[str], partition: Partition) -> tuple[Q, Q]:
        key = (self._topic_shape(topics), partition.is_whole)
        statements = self._statements.get(key)
        if statements is None:
            statements = self._statements[key] = range_statements(
                self._render, self.table, topics=key[0], whole=partition.is_whole
            )
        return statements

    def count(
        self, *, after: int, upto: int, topics: Sequence[str] = (), partition: Partition = WHOLE
    ) -> int:
        if upto <= after:
            return 0
        statement, _ = self._range(topics, partition)
        params = range_parameters(self._render.dialect, after, upto, topics, partition)
        rows = self._fetch("count", statement, params)
        return int(rows[0][0]) if rows else 0

    def count_by_partition(
        self, *, after: int, upto: int, partitions: int, topics: Sequence[str] = ()
    ) -> list[int]:
        if partitions < 2 or upto <= after:
            return super().count_by_partition(
                after=after, upto=upto, partitions=partitions, topics=topics
            )
        statement = count_by_partition_statement(
            self._render, self.table, topics=self._topic_shape(topics)
        )
        params = [partitions, *range_parameters(self._render.dialect, after, upto, topics, WHOLE)]
        counts = [0] * partitions
        for partition, count in self._fetch("count", statement, params):
            counts[int(partition)] = int(count)
        return counts

    def read(
        self,
        *,
        after: int,
        upto: int,
        limit: int,
        topics: Sequence[str] = (),
        partition: Partition = WHOLE,
    ) -> list[Notification]:
        if upto <= after or limit < 1:
            return []
        _, statement = self._range(topics, partition)
        params = range_parameters(self._render.dialect, after, upto, topics, partition)
        params.append(limit)
        return self._notifications(self._fetch("read", statement, params, binary=True))

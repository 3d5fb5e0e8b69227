"""The SQLite event source: eventsourcing's ``stored_events`` notification log.

Positions are the table's ``rowid``; ``originator_id`` is stored as 32-character
hex text. The source reads on its own read-only connection, on which it
registers the deterministic SQL function ``safereplay_partition(originator_id,
count)`` (the first 32 bits of the id, modulo ``count``, as
:func:`safereplay.projections.source.partition_of`). Its statements are
:mod:`~safereplay.projections.source_sql`'s templates, rendered once per filter
shape by :class:`~safereplay.projections.sql_source.SQLEventSource`, whose reads
these are; this module keeps the connection and how its rows are decoded.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from uuid import UUID

from eventsourcing.persistence import Notification

from safereplay.domain.mapper import EnvelopeMapper, uuid_from_text
from safereplay.projections.source import notification_of
from safereplay.projections.sql_source import SQLEventSource
from safereplay.projections.sqlite_connection import close_quietly, connect, translate
from safereplay.projections.sqltemplate import SQLiteRenderer
from safereplay.projections.watermark import SQLiteHighWaterMark

__all__ = ["SQLiteEventSource"]


def _partition_sql_function(originator_id: Any, count: int) -> int:
    if isinstance(originator_id, str) and len(originator_id) == 32:
        return int(originator_id[:8], 16) % count
    return int.from_bytes(UUID(str(originator_id)).bytes[:4], "big") % count


class SQLiteEventSource(SQLEventSource[str]):
    """eventsourcing's SQLite notification log (``stored_events``, position ``rowid``)."""

    def __init__(
        self,
        path: Path | str,
        *,
        mapper: EnvelopeMapper | None = None,
        table: str = "stored_events",
        busy_timeout: float = 30.0,
    ) -> None:
        super().__init__(
            SQLiteHighWaterMark(path, table=table), mapper, renderer=SQLiteRenderer(), table=table
        )
        self.path = Path(path)
        self._busy_timeout = busy_timeout
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    @property
    def description(self) -> str:
        return f"SQLite event log {str(self.path)!r}"

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            uri = self.path.absolute().as_uri() + "?mode=ro"
            conn = connect(uri, uri=True, busy_timeout=self._busy_timeout)
            conn.create_function(
                "safereplay_partition", 2, _partition_sql_function, deterministic=True
            )
            self._conn = conn
        return self._conn

    def _fetch(
        self, what: str, statement: str, params: Sequence[Any], *, binary: bool = False
    ) -> list[Any]:
        # (States are BLOBs, read as bytes anyway: nothing to ask for when ``binary``.)
        with self._lock:
            try:
                return self._connection().execute(statement, params).fetchall()
            except sqlite3.OperationalError as exc:
                if "no such table" in str(exc):
                    return []
                raise translate(exc, self.description) from exc
            except sqlite3.Error as exc:
                raise translate(exc, self.description) from exc

    @staticmethod
    def _topic_shape(topics: Sequence[str]) -> int:
        # No arrays: one placeholder per topic, so a statement per number of topics.
        return len(topics)

    def high_water_mark(self) -> int:
        try:
            return super().high_water_mark()
        except sqlite3.Error as exc:
            if "unable to open" in str(exc):
                return 0  # no database yet: an empty log
            raise translate(exc, f"{self.description}: high-water mark") from exc

    def head(self) -> int:
        rows = self._fetch("head", self._head, ())
        return int(rows[0][0] or 0) if rows else 0

    def _notifications(self, rows: list[Any]) -> list[Notification]:
        # Per row: the notification's fields set directly (what the frozen dataclass's
        # __init__ does, at a third of its cost). Aggregates recur within a batch: one
        # (immutable) UUID per distinct id text, parsed by the mapper's parser for the
        # 32 hex digits eventsourcing stores (the same UUID as UUID(text)).
        ids: dict[str, UUID] = {}
        notifications = []
        for rowid, originator_id, version, topic, state in rows:
            aggregate_id = ids.get(originator_id)
            if aggregate_id is None:
                aggregate_id = ids[originator_id] = uuid_from_text(originator_id)
            notifications.append(
                notification_of(int(rowid), aggregate_id, int(version), topic, bytes(state))
            )
        return notifications

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
            close_quietly(conn)
        super().close()

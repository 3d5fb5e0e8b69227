"""The PostgreSQL event source: eventsourcing's ``{schema}.{app}_events`` notification log.

It reads below the high-water mark of
:class:`~safereplay.projections.postgres_watermark.PostgresHighWaterMark`, filtering
by topic and by partition in the query. The partition of an aggregate is
computed from the first 8 hex digits of its id (:func:`partition_expression`),
the same value as :func:`safereplay.projections.source.partition_of`. Its
statements are :mod:`~safereplay.projections.source_sql`'s templates, composed
with ``psycopg.sql`` once per filter shape by
:class:`~safereplay.projections.sql_source.SQLEventSource`, whose reads these are;
this module keeps the connections and how rows are fetched and decoded.

Live following LISTENs on the table's channel (eventsourcing NOTIFYs it on
insert) on a separate connection; a notification only wakes the runner, which
re-polls on a timer anyway, and a lost listening connection is reopened with
back-off.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from contextlib import suppress
from typing import Any
from uuid import UUID

import psycopg
from eventsourcing.persistence import Notification
from psycopg import sql
from psycopg.conninfo import make_conninfo

from safereplay.domain.mapper import EnvelopeMapper
from safereplay.domain.secret import Conninfo
from safereplay.projections.errors import DatabaseUnavailable, StoreError, WatermarkError
from safereplay.projections.postgres_connection import TRANSIENT, Connection, first_line
from safereplay.projections.postgres_watermark import PostgresHighWaterMark
from safereplay.projections.source import ReadAheadMode, notification_of
from safereplay.projections.source_sql import partition_hash
from safereplay.projections.sql_source import SQLEventSource
from safereplay.projections.sqltemplate import PostgresRenderer

__all__ = ["PostgresEventSource", "partition_expression"]

logger = logging.getLogger(__name__)


def partition_expression(column: str = "originator_id") -> sql.Composable:
    """SQL for the partition hash of ``column`` (a uuid), without the modulo."""
    # No table in it: the schema the renderer would qualify tables with is unused.
    return partition_hash(PostgresRenderer("public"), column)


class PostgresEventSource(SQLEventSource[sql.Composed]):
    """eventsourcing's PostgreSQL notification log ``{schema}.{table}``.

    ``listen`` (True) LISTENs on the table's channel to wake a following runner;
    ``watermark_options`` go to :class:`PostgresHighWaterMark`. Connections are
    named ``{application_name}-source``, ``-listen-{table}`` and ``-watermark``
    in ``pg_stat_activity``.
    """

    #: psycopg releases the GIL while the server works: read the next batch while this
    #: one commits (projections/read_ahead.py). Measured side by side in
    #: docs/benchmarks.md ("Issue 23: the levers"): reading ahead pays on PostgreSQL;
    #: decoding ahead too does not (the decoding thread and the runner share the GIL).
    read_ahead: ReadAheadMode = "read"

    def __init__(
        self,
        conninfo: str,
        *,
        schema: str,
        table: str,
        mapper: EnvelopeMapper | None = None,
        listen: bool = True,
        connect_timeout: float = 5.0,
        application_name: str = "safereplay",
        **watermark_options: Any,
    ) -> None:
        super().__init__(
            PostgresHighWaterMark(
                make_conninfo(conninfo, application_name=f"{application_name}-watermark"),
                schema=schema,
                table=table,
                **watermark_options,
            ),
            mapper,
            renderer=PostgresRenderer(schema),
            table=table,
        )
        self.schema = schema
        self.channel = table.replace(".", "_")
        self._listen = listen
        self._db = Connection(
            conninfo, application_name=f"{application_name}-source", connect_timeout=connect_timeout
        )
        self._listener_conninfo = Conninfo(
            make_conninfo(conninfo, application_name=f"{application_name}-listen-{table}"[:63])
        )
        self._connect_timeout = max(1, round(connect_timeout))
        self._listener: psycopg.Connection[Any] | None = None
        self._listener_lock = threading.Lock()
        self._reconnect_at = 0.0
        self._reconnect_delay = 0.05
        #: How many times the listening connection was opened (1 + reconnects).
        self.listen_connects = 0
        #: Notifications that woke a waiter.
        self.notifications = 0
        self._events = sql.Identifier(schema, table)

    @property
    def description(self) -> str:
        return f"PostgreSQL event log {self.schema}.{self.table}"

    @staticmethod
    def _topic_shape(topics: Sequence[str]) -> int:
        # The topics are bound as one array: one statement for any number of them.
        return int(bool(topics))

    def high_water_mark(self) -> int:
        try:
            return super().high_water_mark()
        except WatermarkError as exc:
            if isinstance(exc.__cause__, TRANSIENT):
                raise DatabaseUnavailable(f"{self.description}: {exc}") from exc
            raise StoreError(f"{self.description}: {exc}") from exc

    def head(self) -> int:
        with self._db.use(f"{self.description}: head") as conn:
            exists = conn.execute(
                "SELECT to_regclass(%s) IS NOT NULL", (self._events.as_string(conn),)
            ).fetchone()
            if not exists or not exists[0]:
                return 0
            row = conn.execute(self._head).fetchone()
        return int(row[0] or 0) if row else 0

    def _fetch(
        self, what: str, statement: sql.Composed, params: Sequence[Any], *, binary: bool = False
    ) -> list[Any]:
        with self._db.use(f"{self.description}: {what}") as conn:
            try:
                # Binary results (reads): each state (~420 bytes) arrives as bytes
                # instead of hex text that the client must decode, row by row.
                return conn.execute(statement, params, binary=binary).fetchall()
            except psycopg.errors.UndefinedTable:
                return []

    def _notifications(self, rows: list[Any]) -> list[Notification]:
        # Aggregates recur within a batch: one (immutable) UUID per distinct id, so that
        # the batch keeps ~1 object per aggregate alive instead of one per row (fewer
        # objects for the garbage collector to walk until the batch commits).
        ids: dict[int, UUID] = {}
        shared = ids.setdefault
        return [
            notification_of(
                int(nid),
                shared(oid.int, oid) if isinstance(oid, UUID) else UUID(str(oid)),
                int(version),
                topic,
                bytes(state),
            )
            for nid, oid, version, topic, state in rows
        ]

    # -- waking up ------------------------------------------------------------------------

    def _listening(self) -> psycopg.Connection[Any] | None:
        if self._listener is not None and not self._listener.closed:
            return self._listener
        if time.monotonic() < self._reconnect_at:
            return None
        try:
            conn = psycopg.connect(
                self._listener_conninfo, autocommit=True, connect_timeout=self._connect_timeout
            )
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
        except psycopg.Error as exc:
            self._listener_failed(exc)
            return None
        self._listener = conn
        self._reconnect_delay = 0.05
        self.listen_connects += 1
        return conn

    def _listener_failed(self, exc: BaseException) -> None:
        conn, self._listener = self._listener, None
        if conn is not None:
            with suppress(psycopg.Error):
                conn.close()
        self._reconnect_at = time.monotonic() + self._reconnect_delay
        logger.warning(
            "%s: listening connection lost (%s); polling, reconnecting in %.2fs",
            self.description,
            first_line(exc),
            self._reconnect_delay,
        )
        self._reconnect_delay = min(self._reconnect_delay * 2, 5.0)

    @property
    def notifies(self) -> bool:
        return self._listen

    def wait(self, timeout: float, stop: threading.Event | None = None) -> bool:
        stop = stop or threading.Event()
        deadline = time.monotonic() + timeout
        if self.watermark_held():
            # A hole may be settled any moment: poll again soon.
            stop.wait(min(timeout, 0.02))
            return False
        if not self._listen:
            stop.wait(timeout)
            return False
        with self._listener_lock:
            while not stop.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                was_listening = self._listener is not None
                conn = self._listening()
                if conn is None:
                    stop.wait(min(remaining, 0.1))
                    continue
                if not was_listening:
                    # (Re)connected: notifications may have been missed meanwhile.
                    return True
                try:
                    for _ in conn.notifies(timeout=min(remaining, 0.1), stop_after=1):
                        self.notifications += 1
                        return True
                except psycopg.Error as exc:
                    self._listener_failed(exc)
        return False

    def watermark_held(self) -> bool:
        """True when the high-water mark is held below a hole it is proving dead."""
        watermark = self.watermark
        return isinstance(watermark, PostgresHighWaterMark) and (
            watermark.status().holding_at is not None
        )

    def close(self) -> None:
        with self._listener_lock:
            conn, self._listener = self._listener, None
            if conn is not None:
                with suppress(psycopg.Error):
                    conn.close()
        with self._db.lock:
            self._db.drop()
        super().close()

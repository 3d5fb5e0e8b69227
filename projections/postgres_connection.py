"""PostgreSQL connections of the projection store and the event source, and their errors.

Each opens one lazily connected autocommit connection (:class:`Connection`: its
transactions are explicit, ``conn.transaction()``), dropped when it breaks so the
next use reconnects. ``psycopg`` errors are translated at this edge: a lost
connection or an unreachable server is transient
(:class:`~safereplay.projections.errors.DatabaseUnavailable`, retried by the
runner), anything else a :class:`~safereplay.projections.errors.StoreError`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from safereplay.domain.secret import Conninfo
from safereplay.projections.errors import DatabaseUnavailable, StoreError

__all__ = ["TRANSIENT", "Connection", "first_line", "translate"]

#: psycopg errors that mean the connection or the server is gone (for now).
TRANSIENT = (psycopg.OperationalError, psycopg.InterfaceError)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def translate(exc: psycopg.Error, what: str) -> StoreError:
    if isinstance(exc, TRANSIENT):
        return DatabaseUnavailable(f"{what}: PostgreSQL unavailable: {first_line(exc)}")
    return StoreError(f"{what}: {type(exc).__name__}: {first_line(exc)}")


class Connection:
    """One lazily opened autocommit connection, dropped when it breaks."""

    def __init__(self, conninfo: str, *, application_name: str, connect_timeout: float) -> None:
        self._conninfo = Conninfo(make_conninfo(conninfo, application_name=application_name))
        self._connect_timeout = max(1, round(connect_timeout))
        self.lock = threading.RLock()
        self._conn: psycopg.Connection[Any] | None = None

    def get(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(
                self._conninfo, autocommit=True, connect_timeout=self._connect_timeout
            )
        return self._conn

    def drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with suppress(psycopg.Error):
                conn.close()

    @contextmanager
    def use(self, what: str) -> Iterator[psycopg.Connection[Any]]:
        with self.lock:
            try:
                yield self.get()
            except psycopg.Error as exc:
                if isinstance(exc, TRANSIENT) or (self._conn is not None and self._conn.broken):
                    self.drop()
                raise translate(exc, what) from exc

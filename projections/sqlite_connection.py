"""SQLite connections of the projection store and the event source, and their errors.

Both open their connections the same way (autocommit, so transactions are the
stores' own ``BEGIN``/``COMMIT``; shared between threads under the owner's lock;
a busy timeout instead of an immediate "database is locked"), and both translate
``sqlite3`` errors the same way: a busy or locked database or an I/O error is
transient (:class:`~safereplay.projections.errors.DatabaseUnavailable`, retried by
the runner), anything else a :class:`~safereplay.projections.errors.StoreError`.

:class:`SharedConnection` is the one connection a writing store keeps (the
projection store's, the delivery ledger's): opened on first use in WAL mode, so
readers in other processes are not blocked by its writes.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from safereplay.projections.errors import DatabaseUnavailable, StoreError

__all__ = ["SharedConnection", "close_quietly", "connect", "translate"]

_TRANSIENT = ("locked", "busy", "disk i/o error")


def connect(database: Path | str, *, busy_timeout: float, uri: bool = False) -> sqlite3.Connection:
    return sqlite3.connect(
        database,
        uri=uri,
        timeout=busy_timeout,
        isolation_level=None,
        check_same_thread=False,
    )


def close_quietly(conn: sqlite3.Connection | None) -> None:
    """Close a connection being let go of: an error closing it has nothing left to undo."""
    if conn is not None:
        with suppress(sqlite3.Error):
            conn.close()


def translate(exc: sqlite3.Error, what: str) -> StoreError:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if isinstance(exc, sqlite3.OperationalError) and any(t in text.lower() for t in _TRANSIENT):
        return DatabaseUnavailable(f"{what}: SQLite is busy or unavailable: {text}")
    return StoreError(f"{what}: {type(exc).__name__}: {text}")


class SharedConnection:
    """The lazily opened WAL connection to ``path``, shared by the owner's threads.

    Callers hold :attr:`lock` around every use of :meth:`get` and
    :meth:`rollback` (an ``RLock``: a transaction may read through the same lock).
    """

    def __init__(self, path: Path, *, busy_timeout: float) -> None:
        self.path = path
        self.lock = threading.RLock()
        self._busy_timeout = busy_timeout
        self._conn: sqlite3.Connection | None = None

    def get(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = connect(self.path, busy_timeout=self._busy_timeout)
            conn.execute("PRAGMA journal_mode=WAL")
            self._conn = conn
        return self._conn

    def rollback(self) -> None:
        """Undo an open transaction, if any; an error doing so leaves nothing to undo."""
        if self._conn is not None and self._conn.in_transaction:
            with suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")

    @contextmanager
    def lend(self, what: str) -> Iterator[sqlite3.Connection]:
        """The connection under the lock, for the schema migrator; an error is
        rolled back and translated, ``what`` naming the failed work."""
        with self.lock:
            try:
                yield self.get()
            except sqlite3.Error as exc:
                self.rollback()
                raise translate(exc, what) from exc

    def close(self) -> None:
        with self.lock:
            conn, self._conn = self._conn, None
            close_quietly(conn)

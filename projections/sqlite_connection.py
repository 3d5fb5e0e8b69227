"""SQLite connections of the projection store and the event source, and their errors.

Both open their connections the same way (autocommit, so transactions are the
stores' own ``BEGIN``/``COMMIT``; shared between threads under the owner's lock;
a busy timeout instead of an immediate "database is locked"), and both translate
``sqlite3`` errors the same way: a busy or locked database or an I/O error is
transient (:class:`~safereplay.projections.errors.DatabaseUnavailable`, retried by
the runner), anything else a :class:`~safereplay.projections.errors.StoreError`.
"""

from __future__ import annotations

import sqlite3
from contextlib import suppress
from pathlib import Path

from safereplay.projections.errors import DatabaseUnavailable, StoreError

__all__ = ["close_quietly", "connect", "translate"]

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

"""SQLite backend of the recovery stores (processes on one machine share the file)."""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from recovery.jobstore import JobTx, SQLJobStore

__all__ = ["SQLiteJobStore"]

_PLACEHOLDER = re.compile(r"%\((\w+)\)s")
_TABLES = {
    "jobs": '"safereplay_jobs"',
    "parts": '"safereplay_job_partitions"',
    "one_active": '"safereplay_jobs_one_active"',
}


def sqlite_statement(template: str) -> str:
    """Shared template → SQLite statement (fixed table names, :name placeholders)."""
    return _PLACEHOLDER.sub(r":\1", template.format(**_TABLES))


class _SQLiteTx(JobTx):
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._now = time.time()

    def rows(
        self, template: str, params: Mapping[str, Any] | None = None, *, for_update: bool = False
    ) -> list[dict[str, Any]]:
        # for_update needs nothing here: write transactions hold the database's
        # write lock from BEGIN IMMEDIATE on.
        cursor = self._conn.execute(sqlite_statement(template), dict(params or {}))
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def execute(self, template: str, params: Mapping[str, Any] | None = None) -> int:
        return self._conn.execute(sqlite_statement(template), dict(params or {})).rowcount

    def now(self) -> float:
        return self._now


class SQLiteJobStore(SQLJobStore):
    """Jobs in a SQLite file; ``BEGIN IMMEDIATE`` serialises claims across processes."""

    def __init__(self, path: Path | str, *, busy_timeout: float = 30.0) -> None:
        self._path = str(path)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(
            self._path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
        )
        self._conn.execute("PRAGMA journal_mode=WAL")

    @contextmanager
    def _transaction(self, *, write: bool) -> Iterator[JobTx]:
        with self._lock:
            # IMMEDIATE takes the write lock now, so a read-then-update (claim)
            # cannot interleave with another process's.
            self._conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield _SQLiteTx(self._conn)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _is_unique_violation(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.IntegrityError) and "UNIQUE" in str(exc)

    def close(self) -> None:
        self._conn.close()

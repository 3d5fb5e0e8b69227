"""SQLite backend of the recovery stores (processes on one machine share the file)."""

from __future__ import annotations

from pathlib import Path

from safereplay.recovery.database import SQLiteDatabase
from safereplay.recovery.jobs.store import SQLJobStore

__all__ = ["SQLiteJobStore"]


class SQLiteJobStore(SQLJobStore):
    """Jobs in a SQLite file; ``BEGIN IMMEDIATE`` serialises claims across processes."""

    def __init__(self, path: Path | str, *, busy_timeout: float = 30.0) -> None:
        super().__init__(SQLiteDatabase(path, busy_timeout=busy_timeout))

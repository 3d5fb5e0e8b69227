"""Sandboxes a drill rebuilds into: a temporary SQLite file, or a PostgreSQL schema of its own.

A sandbox is dropped when the drill ends, also when anything fails.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from safereplay.domain.secret import Conninfo
from safereplay.projections import (
    PostgresProjectionStore,
    ProjectionStore,
    SQLiteProjectionStore,
)
from safereplay.recovery.drills.views import PostgresStoreReader, SQLiteStoreReader, StoreReader

__all__ = ["PostgresSandbox", "SQLiteSandbox", "Sandbox"]


class Sandbox(ABC):
    """Where a drill rebuilds: a store of its own, removed afterwards."""

    @property
    @abstractmethod
    def description(self) -> str: ...

    @abstractmethod
    def _open(self) -> tuple[ProjectionStore, StoreReader]: ...

    @abstractmethod
    def remove(self) -> None:
        """Drop everything the sandbox holds (idempotent)."""

    @abstractmethod
    def exists(self) -> bool: ...

    @contextmanager
    def opened(self) -> Iterator[tuple[ProjectionStore, StoreReader]]:
        """The sandbox's store and a reader of it; removed on exit, also on error."""
        try:
            store, reader = self._open()
            try:
                yield store, reader
            finally:
                store.close()
        finally:
            self.remove()


class SQLiteSandbox(Sandbox):
    """A temporary SQLite file in a directory of its own (under ``directory``)."""

    def __init__(self, *, directory: Path | str | None = None) -> None:
        self._parent = None if directory is None else Path(directory)
        self.path: Path | None = None

    @property
    def description(self) -> str:
        return f"temporary SQLite file {str(self.path)!r}"

    def _open(self) -> tuple[ProjectionStore, StoreReader]:
        folder = Path(tempfile.mkdtemp(prefix="safereplay-drill-", dir=self._parent))
        self.path = folder / "sandbox.db"
        return SQLiteProjectionStore(self.path), SQLiteStoreReader(self.path)

    def remove(self) -> None:
        if self.path is not None:
            shutil.rmtree(self.path.parent, ignore_errors=True)

    def exists(self) -> bool:
        return self.path is not None and self.path.parent.exists()


class PostgresSandbox(Sandbox):
    """A fresh schema ``<store schema>_drill_<8 hex>`` in the store's database."""

    def __init__(self, conninfo: str, *, store_schema: str) -> None:
        self._conninfo = Conninfo(conninfo)  # its repr hides a password
        self.schema = f"{store_schema[:40]}_drill_{uuid.uuid4().hex[:8]}"
        self._created = False

    @property
    def description(self) -> str:
        return f"PostgreSQL schema {self.schema!r}"

    def _admin(self) -> psycopg.Connection[Any]:
        return psycopg.connect(
            make_conninfo(self._conninfo, application_name="safereplay-drill"), autocommit=True
        )

    def _open(self) -> tuple[ProjectionStore, StoreReader]:
        with self._admin() as conn:
            # Fails if the schema exists: a sandbox never reuses (or drops) anything else.
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(self.schema)))
        self._created = True
        return (
            PostgresProjectionStore(self._conninfo, schema=self.schema),
            PostgresStoreReader(self._conninfo, schema=self.schema),
        )

    def remove(self) -> None:
        if not self._created:
            return
        with self._admin() as conn:
            conn.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(self.schema))
            )
        self._created = False

    def exists(self) -> bool:
        with self._admin() as conn:
            found = conn.execute(
                "SELECT 1 FROM pg_namespace WHERE nspname = %s", (self.schema,)
            ).fetchone()
        return found is not None

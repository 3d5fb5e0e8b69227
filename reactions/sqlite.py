"""The delivery ledger in a SQLite file (the event store's file, or another one).

Writes run inside ``BEGIN IMMEDIATE`` ... ``COMMIT`` on the ledger's own connection
(WAL mode; shared by the runner's threads under a lock), so a batch's rows and the
position commit together or not at all; reads run outside any transaction. Errors
are translated as the projection store's are
(:func:`safereplay.projections.sqlite_connection.translate`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any
from uuid import UUID

from safereplay.domain.schema import SchemaDatabase, SQLiteSchema
from safereplay.projections.sqlite_connection import SharedConnection, translate
from safereplay.projections.sqltemplate import SQLiteRenderer, sqlite_statement
from safereplay.reactions.ledger_sql import SQLDeliveryLedger, Tx, render_ddl, render_upgrades

__all__ = ["SQLiteDeliveryLedger"]


class _SQLiteTx:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def rows(self, template: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        cursor = self._conn.execute(sqlite_statement(template), dict(params))
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def execute(self, template: str, params: Mapping[str, Any]) -> int:
        return self._conn.execute(sqlite_statement(template), dict(params)).rowcount


class SQLiteDeliveryLedger(SQLDeliveryLedger):
    """The ledger in the SQLite file at ``path``; ``busy_timeout`` in seconds."""

    def __init__(
        self,
        path: Path | str,
        *,
        busy_timeout: float = 30.0,
        migrate_on_start: bool = True,
        clock: Callable[[], float] | None = None,
    ) -> None:
        super().__init__(migrate_on_start=migrate_on_start, clock=clock)
        self.path = Path(path)
        self._shared = SharedConnection(self.path, busy_timeout=busy_timeout)
        self._lock = self._shared.lock

    @property
    def description(self) -> str:
        return f"SQLite delivery ledger {str(self.path)!r}"

    def _connection(self) -> sqlite3.Connection:
        return self._shared.get()

    @contextmanager
    def _transaction(self, what: str, *, write: bool) -> Iterator[Tx]:
        with self._lock:
            try:
                conn = self._connection()
                if write:
                    # The write lock at once: the position check and the rows it
                    # guards cannot interleave with another process's.
                    conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise translate(exc, f"{self.description}: {what}") from exc
            try:
                yield _SQLiteTx(conn)
                if write:
                    conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise translate(exc, f"{self.description}: {what}") from exc
            except BaseException:
                self._rollback()
                raise

    def _rollback(self) -> None:
        self._shared.rollback()

    def _schema_database(self) -> SchemaDatabase:
        def lend() -> AbstractContextManager[sqlite3.Connection]:
            return self._shared.lend(f"{self.description}: schema")

        return SQLiteSchema(lend, f"SQLite file {str(self.path)!r}")

    def _ddl(self) -> list[Any]:
        return render_ddl(SQLiteRenderer())

    def _upgrades(self) -> list[Any]:
        return render_upgrades(SQLiteRenderer())

    def _dump_id(self, value: UUID) -> Any:
        return str(value)

    def close(self) -> None:
        self._shared.close()

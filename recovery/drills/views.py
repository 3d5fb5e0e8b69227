"""Reading a projection store read-only: builds, positions and rows, in one snapshot.

Every live read goes through its own read-only connection (``mode=ro`` and
``query_only`` on SQLite, a ``READ ONLY`` transaction on PostgreSQL), so a write
could not succeed even by mistake.
"""

from __future__ import annotations

import json
import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
from psycopg import IsolationLevel, sql
from psycopg.conninfo import make_conninfo

from safereplay.domain.secret import Conninfo
from safereplay.projections.projection import Column, Table, physical_table_name
from safereplay.projections.store import BUILDS_TABLE, PARKED_TABLE, POSITIONS_TABLE
from safereplay.recovery.errors import InvalidRequest

__all__ = [
    "BuildRecord",
    "PostgresStoreReader",
    "ReadView",
    "SQLiteStoreReader",
    "StoreReader",
    "canonical_json",
    "canonical_value",
]


@dataclass(frozen=True)
class BuildRecord:
    projection: str
    build: int
    version: int
    status: str


class ReadView(ABC):
    """One read-only transaction over a projection store's database.

    Statements are module constants with a ``{table}`` slot (one table of the
    store's schema), an optional ``{columns}`` slot and ``%s`` placeholders.
    """

    #: JSON columns come back as text (SQLite) rather than decoded (PostgreSQL).
    json_as_text: bool
    #: Finds a table by the parameters of :meth:`_table_params`.
    _has_table: str

    def __init__(self, conn: Any) -> None:
        self._conn = conn  # a sqlite3 or psycopg connection: both .execute().fetchall()

    @abstractmethod
    def _statement(self, template: str, table: str, columns: Sequence[str]) -> Any:
        """``template`` with its slots filled with quoted identifiers."""

    @abstractmethod
    def _table_params(self, table: str) -> tuple[Any, ...]: ...

    def query(
        self,
        template: str,
        table: str,
        params: Sequence[Any] = (),
        *,
        columns: Sequence[str] = (),
    ) -> list[tuple[Any, ...]]:
        statement = self._statement(template, table, columns)
        return [tuple(row) for row in self._conn.execute(statement, tuple(params)).fetchall()]

    def has_table(self, table: str) -> bool:
        return self._conn.execute(self._has_table, self._table_params(table)).fetchone() is not None

    def builds(self, name: str) -> list[BuildRecord]:
        if not self.has_table(BUILDS_TABLE):
            return []
        rows = self.query(
            "SELECT build, version, status FROM {table} WHERE projection = %s ORDER BY build",
            BUILDS_TABLE,
            (name,),
        )
        return [BuildRecord(name, int(b), int(v), str(s)) for b, v, s in rows]

    def positions(self, name: str, build: int) -> list[tuple[int, int, int]]:
        """``(partition_index, partition_count, position)`` of every partition of a build."""
        if not self.has_table(POSITIONS_TABLE):
            return []
        rows = self.query(
            "SELECT partition_index, partition_count, position FROM {table} "
            "WHERE projection = %s AND build = %s ORDER BY partition_count, partition_index",
            POSITIONS_TABLE,
            (name, build),
        )
        return [(int(i), int(c), int(p)) for i, c, p in rows]

    def parked(self, name: str, build: int) -> list[tuple[int, UUID]]:
        """``(position, aggregate_id)`` of the build's unresolved parked events."""
        if not self.has_table(PARKED_TABLE):
            return []
        rows = self.query(
            "SELECT position, aggregate_id FROM {table} WHERE projection = %s AND build = %s "
            "AND resolved_at IS NULL ORDER BY position",
            PARKED_TABLE,
            (name, build),
        )
        return [(int(p), a if isinstance(a, UUID) else UUID(str(a))) for p, a in rows]

    def rows(
        self, name: str, build: int, table: Table
    ) -> Iterator[tuple[tuple[Any, ...], dict[str, Any]]]:
        """``(key, values)`` of every row, canonical (see :func:`canonical_value`)."""
        physical = physical_table_name(name, table.name, build)
        if not self.has_table(physical):
            return
        columns = table.columns
        width = len(table.key)
        for raw in self.query(
            "SELECT {columns} FROM {table}", physical, columns=[c.name for c in columns]
        ):
            values = [
                canonical_value(c, v, json_as_text=self.json_as_text)
                for c, v in zip(columns, raw, strict=True)
            ]
            yield tuple(values[:width]), dict(zip(table.value_names, values[width:], strict=True))


class StoreReader(ABC):
    """Opens read-only, consistent views of one projection store's database."""

    @property
    @abstractmethod
    def description(self) -> str: ...

    @abstractmethod
    def view(self) -> AbstractContextManager[ReadView]:
        """One read-only transaction (a consistent snapshot)."""


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


class _SQLiteView(ReadView):
    json_as_text = True
    _has_table = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"

    def _statement(self, template: str, table: str, columns: Sequence[str]) -> str:
        return template.replace("%s", "?").format(
            table=_quote(table), columns=", ".join(_quote(c) for c in columns)
        )

    def _table_params(self, table: str) -> tuple[Any, ...]:
        return (table,)


class SQLiteStoreReader(StoreReader):
    """A SQLite projection store, read through a ``mode=ro``, ``query_only`` connection."""

    def __init__(self, path: Path | str, *, busy_timeout: float = 30.0) -> None:
        self.path = Path(path)
        self._busy_timeout = busy_timeout

    @property
    def description(self) -> str:
        return f"SQLite projection store {str(self.path)!r}"

    @contextmanager
    def view(self) -> Iterator[ReadView]:
        if not self.path.is_file():
            raise InvalidRequest(f"there is no {self.description}")
        conn = sqlite3.connect(
            self.path.absolute().as_uri() + "?mode=ro",
            uri=True,
            timeout=self._busy_timeout,
            isolation_level=None,
            check_same_thread=False,
        )
        try:
            conn.execute("PRAGMA query_only = 1")
            # In WAL mode one read transaction sees one snapshot from its first read on.
            conn.execute("BEGIN")
            try:
                yield _SQLiteView(conn)
            finally:
                conn.execute("ROLLBACK")
        finally:
            conn.close()


class _PostgresView(ReadView):
    json_as_text = False
    _has_table = "SELECT 1 FROM pg_catalog.pg_tables WHERE schemaname = %s AND tablename = %s"

    def __init__(self, conn: psycopg.Connection[Any], schema: str) -> None:
        super().__init__(conn)
        self._schema = schema

    def _statement(self, template: str, table: str, columns: Sequence[str]) -> sql.Composed:
        return sql.SQL(template).format(
            table=sql.Identifier(self._schema, table),
            columns=sql.SQL(", ").join(sql.Identifier(c) for c in columns),
        )

    def _table_params(self, table: str) -> tuple[Any, ...]:
        return (self._schema, table)


class PostgresStoreReader(StoreReader):
    """A PostgreSQL projection store, read in ``REPEATABLE READ``, ``READ ONLY`` transactions."""

    def __init__(self, conninfo: str, *, schema: str, connect_timeout: int = 5) -> None:
        self.schema = schema
        self._conninfo = Conninfo(
            make_conninfo(conninfo, application_name="safereplay-drill-reader")
        )
        self._connect_timeout = connect_timeout

    @property
    def description(self) -> str:
        return f"PostgreSQL projection store (schema {self.schema!r})"

    @contextmanager
    def view(self) -> Iterator[ReadView]:
        with psycopg.connect(self._conninfo, connect_timeout=self._connect_timeout) as conn:
            conn.isolation_level = IsolationLevel.REPEATABLE_READ
            conn.read_only = True
            with conn.transaction():
                yield _PostgresView(conn, self.schema)


# -- canonical values -----------------------------------------------------------------


def canonical_value(column: Column, value: Any, *, json_as_text: bool) -> Any:
    """A column value in a form that is the same on both backends (and JSON-serialisable)."""
    if value is None:
        return None
    kind = column.type
    if kind == "integer":
        return int(value)
    if kind == "real":
        return float(value)
    if kind == "boolean":
        return bool(value)
    if kind == "json":
        if json_as_text:
            return json.loads(bytes(value) if isinstance(value, bytes | memoryview) else value)
        return value
    if kind == "timestamp":
        moment = datetime.fromisoformat(value) if isinstance(value, str) else value
        return moment.astimezone(UTC).isoformat(timespec="microseconds")
    return str(value)


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

"""The SQLite projection store.

A batch is written inside ``BEGIN IMMEDIATE`` ... ``COMMIT`` on the store's own
connection (WAL mode), folded rows flushed with ``executemany``. The logic is
:class:`~safereplay.projections.sql_store.SQLProjectionStore`'s, its statements
:mod:`~safereplay.projections.store_sql`'s templates, rendered for SQLite once
(the registry's when the store is opened, a table's when it is first used) with
identifiers double-quoted; values are always bound parameters. This module keeps
what is SQLite's own: the connection and its transactions, the value encodings
(timestamps as ISO 8601 text, booleans as 0/1, JSON as text, ids as text), and
the two statements SQLite spells otherwise (no ``RETURNING``, no arrays).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import UTC, datetime
from operator import itemgetter
from pathlib import Path
from typing import Any
from uuid import UUID

import orjson

from safereplay.domain.schema import SchemaDatabase, SQLiteSchema
from safereplay.projections.sql_store import (
    RegistryValues,
    SQLProjectionStore,
    TableCodec,
    Writer,
)
from safereplay.projections.sqlite_connection import SharedConnection, translate
from safereplay.projections.sqltemplate import SQLiteRenderer
from safereplay.projections.store import BUILDS_TABLE
from safereplay.projections.tables import Column, Table

__all__ = ["SQLiteProjectionStore"]


def _timestamp(value: datetime) -> str:
    # Fixed width, UTC: text order is time order (max/min merges compare text).
    if value.tzinfo is not UTC:  # batch states hold UTC already: no conversion per row
        value = value.astimezone(UTC)
    return value.isoformat(timespec="microseconds")


def _encoder(column: Column) -> Callable[[Any], Any]:
    kind = column.type
    if kind == "boolean":
        return lambda v: None if v is None else int(v)
    if kind == "json":
        return lambda v: None if v is None else orjson.dumps(v, option=orjson.OPT_SORT_KEYS)
    if kind == "timestamp":
        return lambda v: None if v is None else _timestamp(v)
    return lambda v: v


def _decoder(column: Column) -> Callable[[Any], Any]:
    kind = column.type
    if kind == "boolean":
        return lambda v: None if v is None else bool(v)
    if kind == "json":
        return lambda v: None if v is None else orjson.loads(v)
    if kind == "timestamp":
        return lambda v: None if v is None else datetime.fromisoformat(v).astimezone(UTC)
    if kind == "real":
        return lambda v: None if v is None else float(v)
    return lambda v: v


class _Codec(TableCodec[str]):
    """A table's values bound one row at a time (SQLite has no arrays)."""

    #: Stored as something else than the Python value (see _encoder).
    converts = frozenset({"boolean", "json", "timestamp"})
    encoder = staticmethod(_encoder)
    decoder = staticmethod(_decoder)

    def write_rows(
        self, writer: Writer, statement: str, rows: Sequence[dict[str, Any]], names: Sequence[str]
    ) -> None:
        writer.executemany(statement, self.params_of(rows, names))

    def params_of(
        self, rows: Sequence[dict[str, Any]], names: Sequence[str]
    ) -> list[Sequence[Any]]:
        """The statement parameters of ``rows``: the values of ``names``, encoded.

        Once per written row of a batch: the values are picked in C (``itemgetter``)
        and only the columns that need it (timestamps, booleans, JSON) are encoded.
        """
        pick = itemgetter(*names)
        values: list[Sequence[Any]] = (
            [(pick(row),) for row in rows] if len(names) == 1 else [pick(row) for row in rows]
        )
        encoded = [(i, self.encode[n]) for i, n in enumerate(names) if n in self.converted]
        if not encoded:
            return values
        params: list[Sequence[Any]] = []
        for row_values in values:
            row_params = list(row_values)
            for i, encode in encoded:
                row_params[i] = encode(row_params[i])
            params.append(row_params)
        return params


class SQLiteProjectionStore(SQLProjectionStore[str, sqlite3.Connection]):
    """Projections in a SQLite file (the event store's file, or another one)."""

    dialect = "sqlite"
    _values = RegistryValues(
        dump_time=_timestamp,
        load_time=datetime.fromisoformat,
        dump_id=str,
        load_id=UUID,
        dump_json=orjson.dumps,
        load_json=orjson.loads,
    )

    def __init__(
        self, path: Path | str, *, busy_timeout: float = 30.0, migrate_on_start: bool = True
    ) -> None:
        super().__init__(SQLiteRenderer(), migrate_on_start=migrate_on_start)
        self.path = Path(path)
        self._shared = SharedConnection(self.path, busy_timeout=busy_timeout)
        self._lock = self._shared.lock

    @property
    def description(self) -> str:
        return f"SQLite projection store {str(self.path)!r}"

    # -- connection and transactions ------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        return self._shared.get()

    @contextmanager
    def _write(self, what: str, *, ddl: bool = False) -> Iterator[sqlite3.Connection]:
        # BEGIN IMMEDIATE takes the database's write lock at once, for every write
        # (``ddl`` or not): writers are serialised, a read inside sees no other
        # writer's change until COMMIT, and no row needs a lock of its own.
        with self._lock:
            self.ensure_schema()
            try:
                conn = self._connection()
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                self._rollback()
                raise translate(exc, f"{self.description}: {what}") from exc
            try:
                yield conn
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise translate(exc, f"{self.description}: {what}") from exc
            except BaseException:
                self._rollback()
                raise

    def _schema_database(self) -> SchemaDatabase:
        def lend() -> AbstractContextManager[sqlite3.Connection]:
            return self._shared.lend(f"{self.description}: schema")

        return SQLiteSchema(lend, self.description)

    @contextmanager
    def _read(self, what: str) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                yield self._connection()
            except sqlite3.Error as exc:
                raise translate(exc, f"{self.description}: {what}") from exc

    def _batch(self, conn: sqlite3.Connection) -> AbstractContextManager[Writer]:
        # The connection runs executemany itself (no cursor to open and close).
        return nullcontext(conn)

    def _rollback(self) -> None:
        self._shared.rollback()

    def _new_codec(self, table: Table, physical: str) -> _Codec:
        return _Codec(table, physical, self._render)

    def _registry_table(self, conn: sqlite3.Connection) -> str:
        return BUILDS_TABLE

    def _lock_positions(self, conn: sqlite3.Connection, name: str, build: int) -> None:
        # Nothing to take: the write transaction (BEGIN IMMEDIATE) already holds the
        # database's write lock, so creating a position cannot race a repartition.
        return

    # -- the statements SQLite spells otherwise -------------------------------------------

    def _move_position(
        self, conn: sqlite3.Connection, key: dict[str, Any], params: dict[str, Any]
    ) -> Any:
        # No RETURNING (it needs SQLite 3.35): the moved row is read back in the same
        # transaction, which no other writer can enter.
        if conn.execute(self._sql.move_position, params).rowcount != 1:
            return None
        return conn.execute(self._sql.checkpoint, key).fetchone()

    def _resolve(
        self, conn: sqlite3.Connection, name: str, build: int, positions: Sequence[int], now: Any
    ) -> int:
        # No arrays: one statement per position, the changed rows added up.
        changed = 0
        for position in positions:
            changed += conn.execute(
                self._sql.resolve_parked,
                {"now": now, "projection": name, "build": build, "position": position},
            ).rowcount
        return changed

    def close(self) -> None:
        self._shared.close()

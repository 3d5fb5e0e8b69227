"""The PostgreSQL projection store.

A batch is written in one transaction on the store's own connection, its folded
rows flushed with one ``unnest`` statement per table and shape (deletes with a
pipelined ``executemany``). The logic is
:class:`~safereplay.projections.sql_store.SQLProjectionStore`'s, its statements
:mod:`~safereplay.projections.store_sql`'s templates, composed with ``psycopg.sql``
for the store's schema once (the registry's when the store is opened, a table's
when it is first used); identifiers are never formatted into SQL text. This
module keeps what is PostgreSQL's own: the connection, transactions and locks
(the registry is set up once per schema version through the schema catalog,
:mod:`safereplay.domain.schema`; a build's tables are created under a
transaction-level advisory lock, so workers starting together do not race on
``CREATE TABLE IF NOT EXISTS``), the values
psycopg does not adapt as they are (JSON), and the statements PostgreSQL spells
otherwise (``RETURNING``, arrays).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from safereplay.domain.schema import PostgresSchema, SchemaDatabase
from safereplay.projections.postgres_connection import Connection
from safereplay.projections.sql_store import (
    RegistryValues,
    SQLProjectionStore,
    TableCodec,
    Writer,
)
from safereplay.projections.sqltemplate import PostgresRenderer
from safereplay.projections.store import BUILDS_TABLE
from safereplay.projections.tables import Column, Table

__all__ = ["PostgresProjectionStore"]


def _same(value: Any) -> Any:
    """psycopg adapts datetimes, UUIDs and (read) JSON itself."""
    return value


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


def _encoder(column: Column) -> Callable[[Any], Any]:
    if column.type == "json":
        return lambda v: None if v is None else Jsonb(v)
    return lambda v: v


def _decoder(column: Column) -> Callable[[Any], Any]:
    if column.type == "timestamp":
        return lambda v: None if v is None else v.astimezone(UTC)
    if column.type == "real":
        return lambda v: None if v is None else float(v)
    return lambda v: v


class _Codec(TableCodec[sql.Composed]):
    """A table's values bound as one array per column (for the unnest statements)."""

    #: Only JSON is wrapped (``Jsonb``); psycopg adapts the other types as they are.
    converts = frozenset({"json"})
    encoder = staticmethod(_encoder)
    decoder = staticmethod(_decoder)

    def write_rows(
        self,
        writer: Writer,
        statement: sql.Composed,
        rows: Sequence[dict[str, Any]],
        names: Sequence[str],
    ) -> None:
        writer.execute(statement, self.columns(rows, names))

    def columns(self, rows: Sequence[dict[str, Any]], names: Sequence[str]) -> list[list[Any]]:
        """The rows as one encoded array per column (for the unnest statements).

        Only JSON columns are encoded (``Jsonb``); the others are passed as they are,
        without a call per value.
        """
        encode = self.encode
        return [
            [encode[n](row[n]) for row in rows] if n in self.converted else [row[n] for row in rows]
            for n in names
        ]


class PostgresProjectionStore(SQLProjectionStore[sql.Composed, psycopg.Connection[Any]]):
    """Projections in a PostgreSQL schema (the event store's, or another database's).

    Its connection is named ``{application_name}-projections`` in ``pg_stat_activity``.
    """

    dialect = "postgres"
    _values = RegistryValues(
        dump_time=_same,
        load_time=_utc,
        dump_id=_same,
        load_id=_same,
        dump_json=Jsonb,
        load_json=_same,
    )

    def __init__(
        self,
        conninfo: str,
        *,
        schema: str = "public",
        connect_timeout: float = 5.0,
        application_name: str = "safereplay",
        migrate_on_start: bool = True,
    ) -> None:
        super().__init__(PostgresRenderer(schema), migrate_on_start=migrate_on_start)
        self.schema = schema
        self._db = Connection(
            conninfo,
            application_name=f"{application_name}-projections",
            connect_timeout=connect_timeout,
        )

    @property
    def description(self) -> str:
        return f"PostgreSQL projection store (schema {self.schema!r})"

    # -- transactions and locks -----------------------------------------------------------

    @contextmanager
    def _write(self, what: str, *, ddl: bool = False) -> Iterator[psycopg.Connection[Any]]:
        self.ensure_schema()
        with self._db.use(f"{self.description}: {what}") as conn, conn.transaction():
            if ddl:
                # A build's tables are created (or dropped) one transaction at a time.
                conn.execute(
                    "SELECT pg_advisory_xact_lock(hashtext(%s))",
                    (f"safereplay.projections.{self.schema}",),
                )
            yield conn

    def _schema_database(self) -> SchemaDatabase:
        return PostgresSchema(lambda: self._db.use(f"{self.description}: schema"), self.schema)

    @contextmanager
    def _read(self, what: str) -> Iterator[psycopg.Connection[Any]]:
        with self._db.use(f"{self.description}: {what}") as conn:
            yield conn

    def _batch(self, conn: psycopg.Connection[Any]) -> AbstractContextManager[Writer]:
        # One cursor for the batch's statements (psycopg connections have no executemany).
        return conn.cursor()

    def _lock_positions(self, conn: psycopg.Connection[Any], name: str, build: int) -> None:
        # Creating a position row and regrouping a build's rows serialise on this
        # transaction lock, so a partitioning check cannot race a repartition.
        conn.execute(
            "SELECT pg_advisory_xact_lock(hashtext(%s))",
            (f"safereplay.positions.{self.schema}.{name}.{build}",),
        )

    def _registry_table(self, conn: psycopg.Connection[Any]) -> str:
        return sql.Identifier(self.schema, BUILDS_TABLE).as_string(conn)

    def _new_codec(self, table: Table, physical: str) -> _Codec:
        return _Codec(table, physical, self._render)

    # -- the statements PostgreSQL spells otherwise ---------------------------------------

    def _move_position(
        self, conn: psycopg.Connection[Any], key: dict[str, Any], params: dict[str, Any]
    ) -> Any:
        # The moved row comes back with the update (RETURNING): one round trip.
        return conn.execute(self._sql.move_position_returning, params).fetchone()

    def _resolve(
        self,
        conn: psycopg.Connection[Any],
        name: str,
        build: int,
        positions: Sequence[int],
        now: Any,
    ) -> int:
        # Every position in one statement, bound as one array: one round trip.
        return conn.execute(
            self._sql.resolve_parked,
            {"now": now, "projection": name, "build": build, "positions": list(positions)},
        ).rowcount

    def close(self) -> None:
        with self._db.lock:
            self._db.drop()

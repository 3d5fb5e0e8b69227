"""The delivery ledger in a PostgreSQL schema (the event store's, or another one).

One lazily opened autocommit connection (the projections' own
:class:`~safereplay.projections.postgres_connection.Connection`: dropped and
reopened when it breaks, its errors translated at that edge), shared by the
runner's threads under its lock; every write is one explicit transaction, so a
batch's rows and the position commit together or not at all. Statements are
composed with ``psycopg.sql`` for the ledger's schema (rendered once per template).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from uuid import UUID

import psycopg
from psycopg.rows import dict_row

from safereplay.domain.schema import PostgresSchema, SchemaDatabase
from safereplay.projections.postgres_connection import Connection
from safereplay.projections.sqltemplate import PostgresRenderer, postgres_statement
from safereplay.reactions.ledger_sql import SQLDeliveryLedger, Tx, render_ddl, render_upgrades

__all__ = ["PostgresDeliveryLedger"]


class _PostgresTx:
    def __init__(self, cursor: psycopg.Cursor[dict[str, Any]], schema: str) -> None:
        self._cursor = cursor
        self._schema = schema

    def rows(self, template: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        return self._cursor.execute(
            postgres_statement(template, self._schema), dict(params)
        ).fetchall()

    def execute(self, template: str, params: Mapping[str, Any]) -> int:
        statement = postgres_statement(template, self._schema)
        return self._cursor.execute(statement, dict(params)).rowcount


class PostgresDeliveryLedger(SQLDeliveryLedger):
    """The ledger in PostgreSQL ``schema``; its connection is named
    ``{application_name}-reactions`` in ``pg_stat_activity``."""

    def __init__(
        self,
        conninfo: str,
        *,
        schema: str = "public",
        connect_timeout: float = 5.0,
        application_name: str = "safereplay",
        migrate_on_start: bool = True,
        clock: Callable[[], float] | None = None,
    ) -> None:
        super().__init__(migrate_on_start=migrate_on_start, clock=clock)
        self.schema = schema
        self._db = Connection(
            conninfo,
            application_name=f"{application_name}-reactions",
            connect_timeout=connect_timeout,
        )

    @property
    def description(self) -> str:
        return f"PostgreSQL delivery ledger (schema {self.schema!r})"

    @contextmanager
    def _transaction(self, what: str, *, write: bool) -> Iterator[Tx]:
        with (
            self._db.use(f"{self.description}: {what}") as conn,
            conn.transaction(),
            conn.cursor(row_factory=dict_row) as cursor,
        ):
            yield _PostgresTx(cursor, self.schema)

    def _schema_database(self) -> SchemaDatabase:
        return PostgresSchema(lambda: self._db.use(f"{self.description}: schema"), self.schema)

    def _ddl(self) -> list[Any]:
        return render_ddl(PostgresRenderer(self.schema))

    def _upgrades(self) -> list[Any]:
        return render_upgrades(PostgresRenderer(self.schema))

    def _dump_id(self, value: UUID) -> Any:
        return value

    def close(self) -> None:
        with self._db.lock:
            self._db.drop()

"""PostgreSQL backend of the recovery stores: workers on many machines share one database."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from recovery.jobstore import JobTx, SQLJobStore

__all__ = ["PostgresJobStore"]


def postgres_statement(template: str, schema: str) -> sql.Composed:
    """Shared template → composed statement with schema-qualified identifiers."""
    # Templates are module constants, never built from input.
    return sql.SQL(template).format(
        jobs=sql.Identifier(schema, "safereplay_jobs"),
        parts=sql.Identifier(schema, "safereplay_job_partitions"),
        one_active=sql.Identifier("safereplay_jobs_one_active"),
    )


class _PostgresTx(JobTx):
    def __init__(self, conn: psycopg.Connection[dict[str, Any]], schema: str) -> None:
        self._conn = conn
        self._schema = schema
        self._now: float | None = None

    def rows(
        self, template: str, params: Mapping[str, Any] | None = None, *, for_update: bool = False
    ) -> list[dict[str, Any]]:
        statement = postgres_statement(template, self._schema)
        if for_update:
            statement = statement + sql.SQL(" FOR UPDATE")
        return self._conn.execute(statement, dict(params or {})).fetchall()

    def execute(self, template: str, params: Mapping[str, Any] | None = None) -> int:
        return self._conn.execute(
            postgres_statement(template, self._schema), dict(params or {})
        ).rowcount

    def now(self) -> float:
        # The database's clock, not this machine's: leases compare times written
        # by workers on different machines, whose clocks may disagree.
        if self._now is None:
            row = self._conn.execute(
                "SELECT extract(epoch FROM clock_timestamp())::float8 AS now"
            ).fetchone()
            assert row is not None
            self._now = float(row["now"])
        return self._now


class PostgresJobStore(SQLJobStore):
    """Jobs in PostgreSQL; row locks (``FOR UPDATE``) serialise claims per job."""

    def __init__(self, conninfo: str, *, schema: str = "public", pool_size: int = 4) -> None:
        self._schema = schema
        self._pool: ConnectionPool[psycopg.Connection[dict[str, Any]]] = ConnectionPool(
            conninfo,
            min_size=1,
            max_size=pool_size,
            kwargs={"row_factory": dict_row, "autocommit": False},
            open=True,
        )

    @contextmanager
    def _transaction(self, *, write: bool) -> Iterator[JobTx]:
        with self._pool.connection() as conn, conn.transaction():
            yield _PostgresTx(conn, self._schema)

    def _is_unique_violation(self, exc: BaseException) -> bool:
        return isinstance(exc, psycopg.errors.UniqueViolation)

    def close(self) -> None:
        self._pool.close()

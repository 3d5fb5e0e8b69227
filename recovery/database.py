"""The recovery layer's database access: one small interface, SQLite and PostgreSQL behind it.

Recovery stores (jobs, parked events, audit trail...) write their SQL once, with
psycopg-style named placeholders (``%(name)s``) and table slots (``{jobs}``); a
slot ``{x}`` names the table ``safereplay_x``, and a slot ``{idx_x}`` names an
index. Each backend turns a template into its own statement: schema-qualified
``psycopg.sql.Identifier`` on PostgreSQL, quoted names and ``:name`` placeholders
on SQLite. Templates are module constants, never built from input. The notation
and its renderers belong to the projections layer, which writes its own SQL the
same way (:mod:`safereplay.projections.sqltemplate`).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Literal

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from safereplay.domain.postgres_tls import check_tls_connection
from safereplay.domain.schema import PostgresSchema, SchemaDatabase, SQLiteSchema
from safereplay.domain.secret import Password
from safereplay.projections.errors import DatabaseUnavailable
from safereplay.projections.postgres_connection import TRANSIENT, first_line
from safereplay.projections.sqltemplate import postgres_statement, sqlite_statement

__all__ = [
    "Database",
    "PostgresDatabase",
    "SQLiteDatabase",
    "Tx",
    "missing_table",
    "recorded_rows",
]


class Tx(ABC):
    """One transaction."""

    @abstractmethod
    def rows(
        self, template: str, params: Mapping[str, Any] | None = None, *, for_update: bool = False
    ) -> list[dict[str, Any]]: ...

    @abstractmethod
    def execute(self, template: str, params: Mapping[str, Any] | None = None) -> int:
        """Run a statement; returns the number of rows it changed."""

    @abstractmethod
    def now(self) -> float:
        """Seconds since the epoch by the database's clock (one value per transaction)."""


class Database(ABC):
    dialect: Literal["sqlite", "postgres"]

    @abstractmethod
    def transaction(self, *, write: bool) -> AbstractContextManager[Tx]:
        """A transaction; ``write=True`` takes the write lock up front where needed."""

    @abstractmethod
    def is_unique_violation(self, exc: BaseException) -> bool: ...

    @abstractmethod
    def is_refused_by_database(self, exc: BaseException) -> bool:
        """True for errors raised by the database's own rules (triggers, privileges)."""

    @abstractmethod
    def schema_database(self) -> SchemaDatabase:
        """This database's schema catalog (:mod:`safereplay.domain.schema`)."""

    @abstractmethod
    def render(self, template: str) -> Any:
        """A template as this backend runs it (for statements run outside a :class:`Tx`)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


# -- SQLite ---------------------------------------------------------------------------


class _SQLiteTx(Tx):
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


class SQLiteDatabase(Database):
    """A SQLite file; ``BEGIN IMMEDIATE`` serialises writers across processes."""

    dialect: Literal["sqlite", "postgres"] = "sqlite"

    def __init__(self, path: Path | str, *, busy_timeout: float = 30.0) -> None:
        self.path = str(path)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(
            self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
        )
        self._conn.execute("PRAGMA journal_mode=WAL")

    @contextmanager
    def transaction(self, *, write: bool) -> Iterator[Tx]:
        with self._lock:
            # IMMEDIATE takes the write lock now, so a read-then-update (a claim,
            # an audit append) cannot interleave with another process's.
            self._conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield _SQLiteTx(self._conn)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def is_unique_violation(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.IntegrityError) and "UNIQUE" in str(exc)

    def is_refused_by_database(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.IntegrityError | sqlite3.DatabaseError)

    def schema_database(self) -> SchemaDatabase:
        @contextmanager
        def lend() -> Iterator[sqlite3.Connection]:
            with self._lock:
                yield self._conn

        return SQLiteSchema(lend, f"SQLite file {self.path!r}")

    def render(self, template: str) -> str:
        return sqlite_statement(template)

    def close(self) -> None:
        self._conn.close()


# -- PostgreSQL -----------------------------------------------------------------------


class _PostgresTx(Tx):
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
        return self._conn.execute(statement, dict(params) if params else None).fetchall()

    def execute(self, template: str, params: Mapping[str, Any] | None = None) -> int:
        return self._conn.execute(
            postgres_statement(template, self._schema), dict(params) if params else None
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


class PostgresDatabase(Database):
    """A PostgreSQL schema; row locks (``FOR UPDATE``) serialise what must be serial."""

    dialect: Literal["sqlite", "postgres"] = "postgres"

    def __init__(
        self,
        conninfo: str,
        *,
        schema: str = "public",
        pool_size: int = 4,
        application_name: str | None = None,
    ) -> None:
        """``application_name``: the name of the pool's connections in
        ``pg_stat_activity`` (default: none, so libpq's ``PGAPPNAME`` applies)."""
        self.schema = schema
        # The pool keeps its conninfo and its connection arguments as attributes: the
        # password goes in the arguments, as a Password that prints hidden, and the
        # conninfo the pool keeps has none. (Without one, libpq reads PGPASSFILE.)
        # A required TLS the server cannot offer fails now, not as a pool time-out.
        check_tls_connection(conninfo, what="the recovery database")
        params = conninfo_to_dict(conninfo)
        password = params.pop("password", None)
        if application_name is not None:
            params["application_name"] = application_name
        kwargs: dict[str, Any] = {"row_factory": dict_row, "autocommit": False}
        if password:
            kwargs["password"] = Password(str(password))
        self._pool: ConnectionPool[psycopg.Connection[dict[str, Any]]] = ConnectionPool(
            make_conninfo("", **params),
            min_size=1,
            max_size=pool_size,
            kwargs=kwargs,
            # A pooled connection the server ended while it sat idle (a restart,
            # pg_terminate_backend, an idle timeout) is replaced when lent, not handed
            # out to fail: the audit outcome of an operation whose work lost its
            # connection would be lost with it, and the command would end in a trace.
            check=ConnectionPool.check_connection,
            open=True,
        )

    @contextmanager
    def transaction(self, *, write: bool) -> Iterator[Tx]:
        try:
            with self._pool.connection() as conn, conn.transaction():
                yield _PostgresTx(conn, self.schema)
        except TRANSIENT as exc:
            # The connection or the server went away (a restart, a terminated backend,
            # the server down or busy): transient, as the projection store says of its
            # own connections, so that callers wait and retry (a worker does) or stop
            # with this message, never a traceback. The transaction was rolled back.
            raise DatabaseUnavailable(
                f"the recovery database (schema {self.schema!r}) is unavailable: {first_line(exc)}"
            ) from exc

    def is_unique_violation(self, exc: BaseException) -> bool:
        return isinstance(exc, psycopg.errors.UniqueViolation)

    def is_refused_by_database(self, exc: BaseException) -> bool:
        return isinstance(exc, psycopg.errors.RaiseException | psycopg.errors.InsufficientPrivilege)

    def schema_database(self) -> SchemaDatabase:
        return PostgresSchema(self._pool.connection, self.schema)

    def render(self, template: str) -> sql.Composed:
        return postgres_statement(template, self.schema)

    def close(self) -> None:
        self._pool.close()


# -- reads that create nothing ------------------------------------------------------


def missing_table(exc: BaseException) -> bool:
    """Is ``exc`` a read of a table that was never created (nothing recorded yet)?"""
    if isinstance(exc, sqlite3.OperationalError):
        return "no such table" in str(exc)
    return isinstance(exc, psycopg.errors.UndefinedTable)


def recorded_rows(
    database: Database, template: str, params: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """Rows of a recovery table; none if the table was never created (reads create nothing)."""
    try:
        with database.transaction(write=False) as tx:
            return tx.rows(template, params)
    except Exception as exc:
        if missing_table(exc):
            return []
        raise

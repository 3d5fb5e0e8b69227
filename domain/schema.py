"""Schema versions: each component's tables are set up once per version, not at every start.

Setting tables up at every process start (``CREATE ... IF NOT EXISTS``, ``CREATE
OR REPLACE FUNCTION``, dropping and re-creating triggers) is DDL on hot tables:
``CREATE INDEX IF NOT EXISTS`` waits for every open write transaction on its
table while new writers queue behind it, and two processes re-creating the same
function or trigger at once fail with ``tuple concurrently updated`` or a
deadlock. So every component (``events:<table>``, ``watermark:<table>``,
``projections``, ``recovery``) declares its set-up as a :class:`SchemaStep` with a
version, and a table per database (per PostgreSQL schema) records what ran::

    safereplay_schema_versions (component PRIMARY KEY, version, applied_at, applied_by)

:func:`ensure_schema` is what a process runs at start. It **reads the catalog
first** (one ``SELECT``, no lock anyone waits for); when every component is at
its version it returns without any DDL. Otherwise, if it may migrate, it takes
the database's migration lock (PostgreSQL: a transaction-level advisory lock,
waited for with ``pg_try_advisory_xact_lock`` so that it never queues in the lock
manager; SQLite: the file's write lock, ``BEGIN IMMEDIATE``), reads the catalog
again (another process may have done the work meanwhile), runs the missing steps
with ``SET LOCAL lock_timeout`` (:data:`DDL_LOCK_TIMEOUT`) so that its DDL never
makes writers queue behind it for longer, records them and commits: all or
nothing. A component recorded at a newer version than the code knows raises
:class:`DatabaseSchemaTooNew`; a missing or older one, when the process may not
migrate (``SAFEREPLAY_MIGRATE_ON_START=false``), raises
:class:`DatabaseSchemaOutdated`, naming ``safereplay migrate``.

:func:`explicit_migration` is how ``safereplay migrate`` runs the same steps: inside
it, every component opened migrates whatever the setting says, and records the
operator as the one who applied it.

The event store's own step (:func:`event_store_step`) runs eventsourcing's table
statements, which eventsourcing itself no longer runs at start (``CREATE_TABLE``
is off, see :meth:`DomainSettings.eventsourcing_env
<safereplay.domain.settings.DomainSettings.eventsourcing_env>`);
:func:`ensure_event_store` is the one call the application makes.
"""

from __future__ import annotations

import getpass
import os
import socket
import sqlite3
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import psycopg
from eventsourcing.application import Application
from eventsourcing.persistence import Recorder
from eventsourcing.postgres import PostgresRecorder
from eventsourcing.sqlite import SQLiteRecorder
from psycopg import sql
from psycopg.rows import tuple_row

from safereplay.domain.errors import (
    DatabaseSchemaOutdated,
    DatabaseSchemaTooNew,
    SchemaMigrationFailed,
)

__all__ = [
    "DDL_LOCK_TIMEOUT",
    "SCHEMA_VERSIONS_TABLE",
    "AppliedStep",
    "ComponentState",
    "MigrationRun",
    "PostgresSchema",
    "SQLiteSchema",
    "SchemaDatabase",
    "SchemaStep",
    "default_actor",
    "ensure_event_store",
    "ensure_schema",
    "event_store_step",
    "explicit_migration",
    "schema_states",
]

SCHEMA_VERSIONS_TABLE = "safereplay_schema_versions"
#: Seconds a migration's DDL may wait for a table lock (``SET LOCAL lock_timeout``):
#: writers that arrive meanwhile queue behind the waiting DDL, so never longer.
DDL_LOCK_TIMEOUT = 5.0
#: Seconds a process waits for another process's migration of the same database.
MIGRATION_WAIT = 120.0
#: The version of eventsourcing's tables, functions and types the code sets up.
EVENTS_VERSION = 1

#: A step's work: it gets the migration's cursor (psycopg, in the migration's
#: transaction; or a sqlite3 connection inside ``BEGIN IMMEDIATE``) and the
#: version the database had (0: the component is new there).
Apply = Callable[[Any, int], None]


@dataclass(frozen=True)
class SchemaStep:
    """The set-up of one component, at one version.

    ``apply`` must be idempotent for objects that already exist (a database set up
    by code older than the catalog has them, unrecorded).
    """

    component: str
    version: int
    apply: Apply
    summary: str = ""


@dataclass(frozen=True)
class ComponentState:
    """A component's version in the code and in the database (None: never set up)."""

    component: str
    code_version: int
    database_version: int | None
    where: str

    @property
    def state(self) -> Literal["current", "missing", "outdated", "too new"]:
        if self.database_version is None:
            return "missing"
        if self.database_version > self.code_version:
            return "too new"
        return "outdated" if self.database_version < self.code_version else "current"


@dataclass(frozen=True)
class AppliedStep:
    """A step a migration ran: ``component`` from ``from_version`` (0: new) on."""

    component: str
    from_version: int
    to_version: int
    where: str
    applied_by: str


@dataclass
class MigrationRun:
    """What an :func:`explicit_migration` did: every component it looked at, and the
    steps it applied."""

    actor: str
    states: list[ComponentState] = field(default_factory=list)
    applied: list[AppliedStep] = field(default_factory=list)


_explicit: ContextVar[MigrationRun | None] = ContextVar("safereplay_migration", default=None)


@contextmanager
def explicit_migration(actor: str) -> Iterator[MigrationRun]:
    """Within the block, :func:`ensure_schema` migrates whatever migrate-on-start
    says, records ``actor`` as the one who applied each step, and reports to the
    :class:`MigrationRun` yielded (what ``safereplay migrate`` shows and audits)."""
    run = MigrationRun(actor)
    token = _explicit.set(run)
    try:
        yield run
    finally:
        _explicit.reset(token)


def default_actor() -> str:
    """Who migrates on start: the OS user, host and process (no principal exists yet)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no user name in a bare container
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()} pid {os.getpid()} (migrate on start)"


# -- where the catalog lives --------------------------------------------------------------


class SchemaDatabase(ABC):
    """One database (a PostgreSQL schema, a SQLite file) with its versions table."""

    #: Named in messages: which database a component is in.
    where: str

    @abstractmethod
    def recorded(self) -> dict[str, int]:
        """The versions table's content; empty if it does not exist (no lock taken)."""

    @abstractmethod
    def migration(self) -> AbstractContextManager[Migration]:
        """A transaction holding the database's migration lock, versions table created."""


class Migration(ABC):
    """Inside :meth:`SchemaDatabase.migration`: what the steps run on, and the record."""

    cursor: Any

    @abstractmethod
    def recorded(self) -> dict[str, int]: ...

    @abstractmethod
    def record(self, step: SchemaStep, actor: str) -> None: ...


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


class PostgresSchema(SchemaDatabase):
    """The versions table in a PostgreSQL schema.

    ``connect`` lends a connection (autocommit or not; the migration runs in its
    own transaction on it). ``ddl_lock_timeout`` and ``wait`` (seconds): see
    :data:`DDL_LOCK_TIMEOUT` and :data:`MIGRATION_WAIT`.
    """

    def __init__(
        self,
        connect: Callable[[], AbstractContextManager[psycopg.Connection[Any]]],
        schema: str,
        *,
        ddl_lock_timeout: float = DDL_LOCK_TIMEOUT,
        wait: float = MIGRATION_WAIT,
    ) -> None:
        self._connect = connect
        self.schema = schema
        self.where = f"PostgreSQL schema {schema!r}"
        self._table = sql.Identifier(schema, SCHEMA_VERSIONS_TABLE)
        self._ddl_lock_timeout = ddl_lock_timeout
        self._wait = wait

    def recorded(self) -> dict[str, int]:
        with self._connect() as conn, conn.transaction():
            cursor = conn.cursor(row_factory=tuple_row)
            return self._read(cursor, conn)

    def _read(self, cursor: psycopg.Cursor[Any], conn: psycopg.Connection[Any]) -> dict[str, int]:
        # to_regclass first: reading a missing table would abort the transaction.
        found = cursor.execute("SELECT to_regclass(%s)", (self._table.as_string(conn),)).fetchone()
        if found is None or found[0] is None:
            return {}
        rows = cursor.execute(
            sql.SQL("SELECT component, version FROM {}").format(self._table)
        ).fetchall()
        return {str(c): int(v) for c, v in rows}

    @contextmanager
    def migration(self) -> Iterator[Migration]:
        with self._connect() as conn:
            try:
                with conn.transaction():
                    cursor = conn.cursor(row_factory=tuple_row)
                    self._lock(cursor)
                    # Only now, holding the migration lock: a DDL statement that waits
                    # for a table lock gives up after this long, so writers that arrive
                    # behind it are never held up for longer.
                    cursor.execute(
                        "SELECT set_config('lock_timeout', %s, true)",
                        (f"{round(self._ddl_lock_timeout * 1000)}ms",),
                    )
                    exists = cursor.execute(
                        "SELECT 1 FROM pg_namespace WHERE nspname = %s", (self.schema,)
                    ).fetchone()
                    if exists is None:
                        cursor.execute(
                            sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(
                                sql.Identifier(self.schema)
                            )
                        )
                    if not self._read(cursor, conn):
                        cursor.execute(
                            sql.SQL(
                                "CREATE TABLE IF NOT EXISTS {} (component text PRIMARY KEY, "
                                "version integer NOT NULL, applied_at text NOT NULL, "
                                "applied_by text NOT NULL)"
                            ).format(self._table)
                        )
                    yield _PostgresMigration(cursor, conn, self)
            except psycopg.errors.LockNotAvailable as exc:
                raise SchemaMigrationFailed(
                    f"{self.where}: a migration step waited more than "
                    f"{self._ddl_lock_timeout:g}s for a table lock (a long transaction "
                    "holds it) and was rolled back, so that writers do not queue behind it; "
                    "run `safereplay migrate --reason ...` again when it has ended"
                ) from exc

    def _lock(self, cursor: psycopg.Cursor[Any]) -> None:
        """The schema's migration lock, for this transaction.

        Tried, not waited for in the lock manager: a process that waits there would
        itself be subject to ``lock_timeout`` settings and would show as a blocked
        backend; polling keeps it out of everyone's way.
        """
        key = f"safereplay.schema.{self.schema}"
        deadline = time.monotonic() + self._wait
        pause = 0.01
        while True:
            row = cursor.execute(
                "SELECT pg_try_advisory_xact_lock(hashtext(%s))", (key,)
            ).fetchone()
            if row is not None and row[0]:
                return
            if time.monotonic() >= deadline:
                raise SchemaMigrationFailed(
                    f"{self.where}: another process has been migrating for more than "
                    f"{self._wait:g}s; look for it in pg_stat_activity, then retry"
                )
            time.sleep(pause)
            pause = min(pause * 2, 0.2)


class _PostgresMigration(Migration):
    def __init__(
        self, cursor: psycopg.Cursor[Any], conn: psycopg.Connection[Any], database: PostgresSchema
    ) -> None:
        self.cursor = cursor
        self._conn = conn
        self._database = database

    def recorded(self) -> dict[str, int]:
        return self._database._read(self.cursor, self._conn)

    def record(self, step: SchemaStep, actor: str) -> None:
        self.cursor.execute(
            sql.SQL(
                "INSERT INTO {} (component, version, applied_at, applied_by) "
                "VALUES (%s, %s, %s, %s) ON CONFLICT (component) DO UPDATE SET "
                "version = EXCLUDED.version, applied_at = EXCLUDED.applied_at, "
                "applied_by = EXCLUDED.applied_by"
            ).format(self._database._table),
            (step.component, step.version, _now(), actor),
        )


# The versions table on SQLite: constant statements (its name is SCHEMA_VERSIONS_TABLE).
_SQLITE_CREATE = (
    'CREATE TABLE IF NOT EXISTS "safereplay_schema_versions" (component TEXT PRIMARY KEY, '
    "version INTEGER NOT NULL, applied_at TEXT NOT NULL, applied_by TEXT NOT NULL)"
)
_SQLITE_SELECT = 'SELECT component, version FROM "safereplay_schema_versions"'
_SQLITE_RECORD = (
    'INSERT INTO "safereplay_schema_versions" (component, version, applied_at, applied_by) '
    "VALUES (?, ?, ?, ?) ON CONFLICT (component) DO UPDATE SET version = excluded.version, "
    "applied_at = excluded.applied_at, applied_by = excluded.applied_by"
)


class SQLiteSchema(SchemaDatabase):
    """The versions table in a SQLite file.

    ``connect`` lends an autocommit ``sqlite3`` connection (``isolation_level=None``)
    with a busy timeout: ``BEGIN IMMEDIATE`` waits on the file's write lock, which
    is also the migration lock.
    """

    def __init__(
        self, connect: Callable[[], AbstractContextManager[sqlite3.Connection]], where: str
    ) -> None:
        self._connect = connect
        self.where = where

    def recorded(self) -> dict[str, int]:
        with self._connect() as conn:
            return _sqlite_read(conn)

    @contextmanager
    def migration(self) -> Iterator[Migration]:
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(_SQLITE_CREATE)
                yield _SQLiteMigration(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")


def _sqlite_read(conn: sqlite3.Connection) -> dict[str, int]:
    found = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (SCHEMA_VERSIONS_TABLE,)
    ).fetchone()
    if found is None:
        return {}
    rows = conn.execute(_SQLITE_SELECT).fetchall()
    return {str(c): int(v) for c, v in rows}


class _SQLiteMigration(Migration):
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.cursor = conn

    def recorded(self) -> dict[str, int]:
        return _sqlite_read(self.cursor)

    def record(self, step: SchemaStep, actor: str) -> None:
        self.cursor.execute(_SQLITE_RECORD, (step.component, step.version, _now(), actor))


# -- checking and migrating ---------------------------------------------------------------


def schema_states(
    database: SchemaDatabase, steps: Sequence[SchemaStep], recorded: dict[str, int] | None = None
) -> list[ComponentState]:
    """Each step's component as the database records it (read only)."""
    recorded = database.recorded() if recorded is None else recorded
    return [
        ComponentState(s.component, s.version, recorded.get(s.component), database.where)
        for s in steps
    ]


def _refuse_too_new(states: Sequence[ComponentState]) -> None:
    newer = [s for s in states if s.state == "too new"]
    if newer:
        raise DatabaseSchemaTooNew(
            "; ".join(
                f"{s.where}: component {s.component!r} is at schema version "
                f"{s.database_version}, newer than this code's {s.code_version}"
                for s in newer
            )
            + ": a newer safereplay release migrated this database; run that release "
            "(this process would misread or damage what it set up)"
        )


def ensure_schema(
    database: SchemaDatabase,
    steps: Sequence[SchemaStep],
    *,
    migrate: bool,
    actor: str | None = None,
) -> list[AppliedStep]:
    """Check ``steps``' components in ``database``; run the missing ones if allowed.

    ``migrate``: may this process run missing steps (``SAFEREPLAY_MIGRATE_ON_START``)?
    Inside :func:`explicit_migration` it may, whatever is passed. ``actor`` (default
    :func:`default_actor`) is recorded as who applied them. Returns the steps run
    (none when the catalog says every component is current: then no DDL, and no
    lock but the catalog read's, was taken).
    """
    run = _explicit.get()
    if run is not None:
        migrate, actor = True, run.actor
    states = schema_states(database, steps)
    _refuse_too_new(states)
    due = [s for s in states if s.state != "current"]
    if not due:
        if run is not None:
            run.states.extend(states)
        return []
    if not migrate:
        raise DatabaseSchemaOutdated(
            "; ".join(
                f"{s.where}: component {s.component!r} is "
                + (
                    "not set up"
                    if s.database_version is None
                    else f"at schema version {s.database_version}"
                )
                + f", this code needs version {s.code_version}"
                for s in due
            )
            + "; run `safereplay migrate --reason ...` (as an admin), or set "
            "SAFEREPLAY_MIGRATE_ON_START=true to let processes migrate when they start"
        )
    actor = actor or default_actor()
    applied: list[AppliedStep] = []
    with database.migration() as migration:
        # Again, under the lock: another process may have migrated meanwhile.
        recorded = migration.recorded()
        states = schema_states(database, steps, recorded)
        _refuse_too_new(states)
        for step in steps:
            current = recorded.get(step.component, 0)
            if current >= step.version:
                continue
            step.apply(migration.cursor, current)
            migration.record(step, actor)
            applied.append(
                AppliedStep(step.component, current, step.version, database.where, actor)
            )
    if run is not None:
        run.states.extend(states)
        run.applied.extend(applied)
    return applied


# -- the event store ----------------------------------------------------------------------


def event_store_step(recorder: Recorder) -> SchemaStep:
    """eventsourcing's tables, indexes, types and function of ``recorder``, as one step.

    Objects that exist already are left alone where asking first is possible: an
    index that exists is not created again (``CREATE INDEX IF NOT EXISTS`` would
    still wait for every writer of its table), a type that exists is not created.
    """
    if isinstance(recorder, PostgresRecorder):
        schema = recorder.datastore.schema
        statements = list(recorder.sql_create_statements)
        table = str(getattr(recorder, "events_table_name", "stored_events"))
        index = getattr(recorder, "notification_id_index_name", None)

        def apply_postgres(cursor: psycopg.Cursor[Any], from_version: int) -> None:
            conn = cursor.connection
            for statement in statements:
                text = statement.as_string(conn)
                if "CREATE TYPE" in text:
                    # No IF NOT EXISTS for types: a savepoint absorbs "exists".
                    try:
                        with conn.transaction():
                            cursor.execute(statement, prepare=False)
                    except psycopg.errors.DuplicateObject:
                        pass
                    continue
                if index is not None and "CREATE UNIQUE INDEX" in text:
                    found = cursor.execute(
                        "SELECT to_regclass(%s)",
                        (sql.Identifier(schema, index).as_string(conn),),
                    ).fetchone()
                    if found is not None and found[0] is not None:
                        continue
                cursor.execute(statement, prepare=False)

        return SchemaStep(
            f"events:{table}", EVENTS_VERSION, apply_postgres, "eventsourcing's event tables"
        )
    if isinstance(recorder, SQLiteRecorder):
        sqlite_statements = list(recorder.create_table_statements)
        name = str(getattr(recorder, "events_table_name", "stored_events"))

        def apply_sqlite(conn: sqlite3.Connection, from_version: int) -> None:
            for statement in sqlite_statements:
                conn.execute(statement)

        return SchemaStep(
            f"events:{name}", EVENTS_VERSION, apply_sqlite, "eventsourcing's event tables"
        )
    raise TypeError(f"no schema step for {type(recorder).__name__}")


def event_store_schema(recorder: Recorder) -> SchemaDatabase | None:
    """Where ``recorder``'s catalog lives (None: an in-memory store, private to us)."""
    if isinstance(recorder, PostgresRecorder):
        datastore = recorder.datastore
        return PostgresSchema(datastore.get_connection, datastore.schema)
    if isinstance(recorder, SQLiteRecorder):
        pool = recorder.datastore.pool
        if pool.is_sqlite_memory_mode:
            return None
        db_name = pool.db_name
        timeout = float(pool.lock_timeout or 30)

        @contextmanager
        def connect() -> Iterator[sqlite3.Connection]:
            conn = sqlite3.connect(db_name, uri=True, isolation_level=None, timeout=timeout)
            try:
                yield conn
            finally:
                conn.close()

        return SQLiteSchema(connect, f"SQLite file {db_name!r}")
    return None


def ensure_event_store(app: Application[Any], *, migrate: bool) -> list[AppliedStep]:
    """The application's one schema call: check (and, if allowed, set up) the tables
    of its event store (and snapshot store), then teach the PostgreSQL pool the
    composite type they use."""
    recorders: list[Recorder] = [app.recorder]
    if app.snapshots is not None:
        recorders.append(app.snapshots.recorder)
    database = event_store_schema(app.recorder)
    if database is None:
        # A private in-memory database: nobody else to race or block.
        for recorder in recorders:
            create = getattr(recorder, "create_table", None)
            if callable(create):
                create()
        return []
    applied = ensure_schema(database, [event_store_step(r) for r in recorders], migrate=migrate)
    if isinstance(app.recorder, PostgresRecorder):
        # eventsourcing registers its composite type's adapter when it creates the
        # tables; with CREATE_TABLE off, that is done here (a catalog read).
        app.recorder.datastore.register_type_adapters()
    return applied

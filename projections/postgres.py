"""PostgreSQL backend: the projection store and the event source.

The store writes a batch in one transaction on its own connection, flushing
folded rows with pipelined ``executemany``; statements are composed with
``psycopg.sql`` (identifiers are never formatted into SQL text). Table creation
is serialised with a transaction-level advisory lock, so workers starting
together do not race on ``CREATE TABLE IF NOT EXISTS``.

The event source reads eventsourcing's ``{schema}.{app}_events`` table below the
high-water mark of :class:`~safereplay.projections.postgres_watermark.PostgresHighWaterMark`,
filtering by topic and by partition in the query. The partition of an aggregate
is computed from the first 8 hex digits of its id:
``('x' || substr(originator_id::text, 1, 8))::bit(32)::bigint % count``, the same
value as :func:`safereplay.projections.source.partition_of`. Live following LISTENs on the
table's channel (eventsourcing NOTIFYs it on insert) on a separate connection;
a notification only wakes the runner, which re-polls on a timer anyway, and a
lost listening connection is reopened with back-off.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import psycopg
from eventsourcing.persistence import Notification
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.types.json import Jsonb

from safereplay.domain.mapper import EnvelopeMapper
from safereplay.projections.batch import MergeShape, TableWrites
from safereplay.projections.errors import (
    DatabaseUnavailable,
    FencedOff,
    PositionConflict,
    RedriveConflict,
    StoreError,
    UnknownProjection,
)
from safereplay.projections.postgres_watermark import PostgresHighWaterMark, WatermarkError
from safereplay.projections.projection import Column, Table, physical_table_name
from safereplay.projections.source import WHOLE, EventSource, Partition, notification_of
from safereplay.projections.store import (
    BUILDS_TABLE,
    PARKED_TABLE,
    POSITIONS_TABLE,
    BuildInfo,
    BuildStatus,
    Checkpoint,
    Fence,
    ParkedEvent,
    ProjectionLike,
    ProjectionStore,
    check_partitioning,
    parked_insert_row,
    parked_update_row,
    projection_class,
    repartitioned_rows,
)

__all__ = ["PostgresEventSource", "PostgresProjectionStore", "partition_expression"]

logger = logging.getLogger(__name__)

_TYPES = {
    "text": "text",
    "integer": "bigint",
    "real": "double precision",
    "boolean": "boolean",
    "json": "jsonb",
    "timestamp": "timestamptz",
}
_TRANSIENT = (psycopg.OperationalError, psycopg.InterfaceError)


def partition_expression(column: str = "originator_id") -> sql.Composable:
    """SQL for the partition hash of ``column`` (a uuid), without the modulo."""
    return sql.SQL("(('x' || substr({}::text, 1, 8))::bit(32)::bigint)").format(
        sql.Identifier(column)
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _translate(exc: psycopg.Error, what: str) -> StoreError:
    if isinstance(exc, _TRANSIENT):
        return DatabaseUnavailable(f"{what}: PostgreSQL unavailable: {_first_line(exc)}")
    return StoreError(f"{what}: {type(exc).__name__}: {_first_line(exc)}")


def _now() -> datetime:
    return datetime.now(UTC)


def _same(value: Any) -> Any:
    """psycopg adapts datetimes and UUIDs itself."""
    return value


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


class _Connection:
    """One lazily opened autocommit connection, dropped when it breaks."""

    def __init__(self, conninfo: str, *, application_name: str, connect_timeout: float) -> None:
        self._conninfo = make_conninfo(conninfo, application_name=application_name)
        self._connect_timeout = max(1, round(connect_timeout))
        self.lock = threading.RLock()
        self._conn: psycopg.Connection[Any] | None = None

    def get(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(
                self._conninfo, autocommit=True, connect_timeout=self._connect_timeout
            )
        return self._conn

    def drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with suppress(psycopg.Error):
                conn.close()

    @contextmanager
    def use(self, what: str) -> Iterator[psycopg.Connection[Any]]:
        with self.lock:
            try:
                yield self.get()
            except psycopg.Error as exc:
                if isinstance(exc, _TRANSIENT) or (self._conn is not None and self._conn.broken):
                    self.drop()
                raise _translate(exc, what) from exc


class _Codec:
    """Statements and value conversions of one physical table."""

    def __init__(self, table: Table, schema: str, physical: str) -> None:
        self.table = table
        self.physical = physical
        self.name = sql.Identifier(schema, physical)
        self.encode = {c.name: _encoder(c) for c in table.columns}
        self.json = frozenset(c.name for c in table.columns if c.type == "json")
        self.decode = [(c.name, _decoder(c)) for c in table.columns]
        ident = sql.Identifier
        columns = sql.SQL(", ").join(ident(c.name) for c in table.columns)
        keys = sql.SQL(", ").join(ident(n) for n in table.key_names)
        key_match = sql.SQL(" AND ").join(
            sql.SQL("{} = %s").format(ident(n)) for n in table.key_names
        )
        self.select_one = sql.SQL("SELECT {} FROM {} WHERE {}").format(
            columns, self.name, key_match
        )
        self.select_all = sql.SQL("SELECT {} FROM {} ORDER BY {}").format(columns, self.name, keys)
        self.delete = sql.SQL("DELETE FROM {} WHERE {}").format(self.name, key_match)
        conflict: sql.Composable
        if table.values:
            conflict = sql.SQL("DO UPDATE SET {}").format(
                sql.SQL(", ").join(
                    sql.SQL("{0} = EXCLUDED.{0}").format(ident(n)) for n in table.value_names
                )
            )
        else:
            conflict = sql.SQL("DO NOTHING")
        # A batch's rows in one statement: one array per column, unnested server-side
        # (a batch holds each key once, so ON CONFLICT never meets a row twice).
        self.upsert_set = sql.SQL(
            "INSERT INTO {} ({}) SELECT * FROM {} ON CONFLICT ({}) {}"
        ).format(self.name, columns, self._unnest([c.name for c in table.columns]), keys, conflict)
        definitions = [
            sql.SQL("{} {} NOT NULL").format(ident(c.name), sql.SQL(_TYPES[c.type]))
            for c in table.key
        ] + [sql.SQL("{} {}").format(ident(c.name), sql.SQL(_TYPES[c.type])) for c in table.values]
        self.create = sql.SQL("CREATE TABLE IF NOT EXISTS {} ({}, PRIMARY KEY ({}))").format(
            self.name, sql.SQL(", ").join(definitions), keys
        )
        self._merges: dict[MergeShape, sql.Composed] = {}

    def merge(self, shape: MergeShape) -> sql.Composed:
        statement = self._merges.get(shape)
        if statement is None:
            ident = sql.Identifier
            names = self.table.key_names + shape.columns
            sets = [
                sql.SQL("{0} = COALESCE(t.{0}, 0) + EXCLUDED.{0}").format(ident(n))
                for n in shape.add
            ]
            sets += [
                sql.SQL("{0} = GREATEST(t.{0}, EXCLUDED.{0})").format(ident(n))
                for n in shape.maximum
            ]
            sets += [
                sql.SQL("{0} = LEAST(t.{0}, EXCLUDED.{0})").format(ident(n)) for n in shape.minimum
            ]
            sets += [sql.SQL("{0} = EXCLUDED.{0}").format(ident(n)) for n in shape.set]
            statement = sql.SQL(
                "INSERT INTO {} AS t ({}) SELECT * FROM {} ON CONFLICT ({}) DO UPDATE SET {}"
            ).format(
                self.name,
                sql.SQL(", ").join(ident(n) for n in names),
                self._unnest(names),
                sql.SQL(", ").join(ident(n) for n in self.table.key_names),
                sql.SQL(", ").join(sets),
            )
            self._merges[shape] = statement
        return statement

    def _unnest(self, names: Sequence[str]) -> sql.Composed:
        types = {c.name: _TYPES[c.type] for c in self.table.columns}
        return sql.SQL("unnest({})").format(
            sql.SQL(", ").join(sql.SQL("%s::{}[]").format(sql.SQL(types[n])) for n in names)
        )

    def columns(self, rows: Sequence[dict[str, Any]], names: Sequence[str]) -> list[list[Any]]:
        """The rows as one encoded array per column (for the unnest statements).

        Only JSON columns are encoded (``Jsonb``); the others are passed as they are,
        without a call per value.
        """
        encode = self.encode
        return [
            [encode[n](row[n]) for row in rows] if n in self.json else [row[n] for row in rows]
            for n in names
        ]

    def key_params(self, key: tuple[Any, ...]) -> tuple[Any, ...]:
        encode = self.encode
        return tuple(encode[n](v) for n, v in zip(self.table.key_names, key, strict=True))

    def row(self, values: Sequence[Any]) -> dict[str, Any]:
        return {name: decode(v) for (name, decode), v in zip(self.decode, values, strict=True)}


class PostgresProjectionStore(ProjectionStore):
    """Projections in a PostgreSQL schema (the event store's, or another database's).

    Its connection is named ``{application_name}-projections`` in ``pg_stat_activity``.
    """

    dialect = "postgres"

    def __init__(
        self,
        conninfo: str,
        *,
        schema: str = "public",
        connect_timeout: float = 5.0,
        application_name: str = "safereplay",
    ) -> None:
        self.schema = schema
        self._db = _Connection(
            conninfo,
            application_name=f"{application_name}-projections",
            connect_timeout=connect_timeout,
        )
        self._registry_ready = False
        self._codecs: dict[str, _Codec] = {}
        self._builds_t = sql.Identifier(schema, BUILDS_TABLE)
        self._positions_t = sql.Identifier(schema, POSITIONS_TABLE)
        self._parked_t = sql.Identifier(schema, PARKED_TABLE)

    @property
    def description(self) -> str:
        return f"PostgreSQL projection store (schema {self.schema!r})"

    def _q(self, text: str) -> sql.Composed:
        return sql.SQL(text).format(
            builds=self._builds_t, positions=self._positions_t, parked=self._parked_t
        )

    # -- transactions ---------------------------------------------------------------------

    @contextmanager
    def _write(self, what: str, *, ddl: bool = False) -> Iterator[psycopg.Connection[Any]]:
        with self._db.use(f"{self.description}: {what}") as conn, conn.transaction():
            if ddl or not self._registry_ready:
                conn.execute(
                    "SELECT pg_advisory_xact_lock(hashtext(%s))",
                    (f"safereplay.projections.{self.schema}",),
                )
            if not self._registry_ready:
                self._create_registry(conn)
            yield conn
        self._registry_ready = True

    @contextmanager
    def _read(self, what: str) -> Iterator[psycopg.Connection[Any]]:
        with self._db.use(f"{self.description}: {what}") as conn:
            yield conn

    def _create_registry(self, conn: psycopg.Connection[Any]) -> None:
        exists = conn.execute(
            "SELECT 1 FROM pg_namespace WHERE nspname = %s", (self.schema,)
        ).fetchone()
        if exists is None:
            conn.execute(
                sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema))
            )
        conn.execute(
            self._q(
                "CREATE TABLE IF NOT EXISTS {builds} ("
                "projection text NOT NULL, build integer NOT NULL, version integer NOT NULL, "
                "status text NOT NULL CHECK (status IN ('building', 'live', 'retired')), "
                "created_at timestamptz NOT NULL, tables jsonb NOT NULL, "
                "PRIMARY KEY (projection, build))"
            )
        )
        conn.execute(
            sql.SQL(
                "CREATE UNIQUE INDEX IF NOT EXISTS {} ON {} (projection) WHERE status = 'live'"
            ).format(sql.Identifier(f"{BUILDS_TABLE}_live"), self._builds_t)
        )
        conn.execute(
            self._q(
                "CREATE TABLE IF NOT EXISTS {positions} ("
                "projection text NOT NULL, build integer NOT NULL, "
                "partition_index integer NOT NULL, partition_count integer NOT NULL, "
                "position bigint NOT NULL DEFAULT 0, events_applied bigint NOT NULL DEFAULT 0, "
                "events_parked bigint NOT NULL DEFAULT 0, committed_at timestamptz, "
                "PRIMARY KEY (projection, build, partition_index, partition_count))"
            )
        )
        conn.execute(
            self._q(
                "CREATE TABLE IF NOT EXISTS {parked} ("
                "projection text NOT NULL, build integer NOT NULL, position bigint NOT NULL, "
                "partition_index integer NOT NULL, partition_count integer NOT NULL, "
                "aggregate_id uuid NOT NULL, aggregate_version bigint NOT NULL, "
                "topic text NOT NULL, event_type text NOT NULL, error_type text NOT NULL, "
                "error_message text NOT NULL, attempts integer NOT NULL, "
                "first_seen_at timestamptz NOT NULL, last_seen_at timestamptz NOT NULL, "
                "reason text NOT NULL, blocked_by bigint, resolved_at timestamptz, "
                "PRIMARY KEY (projection, build, position))"
            )
        )

    def _codec(self, name: str, build: int, table: Table) -> _Codec:
        physical = physical_table_name(name, table.name, build)
        codec = self._codecs.get(physical)
        if codec is None or codec.table != table:
            codec = self._codecs[physical] = _Codec(table, self.schema, physical)
        return codec

    def _registry_exists(self) -> bool:
        if self._registry_ready:
            return True
        with self._read("look for the registry") as conn:
            row = conn.execute(
                "SELECT to_regclass(%s) IS NOT NULL",
                (sql.Identifier(self.schema, BUILDS_TABLE).as_string(conn),),
            ).fetchone()
        return bool(row and row[0])

    # -- builds ---------------------------------------------------------------------------

    def _builds(self, conn: psycopg.Connection[Any], name: str) -> list[BuildInfo]:
        rows = conn.execute(
            self._q(
                "SELECT build, version, status, created_at, tables FROM {builds} "
                "WHERE projection = %s ORDER BY build"
            ),
            (name,),
        ).fetchall()
        return [
            BuildInfo(
                projection=name,
                build=int(b),
                version=int(v),
                status=_status(s),
                created_at=c.astimezone(UTC),
                tables=tuple(t),
            )
            for b, v, s, c, t in rows
        ]

    def _register(
        self, conn: psycopg.Connection[Any], cls: type[Any], build: int, status: BuildStatus
    ) -> None:
        tables = [physical_table_name(cls.name, t.name, build) for t in cls.tables]
        conn.execute(
            self._q(
                "INSERT INTO {builds} (projection, build, version, status, created_at, tables) "
                "VALUES (%s, %s, %s, %s, %s, %s)"
            ),
            (cls.name, build, cls.version, status, _now(), Jsonb(tables)),
        )

    def _create_tables(self, conn: psycopg.Connection[Any], cls: type[Any], build: int) -> None:
        for table in cls.tables:
            conn.execute(self._codec(cls.name, build, table).create)

    def prepare(self, projection: ProjectionLike, *, build: int | None = None) -> int:
        cls = projection_class(projection)
        with self._write(f"prepare {cls.name!r}", ddl=True) as conn:
            infos = self._builds(conn, cls.name)
            if build is None:
                live = [i for i in infos if i.status == "live"]
                if live:
                    self.check_version(cls, live[0])
                    build = live[0].build
                elif infos:
                    raise UnknownProjection(
                        f"projection {cls.name!r} has builds "
                        f"{', '.join(str(i.build) for i in infos)} but none is live"
                    )
                else:
                    build = 1
                    self._register(conn, cls, build, "live")
            else:
                found = [i for i in infos if i.build == build]
                if not found:
                    raise UnknownProjection(f"projection {cls.name!r} has no build {build}")
                self.check_version(cls, found[0])
            self._create_tables(conn, cls, build)
        return build

    def builds(self, name: str) -> list[BuildInfo]:
        if not self._registry_exists():
            return []
        with self._read("list builds") as conn:
            return self._builds(conn, name)

    def create_build(self, projection: ProjectionLike) -> int:
        cls = projection_class(projection)
        with self._write(f"create a build of {cls.name!r}", ddl=True) as conn:
            row = conn.execute(
                self._q("SELECT COALESCE(MAX(build), 0) + 1 FROM {builds} WHERE projection = %s"),
                (cls.name,),
            ).fetchone()
            assert row is not None
            build = int(row[0])
            self._register(conn, cls, build, "building")
            self._create_tables(conn, cls, build)
        return build

    def set_live(self, name: str, build: int) -> None:
        with self._write(f"set build {build} of {name!r} live") as conn:
            found = conn.execute(
                self._q(
                    "SELECT status FROM {builds} WHERE projection = %s AND build = %s FOR UPDATE"
                ),
                (name, build),
            ).fetchone()
            if found is None:
                raise UnknownProjection(f"projection {name!r} has no build {build}")
            conn.execute(
                self._q(
                    "UPDATE {builds} SET status = 'retired' "
                    "WHERE projection = %s AND status = 'live' AND build <> %s"
                ),
                (name, build),
            )
            conn.execute(
                self._q("UPDATE {builds} SET status = 'live' WHERE projection = %s AND build = %s"),
                (name, build),
            )

    def drop_build(self, name: str, build: int) -> None:
        with self._write(f"drop build {build} of {name!r}", ddl=True) as conn:
            infos = [i for i in self._builds(conn, name) if i.build == build]
            if not infos:
                raise UnknownProjection(f"projection {name!r} has no build {build}")
            if infos[0].status == "live":
                raise StoreError(f"build {build} of {name!r} is live: make another live first")
            for table in infos[0].tables:
                conn.execute(
                    sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(self.schema, table))
                )
            for registry in (self._positions_t, self._parked_t, self._builds_t):
                conn.execute(
                    sql.SQL("DELETE FROM {} WHERE projection = %s AND build = %s").format(registry),
                    (name, build),
                )

    def projection_names(self) -> list[str]:
        if not self._registry_exists():
            return []
        with self._read("list projections") as conn:
            rows = conn.execute(
                self._q("SELECT DISTINCT projection FROM {builds} ORDER BY projection")
            ).fetchall()
        return [str(r[0]) for r in rows]

    # -- positions ------------------------------------------------------------------------

    _CHECKPOINT = (
        "SELECT partition_index, partition_count, position, events_applied, events_parked, "
        "committed_at FROM {positions} WHERE projection = %s AND build = %s"
    )

    def checkpoint(self, name: str, build: int, partition: Partition) -> Checkpoint:
        query = self._q(self._CHECKPOINT + " AND partition_index = %s AND partition_count = %s")
        params = (name, build, partition.index, partition.count)
        row = None
        if self._registry_exists():
            with self._read("read a position") as conn:
                row = conn.execute(query, params).fetchone()
        if row is None:
            with self._write("create a position") as conn:
                self._lock_positions(conn, name, build)
                counts = conn.execute(
                    self._q(
                        "SELECT DISTINCT partition_count FROM {positions} "
                        "WHERE projection = %s AND build = %s"
                    ),
                    (name, build),
                ).fetchall()
                check_partitioning(name, build, partition, [int(c[0]) for c in counts])
                conn.execute(
                    self._q(
                        "INSERT INTO {positions} (projection, build, partition_index, "
                        "partition_count) VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING"
                    ),
                    params,
                )
                row = conn.execute(query, params).fetchone()
        assert row is not None
        return _checkpoint(name, build, row)

    def _lock_positions(self, conn: psycopg.Connection[Any], name: str, build: int) -> None:
        # Creating a position row and regrouping a build's rows serialise on this
        # transaction lock, so a partitioning check cannot race a repartition.
        conn.execute(
            "SELECT pg_advisory_xact_lock(hashtext(%s))",
            (f"safereplay.positions.{self.schema}.{name}.{build}",),
        )

    def write(
        self, name: str, build: int, writes: Sequence[TableWrites], *, fence: Fence | None = None
    ) -> None:
        with self._write(f"replay into {name!r} build {build}") as conn:
            if fence is not None:
                self._check_fence(conn, name, build, WHOLE, fence)
            with conn.cursor() as cursor:
                for table_writes in writes:
                    self._flush(cursor, name, build, table_writes)

    def repartition(self, name: str, build: int, count: int) -> list[Checkpoint]:
        with self._write(f"repartition build {build} of {name!r}") as conn:
            self._lock_positions(conn, name, build)
            # Lock the rows too: a runner's commit of the old partitioning waits, then
            # finds its row gone (PositionConflict) instead of moving a stale position.
            current = [
                _checkpoint(name, build, r)
                for r in conn.execute(
                    self._q(self._CHECKPOINT + " FOR UPDATE"), (name, build)
                ).fetchall()
            ]
            rows = repartitioned_rows(name, build, current, count)
            conn.execute(
                self._q("DELETE FROM {positions} WHERE projection = %s AND build = %s"),
                (name, build),
            )
            with conn.cursor() as cursor:
                cursor.executemany(
                    self._q(
                        "INSERT INTO {positions} (projection, build, partition_index, "
                        "partition_count, position, events_applied, events_parked, "
                        "committed_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
                    ),
                    [
                        (name, build, index, count, position, applied, parked, _now())
                        for index, position, applied, parked in rows
                    ],
                )
        return self.checkpoints(name, build=build)

    def _check_fence(
        self,
        conn: psycopg.Connection[Any],
        name: str,
        build: int,
        partition: Partition,
        fence: Fence,
    ) -> None:
        # FOR SHARE: the lease row cannot be updated (taken over) until this commit ends.
        where = sql.SQL(" AND ").join(
            sql.SQL("{} = %s").format(sql.Identifier(column)) for column, _ in fence.match
        )
        held = conn.execute(
            sql.SQL("SELECT 1 FROM {} WHERE {} FOR SHARE").format(
                sql.Identifier(self.schema, fence.table), where
            ),
            [value for _, value in fence.match],
        ).fetchone()
        if held is None:
            raise FencedOff(name, build, str(partition), fence=fence.description)

    def checkpoints(self, name: str, *, build: int | None = None) -> list[Checkpoint]:
        build = self.resolve_build(name, build)
        with self._read("read positions") as conn:
            rows = conn.execute(
                self._q(self._CHECKPOINT + " ORDER BY partition_count, partition_index"),
                (name, build),
            ).fetchall()
        return [_checkpoint(name, build, row) for row in rows]

    def commit(
        self,
        name: str,
        build: int,
        partition: Partition,
        *,
        expected: int,
        position: int,
        writes: Sequence[TableWrites] = (),
        applied: int = 0,
        parked: Sequence[ParkedEvent] = (),
        during: Callable[[], None] | None = None,
        fence: Fence | None = None,
    ) -> Checkpoint:
        if position < expected:
            raise ValueError(f"a position cannot move back (from {expected} to {position})")
        with self._write(f"commit {name!r} partition {partition}") as conn:
            if fence is not None:
                self._check_fence(conn, name, build, partition, fence)
            with conn.cursor() as cursor:
                for table_writes in writes:
                    self._flush(cursor, name, build, table_writes)
                if parked:
                    cursor.executemany(
                        self._q(
                            "INSERT INTO {parked} (projection, build, position, partition_index, "
                            "partition_count, aggregate_id, aggregate_version, topic, event_type, "
                            "error_type, error_message, attempts, first_seen_at, last_seen_at, "
                            "reason, blocked_by) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, "
                            "%s, %s, %s, %s, %s, %s)"
                        ),
                        [
                            parked_insert_row(name, build, p, when=_same, ident=_same)
                            for p in parked
                        ],
                    )
            if during is not None:
                during()
            if expected == 0:  # a partition's first commit: its row may not exist yet
                conn.execute(
                    self._q(
                        "INSERT INTO {positions} (projection, build, partition_index, "
                        "partition_count) VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING"
                    ),
                    (name, build, partition.index, partition.count),
                )
            row = conn.execute(
                self._q(
                    "UPDATE {positions} SET position = %s, "
                    "events_applied = events_applied + %s, events_parked = events_parked + %s, "
                    "committed_at = %s WHERE projection = %s AND build = %s "
                    "AND partition_index = %s AND partition_count = %s AND position = %s "
                    "RETURNING partition_index, partition_count, position, events_applied, "
                    "events_parked, committed_at"
                ),
                (
                    position,
                    applied,
                    len(parked),
                    _now(),
                    name,
                    build,
                    partition.index,
                    partition.count,
                    expected,
                ),
            ).fetchone()
            if row is None:
                found = conn.execute(
                    self._q(
                        "SELECT position FROM {positions} WHERE projection = %s AND build = %s "
                        "AND partition_index = %s AND partition_count = %s"
                    ),
                    (name, build, partition.index, partition.count),
                ).fetchone()
                raise PositionConflict(
                    name,
                    build,
                    str(partition),
                    expected=expected,
                    found=None if found is None else int(found[0]),
                )
        return _checkpoint(name, build, row)

    def _flush(
        self, cursor: psycopg.Cursor[Any], name: str, build: int, writes: TableWrites
    ) -> None:
        codec = self._codec(name, build, writes.table)
        if writes.deletes:
            cursor.executemany(codec.delete, [codec.key_params(k) for k in writes.deletes])
        if writes.upserts:
            names = [c.name for c in writes.table.columns]
            cursor.execute(codec.upsert_set, codec.columns(writes.upserts, names))
        for shape, rows in writes.merges.items():
            names = list(writes.table.key_names + shape.columns)
            cursor.execute(codec.merge(shape), codec.columns(rows, names))

    # -- rows -----------------------------------------------------------------------------

    def read_row(
        self, name: str, build: int, table: Table, key: tuple[Any, ...]
    ) -> dict[str, Any] | None:
        codec = self._codec(name, build, table)
        with self._read(f"read {codec.physical}") as conn:
            found = conn.execute(codec.select_one, codec.key_params(key)).fetchone()
        return None if found is None else codec.row(found)

    def rows(
        self, projection: ProjectionLike, table: str, *, build: int | None = None
    ) -> list[dict[str, Any]]:
        cls = projection_class(projection)
        codec = self._codec(cls.name, self.resolve_build(cls, build), cls.table(table))
        with self._read(f"read {codec.physical}") as conn:
            return [codec.row(r) for r in conn.execute(codec.select_all).fetchall()]

    # -- parking --------------------------------------------------------------------------

    def parked(
        self, name: str, *, build: int | None = None, include_resolved: bool = False
    ) -> list[ParkedEvent]:
        build = self.resolve_build(name, build)
        query = (
            "SELECT position, partition_index, partition_count, aggregate_id, aggregate_version, "
            "topic, event_type, error_type, error_message, attempts, first_seen_at, "
            "last_seen_at, reason, blocked_by, resolved_at FROM {parked} "
            "WHERE projection = %s AND build = %s"
        )
        if not include_resolved:
            query += " AND resolved_at IS NULL"
        with self._read("read parked events") as conn:
            rows = conn.execute(self._q(query + " ORDER BY position"), (name, build)).fetchall()
        return [
            ParkedEvent(
                projection=name,
                build=build,
                position=int(r[0]),
                partition=Partition(int(r[1]), int(r[2])),
                aggregate_id=r[3],
                aggregate_version=int(r[4]),
                topic=r[5],
                event_type=r[6],
                error_type=r[7],
                error_message=r[8],
                attempts=int(r[9]),
                first_seen_at=r[10].astimezone(UTC),
                last_seen_at=r[11].astimezone(UTC),
                reason=r[12],
                blocked_by=None if r[13] is None else int(r[13]),
                resolved_at=None if r[14] is None else r[14].astimezone(UTC),
            )
            for r in rows
        ]

    def blocked_aggregates(self, name: str, build: int, partition: Partition) -> dict[UUID, int]:
        if not self._registry_exists():
            return {}
        with self._read("read parked aggregates") as conn:
            rows = conn.execute(
                self._q(
                    "SELECT aggregate_id, MIN(position) FROM {parked} WHERE projection = %s "
                    "AND build = %s AND resolved_at IS NULL GROUP BY aggregate_id"
                ),
                (name, build),
            ).fetchall()
        return {a: int(p) for a, p in rows if partition.contains(a)}

    def resolve_parked(
        self,
        name: str,
        build: int,
        *,
        resolved: Sequence[int],
        writes: Sequence[TableWrites] = (),
        failed: Sequence[ParkedEvent] = (),
    ) -> int:
        now = _now()
        with self._write(f"redrive parked events of {name!r}") as conn:
            changed = conn.execute(
                self._q(
                    "UPDATE {parked} SET resolved_at = %s WHERE projection = %s AND build = %s "
                    "AND position = ANY(%s) AND resolved_at IS NULL"
                ),
                (now, name, build, list(resolved)),
            ).rowcount
            if changed != len(resolved):
                # Another redrive resolved some of them first: roll back, apply nothing twice.
                raise RedriveConflict(name, build, expected=len(resolved), resolved=changed)
            with conn.cursor() as cursor:
                for table_writes in writes:
                    self._flush(cursor, name, build, table_writes)
                if failed:
                    cursor.executemany(
                        self._q(
                            "UPDATE {parked} SET attempts = %s, last_seen_at = %s, "
                            "error_type = %s, error_message = %s, reason = %s, blocked_by = %s "
                            "WHERE projection = %s AND build = %s AND position = %s "
                            "AND resolved_at IS NULL"
                        ),
                        [parked_update_row(name, build, p, when=_same) for p in failed],
                    )
        return len(resolved)

    def close(self) -> None:
        with self._db.lock:
            self._db.drop()


def _status(value: str) -> BuildStatus:
    if value == "live":
        return "live"
    if value == "building":
        return "building"
    return "retired"


def _checkpoint(name: str, build: int, row: Sequence[Any]) -> Checkpoint:
    return Checkpoint(
        projection=name,
        build=build,
        partition=Partition(int(row[0]), int(row[1])),
        position=int(row[2]),
        events_applied=int(row[3]),
        events_parked=int(row[4]),
        committed_at=None if row[5] is None else row[5].astimezone(UTC),
    )


# -- the event source -------------------------------------------------------------------


class PostgresEventSource(EventSource):
    """eventsourcing's PostgreSQL notification log ``{schema}.{table}``.

    ``listen`` (True) LISTENs on the table's channel to wake a following runner;
    ``watermark_options`` go to :class:`PostgresHighWaterMark`. Connections are
    named ``{application_name}-source``, ``-listen-{table}`` and ``-watermark``
    in ``pg_stat_activity``.
    """

    def __init__(
        self,
        conninfo: str,
        *,
        schema: str,
        table: str,
        mapper: EnvelopeMapper | None = None,
        listen: bool = True,
        connect_timeout: float = 5.0,
        application_name: str = "safereplay",
        **watermark_options: Any,
    ) -> None:
        super().__init__(
            PostgresHighWaterMark(
                make_conninfo(conninfo, application_name=f"{application_name}-watermark"),
                schema=schema,
                table=table,
                **watermark_options,
            ),
            mapper,
        )
        self.schema = schema
        self.table = table
        self.channel = table.replace(".", "_")
        self._listen = listen
        self._db = _Connection(
            conninfo, application_name=f"{application_name}-source", connect_timeout=connect_timeout
        )
        self._listener_conninfo = make_conninfo(
            conninfo, application_name=f"{application_name}-listen-{table}"[:63]
        )
        self._connect_timeout = max(1, round(connect_timeout))
        self._listener: psycopg.Connection[Any] | None = None
        self._listener_lock = threading.Lock()
        self._reconnect_at = 0.0
        self._reconnect_delay = 0.05
        #: How many times the listening connection was opened (1 + reconnects).
        self.listen_connects = 0
        #: Notifications that woke a waiter.
        self.notifications = 0
        self._events = sql.Identifier(schema, table)
        self._statements: dict[tuple[bool, bool], sql.Composed] = {}

    @property
    def description(self) -> str:
        return f"PostgreSQL event log {self.schema}.{self.table}"

    def high_water_mark(self) -> int:
        try:
            return super().high_water_mark()
        except WatermarkError as exc:
            if isinstance(exc.__cause__, _TRANSIENT):
                raise DatabaseUnavailable(f"{self.description}: {exc}") from exc
            raise StoreError(f"{self.description}: {exc}") from exc

    def head(self) -> int:
        with self._db.use(f"{self.description}: head") as conn:
            exists = conn.execute(
                "SELECT to_regclass(%s) IS NOT NULL", (self._events.as_string(conn),)
            ).fetchone()
            if not exists or not exists[0]:
                return 0
            row = conn.execute(
                sql.SQL("SELECT MAX(notification_id) FROM {}").format(self._events)
            ).fetchone()
        return int(row[0] or 0) if row else 0

    def count(
        self, *, after: int, upto: int, topics: Sequence[str] = (), partition: Partition = WHOLE
    ) -> int:
        if upto <= after:
            return 0
        where: list[sql.Composable] = [
            sql.SQL("notification_id > %(after)s AND notification_id <= %(upto)s")
        ]
        if topics:
            where.append(sql.SQL("topic = ANY(%(topics)s)"))
        if not partition.is_whole:
            where.append(sql.SQL("{} %% %(count)s = %(index)s").format(partition_expression()))
        statement = sql.SQL("SELECT COUNT(*) FROM {} WHERE {}").format(
            self._events, sql.SQL(" AND ").join(where)
        )
        params = {
            "after": after,
            "upto": upto,
            "topics": list(topics),
            "count": partition.count,
            "index": partition.index,
        }
        with self._db.use(f"{self.description}: count") as conn:
            try:
                row = conn.execute(statement, params).fetchone()
            except psycopg.errors.UndefinedTable:
                return 0
        return int(row[0]) if row is not None else 0

    def read(
        self,
        *,
        after: int,
        upto: int,
        limit: int,
        topics: Sequence[str] = (),
        partition: Partition = WHOLE,
    ) -> list[Notification]:
        if upto <= after or limit < 1:
            return []
        key = (bool(topics), partition.is_whole)
        statement = self._statements.get(key)
        if statement is None:
            where: list[sql.Composable] = [
                sql.SQL("notification_id > %(after)s AND notification_id <= %(upto)s")
            ]
            if topics:
                where.append(sql.SQL("topic = ANY(%(topics)s)"))
            if not partition.is_whole:
                where.append(sql.SQL("{} %% %(count)s = %(index)s").format(partition_expression()))
            statement = sql.SQL(
                "SELECT notification_id, originator_id, originator_version, topic, state "
                "FROM {} WHERE {} ORDER BY notification_id LIMIT %(limit)s"
            ).format(self._events, sql.SQL(" AND ").join(where))
            self._statements[key] = statement
        params = {
            "after": after,
            "upto": upto,
            "topics": list(topics),
            "count": partition.count,
            "index": partition.index,
            "limit": limit,
        }
        with self._db.use(f"{self.description}: read") as conn:
            try:
                # Binary results: each state (~420 bytes) arrives as bytes instead of
                # hex text that the client must decode, row by row.
                rows = conn.execute(statement, params, binary=True).fetchall()
            except psycopg.errors.UndefinedTable:
                return []
        # Aggregates recur within a batch: one (immutable) UUID per distinct id, so that
        # the batch keeps ~1 object per aggregate alive instead of one per row (fewer
        # objects for the garbage collector to walk until the batch commits).
        ids: dict[int, UUID] = {}
        shared = ids.setdefault
        return [
            notification_of(
                int(nid),
                shared(oid.int, oid) if isinstance(oid, UUID) else UUID(str(oid)),
                int(version),
                topic,
                bytes(state),
            )
            for nid, oid, version, topic, state in rows
        ]

    # -- waking up ------------------------------------------------------------------------

    def _listening(self) -> psycopg.Connection[Any] | None:
        if self._listener is not None and not self._listener.closed:
            return self._listener
        if time.monotonic() < self._reconnect_at:
            return None
        try:
            conn = psycopg.connect(
                self._listener_conninfo, autocommit=True, connect_timeout=self._connect_timeout
            )
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
        except psycopg.Error as exc:
            self._listener_failed(exc)
            return None
        self._listener = conn
        self._reconnect_delay = 0.05
        self.listen_connects += 1
        return conn

    def _listener_failed(self, exc: BaseException) -> None:
        conn, self._listener = self._listener, None
        if conn is not None:
            with suppress(psycopg.Error):
                conn.close()
        self._reconnect_at = time.monotonic() + self._reconnect_delay
        logger.warning(
            "%s: listening connection lost (%s); polling, reconnecting in %.2fs",
            self.description,
            _first_line(exc),
            self._reconnect_delay,
        )
        self._reconnect_delay = min(self._reconnect_delay * 2, 5.0)

    @property
    def notifies(self) -> bool:
        return self._listen

    def wait(self, timeout: float, stop: threading.Event | None = None) -> bool:
        stop = stop or threading.Event()
        deadline = time.monotonic() + timeout
        if self.watermark_held():
            # A hole may be settled any moment: poll again soon.
            stop.wait(min(timeout, 0.02))
            return False
        if not self._listen:
            stop.wait(timeout)
            return False
        with self._listener_lock:
            while not stop.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                was_listening = self._listener is not None
                conn = self._listening()
                if conn is None:
                    stop.wait(min(remaining, 0.1))
                    continue
                if not was_listening:
                    # (Re)connected: notifications may have been missed meanwhile.
                    return True
                try:
                    for _ in conn.notifies(timeout=min(remaining, 0.1), stop_after=1):
                        self.notifications += 1
                        return True
                except psycopg.Error as exc:
                    self._listener_failed(exc)
        return False

    def watermark_held(self) -> bool:
        """True when the high-water mark is held below a hole it is proving dead."""
        watermark = self.watermark
        return isinstance(watermark, PostgresHighWaterMark) and (
            watermark.status().holding_at is not None
        )

    def close(self) -> None:
        with self._listener_lock:
            conn, self._listener = self._listener, None
            if conn is not None:
                with suppress(psycopg.Error):
                    conn.close()
        with self._db.lock:
            self._db.drop()
        super().close()

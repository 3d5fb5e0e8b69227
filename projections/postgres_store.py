"""The PostgreSQL projection store.

A batch is written in one transaction on the store's own connection, its folded
rows flushed with one ``unnest`` statement per table and shape (deletes with a
pipelined ``executemany``). The statements are
:mod:`~safereplay.projections.store_sql`'s templates, composed with ``psycopg.sql``
for the store's schema once (the registry's when the store is opened, a table's
when it is first used); identifiers are never formatted into SQL text. Table
creation is serialised with a transaction-level advisory lock, so workers
starting together do not race on ``CREATE TABLE IF NOT EXISTS``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from safereplay.projections.batch import MergeShape, TableWrites
from safereplay.projections.errors import (
    FencedOff,
    PositionConflict,
    RedriveConflict,
    StoreError,
    UnknownProjection,
)
from safereplay.projections.postgres_connection import Connection
from safereplay.projections.source import WHOLE, Partition
from safereplay.projections.sqltemplate import PostgresRenderer
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
    build_status,
    check_partitioning,
    checkpoint_of,
    parked_event_of,
    parked_insert_row,
    parked_update_row,
    projection_class,
    repartitioned_rows,
)
from safereplay.projections.store_sql import (
    DROP_TABLE,
    fence_statement,
    merge_statement,
    store_statements,
    table_statements,
)
from safereplay.projections.tables import Column, Table, physical_table_name

__all__ = ["PostgresProjectionStore"]


def _now() -> datetime:
    return datetime.now(UTC)


def _same(value: Any) -> Any:
    """psycopg adapts datetimes and UUIDs itself."""
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


class _Codec:
    """Statements and value conversions of one physical table."""

    def __init__(self, table: Table, renderer: PostgresRenderer, physical: str) -> None:
        self.table = table
        self.physical = physical
        self.encode = {c.name: _encoder(c) for c in table.columns}
        self.json = frozenset(c.name for c in table.columns if c.type == "json")
        self.decode = [(c.name, _decoder(c)) for c in table.columns]
        self.sql = table_statements(renderer, table, physical)
        self._renderer = renderer
        self._merges: dict[MergeShape, sql.Composed] = {}

    def merge(self, shape: MergeShape) -> sql.Composed:
        statement = self._merges.get(shape)
        if statement is None:
            statement = self._merges[shape] = merge_statement(
                self._renderer, self.table, self.physical, shape
            )
        return statement

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
        self._db = Connection(
            conninfo,
            application_name=f"{application_name}-projections",
            connect_timeout=connect_timeout,
        )
        self._registry_ready = False
        self._codecs: dict[str, _Codec] = {}
        self._fences: dict[tuple[str, tuple[str, ...]], sql.Composed] = {}
        self._render = PostgresRenderer(schema)
        self._sql = store_statements(
            self._render, builds=BUILDS_TABLE, positions=POSITIONS_TABLE, parked=PARKED_TABLE
        )

    @property
    def description(self) -> str:
        return f"PostgreSQL projection store (schema {self.schema!r})"

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
        for statement in self._sql.create_registry:
            conn.execute(statement)

    def _codec(self, name: str, build: int, table: Table) -> _Codec:
        physical = physical_table_name(name, table.name, build)
        codec = self._codecs.get(physical)
        if codec is None or codec.table != table:
            codec = self._codecs[physical] = _Codec(table, self._render, physical)
        return codec

    def _registry_exists(self) -> bool:
        if self._registry_ready:
            return True
        with self._read("look for the registry") as conn:
            row = conn.execute(
                self._sql.registry_exists,
                {"table": sql.Identifier(self.schema, BUILDS_TABLE).as_string(conn)},
            ).fetchone()
        return bool(row and row[0])

    # -- builds ---------------------------------------------------------------------------

    def _builds(self, conn: psycopg.Connection[Any], name: str) -> list[BuildInfo]:
        rows = conn.execute(self._sql.builds, {"projection": name}).fetchall()
        return [
            BuildInfo(
                projection=name,
                build=int(b),
                version=int(v),
                status=build_status(s),
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
            self._sql.register_build,
            {
                "projection": cls.name,
                "build": build,
                "version": cls.version,
                "status": status,
                "created_at": _now(),
                "tables": Jsonb(tables),
            },
        )

    def _create_tables(self, conn: psycopg.Connection[Any], cls: type[Any], build: int) -> None:
        for table in cls.tables:
            conn.execute(self._codec(cls.name, build, table).sql.create)

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
            row = conn.execute(self._sql.next_build, {"projection": cls.name}).fetchone()
            assert row is not None
            build = int(row[0])
            self._register(conn, cls, build, "building")
            self._create_tables(conn, cls, build)
        return build

    def set_live(self, name: str, build: int) -> None:
        key = {"projection": name, "build": build}
        with self._write(f"set build {build} of {name!r} live") as conn:
            found = conn.execute(self._sql.build_status_for_update, key).fetchone()
            if found is None:
                raise UnknownProjection(f"projection {name!r} has no build {build}")
            conn.execute(self._sql.retire_live_build, key)
            conn.execute(self._sql.set_live, key)

    def drop_build(self, name: str, build: int) -> None:
        with self._write(f"drop build {build} of {name!r}", ddl=True) as conn:
            infos = [i for i in self._builds(conn, name) if i.build == build]
            if not infos:
                raise UnknownProjection(f"projection {name!r} has no build {build}")
            if infos[0].status == "live":
                raise StoreError(f"build {build} of {name!r} is live: make another live first")
            for table in infos[0].tables:
                conn.execute(self._render.render(DROP_TABLE, table=self._render.table(table)))
            for statement in self._sql.delete_build:
                conn.execute(statement, {"projection": name, "build": build})

    def projection_names(self) -> list[str]:
        if not self._registry_exists():
            return []
        with self._read("list projections") as conn:
            rows = conn.execute(self._sql.projection_names).fetchall()
        return [str(r[0]) for r in rows]

    # -- positions ------------------------------------------------------------------------

    def checkpoint(self, name: str, build: int, partition: Partition) -> Checkpoint:
        params = {
            "projection": name,
            "build": build,
            "index": partition.index,
            "count": partition.count,
        }
        row = None
        if self._registry_exists():
            with self._read("read a position") as conn:
                row = conn.execute(self._sql.checkpoint, params).fetchone()
        if row is None:
            with self._write("create a position") as conn:
                self._lock_positions(conn, name, build)
                counts = conn.execute(self._sql.partition_counts, params).fetchall()
                check_partitioning(name, build, partition, [int(c[0]) for c in counts])
                conn.execute(self._sql.create_position, params)
                row = conn.execute(self._sql.checkpoint, params).fetchone()
        assert row is not None
        return checkpoint_of(name, build, row, when=_utc)

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
        key = {"projection": name, "build": build}
        with self._write(f"repartition build {build} of {name!r}") as conn:
            self._lock_positions(conn, name, build)
            # The rows are locked too (FOR UPDATE): see store_statements.
            current = [
                checkpoint_of(name, build, r, when=_utc)
                for r in conn.execute(self._sql.build_checkpoints_for_update, key).fetchall()
            ]
            rows = repartitioned_rows(name, build, current, count)
            conn.execute(self._sql.delete_positions, key)
            with conn.cursor() as cursor:
                cursor.executemany(
                    self._sql.insert_position,
                    [
                        {
                            **key,
                            "index": index,
                            "count": count,
                            "position": position,
                            "applied": applied,
                            "parked": parked,
                            "committed_at": _now(),
                        }
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
        columns = tuple(column for column, _ in fence.match)
        statement = self._fences.get((fence.table, columns))
        if statement is None:
            statement = fence_statement(self._render, fence.table, columns)
            self._fences[fence.table, columns] = statement
        held = conn.execute(statement, [value for _, value in fence.match]).fetchone()
        if held is None:
            raise FencedOff(name, build, str(partition), fence=fence.description)

    def checkpoints(self, name: str, *, build: int | None = None) -> list[Checkpoint]:
        build = self.resolve_build(name, build)
        with self._read("read positions") as conn:
            rows = conn.execute(
                self._sql.checkpoints, {"projection": name, "build": build}
            ).fetchall()
        return [checkpoint_of(name, build, row, when=_utc) for row in rows]

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
        key = {
            "projection": name,
            "build": build,
            "index": partition.index,
            "count": partition.count,
        }
        with self._write(f"commit {name!r} partition {partition}") as conn:
            if fence is not None:
                self._check_fence(conn, name, build, partition, fence)
            with conn.cursor() as cursor:
                for table_writes in writes:
                    self._flush(cursor, name, build, table_writes)
                if parked:
                    cursor.executemany(
                        self._sql.park,
                        [
                            parked_insert_row(name, build, p, when=_same, ident=_same)
                            for p in parked
                        ],
                    )
            if during is not None:
                during()
            if expected == 0:  # a partition's first commit: its row may not exist yet
                conn.execute(self._sql.create_position, key)
            row = conn.execute(
                self._sql.move_position_returning,
                {
                    **key,
                    "position": position,
                    "applied": applied,
                    "parked": len(parked),
                    "committed_at": _now(),
                    "expected": expected,
                },
            ).fetchone()
            if row is None:
                found = conn.execute(self._sql.position, key).fetchone()
                raise PositionConflict(
                    name,
                    build,
                    str(partition),
                    expected=expected,
                    found=None if found is None else int(found[0]),
                )
        return checkpoint_of(name, build, row, when=_utc)

    def _flush(
        self, cursor: psycopg.Cursor[Any], name: str, build: int, writes: TableWrites
    ) -> None:
        codec = self._codec(name, build, writes.table)
        if writes.deletes:
            cursor.executemany(codec.sql.delete_row, [codec.key_params(k) for k in writes.deletes])
        if writes.upserts:
            names = [c.name for c in writes.table.columns]
            cursor.execute(codec.sql.upsert, codec.columns(writes.upserts, names))
        for shape, rows in writes.merges.items():
            names = list(writes.table.key_names + shape.columns)
            cursor.execute(codec.merge(shape), codec.columns(rows, names))

    # -- rows -----------------------------------------------------------------------------

    def read_row(
        self, name: str, build: int, table: Table, key: tuple[Any, ...]
    ) -> dict[str, Any] | None:
        codec = self._codec(name, build, table)
        with self._read(f"read {codec.physical}") as conn:
            found = conn.execute(codec.sql.select_row, codec.key_params(key)).fetchone()
        return None if found is None else codec.row(found)

    def rows(
        self, projection: ProjectionLike, table: str, *, build: int | None = None
    ) -> list[dict[str, Any]]:
        cls = projection_class(projection)
        codec = self._codec(cls.name, self.resolve_build(cls, build), cls.table(table))
        with self._read(f"read {codec.physical}") as conn:
            return [codec.row(r) for r in conn.execute(codec.sql.select_rows).fetchall()]

    # -- parking --------------------------------------------------------------------------

    def parked(
        self, name: str, *, build: int | None = None, include_resolved: bool = False
    ) -> list[ParkedEvent]:
        build = self.resolve_build(name, build)
        query = self._sql.parked if include_resolved else self._sql.unresolved_parked
        with self._read("read parked events") as conn:
            rows = conn.execute(query, {"projection": name, "build": build}).fetchall()
        return [parked_event_of(name, build, r, when=_utc, ident=_same) for r in rows]

    def blocked_aggregates(self, name: str, build: int, partition: Partition) -> dict[UUID, int]:
        if not self._registry_exists():
            return {}
        with self._read("read parked aggregates") as conn:
            rows = conn.execute(
                self._sql.blocked_aggregates, {"projection": name, "build": build}
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
                self._sql.resolve_parked,
                {"now": now, "projection": name, "build": build, "positions": list(resolved)},
            ).rowcount
            if changed != len(resolved):
                # Another redrive resolved some of them first: roll back, apply nothing twice.
                raise RedriveConflict(name, build, expected=len(resolved), resolved=changed)
            with conn.cursor() as cursor:
                for table_writes in writes:
                    self._flush(cursor, name, build, table_writes)
                if failed:
                    cursor.executemany(
                        self._sql.parked_again,
                        [parked_update_row(name, build, p, when=_same) for p in failed],
                    )
        return len(resolved)

    def close(self) -> None:
        with self._db.lock:
            self._db.drop()

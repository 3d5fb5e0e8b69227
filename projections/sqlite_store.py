"""The SQLite projection store.

A batch is written inside ``BEGIN IMMEDIATE`` ... ``COMMIT`` on the store's own
connection (WAL mode), folded rows flushed with ``executemany``. The statements
are :mod:`~safereplay.projections.store_sql`'s templates, rendered for SQLite once
(the registry's when the store is opened, a table's when it is first used) with
identifiers double-quoted; values are always bound parameters.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from operator import itemgetter
from pathlib import Path
from typing import Any
from uuid import UUID

import orjson

from safereplay.projections.batch import MergeShape, TableWrites
from safereplay.projections.errors import (
    FencedOff,
    PositionConflict,
    RedriveConflict,
    StoreError,
    UnknownProjection,
)
from safereplay.projections.source import WHOLE, Partition
from safereplay.projections.sqlite_connection import connect, translate
from safereplay.projections.sqltemplate import SQLiteRenderer
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

__all__ = ["SQLiteProjectionStore"]

_SQL = SQLiteRenderer()


def _timestamp(value: datetime) -> str:
    # Fixed width, UTC: text order is time order (max/min merges compare text).
    if value.tzinfo is not UTC:  # batch states hold UTC already: no conversion per row
        value = value.astimezone(UTC)
    return value.isoformat(timespec="microseconds")


#: Column types stored as something else than the Python value (see _encoder).
_CONVERTED = frozenset({"boolean", "json", "timestamp"})


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


def _now() -> datetime:
    return datetime.now(UTC)


class _Codec:
    """Statements and value conversions of one physical table."""

    def __init__(self, table: Table, physical: str) -> None:
        self.table = table
        self.physical = physical
        self.encode = {c.name: _encoder(c) for c in table.columns}
        #: Columns whose values are encoded for SQLite (the others are stored as they are).
        self.converted = frozenset(c.name for c in table.columns if c.type in _CONVERTED)
        self.decode = [(c.name, _decoder(c)) for c in table.columns]
        self.sql = table_statements(_SQL, table, physical)
        self._merges: dict[MergeShape, str] = {}

    def merge(self, shape: MergeShape) -> str:
        statement = self._merges.get(shape)
        if statement is None:
            statement = merge_statement(_SQL, self.table, self.physical, shape)
            self._merges[shape] = statement
        return statement

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

    def key_params(self, key: tuple[Any, ...]) -> tuple[Any, ...]:
        encode = self.encode
        return tuple(encode[n](v) for n, v in zip(self.table.key_names, key, strict=True))

    def row(self, values: Sequence[Any]) -> dict[str, Any]:
        return {name: decode(v) for (name, decode), v in zip(self.decode, values, strict=True)}


class SQLiteProjectionStore(ProjectionStore):
    """Projections in a SQLite file (the event store's file, or another one)."""

    dialect = "sqlite"

    def __init__(self, path: Path | str, *, busy_timeout: float = 30.0) -> None:
        self.path = Path(path)
        self._busy_timeout = busy_timeout
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._registry_ready = False
        self._codecs: dict[str, _Codec] = {}
        self._fences: dict[tuple[str, tuple[str, ...]], str] = {}
        self._sql = store_statements(
            _SQL, builds=BUILDS_TABLE, positions=POSITIONS_TABLE, parked=PARKED_TABLE
        )

    @property
    def description(self) -> str:
        return f"SQLite projection store {str(self.path)!r}"

    # -- connection and transactions ------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = connect(self.path, busy_timeout=self._busy_timeout)
            conn.execute("PRAGMA journal_mode=WAL")
            self._conn = conn
        return self._conn

    @contextmanager
    def _write(self, what: str) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                conn = self._connection()
                conn.execute("BEGIN IMMEDIATE")
                if not self._registry_ready:
                    self._create_registry(conn)
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
            self._registry_ready = True

    @contextmanager
    def _read(self, what: str) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                yield self._connection()
            except sqlite3.Error as exc:
                raise translate(exc, f"{self.description}: {what}") from exc

    def _rollback(self) -> None:
        if self._conn is not None and self._conn.in_transaction:
            with suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")

    def _create_registry(self, conn: sqlite3.Connection) -> None:
        for statement in self._sql.create_registry:
            conn.execute(statement)

    def _codec(self, name: str, build: int, table: Table) -> _Codec:
        physical = physical_table_name(name, table.name, build)
        codec = self._codecs.get(physical)
        if codec is None or codec.table != table:
            codec = self._codecs[physical] = _Codec(table, physical)
        return codec

    # -- builds ---------------------------------------------------------------------------

    def _builds(self, conn: sqlite3.Connection, name: str) -> list[BuildInfo]:
        rows = conn.execute(self._sql.builds, {"projection": name}).fetchall()
        return [
            BuildInfo(
                projection=name,
                build=int(b),
                version=int(v),
                status=build_status(s),
                created_at=datetime.fromisoformat(c),
                tables=tuple(orjson.loads(t)),
            )
            for b, v, s, c, t in rows
        ]

    def _register(
        self, conn: sqlite3.Connection, cls: type[Any], build: int, status: BuildStatus
    ) -> None:
        tables = [physical_table_name(cls.name, t.name, build) for t in cls.tables]
        conn.execute(
            self._sql.register_build,
            {
                "projection": cls.name,
                "build": build,
                "version": cls.version,
                "status": status,
                "created_at": _timestamp(_now()),
                "tables": orjson.dumps(tables),
            },
        )

    def _create_tables(self, conn: sqlite3.Connection, cls: type[Any], build: int) -> None:
        for table in cls.tables:
            conn.execute(self._codec(cls.name, build, table).sql.create)

    def prepare(self, projection: ProjectionLike, *, build: int | None = None) -> int:
        cls = projection_class(projection)
        with self._write(f"prepare {cls.name!r}") as conn:
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
        with self._write(f"create a build of {cls.name!r}") as conn:
            row = conn.execute(self._sql.next_build, {"projection": cls.name}).fetchone()
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
        with self._write(f"drop build {build} of {name!r}") as conn:
            infos = [i for i in self._builds(conn, name) if i.build == build]
            if not infos:
                raise UnknownProjection(f"projection {name!r} has no build {build}")
            if infos[0].status == "live":
                raise StoreError(f"build {build} of {name!r} is live: make another live first")
            for table in infos[0].tables:
                conn.execute(_SQL.render(DROP_TABLE, table=_SQL.table(table)))
            for statement in self._sql.delete_build:
                conn.execute(statement, {"projection": name, "build": build})

    def projection_names(self) -> list[str]:
        if not self._registry_exists():
            return []
        with self._read("list projections") as conn:
            rows = conn.execute(self._sql.projection_names).fetchall()
        return [str(r[0]) for r in rows]

    def _registry_exists(self) -> bool:
        if self._registry_ready:
            return True
        with self._read("look for the registry") as conn:
            row = conn.execute(self._sql.registry_exists, {"table": BUILDS_TABLE}).fetchone()
        return row is not None

    # -- positions ------------------------------------------------------------------------

    def checkpoint(self, name: str, build: int, partition: Partition) -> Checkpoint:
        params = {
            "projection": name,
            "build": build,
            "index": partition.index,
            "count": partition.count,
        }
        with self._read("read a position") as conn:
            row = (
                conn.execute(self._sql.checkpoint, params).fetchone()
                if self._registry_exists()
                else None
            )
        if row is None:
            with self._write("create a position") as conn:
                counts = conn.execute(self._sql.partition_counts, params).fetchall()
                check_partitioning(name, build, partition, [int(c[0]) for c in counts])
                conn.execute(self._sql.create_position, params)
                row = conn.execute(self._sql.checkpoint, params).fetchone()
        return checkpoint_of(name, build, row, when=datetime.fromisoformat)

    def write(
        self, name: str, build: int, writes: Sequence[TableWrites], *, fence: Fence | None = None
    ) -> None:
        with self._write(f"replay into {name!r} build {build}") as conn:
            if fence is not None:
                self._check_fence(conn, name, build, WHOLE, fence)
            for table_writes in writes:
                self._flush(conn, name, build, table_writes)

    def repartition(self, name: str, build: int, count: int) -> list[Checkpoint]:
        key = {"projection": name, "build": build}
        with self._write(f"repartition build {build} of {name!r}") as conn:
            current = [
                checkpoint_of(name, build, r, when=datetime.fromisoformat)
                for r in conn.execute(self._sql.build_checkpoints_for_update, key).fetchall()
            ]
            rows = repartitioned_rows(name, build, current, count)
            conn.execute(self._sql.delete_positions, key)
            conn.executemany(
                self._sql.insert_position,
                [
                    {
                        **key,
                        "index": index,
                        "count": count,
                        "position": position,
                        "applied": applied,
                        "parked": parked,
                        "committed_at": _timestamp(_now()),
                    }
                    for index, position, applied, parked in rows
                ],
            )
        return self.checkpoints(name, build=build)

    def _check_fence(
        self, conn: sqlite3.Connection, name: str, build: int, partition: Partition, fence: Fence
    ) -> None:
        # Inside BEGIN IMMEDIATE: no other writer (no lease take-over) until we commit.
        columns = tuple(column for column, _ in fence.match)
        statement = self._fences.get((fence.table, columns))
        if statement is None:
            statement = fence_statement(_SQL, fence.table, columns)
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
        return [checkpoint_of(name, build, row, when=datetime.fromisoformat) for row in rows]

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
        committed_at = _now()
        key = {
            "projection": name,
            "build": build,
            "index": partition.index,
            "count": partition.count,
        }
        with self._write(f"commit {name!r} partition {partition}") as conn:
            if fence is not None:
                self._check_fence(conn, name, build, partition, fence)
            for table_writes in writes:
                self._flush(conn, name, build, table_writes)
            if parked:
                conn.executemany(
                    self._sql.park,
                    [parked_insert_row(name, build, p, when=_timestamp, ident=str) for p in parked],
                )
            if during is not None:
                during()
            if expected == 0:  # a partition's first commit: its row may not exist yet
                conn.execute(self._sql.create_position, key)
            cursor = conn.execute(
                self._sql.move_position,
                {
                    **key,
                    "position": position,
                    "applied": applied,
                    "parked": len(parked),
                    "committed_at": _timestamp(committed_at),
                    "expected": expected,
                },
            )
            if cursor.rowcount != 1:
                found = conn.execute(self._sql.position, key).fetchone()
                raise PositionConflict(
                    name,
                    build,
                    str(partition),
                    expected=expected,
                    found=None if found is None else int(found[0]),
                )
            row = conn.execute(self._sql.checkpoint, key).fetchone()
        return checkpoint_of(name, build, row, when=datetime.fromisoformat)

    def _flush(self, conn: sqlite3.Connection, name: str, build: int, writes: TableWrites) -> None:
        codec = self._codec(name, build, writes.table)
        if writes.deletes:
            conn.executemany(codec.sql.delete_row, [codec.key_params(k) for k in writes.deletes])
        if writes.upserts:
            names = [c.name for c in writes.table.columns]
            conn.executemany(codec.sql.upsert, codec.params_of(writes.upserts, names))
        for shape, rows in writes.merges.items():
            names = list(writes.table.key_names + shape.columns)
            conn.executemany(codec.merge(shape), codec.params_of(rows, names))

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
        return [
            parked_event_of(name, build, r, when=datetime.fromisoformat, ident=UUID) for r in rows
        ]

    def blocked_aggregates(self, name: str, build: int, partition: Partition) -> dict[UUID, int]:
        if not self._registry_exists():
            return {}
        with self._read("read parked aggregates") as conn:
            rows = conn.execute(
                self._sql.blocked_aggregates, {"projection": name, "build": build}
            ).fetchall()
        blocked = {UUID(a): int(p) for a, p in rows}
        return {a: p for a, p in blocked.items() if partition.contains(a)}

    def resolve_parked(
        self,
        name: str,
        build: int,
        *,
        resolved: Sequence[int],
        writes: Sequence[TableWrites] = (),
        failed: Sequence[ParkedEvent] = (),
    ) -> int:
        now = _timestamp(_now())
        with self._write(f"redrive parked events of {name!r}") as conn:
            for table_writes in writes:
                self._flush(conn, name, build, table_writes)
            changed = 0
            for position in resolved:
                changed += conn.execute(
                    self._sql.resolve_parked,
                    {"now": now, "projection": name, "build": build, "position": position},
                ).rowcount
            if changed != len(resolved):
                # Another redrive resolved some of them first: roll back, apply nothing twice.
                raise RedriveConflict(name, build, expected=len(resolved), resolved=changed)
            conn.executemany(
                self._sql.parked_again,
                [parked_update_row(name, build, p, when=_timestamp) for p in failed],
            )
        return len(resolved)

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                with suppress(sqlite3.Error):
                    conn.close()

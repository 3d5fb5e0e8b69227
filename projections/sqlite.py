"""SQLite backend: the projection store and the event source.

The store writes a batch inside ``BEGIN IMMEDIATE`` ... ``COMMIT`` on its own
connection (WAL mode), flushing folded rows with ``executemany``. Identifiers are
validated when the projection class is defined and double-quoted here; values
are always bound parameters.

The event source reads eventsourcing's ``stored_events`` table (position =
``rowid``, ``originator_id`` stored as 32-character hex text) on its own
read-only connection, on which it registers the deterministic SQL function
``safereplay_partition(originator_id, count)`` (the first 32 bits of the id,
modulo ``count``, as :func:`safereplay.projections.source.partition_of`).
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
from eventsourcing.persistence import Notification

from safereplay.domain.mapper import EnvelopeMapper, uuid_from_text
from safereplay.projections.batch import MergeShape, TableWrites
from safereplay.projections.errors import (
    DatabaseUnavailable,
    FencedOff,
    PositionConflict,
    RedriveConflict,
    StoreError,
    UnknownProjection,
)
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
from safereplay.projections.watermark import SQLiteHighWaterMark

__all__ = ["SQLiteEventSource", "SQLiteProjectionStore", "quote"]

_TYPES = {
    "text": "TEXT",
    "integer": "INTEGER",
    "real": "REAL",
    "boolean": "INTEGER",
    "json": "TEXT",
    "timestamp": "TEXT",
}
_TRANSIENT = ("locked", "busy", "disk i/o error")


def quote(identifier: str) -> str:
    """A double-quoted SQLite identifier."""
    return '"' + identifier.replace('"', '""') + '"'


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


def _translate(exc: sqlite3.Error, what: str) -> StoreError:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if isinstance(exc, sqlite3.OperationalError) and any(t in text.lower() for t in _TRANSIENT):
        return DatabaseUnavailable(f"{what}: SQLite is busy or unavailable: {text}")
    return StoreError(f"{what}: {type(exc).__name__}: {text}")


def _now() -> datetime:
    return datetime.now(UTC)


class _Codec:
    """Statements and value conversions of one physical table."""

    def __init__(self, table: Table, physical: str) -> None:
        self.table = table
        self.physical = physical
        self.name = quote(physical)
        self.encode = {c.name: _encoder(c) for c in table.columns}
        #: Columns whose values are encoded for SQLite (the others are stored as they are).
        self.converted = frozenset(c.name for c in table.columns if c.type in _CONVERTED)
        self.decode = [(c.name, _decoder(c)) for c in table.columns]
        columns = ", ".join(quote(c.name) for c in table.columns)
        keys = ", ".join(quote(n) for n in table.key_names)
        key_match = " AND ".join(f"{quote(n)} = ?" for n in table.key_names)
        self.select_one = f"SELECT {columns} FROM {self.name} WHERE {key_match}"
        self.select_all = f"SELECT {columns} FROM {self.name} ORDER BY {keys}"
        self.delete = f"DELETE FROM {self.name} WHERE {key_match}"
        values = ", ".join("?" for _ in table.columns)
        if table.values:
            updates = ", ".join(f"{quote(n)} = excluded.{quote(n)}" for n in table.value_names)
            conflict = f"DO UPDATE SET {updates}"
        else:
            conflict = "DO NOTHING"
        self.upsert = (
            f"INSERT INTO {self.name} ({columns}) VALUES ({values}) ON CONFLICT ({keys}) {conflict}"
        )
        definitions = [f"{quote(c.name)} {_TYPES[c.type]} NOT NULL" for c in table.key] + [
            f"{quote(c.name)} {_TYPES[c.type]}" for c in table.values
        ]
        self.create = (
            f"CREATE TABLE IF NOT EXISTS {self.name} ({', '.join(definitions)}, "
            f"PRIMARY KEY ({keys}))"
        )
        self._merges: dict[MergeShape, str] = {}

    def merge(self, shape: MergeShape) -> str:
        statement = self._merges.get(shape)
        if statement is None:
            names = self.table.key_names + shape.columns
            t = self.name
            sets = [
                f"{quote(n)} = COALESCE({t}.{quote(n)}, 0) + excluded.{quote(n)}" for n in shape.add
            ]
            for function, columns in (("max", shape.maximum), ("min", shape.minimum)):
                sets += [
                    f"{quote(n)} = {function}(COALESCE({t}.{quote(n)}, excluded.{quote(n)}), "
                    f"excluded.{quote(n)})"
                    for n in columns
                ]
            sets += [f"{quote(n)} = excluded.{quote(n)}" for n in shape.set]
            statement = (
                f"INSERT INTO {t} ({', '.join(quote(n) for n in names)}) "
                f"VALUES ({', '.join('?' for _ in names)}) "
                f"ON CONFLICT ({', '.join(quote(n) for n in self.table.key_names)}) "
                f"DO UPDATE SET {', '.join(sets)}"
            )
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

    @property
    def description(self) -> str:
        return f"SQLite projection store {str(self.path)!r}"

    # -- connection and transactions ------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(
                self.path,
                timeout=self._busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
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
                raise _translate(exc, f"{self.description}: {what}") from exc
            try:
                yield conn
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise _translate(exc, f"{self.description}: {what}") from exc
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
                raise _translate(exc, f"{self.description}: {what}") from exc

    def _rollback(self) -> None:
        if self._conn is not None and self._conn.in_transaction:
            with suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")

    def _create_registry(self, conn: sqlite3.Connection) -> None:
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {BUILDS_TABLE} ("
            "projection TEXT NOT NULL, build INTEGER NOT NULL, version INTEGER NOT NULL, "
            "status TEXT NOT NULL CHECK (status IN ('building', 'live', 'retired')), "
            "created_at TEXT NOT NULL, tables TEXT NOT NULL, "
            "PRIMARY KEY (projection, build))"
        )
        conn.execute(
            f"CREATE UNIQUE INDEX IF NOT EXISTS {BUILDS_TABLE}_live "
            f"ON {BUILDS_TABLE} (projection) WHERE status = 'live'"
        )
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {POSITIONS_TABLE} ("
            "projection TEXT NOT NULL, build INTEGER NOT NULL, "
            "partition_index INTEGER NOT NULL, partition_count INTEGER NOT NULL, "
            "position INTEGER NOT NULL DEFAULT 0, events_applied INTEGER NOT NULL DEFAULT 0, "
            "events_parked INTEGER NOT NULL DEFAULT 0, committed_at TEXT, "
            "PRIMARY KEY (projection, build, partition_index, partition_count))"
        )
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {PARKED_TABLE} ("
            "projection TEXT NOT NULL, build INTEGER NOT NULL, position INTEGER NOT NULL, "
            "partition_index INTEGER NOT NULL, partition_count INTEGER NOT NULL, "
            "aggregate_id TEXT NOT NULL, aggregate_version INTEGER NOT NULL, "
            "topic TEXT NOT NULL, event_type TEXT NOT NULL, error_type TEXT NOT NULL, "
            "error_message TEXT NOT NULL, attempts INTEGER NOT NULL, "
            "first_seen_at TEXT NOT NULL, last_seen_at TEXT NOT NULL, reason TEXT NOT NULL, "
            "blocked_by INTEGER, resolved_at TEXT, "
            "PRIMARY KEY (projection, build, position))"
        )

    def _codec(self, name: str, build: int, table: Table) -> _Codec:
        physical = physical_table_name(name, table.name, build)
        codec = self._codecs.get(physical)
        if codec is None or codec.table != table:
            codec = self._codecs[physical] = _Codec(table, physical)
        return codec

    # -- builds ---------------------------------------------------------------------------

    def _builds(self, conn: sqlite3.Connection, name: str) -> list[BuildInfo]:
        rows = conn.execute(
            f"SELECT build, version, status, created_at, tables FROM {BUILDS_TABLE} "
            "WHERE projection = ? ORDER BY build",
            (name,),
        ).fetchall()
        return [
            BuildInfo(
                projection=name,
                build=int(b),
                version=int(v),
                status=_status(s),
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
            f"INSERT INTO {BUILDS_TABLE} (projection, build, version, status, created_at, tables) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (cls.name, build, cls.version, status, _timestamp(_now()), orjson.dumps(tables)),
        )

    def _create_tables(self, conn: sqlite3.Connection, cls: type[Any], build: int) -> None:
        for table in cls.tables:
            conn.execute(self._codec(cls.name, build, table).create)

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
            row = conn.execute(
                f"SELECT COALESCE(MAX(build), 0) + 1 FROM {BUILDS_TABLE} WHERE projection = ?",
                (cls.name,),
            ).fetchone()
            build = int(row[0])
            self._register(conn, cls, build, "building")
            self._create_tables(conn, cls, build)
        return build

    def set_live(self, name: str, build: int) -> None:
        with self._write(f"set build {build} of {name!r} live") as conn:
            found = conn.execute(
                f"SELECT status FROM {BUILDS_TABLE} WHERE projection = ? AND build = ?",
                (name, build),
            ).fetchone()
            if found is None:
                raise UnknownProjection(f"projection {name!r} has no build {build}")
            conn.execute(
                f"UPDATE {BUILDS_TABLE} SET status = 'retired' "
                "WHERE projection = ? AND status = 'live' AND build <> ?",
                (name, build),
            )
            conn.execute(
                f"UPDATE {BUILDS_TABLE} SET status = 'live' WHERE projection = ? AND build = ?",
                (name, build),
            )

    def drop_build(self, name: str, build: int) -> None:
        with self._write(f"drop build {build} of {name!r}") as conn:
            infos = [i for i in self._builds(conn, name) if i.build == build]
            if not infos:
                raise UnknownProjection(f"projection {name!r} has no build {build}")
            if infos[0].status == "live":
                raise StoreError(f"build {build} of {name!r} is live: make another live first")
            for table in infos[0].tables:
                conn.execute(f"DROP TABLE IF EXISTS {quote(table)}")
            for registry in (POSITIONS_TABLE, PARKED_TABLE, BUILDS_TABLE):
                conn.execute(
                    f"DELETE FROM {registry} WHERE projection = ? AND build = ?", (name, build)
                )

    def projection_names(self) -> list[str]:
        if not self._registry_exists():
            return []
        with self._read("list projections") as conn:
            rows = conn.execute(
                f"SELECT DISTINCT projection FROM {BUILDS_TABLE} ORDER BY projection"
            ).fetchall()
        return [str(r[0]) for r in rows]

    def _registry_exists(self) -> bool:
        if self._registry_ready:
            return True
        with self._read("look for the registry") as conn:
            row = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (BUILDS_TABLE,)
            ).fetchone()
        return row is not None

    # -- positions ------------------------------------------------------------------------

    _CHECKPOINT = (
        "SELECT partition_index, partition_count, position, events_applied, events_parked, "
        f"committed_at FROM {POSITIONS_TABLE} WHERE projection = ? AND build = ?"
    )

    def checkpoint(self, name: str, build: int, partition: Partition) -> Checkpoint:
        query = self._CHECKPOINT + " AND partition_index = ? AND partition_count = ?"
        params = (name, build, partition.index, partition.count)
        with self._read("read a position") as conn:
            row = conn.execute(query, params).fetchone() if self._registry_exists() else None
        if row is None:
            with self._write("create a position") as conn:
                counts = conn.execute(
                    f"SELECT DISTINCT partition_count FROM {POSITIONS_TABLE} "
                    "WHERE projection = ? AND build = ?",
                    (name, build),
                ).fetchall()
                check_partitioning(name, build, partition, [int(c[0]) for c in counts])
                conn.execute(
                    f"INSERT INTO {POSITIONS_TABLE} (projection, build, partition_index, "
                    "partition_count) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    params,
                )
                row = conn.execute(query, params).fetchone()
        return _checkpoint(name, build, row)

    def write(
        self, name: str, build: int, writes: Sequence[TableWrites], *, fence: Fence | None = None
    ) -> None:
        with self._write(f"replay into {name!r} build {build}") as conn:
            if fence is not None:
                self._check_fence(conn, name, build, WHOLE, fence)
            for table_writes in writes:
                self._flush(conn, name, build, table_writes)

    def repartition(self, name: str, build: int, count: int) -> list[Checkpoint]:
        with self._write(f"repartition build {build} of {name!r}") as conn:
            current = [
                _checkpoint(name, build, r)
                for r in conn.execute(self._CHECKPOINT, (name, build)).fetchall()
            ]
            rows = repartitioned_rows(name, build, current, count)
            conn.execute(
                f"DELETE FROM {POSITIONS_TABLE} WHERE projection = ? AND build = ?", (name, build)
            )
            conn.executemany(
                f"INSERT INTO {POSITIONS_TABLE} (projection, build, partition_index, "
                "partition_count, position, events_applied, events_parked, committed_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (name, build, index, count, position, applied, parked, _timestamp(_now()))
                    for index, position, applied, parked in rows
                ],
            )
        return self.checkpoints(name, build=build)

    def _check_fence(
        self, conn: sqlite3.Connection, name: str, build: int, partition: Partition, fence: Fence
    ) -> None:
        # Inside BEGIN IMMEDIATE: no other writer (no lease take-over) until we commit.
        where = " AND ".join(f"{quote(column)} = ?" for column, _ in fence.match)
        held = conn.execute(
            f"SELECT 1 FROM {quote(fence.table)} WHERE {where}",
            [value for _, value in fence.match],
        ).fetchone()
        if held is None:
            raise FencedOff(name, build, str(partition), fence=fence.description)

    def checkpoints(self, name: str, *, build: int | None = None) -> list[Checkpoint]:
        build = self.resolve_build(name, build)
        with self._read("read positions") as conn:
            rows = conn.execute(
                self._CHECKPOINT + " ORDER BY partition_count, partition_index", (name, build)
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
        committed_at = _now()
        with self._write(f"commit {name!r} partition {partition}") as conn:
            if fence is not None:
                self._check_fence(conn, name, build, partition, fence)
            for table_writes in writes:
                self._flush(conn, name, build, table_writes)
            if parked:
                conn.executemany(
                    f"INSERT INTO {PARKED_TABLE} (projection, build, position, partition_index, "
                    "partition_count, aggregate_id, aggregate_version, topic, event_type, "
                    "error_type, error_message, attempts, first_seen_at, last_seen_at, reason, "
                    "blocked_by, resolved_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)",
                    [parked_insert_row(name, build, p, when=_timestamp, ident=str) for p in parked],
                )
            if during is not None:
                during()
            if expected == 0:  # a partition's first commit: its row may not exist yet
                conn.execute(
                    f"INSERT INTO {POSITIONS_TABLE} (projection, build, partition_index, "
                    "partition_count) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    (name, build, partition.index, partition.count),
                )
            cursor = conn.execute(
                f"UPDATE {POSITIONS_TABLE} SET position = ?, "
                "events_applied = events_applied + ?, events_parked = events_parked + ?, "
                "committed_at = ? WHERE projection = ? AND build = ? AND partition_index = ? "
                "AND partition_count = ? AND position = ?",
                (
                    position,
                    applied,
                    len(parked),
                    _timestamp(committed_at),
                    name,
                    build,
                    partition.index,
                    partition.count,
                    expected,
                ),
            )
            if cursor.rowcount != 1:
                found = conn.execute(
                    f"SELECT position FROM {POSITIONS_TABLE} WHERE projection = ? AND build = ? "
                    "AND partition_index = ? AND partition_count = ?",
                    (name, build, partition.index, partition.count),
                ).fetchone()
                raise PositionConflict(
                    name,
                    build,
                    str(partition),
                    expected=expected,
                    found=None if found is None else int(found[0]),
                )
            row = conn.execute(
                self._CHECKPOINT + " AND partition_index = ? AND partition_count = ?",
                (name, build, partition.index, partition.count),
            ).fetchone()
        return _checkpoint(name, build, row)

    def _flush(self, conn: sqlite3.Connection, name: str, build: int, writes: TableWrites) -> None:
        codec = self._codec(name, build, writes.table)
        if writes.deletes:
            conn.executemany(codec.delete, [codec.key_params(k) for k in writes.deletes])
        if writes.upserts:
            names = [c.name for c in writes.table.columns]
            conn.executemany(codec.upsert, codec.params_of(writes.upserts, names))
        for shape, rows in writes.merges.items():
            names = list(writes.table.key_names + shape.columns)
            conn.executemany(codec.merge(shape), codec.params_of(rows, names))

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
            f"last_seen_at, reason, blocked_by, resolved_at FROM {PARKED_TABLE} "
            "WHERE projection = ? AND build = ?"
        )
        if not include_resolved:
            query += " AND resolved_at IS NULL"
        with self._read("read parked events") as conn:
            rows = conn.execute(query + " ORDER BY position", (name, build)).fetchall()
        return [
            ParkedEvent(
                projection=name,
                build=build,
                position=int(r[0]),
                partition=Partition(int(r[1]), int(r[2])),
                aggregate_id=UUID(r[3]),
                aggregate_version=int(r[4]),
                topic=r[5],
                event_type=r[6],
                error_type=r[7],
                error_message=r[8],
                attempts=int(r[9]),
                first_seen_at=datetime.fromisoformat(r[10]),
                last_seen_at=datetime.fromisoformat(r[11]),
                reason=r[12],
                blocked_by=None if r[13] is None else int(r[13]),
                resolved_at=None if r[14] is None else datetime.fromisoformat(r[14]),
            )
            for r in rows
        ]

    def blocked_aggregates(self, name: str, build: int, partition: Partition) -> dict[UUID, int]:
        if not self._registry_exists():
            return {}
        with self._read("read parked aggregates") as conn:
            rows = conn.execute(
                f"SELECT aggregate_id, MIN(position) FROM {PARKED_TABLE} WHERE projection = ? "
                "AND build = ? AND resolved_at IS NULL GROUP BY aggregate_id",
                (name, build),
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
                    f"UPDATE {PARKED_TABLE} SET resolved_at = ? WHERE projection = ? "
                    "AND build = ? AND position = ? AND resolved_at IS NULL",
                    (now, name, build, position),
                ).rowcount
            if changed != len(resolved):
                # Another redrive resolved some of them first: roll back, apply nothing twice.
                raise RedriveConflict(name, build, expected=len(resolved), resolved=changed)
            conn.executemany(
                f"UPDATE {PARKED_TABLE} SET attempts = ?, last_seen_at = ?, error_type = ?, "
                "error_message = ?, reason = ?, blocked_by = ? WHERE projection = ? "
                "AND build = ? AND position = ? AND resolved_at IS NULL",
                [parked_update_row(name, build, p, when=_timestamp) for p in failed],
            )
        return len(resolved)

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                with suppress(sqlite3.Error):
                    conn.close()


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
        committed_at=None if row[5] is None else datetime.fromisoformat(row[5]),
    )


# -- the event source -------------------------------------------------------------------


def _partition_sql_function(originator_id: Any, count: int) -> int:
    if isinstance(originator_id, str) and len(originator_id) == 32:
        return int(originator_id[:8], 16) % count
    return int.from_bytes(UUID(str(originator_id)).bytes[:4], "big") % count


class SQLiteEventSource(EventSource):
    """eventsourcing's SQLite notification log (``stored_events``, position ``rowid``)."""

    def __init__(
        self,
        path: Path | str,
        *,
        mapper: EnvelopeMapper | None = None,
        table: str = "stored_events",
        busy_timeout: float = 30.0,
    ) -> None:
        super().__init__(SQLiteHighWaterMark(path, table=table), mapper)
        self.path = Path(path)
        self.table = table
        self._busy_timeout = busy_timeout
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._statements: dict[tuple[int, bool], str] = {}

    @property
    def description(self) -> str:
        return f"SQLite event log {str(self.path)!r}"

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            uri = self.path.absolute().as_uri() + "?mode=ro"
            conn = sqlite3.connect(
                uri,
                uri=True,
                timeout=self._busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
            conn.create_function(
                "safereplay_partition", 2, _partition_sql_function, deterministic=True
            )
            self._conn = conn
        return self._conn

    def _query(self, sql: str, params: Sequence[Any]) -> list[Any]:
        with self._lock:
            try:
                return self._connection().execute(sql, params).fetchall()
            except sqlite3.OperationalError as exc:
                if "no such table" in str(exc):
                    return []
                raise _translate(exc, self.description) from exc
            except sqlite3.Error as exc:
                raise _translate(exc, self.description) from exc

    def high_water_mark(self) -> int:
        try:
            return super().high_water_mark()
        except sqlite3.Error as exc:
            if "unable to open" in str(exc):
                return 0  # no database yet: an empty log
            raise _translate(exc, f"{self.description}: high-water mark") from exc

    def head(self) -> int:
        rows = self._query(f"SELECT MAX(rowid) FROM {quote(self.table)}", ())
        return int(rows[0][0] or 0) if rows else 0

    def count(
        self, *, after: int, upto: int, topics: Sequence[str] = (), partition: Partition = WHOLE
    ) -> int:
        if upto <= after:
            return 0
        statement = f"SELECT COUNT(*) FROM {quote(self.table)} WHERE rowid > ? AND rowid <= ?"
        params: list[Any] = [after, upto, *topics]
        if topics:
            statement += f" AND topic IN ({', '.join('?' for _ in topics)})"
        if not partition.is_whole:
            statement += " AND safereplay_partition(originator_id, ?) = ?"
            params += [partition.count, partition.index]
        rows = self._query(statement, params)
        return int(rows[0][0]) if rows else 0

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
        key = (len(topics), partition.is_whole)
        statement = self._statements.get(key)
        if statement is None:
            statement = (
                "SELECT rowid, originator_id, originator_version, topic, state "
                f"FROM {quote(self.table)} WHERE rowid > ? AND rowid <= ?"
            )
            if topics:
                statement += f" AND topic IN ({', '.join('?' for _ in topics)})"
            if not partition.is_whole:
                statement += " AND safereplay_partition(originator_id, ?) = ?"
            statement += " ORDER BY rowid LIMIT ?"
            self._statements[key] = statement
        params: list[Any] = [after, upto, *topics]
        if not partition.is_whole:
            params += [partition.count, partition.index]
        params.append(limit)
        rows = self._query(statement, params)
        # Per row: the notification's fields set directly (what the frozen dataclass's
        # __init__ does, at a third of its cost). Aggregates recur within a batch: one
        # (immutable) UUID per distinct id text, parsed by the mapper's parser for the
        # 32 hex digits eventsourcing stores (the same UUID as UUID(text)).
        ids: dict[str, UUID] = {}
        notifications = []
        for rowid, originator_id, version, topic, state in rows:
            aggregate_id = ids.get(originator_id)
            if aggregate_id is None:
                aggregate_id = ids[originator_id] = uuid_from_text(originator_id)
            notifications.append(
                notification_of(int(rowid), aggregate_id, int(version), topic, bytes(state))
            )
        return notifications

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                with suppress(sqlite3.Error):
                    conn.close()
        super().close()

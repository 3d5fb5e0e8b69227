"""Drills: rebuild a projection into a sandbox and compare it with the live build.

A drill answers "would a rebuild from the events give exactly what the live
read model holds?" without touching the live read model:

1. read the build's position in a **read-only** transaction (every partition
   must be at one position: a build a job is still moving is refused);
2. rebuild the projection into a **sandbox** — a fresh PostgreSQL schema
   ``<store schema>_drill_<id>``, or a temporary SQLite file — with the normal
   event source and :class:`~projections.ProjectionRunner`, up to that position
   (``catch_up(until=...)``); events the handlers reject are parked in the
   sandbox, as a live runner with a park policy would;
3. take the live rows and the live position in **one consistent snapshot** (a
   ``REPEATABLE READ``, read-only transaction on PostgreSQL; one read
   transaction on a read-only SQLite connection, WAL) and catch the sandbox up
   to the snapshot's position; if the sandbox cannot reach it (the live build
   moved past the event source's high-water mark), take a new snapshot — a
   bounded number of times;
4. compare table by table, partition by partition: each row becomes canonical
   JSON (the same on both backends), a SHA-256 per row, and a SHA-256 per
   (table, partition) over the row digests sorted by key. A mismatch lists the
   keys of the rows that differ (never their values);
5. drop the sandbox — also when anything fails.

The drill never writes to the live store: every live read goes through its own
read-only connection (``mode=ro`` and ``query_only`` on SQLite, a ``READ ONLY``
transaction on PostgreSQL), so a write could not succeed even by mistake. The
result is kept in ``safereplay_drills`` (:class:`DrillStore`), where a swap can
require a matching drill first (:func:`require_matching_drill`).

A row's partition is :func:`projections.partition_of` of the first key column
that holds a UUID (the aggregate the row belongs to); a key without one is
hashed (SHA-256 of its canonical JSON). A projection that is not partitionable
is compared as one partition.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import tempfile
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from uuid import UUID

import psycopg
from psycopg import IsolationLevel, sql
from psycopg.conninfo import make_conninfo

from safereplay.projections import (
    EventSource,
    PostgresProjectionStore,
    Projection,
    ProjectionRunner,
    ProjectionStore,
    RunnerOptions,
    SQLiteProjectionStore,
    partition_of,
)
from safereplay.projections.projection import Column, Table, physical_table_name
from safereplay.projections.store import BUILDS_TABLE, PARKED_TABLE, POSITIONS_TABLE
from safereplay.recovery.database import Database
from safereplay.recovery.errors import DrillConflict, InvalidRequest
from safereplay.recovery.resilience.policies import ErrorRules, Park, RulesPolicy

__all__ = [
    "MAX_LISTED_DIFFERENCES",
    "BuildRecord",
    "DrillConflict",
    "DrillResult",
    "DrillStore",
    "PartitionComparison",
    "PostgresSandbox",
    "PostgresStoreReader",
    "ReadView",
    "missing_table",
    "recorded_rows",
    "RowDifference",
    "SQLiteSandbox",
    "SQLiteStoreReader",
    "Sandbox",
    "StoreReader",
    "require_matching_drill",
    "run_drill",
]

#: Differing row keys listed per (table, partition); the count is always complete.
MAX_LISTED_DIFFERENCES = 100
MAX_DRILL_PARTITIONS = 256
DifferenceKind = Literal["differs", "missing in live", "missing in sandbox"]


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


# -- reading a projection store, read-only -------------------------------------------------


@dataclass(frozen=True)
class BuildRecord:
    projection: str
    build: int
    version: int
    status: str


class ReadView(ABC):
    """One read-only transaction over a projection store's database.

    Statements are module constants with a ``{table}`` slot (one table of the
    store's schema), an optional ``{columns}`` slot and ``%s`` placeholders.
    """

    #: JSON columns come back as text (SQLite) rather than decoded (PostgreSQL).
    json_as_text: bool
    #: Finds a table by the parameters of :meth:`_table_params`.
    _has_table: str

    def __init__(self, conn: Any) -> None:
        self._conn = conn  # a sqlite3 or psycopg connection: both .execute().fetchall()

    @abstractmethod
    def _statement(self, template: str, table: str, columns: Sequence[str]) -> Any:
        """``template`` with its slots filled with quoted identifiers."""

    @abstractmethod
    def _table_params(self, table: str) -> tuple[Any, ...]: ...

    def query(
        self,
        template: str,
        table: str,
        params: Sequence[Any] = (),
        *,
        columns: Sequence[str] = (),
    ) -> list[tuple[Any, ...]]:
        statement = self._statement(template, table, columns)
        return [tuple(row) for row in self._conn.execute(statement, tuple(params)).fetchall()]

    def has_table(self, table: str) -> bool:
        return self._conn.execute(self._has_table, self._table_params(table)).fetchone() is not None

    def builds(self, name: str) -> list[BuildRecord]:
        if not self.has_table(BUILDS_TABLE):
            return []
        rows = self.query(
            "SELECT build, version, status FROM {table} WHERE projection = %s ORDER BY build",
            BUILDS_TABLE,
            (name,),
        )
        return [BuildRecord(name, int(b), int(v), str(s)) for b, v, s in rows]

    def positions(self, name: str, build: int) -> list[tuple[int, int, int]]:
        """``(partition_index, partition_count, position)`` of every partition of a build."""
        if not self.has_table(POSITIONS_TABLE):
            return []
        rows = self.query(
            "SELECT partition_index, partition_count, position FROM {table} "
            "WHERE projection = %s AND build = %s ORDER BY partition_count, partition_index",
            POSITIONS_TABLE,
            (name, build),
        )
        return [(int(i), int(c), int(p)) for i, c, p in rows]

    def parked(self, name: str, build: int) -> list[tuple[int, UUID]]:
        """``(position, aggregate_id)`` of the build's unresolved parked events."""
        if not self.has_table(PARKED_TABLE):
            return []
        rows = self.query(
            "SELECT position, aggregate_id FROM {table} WHERE projection = %s AND build = %s "
            "AND resolved_at IS NULL ORDER BY position",
            PARKED_TABLE,
            (name, build),
        )
        return [(int(p), a if isinstance(a, UUID) else UUID(str(a))) for p, a in rows]

    def rows(
        self, name: str, build: int, table: Table
    ) -> Iterator[tuple[tuple[Any, ...], dict[str, Any]]]:
        """``(key, values)`` of every row, canonical (see :func:`canonical_value`)."""
        physical = physical_table_name(name, table.name, build)
        if not self.has_table(physical):
            return
        columns = table.columns
        width = len(table.key)
        for raw in self.query(
            "SELECT {columns} FROM {table}", physical, columns=[c.name for c in columns]
        ):
            values = [
                canonical_value(c, v, json_as_text=self.json_as_text)
                for c, v in zip(columns, raw, strict=True)
            ]
            yield tuple(values[:width]), dict(zip(table.value_names, values[width:], strict=True))


class StoreReader(ABC):
    """Opens read-only, consistent views of one projection store's database."""

    @property
    @abstractmethod
    def description(self) -> str: ...

    @abstractmethod
    def view(self) -> AbstractContextManager[ReadView]:
        """One read-only transaction (a consistent snapshot)."""


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


class _SQLiteView(ReadView):
    json_as_text = True
    _has_table = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"

    def _statement(self, template: str, table: str, columns: Sequence[str]) -> str:
        return template.replace("%s", "?").format(
            table=_quote(table), columns=", ".join(_quote(c) for c in columns)
        )

    def _table_params(self, table: str) -> tuple[Any, ...]:
        return (table,)


class SQLiteStoreReader(StoreReader):
    """A SQLite projection store, read through a ``mode=ro``, ``query_only`` connection."""

    def __init__(self, path: Path | str, *, busy_timeout: float = 30.0) -> None:
        self.path = Path(path)
        self._busy_timeout = busy_timeout

    @property
    def description(self) -> str:
        return f"SQLite projection store {str(self.path)!r}"

    @contextmanager
    def view(self) -> Iterator[ReadView]:
        if not self.path.is_file():
            raise InvalidRequest(f"there is no {self.description}")
        conn = sqlite3.connect(
            self.path.absolute().as_uri() + "?mode=ro",
            uri=True,
            timeout=self._busy_timeout,
            isolation_level=None,
            check_same_thread=False,
        )
        try:
            conn.execute("PRAGMA query_only = 1")
            # In WAL mode one read transaction sees one snapshot from its first read on.
            conn.execute("BEGIN")
            try:
                yield _SQLiteView(conn)
            finally:
                conn.execute("ROLLBACK")
        finally:
            conn.close()


class _PostgresView(ReadView):
    json_as_text = False
    _has_table = "SELECT 1 FROM pg_catalog.pg_tables WHERE schemaname = %s AND tablename = %s"

    def __init__(self, conn: psycopg.Connection[Any], schema: str) -> None:
        super().__init__(conn)
        self._schema = schema

    def _statement(self, template: str, table: str, columns: Sequence[str]) -> sql.Composed:
        return sql.SQL(template).format(
            table=sql.Identifier(self._schema, table),
            columns=sql.SQL(", ").join(sql.Identifier(c) for c in columns),
        )

    def _table_params(self, table: str) -> tuple[Any, ...]:
        return (self._schema, table)


class PostgresStoreReader(StoreReader):
    """A PostgreSQL projection store, read in ``REPEATABLE READ``, ``READ ONLY`` transactions."""

    def __init__(self, conninfo: str, *, schema: str, connect_timeout: int = 5) -> None:
        self.schema = schema
        self._conninfo = make_conninfo(conninfo, application_name="safereplay-drill-reader")
        self._connect_timeout = connect_timeout

    @property
    def description(self) -> str:
        return f"PostgreSQL projection store (schema {self.schema!r})"

    @contextmanager
    def view(self) -> Iterator[ReadView]:
        with psycopg.connect(self._conninfo, connect_timeout=self._connect_timeout) as conn:
            conn.isolation_level = IsolationLevel.REPEATABLE_READ
            conn.read_only = True
            with conn.transaction():
                yield _PostgresView(conn, self.schema)


# -- canonical rows, digests and checksums -------------------------------------------------


def canonical_value(column: Column, value: Any, *, json_as_text: bool) -> Any:
    """A column value in a form that is the same on both backends (and JSON-serialisable)."""
    if value is None:
        return None
    kind = column.type
    if kind == "integer":
        return int(value)
    if kind == "real":
        return float(value)
    if kind == "boolean":
        return bool(value)
    if kind == "json":
        if json_as_text:
            return json.loads(bytes(value) if isinstance(value, bytes | memoryview) else value)
        return value
    if kind == "timestamp":
        moment = datetime.fromisoformat(value) if isinstance(value, str) else value
        return moment.astimezone(UTC).isoformat(timespec="microseconds")
    return str(value)


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def row_partition(key: Sequence[Any], count: int) -> int:
    """The partition of a row: its first UUID key column's, else a hash of the key."""
    if count == 1:
        return 0
    for part in key:
        if isinstance(part, str):
            try:
                return partition_of(UUID(part), count)
            except ValueError:
                continue
    digest = hashlib.sha256(canonical_json(list(key)).encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") % count


#: (table, partition) -> canonical key JSON -> (key, row digest)
Digests = dict[tuple[str, int], dict[str, tuple[tuple[Any, ...], str]]]


def digest_rows(cls: type[Projection], view: ReadView, build: int, count: int) -> Digests:
    digests: Digests = {(t.name, p): {} for t in cls.tables for p in range(count)}
    for table in cls.tables:
        for key, values in view.rows(cls.name, build, table):
            key_json = canonical_json(list(key))
            row = canonical_json([list(key), values]).encode("utf-8")
            digests[(table.name, row_partition(key, count))][key_json] = (
                key,
                hashlib.sha256(row).hexdigest(),
            )
    return digests


def checksum(rows: Mapping[str, tuple[tuple[Any, ...], str]]) -> str:
    """SHA-256 over ``key<TAB>row digest`` lines sorted by canonical key."""
    digest = hashlib.sha256()
    for key_json in sorted(rows):
        digest.update(f"{key_json}\t{rows[key_json][1]}\n".encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class RowDifference:
    """A row that differs: its key only (read-model values are never reported)."""

    key: tuple[Any, ...]
    kind: DifferenceKind


@dataclass(frozen=True)
class PartitionComparison:
    table: str
    partition: int
    partition_count: int
    live_checksum: str
    sandbox_checksum: str
    live_rows: int
    sandbox_rows: int
    match: bool
    #: How many rows differ (all of them), and the first MAX_LISTED_DIFFERENCES.
    differing_rows: int = 0
    differences: tuple[RowDifference, ...] = ()


def compare(live: Digests, sandbox: Digests, count: int) -> tuple[PartitionComparison, ...]:
    comparisons = []
    for table, partition in sorted(live):
        ours, theirs = live[(table, partition)], sandbox[(table, partition)]
        differences = [
            RowDifference(
                key=(ours.get(k) or theirs[k])[0],
                kind=(
                    "missing in live"
                    if k not in ours
                    else "missing in sandbox"
                    if k not in theirs
                    else "differs"
                ),
            )
            for k in sorted(ours.keys() | theirs.keys())
            if k not in ours or k not in theirs or ours[k][1] != theirs[k][1]
        ]
        live_sum, sandbox_sum = checksum(ours), checksum(theirs)
        comparisons.append(
            PartitionComparison(
                table=table,
                partition=partition,
                partition_count=count,
                live_checksum=live_sum,
                sandbox_checksum=sandbox_sum,
                live_rows=len(ours),
                sandbox_rows=len(theirs),
                match=live_sum == sandbox_sum,
                differing_rows=len(differences),
                differences=tuple(differences[:MAX_LISTED_DIFFERENCES]),
            )
        )
    return tuple(comparisons)


# -- sandboxes -------------------------------------------------------------------------


class Sandbox(ABC):
    """Where a drill rebuilds: a store of its own, removed afterwards."""

    @property
    @abstractmethod
    def description(self) -> str: ...

    @abstractmethod
    def _open(self) -> tuple[ProjectionStore, StoreReader]: ...

    @abstractmethod
    def remove(self) -> None:
        """Drop everything the sandbox holds (idempotent)."""

    @abstractmethod
    def exists(self) -> bool: ...

    @contextmanager
    def opened(self) -> Iterator[tuple[ProjectionStore, StoreReader]]:
        """The sandbox's store and a reader of it; removed on exit, also on error."""
        try:
            store, reader = self._open()
            try:
                yield store, reader
            finally:
                store.close()
        finally:
            self.remove()


class SQLiteSandbox(Sandbox):
    """A temporary SQLite file in a directory of its own (under ``directory``)."""

    def __init__(self, *, directory: Path | str | None = None) -> None:
        self._parent = None if directory is None else Path(directory)
        self.path: Path | None = None

    @property
    def description(self) -> str:
        return f"temporary SQLite file {str(self.path)!r}"

    def _open(self) -> tuple[ProjectionStore, StoreReader]:
        folder = Path(tempfile.mkdtemp(prefix="safereplay-drill-", dir=self._parent))
        self.path = folder / "sandbox.db"
        return SQLiteProjectionStore(self.path), SQLiteStoreReader(self.path)

    def remove(self) -> None:
        if self.path is not None:
            shutil.rmtree(self.path.parent, ignore_errors=True)

    def exists(self) -> bool:
        return self.path is not None and self.path.parent.exists()


class PostgresSandbox(Sandbox):
    """A fresh schema ``<store schema>_drill_<8 hex>`` in the store's database."""

    def __init__(self, conninfo: str, *, store_schema: str) -> None:
        self._conninfo = conninfo
        self.schema = f"{store_schema[:40]}_drill_{uuid.uuid4().hex[:8]}"
        self._created = False

    @property
    def description(self) -> str:
        return f"PostgreSQL schema {self.schema!r}"

    def _admin(self) -> psycopg.Connection[Any]:
        return psycopg.connect(
            make_conninfo(self._conninfo, application_name="safereplay-drill"), autocommit=True
        )

    def _open(self) -> tuple[ProjectionStore, StoreReader]:
        with self._admin() as conn:
            # Fails if the schema exists: a sandbox never reuses (or drops) anything else.
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(self.schema)))
        self._created = True
        return (
            PostgresProjectionStore(self._conninfo, schema=self.schema),
            PostgresStoreReader(self._conninfo, schema=self.schema),
        )

    def remove(self) -> None:
        if not self._created:
            return
        with self._admin() as conn:
            conn.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(self.schema))
            )
        self._created = False

    def exists(self) -> bool:
        with self._admin() as conn:
            found = conn.execute(
                "SELECT 1 FROM pg_namespace WHERE nspname = %s", (self.schema,)
            ).fetchone()
        return found is not None


# -- the drill -------------------------------------------------------------------------


@dataclass(frozen=True)
class DrillResult:
    drill_id: str
    projection: str
    build: int
    version: int
    position: int
    partition_count: int
    match: bool
    comparisons: tuple[PartitionComparison, ...]
    principal: str
    reason: str
    started_at: datetime
    finished_at: datetime
    #: Snapshots taken until the sandbox reached the live position (1 when live was still).
    attempts: int
    events_applied: int
    sandbox_parked: int
    live_parked: int
    sandbox: str

    @property
    def divergent(self) -> tuple[PartitionComparison, ...]:
        return tuple(c for c in self.comparisons if not c.match)

    def summary(self) -> str:
        head = f"drill of {self.projection!r} build {self.build} at position {self.position}"
        if self.match:
            return f"{head}: the sandbox rebuild matches, {len(self.comparisons)} checksums"
        where = ", ".join(f"{c.table} partition {c.partition}" for c in self.divergent)
        rows = sum(c.differing_rows for c in self.divergent)
        return f"{head}: DIVERGENCE in {where} ({rows} rows differ)"


def _target_build(view: ReadView, cls: type[Projection], build: int | None) -> BuildRecord:
    builds = view.builds(cls.name)
    if build is None:
        found = [b for b in builds if b.status == "live"]
        missing = f"projection {cls.name!r} has no live build to drill"
    else:
        found = [b for b in builds if b.build == build]
        missing = f"projection {cls.name!r} has no build {build}"
    if not found:
        raise InvalidRequest(missing)
    record = found[0]
    if record.version != cls.version:
        raise InvalidRequest(
            f"build {record.build} of {cls.name!r} was made by version {record.version}, this "
            f"code is version {cls.version}: a drill rebuilds with the code of the build's version"
        )
    return record


def _one_position(record: BuildRecord, positions: Sequence[tuple[int, int, int]]) -> int:
    found = sorted({p for _, _, p in positions})
    if len(found) > 1:
        spread = ", ".join(f"{i}/{c}@{p}" for i, c, p in positions)
        raise InvalidRequest(
            f"build {record.build} of {record.projection!r} has partitions at different "
            f"positions ({spread}): a job is moving them; drill when it has finished"
        )
    return found[0] if found else 0


def _partition_count(
    cls: type[Projection],
    positions: Sequence[tuple[int, int, int]],
    requested: int | None,
    default: int,
) -> int:
    if not cls.partitionable:
        if requested not in (None, 1):
            raise InvalidRequest(
                f"projection {cls.name!r} is not partitionable: it is compared as one partition"
            )
        return 1
    live_counts = {c for _, c, _ in positions}
    count = requested or (max(live_counts) if max(live_counts, default=1) > 1 else default)
    if not 1 <= count <= MAX_DRILL_PARTITIONS:
        raise InvalidRequest(f"partitions must be between 1 and {MAX_DRILL_PARTITIONS}")
    return count


def run_drill(
    projection: Projection,
    *,
    live: StoreReader,
    source: EventSource,
    sandbox: Sandbox,
    principal: str,
    reason: str = "",
    build: int | None = None,
    partitions: int | None = None,
    default_partitions: int = 4,
    options: RunnerOptions | None = None,
    max_attempts: int = 5,
    before_snapshot: Callable[[int], None] | None = None,
) -> DrillResult:
    """Rebuild ``projection`` into ``sandbox`` and compare it with ``build`` (default: live).

    ``live`` is only ever read (its connections cannot write); ``source`` is the
    normal event source (with a mapper, to decrypt). ``before_snapshot`` (tests)
    is called with the attempt number before each consistent snapshot.
    """
    cls = type(projection)
    started = datetime.now(UTC)
    with live.view() as view:
        target = _target_build(view, cls, build)
        positions = view.positions(cls.name, target.build)
        position = _one_position(target, positions)
    count = _partition_count(cls, positions, partitions, default_partitions)
    with sandbox.opened() as (store, sandbox_reader):
        runner = ProjectionRunner(
            projection,
            source=source,
            store=store,
            options=options,
            policy=RulesPolicy(ErrorRules(default=Park())),
        )
        runner.catch_up(until=position)
        for attempt in range(1, max_attempts + 1):
            if before_snapshot is not None:
                before_snapshot(attempt)
            with live.view() as view:
                current = _target_build(view, cls, target.build)
                if build is None and current.status != "live":
                    raise DrillConflict(
                        f"build {target.build} of {cls.name!r} stopped being live during the "
                        "drill (swapped or rolled back): drill again"
                    )
                position = _one_position(current, view.positions(cls.name, target.build))
                live_digests = digest_rows(cls, view, target.build, count)
                live_parked = len(view.parked(cls.name, target.build))
            runner.catch_up(until=position)
            if runner.checkpoint().position != position:
                continue  # live moved past what the source offers yet: snapshot again
            with sandbox_reader.view() as view:
                sandbox_digests = digest_rows(cls, view, runner.build, count)
            comparisons = compare(live_digests, sandbox_digests, count)
            return DrillResult(
                drill_id=str(uuid.uuid4()),
                projection=cls.name,
                build=target.build,
                version=target.version,
                position=position,
                partition_count=count,
                match=all(c.match for c in comparisons),
                comparisons=comparisons,
                principal=principal,
                reason=reason,
                started_at=started,
                finished_at=datetime.now(UTC),
                attempts=attempt,
                events_applied=runner.applied,
                sandbox_parked=runner.parked,
                live_parked=live_parked,
                sandbox=sandbox.description,
            )
    raise DrillConflict(
        f"the live position of {cls.name!r} build {target.build} kept moving past what the "
        f"sandbox could reach ({max_attempts} snapshots): drill again when it is quieter"
    )


# -- the record of drills --------------------------------------------------------------

_CREATE_DRILLS = """
CREATE TABLE IF NOT EXISTS {drills} (
    drill_id TEXT PRIMARY KEY,
    projection TEXT NOT NULL,
    build INTEGER NOT NULL,
    version INTEGER NOT NULL,
    position BIGINT NOT NULL,
    partition_count INTEGER NOT NULL,
    matched INTEGER NOT NULL,
    principal TEXT NOT NULL,
    reason TEXT NOT NULL,
    started_at DOUBLE PRECISION NOT NULL,
    finished_at DOUBLE PRECISION NOT NULL,
    recorded_at DOUBLE PRECISION NOT NULL,
    details TEXT NOT NULL
)"""
_CREATE_DRILLS_INDEX = (
    "CREATE INDEX IF NOT EXISTS {idx_drills_by_build} ON {drills} (projection, build, recorded_at)"
)
_INSERT_DRILL = """
INSERT INTO {drills} (drill_id, projection, build, version, position, partition_count, matched,
    principal, reason, started_at, finished_at, recorded_at, details)
VALUES (%(drill_id)s, %(projection)s, %(build)s, %(version)s, %(position)s,
    %(partition_count)s, %(matched)s, %(principal)s, %(reason)s, %(started_at)s,
    %(finished_at)s, %(now)s, %(details)s)"""
_SELECT_DRILLS = "SELECT * FROM {drills} WHERE projection = %(projection)s"


class DrillStore:
    """Drill results in the recovery database (``safereplay_drills``)."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def create_tables(self) -> None:
        with self.database.transaction(write=True) as tx:
            tx.execute(_CREATE_DRILLS)
            tx.execute(_CREATE_DRILLS_INDEX)

    def record(self, result: DrillResult) -> None:
        details = {
            "comparisons": [asdict(c) for c in result.comparisons],
            "attempts": result.attempts,
            "events_applied": result.events_applied,
            "sandbox_parked": result.sandbox_parked,
            "live_parked": result.live_parked,
            "sandbox": result.sandbox,
        }
        with self.database.transaction(write=True) as tx:
            tx.execute(
                _INSERT_DRILL,
                {
                    "drill_id": result.drill_id,
                    "projection": result.projection,
                    "build": result.build,
                    "version": result.version,
                    "position": result.position,
                    "partition_count": result.partition_count,
                    "matched": int(result.match),
                    "principal": result.principal,
                    "reason": result.reason,
                    "started_at": result.started_at.timestamp(),
                    "finished_at": result.finished_at.timestamp(),
                    "now": tx.now(),
                    "details": json.dumps(details, sort_keys=True),
                },
            )

    def drills(
        self, projection: str, *, build: int | None = None, limit: int = 20
    ) -> list[DrillResult]:
        """Drills of a projection (of one build if given), newest first."""
        template = _SELECT_DRILLS
        params: dict[str, Any] = {"projection": projection, "limit": limit}
        if build is not None:
            template += " AND build = %(build)s"
            params["build"] = build
        template += " ORDER BY recorded_at DESC, drill_id LIMIT %(limit)s"
        return [_result(row) for row in recorded_rows(self.database, template, params)]

    def latest_matching_drill(self, projection: str, build: int) -> DrillResult | None:
        """The latest drill of ``build`` if it matched; None if there is none, or if the
        latest one diverged (a later divergence withdraws an earlier match)."""
        latest = self.drills(projection, build=build, limit=1)
        return latest[0] if latest and latest[0].match else None


def _result(row: Mapping[str, Any]) -> DrillResult:
    details = json.loads(row["details"])
    return DrillResult(
        drill_id=row["drill_id"],
        projection=row["projection"],
        build=int(row["build"]),
        version=int(row["version"]),
        position=int(row["position"]),
        partition_count=int(row["partition_count"]),
        match=bool(row["matched"]),
        comparisons=tuple(
            PartitionComparison(
                **{
                    **c,
                    "differences": tuple(
                        RowDifference(key=tuple(d["key"]), kind=d["kind"]) for d in c["differences"]
                    ),
                }
            )
            for c in details["comparisons"]
        ),
        principal=row["principal"],
        reason=row["reason"],
        started_at=datetime.fromtimestamp(float(row["started_at"]), UTC),
        finished_at=datetime.fromtimestamp(float(row["finished_at"]), UTC),
        attempts=int(details["attempts"]),
        events_applied=int(details["events_applied"]),
        sandbox_parked=int(details["sandbox_parked"]),
        live_parked=int(details["live_parked"]),
        sandbox=details["sandbox"],
    )


def require_matching_drill(
    drills: DrillStore, *, required: bool, projection: str, build: int
) -> DrillResult | None:
    """For a swap: the matching drill of ``build``, or InvalidRequest when one is
    ``required`` (``SAFEREPLAY_RECOVERY_REQUIRE_DRILL``) and there is none."""
    found = drills.latest_matching_drill(projection, build)
    if required and found is None:
        raise InvalidRequest(
            f"projection {projection!r} needs a matching drill before build {build} goes live "
            f"(SAFEREPLAY_RECOVERY_REQUIRE_DRILL): run `safereplay drill {projection} --build "
            f"{build}` and swap once it matches"
        )
    return found

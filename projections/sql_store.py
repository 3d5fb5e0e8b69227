"""The projection store's logic, written once for both SQL backends.

:class:`SQLProjectionStore` implements :class:`~safereplay.projections.store.ProjectionStore`
on :mod:`~safereplay.projections.store_sql`'s statements, rendered by the backend's
renderer once (the registry's when the store is opened, a table's, a merge's and a
fence's when first used) and kept. A backend
(:mod:`~safereplay.projections.sqlite_store`, :mod:`~safereplay.projections.postgres_store`)
gives it, through the hooks at the top of the class, only what is its own:
connections, transactions and locks, the translation of its driver's errors, the
two statements whose shape differs (moving a position: ``RETURNING``; resolving
parked positions: an array), and how values are stored (:class:`RegistryValues`
for the registry, a :class:`TableCodec` per projection table).

The hot path (:meth:`~SQLProjectionStore.commit` and its flush) does per batch what
each backend did on its own: cached statements, the backend's encoders called only
for the columns that need them; a hook is called once per batch, table or write
shape, never per row.

Why this module is long (about 670 lines): it is one class, the store's contract
carried out once for both backends; splitting it would put the batch commit, the
lease fence that commits a job's counters with the batch, the registry that the
commit moves, and the reads (``rows``, ``select``) in separate files that must
still change together.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, Protocol, TypeVar
from uuid import UUID

from safereplay.domain.schema import SchemaDatabase, SchemaStep, ensure_schema
from safereplay.projections.batch import MergeShape, TableWrites
from safereplay.projections.errors import (
    FencedOff,
    ParkedEventNotFound,
    PositionConflict,
    RedriveConflict,
    StoreError,
    UnknownProjection,
)
from safereplay.projections.source import WHOLE, Partition
from safereplay.projections.sqltemplate import Q, Renderer
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
    matching_columns,
    parked_event_of,
    parked_insert_row,
    parked_update_row,
    projection_class,
    repartitioned_rows,
)
from safereplay.projections.store_sql import (
    DROP_TABLE,
    IS_PARAMETER,
    MATCH_ALL,
    SELECT_MATCHING,
    StoreStatements,
    TableStatements,
    fence_statement,
    fence_tally_statement,
    merge_statement,
    registry_schema_step,
    store_statements,
    table_statements,
)
from safereplay.projections.tables import Column, Table, physical_table_name

__all__ = ["Executes", "RegistryValues", "Rows", "SQLProjectionStore", "TableCodec", "Writer"]


class Rows(Protocol):
    """What a statement returns: a ``sqlite3`` or a ``psycopg`` cursor."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Executes(Protocol):
    """A connection (``sqlite3`` or ``psycopg``): runs one statement."""

    def execute(self, query: Any, params: Any = ..., /) -> Rows: ...


class Writer(Executes, Protocol):
    """What a batch is flushed with: runs a statement once per parameter set too."""

    def executemany(self, query: Any, params_seq: Any, /) -> object: ...


#: The backend's connection type.
C = TypeVar("C", bound=Executes)


def now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class RegistryValues:
    """How a backend stores the registry's timestamps, aggregate ids and JSON lists."""

    dump_time: Callable[[datetime], Any]
    load_time: Callable[[Any], datetime]
    dump_id: Callable[[UUID], Any]
    load_id: Callable[[Any], UUID]
    dump_json: Callable[[list[str]], Any]
    load_json: Callable[[Any], list[str]]


class TableCodec(ABC, Generic[Q]):
    """Statements and value conversions of one physical table; the backend says how
    values are encoded and decoded, and how a batch's rows are bound."""

    #: Column types whose values are encoded (the others are bound as they are).
    converts: frozenset[str] = frozenset()

    def __init__(self, table: Table, physical: str, renderer: Renderer[Q]) -> None:
        self.table = table
        self.physical = physical
        self.encode = {c.name: self.encoder(c) for c in table.columns}
        self.converted = frozenset(c.name for c in table.columns if c.type in self.converts)
        self.decode = [(c.name, self.decoder(c)) for c in table.columns]
        self.sql: TableStatements[Q] = table_statements(renderer, table, physical)
        self._renderer: Renderer[Q] = renderer
        self._merges: dict[MergeShape, Q] = {}

    @staticmethod
    @abstractmethod
    def encoder(column: Column) -> Callable[[Any], Any]:
        """A column's value as the backend binds it (None stays None)."""

    @staticmethod
    @abstractmethod
    def decoder(column: Column) -> Callable[[Any], Any]:
        """A column's value as the backend returns it, decoded (None stays None)."""

    @abstractmethod
    def write_rows(
        self, writer: Writer, statement: Q, rows: Sequence[dict[str, Any]], names: Sequence[str]
    ) -> None:
        """Run ``statement`` (:attr:`sql`'s ``upsert`` or a :meth:`merge`) for ``rows``,
        which bind the values of ``names``."""

    def merge(self, shape: MergeShape) -> Q:
        statement = self._merges.get(shape)
        if statement is None:
            statement = self._merges[shape] = merge_statement(
                self._renderer, self.table, self.physical, shape
            )
        return statement

    def key_params(self, key: tuple[Any, ...]) -> tuple[Any, ...]:
        encode = self.encode
        return tuple(encode[n](v) for n, v in zip(self.table.key_names, key, strict=True))

    def row(self, values: Sequence[Any]) -> dict[str, Any]:
        return {name: decode(v) for (name, decode), v in zip(self.decode, values, strict=True)}


class SQLProjectionStore(ProjectionStore, Generic[Q, C]):
    """A projection store on a SQL database, its backend's hooks abstract."""

    #: How the backend stores the registry's values.
    _values: RegistryValues

    def __init__(self, renderer: Renderer[Q], *, migrate_on_start: bool = True) -> None:
        self._render: Renderer[Q] = renderer
        #: May it set a missing registry up (``SAFEREPLAY_MIGRATE_ON_START``)?
        self.migrate_on_start = migrate_on_start
        self._registry_ready = False
        self._codecs: dict[str, TableCodec[Q]] = {}
        self._fences: dict[tuple[str, tuple[str, ...]], Q] = {}
        self._tallies: dict[tuple[str, tuple[str, ...], tuple[str, str, str]], Q] = {}
        self._sql: StoreStatements[Q] = store_statements(
            renderer, builds=BUILDS_TABLE, positions=POSITIONS_TABLE, parked=PARKED_TABLE
        )

    # -- the backend's hooks --------------------------------------------------------------

    @abstractmethod
    def _read(self, what: str) -> AbstractContextManager[C]:
        """The connection, outside a transaction; driver errors translated (``what`` failed)."""

    @abstractmethod
    def _write(self, what: str, *, ddl: bool = False) -> AbstractContextManager[C]:
        """The connection in a write transaction, committed when the block ends, rolled
        back when it raises; :meth:`ensure_schema` called before the first; driver
        errors translated. ``ddl``: the transaction creates or drops tables."""

    @abstractmethod
    def _batch(self, conn: C) -> AbstractContextManager[Writer]:
        """What a batch's rows are written with, inside ``conn``'s transaction."""

    @abstractmethod
    def _new_codec(self, table: Table, physical: str) -> TableCodec[Q]: ...

    @abstractmethod
    def _registry_table(self, conn: C) -> str:
        """The builds table's name as the backend's catalog look-up takes it."""

    @abstractmethod
    def _lock_positions(self, conn: C, name: str, build: int) -> None:
        """Serialise creating a build's position rows with regrouping them."""

    @abstractmethod
    def _move_position(self, conn: C, key: dict[str, Any], params: dict[str, Any]) -> Any:
        """Run the optimistic move (``params``: the position row's ``key`` and its new
        values); the moved row as ``store_sql.CHECKPOINT`` reads it, or None when
        the row was not at the expected position."""

    @abstractmethod
    def _resolve(self, conn: C, name: str, build: int, positions: Sequence[int], now: Any) -> int:
        """Mark unresolved parked ``positions`` resolved at ``now``; how many changed."""

    @abstractmethod
    def _schema_database(self) -> SchemaDatabase:
        """Where this store's schema catalog lives (its own database or schema)."""

    # -- the registry ---------------------------------------------------------------------

    def schema_step(self) -> SchemaStep:  # the ``projections`` component
        return registry_schema_step(self._sql.create_registry, self._sql.upgrade_registry)

    def ensure_schema(self) -> None:
        """Check the catalog once, before the first write; set up what is missing."""
        if not self._registry_ready:
            step = self.schema_step()
            ensure_schema(self._schema_database(), [step], migrate=self.migrate_on_start)
            self._registry_ready = True

    def _registry_exists(self) -> bool:
        if self._registry_ready:
            return True
        with self._read("look for the registry") as conn:
            row = conn.execute(
                self._sql.registry_exists, {"table": self._registry_table(conn)}
            ).fetchone()
        return bool(row and row[0])

    def _codec(self, name: str, build: int, table: Table) -> TableCodec[Q]:
        physical = physical_table_name(name, table.name, build)
        codec = self._codecs.get(physical)
        if codec is None or codec.table != table:
            codec = self._codecs[physical] = self._new_codec(table, physical)
        return codec

    # -- builds ---------------------------------------------------------------------------

    def _builds(self, conn: C, name: str) -> list[BuildInfo]:
        rows = conn.execute(self._sql.builds, {"projection": name}).fetchall()
        values = self._values
        return [
            BuildInfo(
                projection=name,
                build=int(b),
                version=int(v),
                status=build_status(s),
                created_at=values.load_time(c),
                tables=tuple(values.load_json(t)),
            )
            for b, v, s, c, t in rows
        ]

    def _register(self, conn: C, cls: type[Any], build: int, status: BuildStatus) -> None:
        tables = [physical_table_name(cls.name, t.name, build) for t in cls.tables]
        conn.execute(
            self._sql.register_build,
            {
                "projection": cls.name,
                "build": build,
                "version": cls.version,
                "status": status,
                "created_at": self._values.dump_time(now()),
                "tables": self._values.dump_json(tables),
            },
        )

    def _create_tables(self, conn: C, cls: type[Any], build: int) -> None:
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
                self._create_position(conn, name, build, partition, params)
                row = conn.execute(self._sql.checkpoint, params).fetchone()
        assert row is not None
        return checkpoint_of(name, build, row, when=self._values.load_time)

    def _create_position(
        self, conn: C, name: str, build: int, partition: Partition, key: dict[str, Any]
    ) -> None:
        """Create ``partition``'s position row unless the build keeps its positions in
        another partitioning (checked under the lock a repartition takes)."""
        self._lock_positions(conn, name, build)
        counts = conn.execute(self._sql.partition_counts, key).fetchall()
        check_partitioning(name, build, partition, [int(c[0]) for c in counts])
        conn.execute(self._sql.create_position, key)

    def checkpoints(self, name: str, *, build: int | None = None) -> list[Checkpoint]:
        build = self.resolve_build(name, build)
        with self._read("read positions") as conn:
            rows = conn.execute(
                self._sql.checkpoints, {"projection": name, "build": build}
            ).fetchall()
        return [checkpoint_of(name, build, row, when=self._values.load_time) for row in rows]

    def write(
        self, name: str, build: int, writes: Sequence[TableWrites], *, fence: Fence | None = None
    ) -> None:
        with self._write(f"replay into {name!r} build {build}") as conn:
            self._apply(conn, name, build, WHOLE, writes, (), fence, None)

    def repartition(self, name: str, build: int, count: int) -> list[Checkpoint]:
        key = {"projection": name, "build": build}
        dump_time, load_time = self._values.dump_time, self._values.load_time
        with self._write(f"repartition build {build} of {name!r}") as conn:
            self._lock_positions(conn, name, build)
            # The rows are locked too (FOR UPDATE on PostgreSQL): see store_statements.
            current = [
                checkpoint_of(name, build, r, when=load_time)
                for r in conn.execute(self._sql.build_checkpoints_for_update, key).fetchall()
            ]
            rows = repartitioned_rows(name, build, current, count)
            conn.execute(self._sql.delete_positions, key)
            with self._batch(conn) as writer:
                writer.executemany(
                    self._sql.insert_position,
                    [
                        {
                            **key,
                            "index": index,
                            "count": count,
                            "position": position,
                            "applied": applied,
                            "parked": parked,
                            "committed_at": dump_time(now()),
                        }
                        for index, position, applied, parked in rows
                    ],
                )
        return self.checkpoints(name, build=build)

    def _check_fence(
        self, conn: C, name: str, build: int, partition: Partition, fence: Fence, moved: Any
    ) -> None:
        # The lease cannot be taken over until this transaction ends: on PostgreSQL the
        # statement locks its row FOR SHARE (FOR UPDATE when it moves the fence's tally:
        # ``moved``, a commit's position, applied and parked); on SQLite the transaction
        # holds the database's write lock (BEGIN IMMEDIATE), so no other writer runs.
        columns = tuple(column for column, _ in fence.match)
        if fence.tally is not None and moved is not None:
            key = (fence.table, columns, fence.tally.columns())
            if key not in self._tallies:
                self._tallies[key] = fence_tally_statement(self._render, *key)
            changed = conn.execute(self._tallies[key], [*moved, *(v for _, v in fence.match)])
            if changed.rowcount != 1:
                raise FencedOff(name, build, str(partition), fence=fence.description)
            return
        statement = self._fences.get((fence.table, columns))
        if statement is None:
            statement = self._fences[fence.table, columns] = fence_statement(
                self._render, fence.table, columns
            )
        held = conn.execute(statement, [value for _, value in fence.match]).fetchone()
        if held is None:
            raise FencedOff(name, build, str(partition), fence=fence.description)

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
        values = self._values
        key = {
            "projection": name,
            "build": build,
            "index": partition.index,
            "count": partition.count,
        }
        with self._write(f"commit {name!r} partition {partition}") as conn:
            tally = (position, applied, len(parked))  # moves the fence's tally, if any
            self._apply(conn, name, build, partition, writes, parked, fence, tally)
            if during is not None:
                during()
            if expected == 0:  # a partition's first commit: its row may not exist yet
                # ...or may have been regrouped since it was read (a first rebuild took
                # the never-written build over): creating it again in the old
                # partitioning would apply the rebuild's events a second time.
                self._create_position(conn, name, build, partition, key)
            moved = {
                **key,
                "position": position,
                "applied": applied,
                "parked": len(parked),
                "committed_at": values.dump_time(now()),
                "expected": expected,
            }
            row = self._move_position(conn, key, moved)
            if row is None:
                found = conn.execute(self._sql.position, key).fetchone()
                raise PositionConflict(
                    name,
                    build,
                    str(partition),
                    expected=expected,
                    found=None if found is None else int(found[0]),
                )
        return checkpoint_of(name, build, row, when=values.load_time)

    def _apply(
        self,
        conn: C,
        name: str,
        build: int,
        partition: Partition,
        writes: Sequence[TableWrites],
        parked: Sequence[ParkedEvent],
        fence: Fence | None,
        moved: tuple[int, int, int] | None = None,
    ) -> None:
        """A batch's folded rows and parked events, in ``conn``'s transaction, once
        ``fence`` (if any) is found to hold (and its tally moved by ``moved``)."""
        if fence is not None:
            self._check_fence(conn, name, build, partition, fence, moved)
        with self._batch(conn) as writer:
            for table_writes in writes:
                self._flush(writer, name, build, table_writes)
            if parked:
                values = self._values
                writer.executemany(
                    self._sql.park,
                    [
                        parked_insert_row(
                            name, build, p, when=values.dump_time, ident=values.dump_id
                        )
                        for p in parked
                    ],
                )

    def _flush(self, writer: Writer, name: str, build: int, writes: TableWrites) -> None:
        codec = self._codec(name, build, writes.table)
        if writes.deletes:
            writer.executemany(codec.sql.delete_row, [codec.key_params(k) for k in writes.deletes])
        if writes.upserts:
            names = [c.name for c in writes.table.columns]
            codec.write_rows(writer, codec.sql.upsert, writes.upserts, names)
        for shape, rows in writes.merges.items():
            names = list(writes.table.key_names + shape.columns)
            codec.write_rows(writer, codec.merge(shape), rows, names)

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

    def select(
        self,
        projection: ProjectionLike,
        table: str,
        *,
        where: Mapping[str, Any] | None = None,
        limit: int | None = None,
        build: int | None = None,
    ) -> list[dict[str, Any]]:
        cls = projection_class(projection)
        spec = cls.table(table)
        match = matching_columns(cls.name, spec, where or {})
        codec = self._codec(cls.name, self.resolve_build(cls, build), spec)
        r = self._render
        statement = r.render(
            SELECT_MATCHING,
            columns=r.names(c.name for c in spec.columns),
            table=r.table(codec.physical),
            match=r.each(IS_PARAMETER, match, " AND ") if match else r.text(MATCH_ALL),
            keys=r.names(spec.key_names),
        )
        bound: list[Any] = [codec.encode[name](value) for name, value in match.items()]
        unlimited = -1 if self.dialect == "sqlite" else None  # LIMIT -1 / LIMIT NULL
        bound.append(unlimited if limit is None else limit)
        with self._read(f"read {codec.physical}") as conn:
            found = conn.execute(statement, tuple(bound))
            return [codec.row(row) for row in found.fetchall()]

    # -- parking --------------------------------------------------------------------------

    def parked(
        self, name: str, *, build: int | None = None, include_resolved: bool = False
    ) -> list[ParkedEvent]:
        build = self.resolve_build(name, build)
        query = self._sql.parked if include_resolved else self._sql.unresolved_parked
        with self._read("read parked events") as conn:
            rows = conn.execute(query, {"projection": name, "build": build}).fetchall()
        values = self._values
        return [
            parked_event_of(name, build, r, when=values.load_time, ident=values.load_id)
            for r in rows
        ]

    def blocked_aggregates(self, name: str, build: int, partition: Partition) -> dict[UUID, int]:
        if not self._registry_exists():
            return {}
        with self._read("read parked aggregates") as conn:
            rows = conn.execute(
                self._sql.blocked_aggregates, {"projection": name, "build": build}
            ).fetchall()
        load_id = self._values.load_id
        blocked = {load_id(a): int(p) for a, p in rows}
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
        dump_time = self._values.dump_time
        with self._write(f"redrive parked events of {name!r}") as conn:
            # The parked rows first (on PostgreSQL this locks them, before any
            # projection row): a redrive that lost the race writes nothing.
            changed = self._resolve(conn, name, build, resolved, dump_time(now()))
            if changed != len(resolved):
                # Another redrive resolved some of them first: roll back, apply nothing twice.
                raise RedriveConflict(name, build, expected=len(resolved), resolved=changed)
            with self._batch(conn) as writer:
                for table_writes in writes:
                    self._flush(writer, name, build, table_writes)
                if failed:
                    writer.executemany(
                        self._sql.parked_again,
                        [parked_update_row(name, build, p, when=dump_time) for p in failed],
                    )
        return len(resolved)

    def skip_parked(self, name: str, build: int, position: int, *, reason: str) -> ParkedEvent:
        if not reason.strip():
            raise ValueError("skipping a parked event needs a reason")
        params = {"projection": name, "build": build, "position": position}
        with self._write(f"skip the parked event at {position} of {name!r}") as conn:
            changed = conn.execute(
                self._sql.skip_parked,
                {**params, "now": self._values.dump_time(now()), "reason": reason},
            ).rowcount
        if changed != 1:
            raise ParkedEventNotFound(
                f"no event of {name!r} build {build} is parked now at position {position} "
                "(see `safereplay parked list`: it may have been re-driven or skipped already)"
            )
        [skipped] = [
            p
            for p in self.parked(name, build=build, include_resolved=True)
            if p.position == position
        ]
        return skipped

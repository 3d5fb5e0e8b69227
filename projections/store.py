"""The projection store: a projection's tables, its positions, its builds, its parked events.

One interface, two backends side by side (:mod:`safereplay.projections.sqlite_store`,
:mod:`safereplay.projections.postgres_store`), one contract test class; their logic
is written once, in :mod:`safereplay.projections.sql_store`, and their SQL in
:mod:`safereplay.projections.store_sql`. The store may live in the event store's
database or in another database of the same kind.

Tables the store owns (besides the projections' own)::

    safereplay_projection_builds     (projection, build) -> version, status, tables
                                     status: building | live | retired; one live
                                     build per projection (unique partial index)
    safereplay_projection_positions  (projection, build, partition_index,
                                     partition_count) -> position, events_applied,
                                     events_parked, committed_at
    safereplay_projection_parked     (projection, build, position) -> aggregate,
                                     event type, error type and message, attempts,
                                     first/last seen, reason, blocked_by, resolved_at

A projection's table ``t`` of build ``b`` is ``{projection}__{t}__b{b}``: a rebuild
(issue 4) makes build ``b + 1`` side by side, catches it up, and
:meth:`ProjectionStore.set_live` swaps in one transaction. Reads go through the
live build unless a build is named.

:meth:`ProjectionStore.commit` writes a batch's folded writes, its parked events
and the new position in **one transaction**, guarded by an optimistic check of
the position the batch started from (:class:`~safereplay.projections.errors.PositionConflict`
when another worker moved it).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from safereplay.projections.batch import RowReader, TableWrites
from safereplay.projections.errors import (
    InvalidWrite,
    PartitioningMismatch,
    UnknownProjection,
    VersionMismatch,
)
from safereplay.projections.projection import Projection
from safereplay.projections.source import Partition
from safereplay.projections.tables import Table

__all__ = [
    "POSITIONS_TABLE",
    "BuildInfo",
    "BuildStatus",
    "Checkpoint",
    "Fence",
    "ParkedEvent",
    "ProjectionLike",
    "ProjectionStore",
    "Tally",
]

BUILDS_TABLE = "safereplay_projection_builds"
POSITIONS_TABLE = "safereplay_projection_positions"
PARKED_TABLE = "safereplay_projection_parked"

BuildStatus = Literal["building", "live", "retired"]
ProjectionLike = Projection | type[Projection]


def projection_class(projection: ProjectionLike) -> type[Projection]:
    return projection if isinstance(projection, type) else type(projection)


@dataclass(frozen=True)
class Checkpoint:
    """A partition's committed position: every matching event ``<= position`` is applied."""

    projection: str
    build: int
    partition: Partition
    position: int
    events_applied: int
    events_parked: int
    committed_at: datetime | None


_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


@dataclass(frozen=True)
class Tally:
    """Columns of a fence's row that count the commits the fence guards.

    With a tally, :meth:`ProjectionStore.commit` does not only find the fence's
    row: it sets ``position`` to the commit's new position and adds the batch's
    applied and parked events to ``applied`` and ``parked``, in the commit's own
    transaction. A recovery job's progress counters are then never a batch behind
    (or ahead of) the position and rows they count, whenever the writer dies.
    """

    position: str
    applied: str
    parked: str

    def columns(self) -> tuple[str, str, str]:
        return (self.position, self.applied, self.parked)


@dataclass(frozen=True)
class Fence:
    """A row that must still exist for a commit to go through: a writer's lease.

    :meth:`ProjectionStore.commit` looks for a row of ``table`` (in the store's
    database and schema) whose columns equal ``match``, inside the commit's own
    transaction, before anything is written. On PostgreSQL the row is locked
    ``FOR SHARE`` until the commit ends, so a lease cannot be taken over while a
    batch commits; SQLite's write lock serialises the same way. A missing row
    rolls the batch back with :class:`~safereplay.projections.errors.FencedOff`.
    """

    table: str
    match: tuple[tuple[str, Any], ...]
    #: What the fence is, for messages ("the lease of job ... partition 3").
    description: str
    #: Counters of the fence's row that each commit moves (see :class:`Tally`).
    tally: Tally | None = None

    def __post_init__(self) -> None:
        names = [self.table, *(column for column, _ in self.match)]
        if self.tally is not None:
            names += self.tally.columns()
        bad = [name for name in names if not _IDENTIFIER.match(name)]
        if bad or not self.match:
            raise ValueError(f"a fence needs a table and columns named as SQL identifiers: {bad}")


@dataclass(frozen=True)
class BuildInfo:
    projection: str
    build: int
    version: int
    status: BuildStatus
    created_at: datetime
    tables: tuple[str, ...]


@dataclass(frozen=True)
class ParkedEvent:
    """An event set aside by the failure policy; never its payload."""

    projection: str
    build: int
    position: int
    partition: Partition
    aggregate_id: UUID
    aggregate_version: int
    topic: str
    event_type: str
    error_type: str
    error_message: str
    attempts: int
    first_seen_at: datetime
    last_seen_at: datetime
    reason: str
    #: The parked position of the same aggregate this event waits behind, if any.
    blocked_by: int | None = None
    resolved_at: datetime | None = None
    #: Why an operator skipped it (it can never apply): resolved, never applied.
    skipped_reason: str | None = None

    @property
    def skipped(self) -> bool:
        return self.skipped_reason is not None


class ProjectionStore(ABC):
    """Tables, positions, builds and parked events of projections, in one database."""

    dialect: Literal["sqlite", "postgres"]

    # -- builds -------------------------------------------------------------------------

    @abstractmethod
    def prepare(self, projection: ProjectionLike, *, build: int | None = None) -> int:
        """Create what ``projection`` needs and return the build to write.

        Without ``build``: the live build, made (build 1, live) if the projection
        has none. The live build must have been made by the same ``version``
        (else :class:`~safereplay.projections.errors.VersionMismatch`). With ``build``: that
        build, which must exist (see :meth:`create_build`).
        """

    @abstractmethod
    def builds(self, name: str) -> list[BuildInfo]:
        """Every build of projection ``name``, oldest first."""

    @abstractmethod
    def create_build(self, projection: ProjectionLike) -> int:
        """Make the next build (status ``building``) with empty tables; returns its number."""

    @abstractmethod
    def set_live(self, name: str, build: int, *, replacing: int | None = None) -> None:
        """Make ``build`` the live build in one transaction (the previous one is retired).

        ``replacing``: the build the caller saw live; if another is live by the time
        the transaction holds the build's row, :class:`LiveBuildChanged` is raised and
        nothing changes (of two swaps at once, one wins).
        """

    @abstractmethod
    def drop_build(self, name: str, build: int) -> None:
        """Drop a build that is not live: its tables, positions and parked events."""

    @abstractmethod
    def projection_names(self) -> list[str]:
        """Names of the projections the store holds, sorted."""

    def live_build(self, name: str) -> int | None:
        for info in self.builds(name):
            if info.status == "live":
                return info.build
        return None

    def resolve_build(self, projection: ProjectionLike | str, build: int | None = None) -> int:
        """``build`` if given, else the live build; UnknownProjection if there is none."""
        name = projection if isinstance(projection, str) else projection.name
        if build is not None:
            return build
        live = self.live_build(name)
        if live is None:
            raise UnknownProjection(f"projection {name!r} has no live build in this store")
        return live

    @staticmethod
    def check_version(cls: type[Projection], info: BuildInfo) -> None:
        if info.version != cls.version:
            raise VersionMismatch(
                f"projection {cls.name!r}: build {info.build} ({info.status}) was built by "
                f"version {info.version}, this code is version {cls.version}; rebuild it "
                "into a new build, or run the code of that version"
            )

    # -- positions ----------------------------------------------------------------------

    @abstractmethod
    def checkpoint(self, name: str, build: int, partition: Partition) -> Checkpoint:
        """The partition's committed position (a new partition starts at 0)."""

    @abstractmethod
    def checkpoints(self, name: str, *, build: int | None = None) -> list[Checkpoint]:
        """Positions of every partition of a build (default: the live build)."""

    @abstractmethod
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
        """Write ``writes`` and ``parked`` and move the position from ``expected``
        to ``position``, in one transaction.

        ``applied`` events are added to ``events_applied``. ``during`` (tests) is
        called inside the transaction after the writes, before the position moves.
        Raises :class:`~safereplay.projections.errors.PositionConflict` (nothing written) when
        the stored position is not ``expected``, and its subclass
        :class:`~safereplay.projections.errors.FencedOff` when ``fence`` does not hold.
        """

    @abstractmethod
    def write(
        self, name: str, build: int, writes: Sequence[TableWrites], *, fence: Fence | None = None
    ) -> None:
        """Write ``writes`` in one transaction without moving any position: a replay
        of a range into a build of a replay-safe projection (see ``replay_safe``)."""

    @abstractmethod
    def repartition(self, name: str, build: int, count: int) -> list[Checkpoint]:
        """Keep the build's positions in ``count`` partitions from now on, in one transaction.

        Every current position of the build must be the same ``p`` (a build with
        no position is at 0); afterwards each of the ``count`` partitions is at
        ``p`` and the counters are carried over (on partition 0). Raises
        :class:`~safereplay.projections.errors.PartitioningMismatch` when the positions
        differ: finish (or abort) the job that moves them first.
        """

    # -- rows ---------------------------------------------------------------------------

    @abstractmethod
    def read_row(
        self, name: str, build: int, table: Table, key: tuple[Any, ...]
    ) -> dict[str, Any] | None:
        """One committed row (``key`` normalised), or None."""

    def row_reader(self, name: str, build: int) -> RowReader:
        def read(table: Table, key: tuple[Any, ...]) -> dict[str, Any] | None:
            return self.read_row(name, build, table, key)

        return read

    def get(
        self, projection: ProjectionLike, table: str, key: Any, *, build: int | None = None
    ) -> dict[str, Any] | None:
        """One row of a projection's table (live build unless ``build``)."""
        cls = projection_class(projection)
        spec = cls.table(table)
        return self.read_row(
            cls.name,
            self.resolve_build(cls, build),
            spec,
            spec.normalise_key(key, where=f"get({table!r})"),
        )

    @abstractmethod
    def rows(
        self, projection: ProjectionLike, table: str, *, build: int | None = None
    ) -> list[dict[str, Any]]:
        """Every row of a projection's table (live build unless ``build``), by key."""

    def select(
        self,
        projection: ProjectionLike,
        table: str,
        *,
        where: Mapping[str, Any] | None = None,
        limit: int | None = None,
        build: int | None = None,
    ) -> list[dict[str, Any]]:
        """Rows of a projection's table whose columns equal ``where`` (declared
        columns only, values in their column's type), by key, at most ``limit``.

        The columns are checked against the projection's declared table (never
        put into SQL otherwise); this default filters :meth:`rows`.
        """
        cls = projection_class(projection)
        match = matching_columns(cls.name, cls.table(table), where or {})
        found = [
            row
            for row in self.rows(cls, table, build=build)
            if all(row[name] == value for name, value in match.items())
        ]
        return found if limit is None else found[:limit]

    # -- parking ------------------------------------------------------------------------

    @abstractmethod
    def parked(
        self, name: str, *, build: int | None = None, include_resolved: bool = False
    ) -> list[ParkedEvent]:
        """Parked events of a build (default: live), in position order."""

    @abstractmethod
    def blocked_aggregates(self, name: str, build: int, partition: Partition) -> dict[UUID, int]:
        """Aggregates of ``partition`` with an unresolved parked event -> its first position."""

    @abstractmethod
    def resolve_parked(
        self,
        name: str,
        build: int,
        *,
        resolved: Sequence[int],
        writes: Sequence[TableWrites] = (),
        failed: Sequence[ParkedEvent] = (),
    ) -> int:
        """Redrive: write the re-applied events' ``writes`` and mark the parked
        positions ``resolved``, in one transaction; returns how many were resolved.

        A position already resolved (by a concurrent redrive) rolls everything
        back with :class:`~safereplay.projections.errors.PositionConflict`, so nothing is
        applied twice. ``failed`` records are updated in place (attempts, last
        seen, error): the event stays parked.
        """

    @abstractmethod
    def skip_parked(self, name: str, build: int, position: int, *, reason: str) -> ParkedEvent:
        """Resolve the event parked at ``position`` without applying it (it can never
        apply): it is no longer parked now, and counted apart from re-driven ones.
        Raises :class:`~safereplay.projections.errors.ParkedEventNotFound` when no
        event is parked there now."""

    # -- lifecycle ----------------------------------------------------------------------

    @property
    @abstractmethod
    def description(self) -> str:
        """Which database (no secrets), for messages."""

    def ensure_schema(self) -> None:  # noqa: B027 - optional hook
        """Check the schema catalog (and set up what is missing, if allowed); see
        :mod:`safereplay.domain.schema`. A store without a catalog has nothing to do."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    def __enter__(self) -> ProjectionStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- shared by both backends -------------------------------------------------------------


def check_partitioning(
    name: str, build: int, partition: Partition, counts_in_use: Sequence[int]
) -> None:
    """Refuse a partition whose build keeps its positions in another partitioning."""
    others = sorted(set(counts_in_use) - {partition.count})
    if others:
        raise PartitioningMismatch(
            f"projection {name!r} build {build} keeps its positions in {others[0]} "
            f"partition(s), not {partition.count}: running it as partition {partition} too "
            "would apply events twice; let the recovery job that split it finish (or abort "
            "it), or repartition the build"
        )


def repartitioned_rows(
    name: str, build: int, current: Sequence[Checkpoint], count: int
) -> list[tuple[int, int, int, int]]:
    """``(partition_index, position, events_applied, events_parked)`` after a repartition."""
    if count < 1:
        raise ValueError("a partition count must be at least 1")
    positions = sorted({c.position for c in current})
    if len(positions) > 1:
        spread = ", ".join(f"{c.partition}@{c.position}" for c in current)
        raise PartitioningMismatch(
            f"projection {name!r} build {build}: its partitions are at different positions "
            f"({spread}); they can only be regrouped once all are at the same position"
        )
    position = positions[0] if positions else 0
    applied = sum(c.events_applied for c in current)
    parked = sum(c.events_parked for c in current)
    return [(0, position, applied, parked)] + [(i, position, 0, 0) for i in range(1, count)]


def matching_columns(name: str, table: Table, where: Mapping[str, Any]) -> dict[str, Any]:
    """``where`` checked against ``table``'s declared columns, values normalised
    (:class:`~safereplay.projections.errors.InvalidWrite` names an unknown column)."""
    unknown = sorted(set(where) - set(table.by_name))
    if unknown:
        raise InvalidWrite(
            f"projection {name!r} table {table.name!r} has no column "
            f"{', '.join(repr(u) for u in unknown)} (it has "
            f"{', '.join(c.name for c in table.columns)})"
        )
    return {
        column: table.by_name[column].normalise(value, where=f"where {column}")
        for column, value in where.items()
    }


def build_status(value: str) -> BuildStatus:
    """A registry row's status."""
    if value == "live":
        return "live"
    if value == "building":
        return "building"
    return "retired"


def checkpoint_of(
    name: str, build: int, row: Sequence[Any], *, when: Callable[[Any], datetime]
) -> Checkpoint:
    """A positions row (partition index and count, position, events applied and
    parked, committed at); ``when`` decodes the backend's timestamp."""
    return Checkpoint(
        projection=name,
        build=build,
        partition=Partition(int(row[0]), int(row[1])),
        position=int(row[2]),
        events_applied=int(row[3]),
        events_parked=int(row[4]),
        committed_at=None if row[5] is None else when(row[5]),
    )


def parked_insert_row(
    name: str,
    build: int,
    event: ParkedEvent,
    *,
    when: Callable[[datetime], Any],
    ident: Callable[[UUID], Any],
) -> dict[str, Any]:
    """The parameters of a parked event's insert (``store_sql.PARK``); ``when`` and
    ``ident`` encode timestamps and ids for the backend."""
    return {
        "projection": name,
        "build": build,
        "position": event.position,
        "index": event.partition.index,
        "count": event.partition.count,
        "aggregate_id": ident(event.aggregate_id),
        "aggregate_version": event.aggregate_version,
        "topic": event.topic,
        "event_type": event.event_type,
        "error_type": event.error_type,
        "error_message": event.error_message,
        "attempts": event.attempts,
        "first_seen_at": when(event.first_seen_at),
        "last_seen_at": when(event.last_seen_at),
        "reason": event.reason,
        "blocked_by": event.blocked_by,
    }


def parked_update_row(
    name: str, build: int, event: ParkedEvent, *, when: Callable[[datetime], Any]
) -> dict[str, Any]:
    """The parameters of a redrive's update of a parked event that failed again
    (``store_sql.PARKED_AGAIN``)."""
    return {
        "attempts": event.attempts,
        "last_seen_at": when(event.last_seen_at),
        "error_type": event.error_type,
        "error_message": event.error_message,
        "reason": event.reason,
        "blocked_by": event.blocked_by,
        "projection": name,
        "build": build,
        "position": event.position,
    }


def parked_event_of(
    name: str,
    build: int,
    row: Sequence[Any],
    *,
    when: Callable[[Any], datetime],
    ident: Callable[[Any], UUID],
) -> ParkedEvent:
    """A parked row, in ``store_sql.PARKED``'s column order; ``when`` and ``ident``
    decode the backend's timestamps and ids."""
    return ParkedEvent(
        projection=name,
        build=build,
        position=int(row[0]),
        partition=Partition(int(row[1]), int(row[2])),
        aggregate_id=ident(row[3]),
        aggregate_version=int(row[4]),
        topic=row[5],
        event_type=row[6],
        error_type=row[7],
        error_message=row[8],
        attempts=int(row[9]),
        first_seen_at=when(row[10]),
        last_seen_at=when(row[11]),
        reason=row[12],
        blocked_by=None if row[13] is None else int(row[13]),
        resolved_at=None if row[14] is None else when(row[14]),
        skipped_reason=row[15],
    )

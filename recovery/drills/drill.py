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

import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from safereplay.projections import (
    EventSource,
    Projection,
    ProjectionRunner,
    RunnerOptions,
)
from safereplay.recovery.database import Database, recorded_rows
from safereplay.recovery.drills.digests import (
    PartitionComparison,
    RowDifference,
    compare,
    digest_rows,
)
from safereplay.recovery.drills.sandbox import Sandbox
from safereplay.recovery.drills.views import BuildRecord, ReadView, StoreReader
from safereplay.recovery.errors import DrillConflict, InvalidRequest
from safereplay.recovery.resilience.policies import ErrorRules, Park, RulesPolicy

__all__ = [
    "DrillResult",
    "DrillStore",
    "require_matching_drill",
    "run_drill",
]

MAX_DRILL_PARTITIONS = 256


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

    @staticmethod
    def schema_statements() -> list[str]:
        """The table's DDL (templates), run by the ``recovery`` schema step."""
        return [_CREATE_DRILLS, _CREATE_DRILLS_INDEX]

    def create_tables(self) -> None:
        """Run the DDL directly (tools and tests); processes go through the schema
        catalog (:mod:`safereplay.recovery.migrations`)."""
        with self.database.transaction(write=True) as tx:
            for statement in self.schema_statements():
                tx.execute(statement)

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

"""Live followers' heartbeats: what the database knows of each running follower.

A job partition's worker already leaves its traces in the partition's row: every
renewal and report moves ``updated_at`` (its heartbeat), and a report moves
``advanced_at`` when the position moved forward. A follower (``safereplay
follow``) had no row of its own: this table gives it one per projection and
partition, written by the follow process once per heartbeat interval (never per
event), with the follower's position, when it last beat and when its position
last moved forward. Stall detection (:mod:`safereplay.recovery.alerts`) reads
both.

One row per projection and partition, whoever follows it: a second follow
process of the same projection takes the row over (``owner``), so the table
stays as small as the number of projections. A follower stopped cleanly marks its
row stopped; one that died leaves its last beat, whose age then says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from safereplay.recovery.database import Database, recorded_rows

__all__ = ["FollowerBeat", "FollowerHeartbeats"]

CREATE_FOLLOWERS = """
CREATE TABLE IF NOT EXISTS {followers} (
    projection TEXT NOT NULL,
    partition_label TEXT NOT NULL,
    build INTEGER NOT NULL,
    owner TEXT NOT NULL,
    position BIGINT NOT NULL,
    retries BIGINT NOT NULL DEFAULT 0,
    started_at DOUBLE PRECISION NOT NULL,
    heartbeat_at DOUBLE PRECISION NOT NULL,
    advanced_at DOUBLE PRECISION NOT NULL,
    stopped_at DOUBLE PRECISION,
    PRIMARY KEY (projection, partition_label)
)"""

# One statement per beat. Right-hand sides read the row as it was: advanced_at
# moves only when the position moved forward; retries add the beat's delta, so the
# count stays cumulative across follower restarts (a spike is measured on it).
_BEAT = """
INSERT INTO {followers} (projection, partition_label, build, owner, position, retries,
    started_at, heartbeat_at, advanced_at, stopped_at)
VALUES (%(projection)s, %(partition)s, %(build)s, %(owner)s, %(position)s, %(retries)s,
    %(now)s, %(now)s, %(now)s, NULL)
ON CONFLICT (projection, partition_label) DO UPDATE SET
    build = excluded.build,
    owner = excluded.owner,
    retries = {followers}.retries + excluded.retries,
    advanced_at = CASE WHEN excluded.position > {followers}.position
        OR {followers}.stopped_at IS NOT NULL OR {followers}.owner <> excluded.owner
        THEN excluded.heartbeat_at ELSE {followers}.advanced_at END,
    started_at = CASE WHEN {followers}.stopped_at IS NOT NULL
        OR {followers}.owner <> excluded.owner
        THEN excluded.started_at ELSE {followers}.started_at END,
    position = excluded.position,
    heartbeat_at = excluded.heartbeat_at,
    stopped_at = NULL"""

_STOP = """
UPDATE {followers} SET stopped_at = %(now)s
WHERE projection = %(projection)s AND partition_label = %(partition)s AND owner = %(owner)s"""

_SELECT = "SELECT * FROM {followers} ORDER BY projection, partition_label"


@dataclass(frozen=True)
class FollowerBeat:
    """One follower's row: where it is, when it last beat and last moved forward."""

    projection: str
    partition: str
    build: int
    owner: str
    position: int
    #: Failure-policy and connection retries, cumulative over the row's life.
    retries: int
    started_at: float
    heartbeat_at: float
    advanced_at: float
    #: When its process stopped it cleanly (None: running, or died without a word).
    stopped_at: float | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> FollowerBeat:
        return cls(
            projection=str(row["projection"]),
            partition=str(row["partition_label"]),
            build=int(row["build"]),
            owner=str(row["owner"]),
            position=int(row["position"]),
            retries=int(row["retries"]),
            started_at=float(row["started_at"]),
            heartbeat_at=float(row["heartbeat_at"]),
            advanced_at=float(row["advanced_at"]),
            stopped_at=None if row["stopped_at"] is None else float(row["stopped_at"]),
        )


class FollowerHeartbeats:
    """Followers' rows in the recovery database (``safereplay_followers``)."""

    def __init__(self, database: Database) -> None:
        self.database = database

    @staticmethod
    def schema_statements() -> list[str]:
        """The table's DDL (a template), run by the ``recovery`` schema step."""
        return [CREATE_FOLLOWERS]

    def create_tables(self) -> None:
        """Run the DDL directly (tools and tests)."""
        with self.database.transaction(write=True) as tx:
            for statement in self.schema_statements():
                tx.execute(statement)

    def beat(
        self,
        *,
        projection: str,
        partition: str,
        build: int,
        owner: str,
        position: int,
        retries: int = 0,
    ) -> None:
        """Record one heartbeat: ``position`` now, ``retries`` since the last beat."""
        with self.database.transaction(write=True) as tx:
            tx.execute(
                _BEAT,
                {
                    "projection": projection,
                    "partition": partition,
                    "build": build,
                    "owner": owner,
                    "position": position,
                    "retries": retries,
                    "now": tx.now(),
                },
            )

    def stopped(self, *, projection: str, partition: str, owner: str) -> None:
        """The follower stopped cleanly (a row another process took over is left alone)."""
        with self.database.transaction(write=True) as tx:
            tx.execute(
                _STOP,
                {"projection": projection, "partition": partition, "owner": owner, "now": tx.now()},
            )

    def beats(self) -> list[FollowerBeat]:
        """Every follower's row (none before the first follower ran)."""
        return [FollowerBeat.from_row(r) for r in recorded_rows(self.database, _SELECT, {})]

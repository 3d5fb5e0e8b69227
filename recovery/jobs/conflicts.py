"""Integrity conflicts: work that stopped itself on a failed integrity check.

A conflict is raised when ``on_integrity_failure`` is ``pause`` (the default) and a
job partition (rebuild, catch-up, replay) or a live follower meets a stored event
that fails authentication or decryption, names a key not in the ring or cannot be
decoded into an envelope; or when another integrity check fails (a hole past its
timeout, a drill checksum that does not match, an audit chain that no longer
verifies). Its row says what stopped, where (job, partition, position) and why:
the error's kind and its summary, which name key *ids* and positions, never key
bytes or payloads.

A job partition that raised one is given back with the status ``conflict`` in the
same transaction (fenced by its lease): no worker claims it, so nothing is applied
past the failing position, while the job's other partitions go on. An operator
resolves it (``safereplay conflicts resolve ID --action retry|park --reason``):
``retry`` after fixing the cause (a key put back in the ring), ``park`` to park
that one event and go on. Resolving gives the partition back to the workers in
the same transaction. One open conflict per subject (a job partition, a
follower, a drill's projection, the audit chain) is kept by a partial unique index.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal
from uuid import uuid4

from safereplay.recovery.database import Database, recorded_rows
from safereplay.recovery.errors import ConflictNotFound, InvalidJobTransition, LeaseLost
from safereplay.recovery.jobs.model import Claim
from safereplay.recovery.security.access import SYSTEM_ACTOR
from safereplay.recovery.security.audit import AuditRecord, AuditTrail

__all__ = [
    "EVENT_KINDS",
    "RESOLUTIONS",
    "Conflict",
    "ConflictStore",
    "NewConflict",
    "Resolution",
    "job_subject",
]

Resolution = Literal["retry", "park"]
RESOLUTIONS: tuple[Resolution, ...] = ("retry", "park")
#: The kinds of conflict that name one stored event (the others, ``hole``, ``drill``
#: and ``audit``, name a check): only those can be resolved by parking the event.
EVENT_KINDS = frozenset({"authentication", "unknown-key", "envelope"})

_CREATE = """
CREATE TABLE IF NOT EXISTS {conflicts} (
    conflict_id TEXT PRIMARY KEY,
    subject TEXT NOT NULL,
    kind TEXT NOT NULL,
    projection TEXT,
    build INTEGER,
    job_id TEXT,
    partition_index INTEGER,
    position BIGINT,
    reason TEXT NOT NULL,
    state TEXT NOT NULL,
    raised_at DOUBLE PRECISION NOT NULL,
    resolved_at DOUBLE PRECISION,
    resolved_by TEXT,
    resolution TEXT,
    resolution_reason TEXT
)"""
# One open conflict per subject, kept by the database itself.
_CREATE_ONE_OPEN = """
CREATE UNIQUE INDEX IF NOT EXISTS {idx_conflicts_one_open} ON {conflicts} (subject)
WHERE state = 'open'"""

_INSERT = """
INSERT INTO {conflicts} (conflict_id, subject, kind, projection, build, job_id,
    partition_index, position, reason, state, raised_at)
VALUES (%(conflict_id)s, %(subject)s, %(kind)s, %(projection)s, %(build)s, %(job_id)s,
    %(partition_index)s, %(position)s, %(reason)s, 'open', %(now)s)
ON CONFLICT DO NOTHING"""
_OPEN_OF_SUBJECT = "SELECT * FROM {conflicts} WHERE subject = %(subject)s AND state = 'open'"
_GET = "SELECT * FROM {conflicts} WHERE conflict_id = %(conflict_id)s"
_LIST_OPEN = "SELECT * FROM {conflicts} WHERE state = 'open' ORDER BY raised_at, conflict_id"
_LIST_ALL = """
SELECT * FROM {conflicts} ORDER BY (CASE WHEN state = 'open' THEN 0 ELSE 1 END),
    raised_at DESC, conflict_id LIMIT %(limit)s"""
_RESOLVE = """
UPDATE {conflicts} SET state = 'resolved', resolved_at = %(now)s, resolved_by = %(principal)s,
    resolution = %(resolution)s, resolution_reason = %(reason)s
WHERE conflict_id = %(conflict_id)s AND state = 'open'"""
_PARKED_BY_OPERATOR = """
SELECT position FROM {conflicts}
WHERE job_id = %(job_id)s AND partition_index = %(partition_index)s
  AND state = 'resolved' AND resolution = 'park' AND position IS NOT NULL"""
# The partition stops where it is, fenced by its lease (as FINISH_PART is).
_PAUSE_PART = """
UPDATE {job_partitions} SET status = 'conflict', lease_owner = NULL, lease_expires_at = NULL,
    last_error = %(error)s, updated_at = %(now)s
WHERE job_id = %(job_id)s AND partition_index = %(partition_index)s
  AND lease_token = %(token)s AND status = 'running'"""
_RESUME_PART = """
UPDATE {job_partitions} SET status = 'pending', updated_at = %(now)s
WHERE job_id = %(job_id)s AND partition_index = %(partition_index)s AND status = 'conflict'"""


def job_subject(job_id: str, partition_index: int) -> str:
    """The subject of a job partition's conflict."""
    return f"job:{job_id}:{partition_index}"


@dataclass(frozen=True)
class NewConflict:
    """What is raised. ``reason`` names the error kind, key id and position, never a
    payload or key bytes (it is built from the domain errors' messages, which never do)."""

    subject: str
    kind: str
    reason: str
    projection: str | None = None
    build: int | None = None
    job_id: str | None = None
    partition_index: int | None = None
    position: int | None = None


@dataclass(frozen=True)
class Conflict:
    """A conflict, open or resolved; times in epoch seconds."""

    conflict_id: str
    subject: str
    kind: str
    projection: str | None
    build: int | None
    job_id: str | None
    partition_index: int | None
    position: int | None
    reason: str
    state: str
    raised_at: float
    resolved_at: float | None = None
    resolved_by: str | None = None
    resolution: str | None = None
    resolution_reason: str | None = None

    @property
    def open(self) -> bool:
        return self.state == "open"

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Conflict:
        def optional_int(name: str) -> int | None:
            return None if row[name] is None else int(row[name])

        return cls(
            conflict_id=str(row["conflict_id"]),
            subject=str(row["subject"]),
            kind=str(row["kind"]),
            projection=row["projection"],
            build=optional_int("build"),
            job_id=row["job_id"],
            partition_index=optional_int("partition_index"),
            position=optional_int("position"),
            reason=str(row["reason"]),
            state=str(row["state"]),
            raised_at=float(row["raised_at"]),
            resolved_at=None if row["resolved_at"] is None else float(row["resolved_at"]),
            resolved_by=row["resolved_by"],
            resolution=row["resolution"],
            resolution_reason=row["resolution_reason"],
        )

    def describe(self) -> str:
        """One line for logs and the command line: where and why (never a payload)."""
        where = []
        if self.projection:
            where.append(f"projection {self.projection}")
        if self.job_id:
            where.append(f"job {self.job_id[:8]} partition {self.partition_index}")
        if self.position is not None:
            where.append(f"position {self.position}")
        return f"{self.kind} at {', '.join(where) or self.subject}: {self.reason}"


class ConflictStore:
    """Conflicts in the recovery database (see the module docstring)."""

    def __init__(self, database: Database, *, audit: AuditTrail | None = None) -> None:
        """``audit`` (default: none): where a conflict's raising is recorded, as done by
        the system (actor ``system``), in the transaction that records the conflict —
        the pause is an automatic action, the resolution an operator's audited one."""
        self.database = database
        self.audit = audit

    @staticmethod
    def schema_statements() -> list[str]:
        """The table's DDL (templates), run by the ``recovery`` schema step."""
        return [_CREATE, _CREATE_ONE_OPEN]

    def create_tables(self) -> None:
        """Run the DDL directly (tools and tests)."""
        with self.database.transaction(write=True) as tx:
            for statement in self.schema_statements():
                tx.execute(statement)

    def raise_conflict(self, new: NewConflict) -> Conflict:
        """Record ``new`` unless its subject has an open conflict; return the open one."""
        with self.database.transaction(write=True) as tx:
            return self._raise(tx, new)

    def pause_partition(self, claim: Claim, new: NewConflict) -> Conflict:
        """Give ``claim``'s partition back as ``conflict`` and record ``new``, in one
        transaction; :class:`LeaseLost` (and nothing recorded) if the lease is gone."""
        with self.database.transaction(write=True) as tx:
            changed = tx.execute(
                _PAUSE_PART,
                {
                    "job_id": str(claim.job.job_id),
                    "partition_index": claim.partition.partition_index,
                    "token": claim.token,
                    "error": f"paused by an integrity conflict: {new.reason}",
                    "now": tx.now(),
                },
            )
            if changed != 1:
                raise LeaseLost(
                    f"job {claim.job.job_id} partition {claim.partition.partition_index}: "
                    f"lease token {claim.token} is no longer held"
                )
            return self._raise(tx, new)

    def _raise(self, tx: Any, new: NewConflict) -> Conflict:
        inserted = tx.execute(
            _INSERT,
            {
                "conflict_id": str(uuid4()),
                "subject": new.subject,
                "kind": new.kind,
                "projection": new.projection,
                "build": new.build,
                "job_id": new.job_id,
                "partition_index": new.partition_index,
                "position": new.position,
                "reason": new.reason,
                "now": tx.now(),
            },
        )
        rows = tx.rows(_OPEN_OF_SUBJECT, {"subject": new.subject})
        conflict = Conflict.from_row(rows[0])
        if inserted == 1 and self.audit is not None:
            self.audit.append_in(
                tx,
                AuditRecord(
                    actor=SYSTEM_ACTOR,
                    action="conflict.raised",
                    scope=f"projection:{new.projection}" if new.projection else new.subject,
                    reason=conflict.describe(),
                    outcome="succeeded",
                    parameters={
                        "conflict_id": conflict.conflict_id,
                        "kind": conflict.kind,
                        "subject": conflict.subject,
                        "position": conflict.position,
                        "build": conflict.build,
                        "job_id": conflict.job_id,
                        "partition_index": conflict.partition_index,
                    },
                ),
            )
        return conflict

    def get(self, conflict_id: str) -> Conflict:
        rows = recorded_rows(self.database, _GET, {"conflict_id": conflict_id})
        if not rows:
            raise ConflictNotFound(f"no conflict {conflict_id} (see `safereplay conflicts list`)")
        return Conflict.from_row(rows[0])

    def list(self, *, open_only: bool = True, limit: int = 100) -> list[Conflict]:
        """Open conflicts, oldest first; or all, open first then newest first."""
        if open_only:
            rows = recorded_rows(self.database, _LIST_OPEN, {})
        else:
            rows = recorded_rows(self.database, _LIST_ALL, {"limit": limit})
        return [Conflict.from_row(r) for r in rows]

    def open_subjects(self) -> dict[str, Conflict]:
        """The open conflicts by subject (what status views mark as paused)."""
        return {c.subject: c for c in self.list()}

    def resolve(
        self, conflict_id: str, *, resolution: Resolution, reason: str, principal: str
    ) -> Conflict:
        """Resolve an open conflict; a job partition it paused is given back to the
        workers in the same transaction (``park``: the worker parks that position)."""
        if resolution not in RESOLUTIONS:
            raise ValueError(f"unknown resolution {resolution!r}: retry or park")
        with self.database.transaction(write=True) as tx:
            rows = tx.rows(_GET, {"conflict_id": conflict_id}, for_update=True)
            if not rows:
                raise ConflictNotFound(
                    f"no conflict {conflict_id} (see `safereplay conflicts list`)"
                )
            conflict = Conflict.from_row(rows[0])
            if not conflict.open:
                raise InvalidJobTransition(
                    f"conflict {conflict_id} was resolved already ({conflict.resolution} by "
                    f"{conflict.resolved_by})"
                )
            if resolution == "park" and (
                conflict.position is None or conflict.kind not in EVENT_KINDS
            ):
                raise InvalidJobTransition(
                    f"conflict {conflict_id} ({conflict.kind}) names no event to park: retry it"
                )
            now = tx.now()
            tx.execute(
                _RESOLVE,
                {
                    "conflict_id": conflict_id,
                    "now": now,
                    "principal": principal,
                    "resolution": resolution,
                    "reason": reason,
                },
            )
            if conflict.job_id is not None and conflict.partition_index is not None:
                tx.execute(
                    _RESUME_PART,
                    {
                        "job_id": conflict.job_id,
                        "partition_index": conflict.partition_index,
                        "now": now,
                    },
                )
            rows = tx.rows(_GET, {"conflict_id": conflict_id})
        return Conflict.from_row(rows[0])

    def parked_positions(self, job_id: str, partition_index: int) -> frozenset[int]:
        """Positions of the partition an operator resolved a conflict of by parking."""
        rows = recorded_rows(
            self.database,
            _PARKED_BY_OPERATOR,
            {"job_id": job_id, "partition_index": partition_index},
        )
        return frozenset(int(r["position"]) for r in rows)

"""Change requests: operations that wait for a second person (four-eyes approval).

A request holds the exact operation, its parameters (canonical JSON) and their
SHA-256, the scope its permission is checked on, who asked and why, when it
expires, and a *subject fingerprint*: what the operation acts on as it stood
when asked (the live build of a swap, a template's version...). It goes::

    pending ──approve──▶ approved (then its outcome: succeeded, or failed with the error)
       │    ──reject───▶ rejected
       └── past expires_at ▶ expired

Decisions are atomic: a decision is ``UPDATE ... WHERE state = 'pending' AND
expires_at > now``, so of two approvers deciding at once exactly one changes the
row; the other is told the request was already decided. Times are the database
clock's epoch seconds.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from safereplay.recovery.database import Database
from safereplay.recovery.errors import ChangeRequestConflict, ChangeRequestNotFound

__all__ = [
    "STATES",
    "ChangeRequest",
    "ChangeRequestStore",
    "NewChangeRequest",
    "canonical_json",
    "parameters_digest",
]

#: Every state a request can be in (see the module docstring).
STATES = ("pending", "approved", "rejected", "expired", "failed")

_CREATE = """
CREATE TABLE IF NOT EXISTS {change_requests} (
    request_id TEXT PRIMARY KEY,
    operation TEXT NOT NULL,
    parameters TEXT NOT NULL,
    parameters_sha256 TEXT NOT NULL,
    scope TEXT NOT NULL,
    requester TEXT NOT NULL,
    reason TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL,
    state TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    decided_by TEXT,
    decided_at DOUBLE PRECISION,
    decision_reason TEXT,
    outcome TEXT,
    error TEXT
)"""
_CREATE_STATE_INDEX = """
CREATE INDEX IF NOT EXISTS {idx_change_requests_state} ON {change_requests} (state, created_at)"""

_INSERT = """
INSERT INTO {change_requests} (request_id, operation, parameters, parameters_sha256, scope,
    requester, reason, created_at, expires_at, state, fingerprint)
VALUES (%(request_id)s, %(operation)s, %(parameters)s, %(sha)s, %(scope)s, %(requester)s,
    %(reason)s, %(now)s, %(expires_at)s, 'pending', %(fingerprint)s)"""
_EXPIRE = """
UPDATE {change_requests} SET state = 'expired'
WHERE state = 'pending' AND expires_at <= %(now)s"""
_DECIDE = """
UPDATE {change_requests}
SET state = %(state)s, decided_by = %(by)s, decided_at = %(now)s, decision_reason = %(why)s
WHERE request_id = %(request_id)s AND state = 'pending' AND expires_at > %(now)s"""
_FINISH = """
UPDATE {change_requests} SET state = %(state)s, outcome = %(outcome)s, error = %(error)s
WHERE request_id = %(request_id)s AND state = 'approved' AND outcome IS NULL AND error IS NULL"""
_BY_ID = "SELECT * FROM {change_requests} WHERE request_id = %(request_id)s"
_BY_PREFIX = """
SELECT * FROM {change_requests} WHERE request_id LIKE %(prefix)s ORDER BY request_id LIMIT 2"""
_LIST = "SELECT * FROM {change_requests} ORDER BY created_at DESC, request_id LIMIT %(limit)s"
_LIST_STATE = """
SELECT * FROM {change_requests} WHERE state = %(state)s
ORDER BY created_at DESC, request_id LIMIT %(limit)s"""
_PENDING = """
SELECT COUNT(*) AS n FROM {change_requests} WHERE state = 'pending' AND expires_at > %(now)s"""


def canonical_json(value: Any) -> str:
    """``value`` as canonical JSON: sorted keys, no spaces, non-JSON values as text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def parameters_digest(parameters: Mapping[str, Any]) -> str:
    """The SHA-256 (hex) of ``parameters``' canonical JSON."""
    return hashlib.sha256(canonical_json(dict(parameters)).encode()).hexdigest()


@dataclass(frozen=True)
class NewChangeRequest:
    """What asking for a gated operation records."""

    operation: str
    parameters: Mapping[str, Any]
    scope: str
    requester: str
    reason: str
    fingerprint: str
    ttl_seconds: float


@dataclass(frozen=True)
class ChangeRequest:
    """A stored change request (see the module docstring); times in epoch seconds."""

    request_id: str
    operation: str
    parameters: Mapping[str, Any]
    parameters_sha256: str
    scope: str
    requester: str
    reason: str
    created_at: float
    expires_at: float
    state: str
    fingerprint: str
    decided_by: str | None = None
    decided_at: float | None = None
    decision_reason: str | None = None
    outcome: Any = None
    error: str | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> ChangeRequest:
        return cls(
            request_id=str(row["request_id"]),
            operation=str(row["operation"]),
            parameters=json.loads(row["parameters"]),
            parameters_sha256=str(row["parameters_sha256"]),
            scope=str(row["scope"]),
            requester=str(row["requester"]),
            reason=str(row["reason"]),
            created_at=float(row["created_at"]),
            expires_at=float(row["expires_at"]),
            state=str(row["state"]),
            fingerprint=str(row["fingerprint"]),
            decided_by=row["decided_by"],
            decided_at=None if row["decided_at"] is None else float(row["decided_at"]),
            decision_reason=row["decision_reason"],
            outcome=None if row["outcome"] is None else json.loads(row["outcome"]),
            error=row["error"],
        )

    @property
    def intact(self) -> bool:
        """Do the stored parameters still hash to the stored digest?"""
        return parameters_digest(self.parameters) == self.parameters_sha256


class ChangeRequestStore:
    """Change requests in the recovery database (``safereplay_change_requests``)."""

    def __init__(self, database: Database) -> None:
        self.database = database

    @staticmethod
    def schema_statements() -> list[str]:
        """The table's DDL (templates), run by the ``recovery`` schema step."""
        return [_CREATE, _CREATE_STATE_INDEX]

    def create_tables(self) -> None:
        """Run the DDL directly (tools and tests)."""
        with self.database.transaction(write=True) as tx:
            for statement in self.schema_statements():
                tx.execute(statement)

    def create(self, new: NewChangeRequest) -> ChangeRequest:
        """Record a pending request; its id is new, its parameters canonical JSON."""
        if new.ttl_seconds <= 0:
            raise ValueError("a change request's time to live must be positive")
        request_id = uuid.uuid4().hex
        text = canonical_json(dict(new.parameters))
        with self.database.transaction(write=True) as tx:
            now = tx.now()
            tx.execute(
                _INSERT,
                {
                    "request_id": request_id,
                    "operation": new.operation,
                    "parameters": text,
                    "sha": hashlib.sha256(text.encode()).hexdigest(),
                    "scope": new.scope,
                    "requester": new.requester,
                    "reason": new.reason,
                    "now": now,
                    "expires_at": now + new.ttl_seconds,
                    "fingerprint": new.fingerprint,
                },
            )
        return self.get(request_id)

    def expire_due(self) -> int:
        """Mark every pending request past its expiry ``expired``; how many were."""
        with self.database.transaction(write=True) as tx:
            return tx.execute(_EXPIRE, {"now": tx.now()})

    def get(self, request_id: str) -> ChangeRequest:
        """The request with this id, or the one id starting with it (8+ characters)."""
        key = request_id.strip().lower()
        with self.database.transaction(write=False) as tx:
            rows = tx.rows(_BY_ID, {"request_id": key})
            if not rows and len(key) >= 8 and all(c in "0123456789abcdef" for c in key):
                rows = tx.rows(_BY_PREFIX, {"prefix": key + "%"})
                if len(rows) > 1:
                    raise ChangeRequestNotFound(
                        f"more than one change request starts with {key!r}: give more of its id"
                    )
        if not rows:
            raise ChangeRequestNotFound(f"no change request {request_id!r}")
        return ChangeRequest.from_row(rows[0])

    def list(self, *, state: str | None = None, limit: int = 100) -> list[ChangeRequest]:
        """The newest requests first (of ``state``, if given), at most ``limit``."""
        with self.database.transaction(write=False) as tx:
            if state is None:
                rows = tx.rows(_LIST, {"limit": limit})
            else:
                rows = tx.rows(_LIST_STATE, {"state": state, "limit": limit})
        return [ChangeRequest.from_row(r) for r in rows]

    def pending(self) -> int:
        """How many requests wait for a decision (pending and not expired)."""
        with self.database.transaction(write=False) as tx:
            return int(tx.rows(_PENDING, {"now": tx.now()})[0]["n"])

    def decide(self, request_id: str, *, state: str, by: str, reason: str) -> ChangeRequest:
        """Approve or reject a pending, unexpired request; refused (naming why) otherwise.

        Atomic: of two deciders at once, exactly one changes the row."""
        if state not in ("approved", "rejected"):
            raise ValueError(f"a decision is approved or rejected, not {state!r}")
        current = self.get(request_id)
        with self.database.transaction(write=True) as tx:
            changed = tx.execute(
                _DECIDE,
                {
                    "state": state,
                    "by": by,
                    "now": tx.now(),
                    "why": reason,
                    "request_id": current.request_id,
                },
            )
        if changed != 1:
            self.expire_due()
            now = self.get(current.request_id)
            if now.state == "expired":
                raise ChangeRequestConflict(
                    f"change request {now.request_id} expired: ask for the operation again"
                )
            raise ChangeRequestConflict(
                f"change request {now.request_id} was already decided: it is {now.state}"
                + (f" (by {now.decided_by})" if now.decided_by else "")
            )
        return self.get(current.request_id)

    def finish(
        self, request_id: str, *, outcome: Any = None, error: str | None = None
    ) -> ChangeRequest:
        """Record what running an approved request gave: its outcome, or its error
        (the request is then ``failed``)."""
        with self.database.transaction(write=True) as tx:
            tx.execute(
                _FINISH,
                {
                    "state": "approved" if error is None else "failed",
                    "outcome": None if error is not None else canonical_json(outcome),
                    "error": error,
                    "request_id": request_id,
                },
            )
        return self.get(request_id)

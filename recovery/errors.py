"""Errors raised by recovery operations.

::

    RecoveryError
    ├── InvalidRequest          bad operator input (range, partition, unknown projection...)
    │   ├── InvalidTemplate     a recovery template failed validation (every problem listed)
    │   ├── UnregisteredProjection  no projection of that name is registered (not found)
    │   └── UnregisteredReaction    no reaction of that name is registered (not found)
    ├── StoreUnavailable        the store cannot be opened: no such file, a bad path, a
    │                           database server that cannot be reached or refuses us
    ├── JobConflict             a job is already running on that projection
    │   └── DrillConflict       the live build moved in a way a drill cannot follow
    ├── JobNotFound             no job with that id (or id prefix)
    │   ├── AmbiguousJobId      a short job id that more than one job starts with
    │   └── ConflictNotFound    no integrity conflict with that id
    ├── InvalidJobTransition    e.g. resume a completed job
    ├── LeaseLost               a worker's lease on a partition expired or was taken over
    ├── CircuitOpen             the job's circuit breaker is open; work is refused for now
    ├── IncompleteJob           a job could not account for every position up to its target
    ├── ChangeRequestNotFound   no change request with that id (or id prefix)
    ├── ChangeRequestConflict   a change request already decided, expired, or whose
    │                           subject changed since it was asked for (stale)
    ├── AccessDenied            the principal lacks the permission for that scope (audited)
    ├── OperationsFrozen        the operations switch is frozen: every change is refused
    │                           for everyone but its holder (names the holder and reason)
    ├── AuthenticationFailed    no token, or a token that is unknown, revoked, malformed or
    │                           wrong (each failure audited, the message never says which)
    └── AuditKeyError           the audit MAC key is missing, unreadable or malformed

Messages name projections, jobs, partitions and positions; never payloads or secrets.
"""

from __future__ import annotations

__all__ = [
    "AccessDenied",
    "AmbiguousJobId",
    "AuditKeyError",
    "AuthenticationFailed",
    "ChangeRequestConflict",
    "ChangeRequestNotFound",
    "CircuitOpen",
    "ConflictNotFound",
    "DrillConflict",
    "IncompleteJob",
    "InvalidJobTransition",
    "InvalidRequest",
    "InvalidTemplate",
    "JobConflict",
    "JobNotFound",
    "LeaseLost",
    "OperationsFrozen",
    "RecoveryError",
    "StoreUnavailable",
    "UnregisteredProjection",
    "UnregisteredReaction",
]


class RecoveryError(Exception):
    """Base class of every error raised by :mod:`safereplay.recovery`."""


class InvalidRequest(RecoveryError):
    """The operator's request is invalid; the message says what to change."""


class UnregisteredProjection(InvalidRequest):
    """No projection of that name is registered (``SAFEREPLAY_PROJECTIONS``): not
    found, for the API (404); bad input, for the command line (exit 2) as before."""


class UnregisteredReaction(InvalidRequest):
    """No reaction of that name is registered (``SAFEREPLAY_REACTIONS``): not found,
    for the API (404); bad input, for the command line (exit 2)."""


class StoreUnavailable(RecoveryError):
    """The store cannot be opened: the message names the path or server, and the cause."""


class JobConflict(RecoveryError):
    """Another job already holds the projection (or partition) this one needs."""


class JobNotFound(RecoveryError):
    """No job has that id."""


class AmbiguousJobId(JobNotFound):
    """A short job id (a prefix) that more than one job's id starts with."""


class ConflictNotFound(JobNotFound):
    """No integrity conflict with that id (``safereplay conflicts list`` shows them)."""


class InvalidJobTransition(RecoveryError):
    """The job's current state does not allow the requested change."""


class CircuitOpen(RecoveryError):
    """The circuit breaker is open: work is refused until it probes half-open."""


class IncompleteJob(RecoveryError):
    """Positions up to the job's target are neither applied, parked nor recorded holes."""


class InvalidTemplate(InvalidRequest):
    """A template failed validation; ``problems`` lists every one."""

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        listed = "\n".join(f"  - {where}: {what}" for where, what in problems)
        super().__init__(f"template {source} is invalid ({len(problems)} problems):\n{listed}")


class DrillConflict(JobConflict):
    """The live build moved in a way the drill cannot follow (swapped, or kept moving)."""


class LeaseLost(RecoveryError):
    """This worker's lease on the partition expired and was taken over, or was released."""


class ChangeRequestNotFound(RecoveryError):
    """No change request has that id (or more than one starts with that prefix)."""


class ChangeRequestConflict(RecoveryError):
    """The change request cannot be decided: already decided, expired, or stale."""


class AccessDenied(RecoveryError):
    """The principal lacks the permission for that scope."""


class OperationsFrozen(RecoveryError):
    """The operations switch is frozen (read-only mode): a change is refused for
    everyone but the switch's holder. ``held_by``, ``since`` (epoch seconds) and
    ``reason`` say who froze it, when and why."""

    def __init__(self, *, held_by: str, since: float, reason: str, operation: str) -> None:
        super().__init__(
            f"operations are frozen by {held_by!r} ({reason}): {operation} changes state and "
            f"is refused until {held_by!r} (or an admin) runs `safereplay switch unfreeze`"
        )
        self.held_by = held_by
        self.since = since
        self.reason = reason


class AuthenticationFailed(RecoveryError):
    """The token is missing, unknown, revoked, malformed or wrong. (Never says which.)

    The message is the same for every bad token; what went wrong is kept for the
    audit trail only: ``failure`` (a short code such as ``wrong-secret``), the
    token id the token claimed (``token_id``, never its secret) and the principal
    that id belongs to (``claimed``), where known.
    """

    def __init__(
        self,
        message: str,
        *,
        failure: str = "invalid-token",
        token_id: str | None = None,
        claimed: str | None = None,
    ) -> None:
        super().__init__(message)
        self.failure = failure
        self.token_id = token_id
        self.claimed = claimed


class AuditKeyError(RecoveryError):
    """The audit MAC key is missing, unreadable or malformed."""

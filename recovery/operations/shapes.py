"""One JSON shape and one error classification for every surface.

The command line (``--json``), the HTTP API and the dashboard show an
operation's result as :func:`to_jsonable` makes it, and classify an error with
:func:`error_code`: the CLI turns the code into its exit code, the API into an
HTTP status, so a script reading either sees the same ``code`` for the same
failure.

Times are ISO 8601 in UTC (``2026-01-31T12:00:00.000000+00:00``): a datetime is
converted to UTC, and the job store's epoch seconds (its database format, named
in :data:`EPOCH_FIELDS`) are converted when they are shown.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import Any
from uuid import UUID

from safereplay.domain.errors import SchemaError
from safereplay.projections import PositionConflict
from safereplay.projections.errors import (
    DatabaseUnavailable,
    ParkedEventNotFound,
    UnknownProjection,
)
from safereplay.reactions import LedgerConflict, ReactionBusy
from safereplay.recovery.errors import (
    AmbiguousJobId,
    ChangeRequestConflict,
    ChangeRequestNotFound,
    InvalidJobTransition,
    JobConflict,
    JobNotFound,
    OperationsFrozen,
    StoreUnavailable,
    UnregisteredProjection,
    UnregisteredReaction,
)
from safereplay.recovery.security.access import AccessDenied, AuthenticationFailed

__all__ = ["EPOCH_FIELDS", "error_code", "iso_time", "to_jsonable"]

#: Fields the job store keeps as epoch seconds (its database format): shown as
#: ISO 8601 UTC like every other time.
EPOCH_FIELDS = frozenset(
    {
        "created_at",
        "updated_at",
        "started_at",
        "lease_expires_at",
        "expires_at",
        "retry_at",
        "advanced_at",
        "raised_at",
        "cleared_at",
        "decided_at",
    }
)


def error_code(exc: BaseException) -> str:
    """What kind of failure ``exc`` is: ``denied``, ``unauthenticated``, ``conflict``
    (a job holds the projection, a lease was lost, the job's state does not allow it),
    ``frozen`` (the operations switch is frozen by someone else),
    ``schema`` (the database's schema does not fit this code), ``not_found`` (no
    such job, projection or parked event), ``unavailable`` (the database cannot be
    reached) or ``invalid`` (bad input or configuration: the message says what to
    change)."""
    if isinstance(exc, JobNotFound) and not isinstance(exc, AmbiguousJobId):
        return "not_found"
    if isinstance(
        exc,
        UnknownProjection
        | UnregisteredProjection
        | UnregisteredReaction
        | ParkedEventNotFound
        | ChangeRequestNotFound,
    ):
        return "not_found"
    if isinstance(exc, StoreUnavailable | DatabaseUnavailable):
        return "unavailable"
    if isinstance(exc, AccessDenied):
        return "denied"
    if isinstance(exc, AuthenticationFailed):
        return "unauthenticated"
    if isinstance(exc, OperationsFrozen):
        return "frozen"
    if isinstance(
        exc,
        JobConflict
        | PositionConflict
        | InvalidJobTransition
        | ReactionBusy
        | LedgerConflict
        | ChangeRequestConflict,
    ):
        return "conflict"
    if isinstance(exc, SchemaError):
        return "schema"
    return "invalid"


def iso_time(value: datetime | float) -> str:
    """A time as ISO 8601 in UTC; a naive datetime is taken to be UTC already (the
    stores write UTC)."""
    if not isinstance(value, datetime):
        return datetime.fromtimestamp(value, UTC).isoformat(timespec="microseconds")
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def _field(key: Any, value: Any) -> Any:
    if key in EPOCH_FIELDS and isinstance(value, int | float) and not isinstance(value, bool):
        return iso_time(value)
    return to_jsonable(value)


def to_jsonable(value: Any) -> Any:
    """``value`` as JSON types: dataclasses and mappings as objects, times as ISO 8601 UTC."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): _field(k, v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_jsonable(v) for v in value]
    if isinstance(value, UUID | Path):
        return str(value)
    if isinstance(value, datetime):
        return iso_time(value)
    if isinstance(value, Enum):
        return value.value
    return value

"""The projection shape every loop builds: one run-status row per run.

The same shape as the reference ``RunStatusBoard``: run id, workflow id, status,
steps succeeded, failures, last error code, and the timestamp of the last event
applied to the row. Every loop (raw floor, eventsourcing baselines, safereplay)
must end with the same rows for the same range of the log; :func:`digest` turns a
table's rows into one comparable value.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

__all__ = [
    "RUN_COMPLETED",
    "RUN_STARTED",
    "RUN_STEP_FAILED",
    "RUN_STEP_SUCCEEDED",
    "TOPICS",
    "Delta",
    "digest",
    "fold",
    "normalise_row",
]

RUN_STARTED = "safereplay.domain.automation:Run.Started"
RUN_STEP_SUCCEEDED = "safereplay.domain.automation:Run.StepSucceeded"
RUN_STEP_FAILED = "safereplay.domain.automation:Run.StepFailed"
RUN_COMPLETED = "safereplay.domain.automation:Run.Completed"
#: The topics the run-status projection consumes (filtered in the database).
TOPICS = (RUN_STARTED, RUN_STEP_SUCCEEDED, RUN_STEP_FAILED, RUN_COMPLETED)

# A folded change to one row: [workflow_id, status, +succeeded, +failures,
# last_error_code, updated_at]. ``None`` in workflow_id/status/last_error_code
# means "unchanged"; the counters are increments.
Delta = list[Any]


def fold(deltas: dict[str, Delta], run_id: str, topic: str, state: dict[str, Any]) -> None:
    """Fold one decoded event (eventsourcing JSONTranscoder state) into ``deltas``.

    ``state`` is the plaintext JSON object as stored: timestamps and UUIDs are
    still in their transcoded form (``{"_type_": ..., "_data_": ...}``).
    """
    delta = deltas.get(run_id)
    if delta is None:
        delta = deltas[run_id] = [None, None, 0, 0, None, None]
    delta[5] = state["timestamp"]["_data_"]
    if topic == RUN_STEP_SUCCEEDED:
        delta[2] += 1
    elif topic == RUN_STEP_FAILED:
        delta[3] += 1
        delta[4] = state["error_code"]
    elif topic == RUN_STARTED:
        delta[0] = state["workflow_id"]["_data_"]
        delta[1] = "running"
    elif topic == RUN_COMPLETED:
        delta[1] = state["status"]


def apply_delta(rows: dict[str, list[Any]], run_id: str, delta: Delta) -> None:
    """Apply a folded delta to an in-memory table (the reference fold)."""
    row = rows.get(run_id)
    if row is None:
        rows[run_id] = [delta[0], delta[1], delta[2], delta[3], delta[4], delta[5]]
        return
    if delta[0] is not None:
        row[0] = delta[0]
    if delta[1] is not None:
        row[1] = delta[1]
    row[2] += delta[2]
    row[3] += delta[3]
    if delta[4] is not None:
        row[4] = delta[4]
    row[5] = delta[5]


def _uuid(value: Any) -> str | None:
    if value is None:
        return None
    return str(value if isinstance(value, UUID) else UUID(str(value)))


def _timestamp(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    assert isinstance(value, datetime)
    return value.astimezone(UTC).isoformat()


def normalise_row(
    run_id: Any,
    workflow_id: Any,
    status: Any,
    steps_succeeded: Any,
    failures: Any,
    last_error_code: Any,
    updated_at: Any,
) -> tuple[Any, ...]:
    """One row in a backend-independent form (dashed UUIDs, UTC ISO timestamps)."""
    return (
        _uuid(run_id),
        _uuid(workflow_id),
        status,
        int(steps_succeeded),
        int(failures),
        last_error_code,
        _timestamp(updated_at),
    )


def digest(rows: Iterable[tuple[Any, ...]]) -> dict[str, Any]:
    """``{"rows": count, "sha256": ...}`` of normalised rows, order-independent."""
    normalised = sorted(normalise_row(*row) for row in rows)
    h = hashlib.sha256()
    for row in normalised:
        h.update(repr(row).encode())
        h.update(b"\n")
    return {"rows": len(normalised), "sha256": h.hexdigest()[:16]}

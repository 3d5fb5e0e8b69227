"""Re-drive parked events after a fix, in order, per aggregate, idempotently.

Parked events keep per-aggregate order: the first failure of an aggregate is
parked with its reason, its later events are parked behind it (``blocked_by``).
A redrive takes each aggregate's unresolved parked events in position order,
re-reads them from the log, applies them with the projection's (fixed)
handlers, and commits their writes *and* marks them resolved in one
transaction (:meth:`~projections.ProjectionStore.resolve_parked`). If an event
fails again, the aggregate stops there: the events before it are resolved, it
and the later ones stay parked (its attempt count and error are updated).
Resolving is conditional on the events still being unresolved, so two redrives
at once can never apply an event twice.

An event the live follower parks behind an aggregate while a redrive is
resolving that aggregate is picked up by the redrive's next pass (it looks again
until a pass finds nothing new), or by the next redrive.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from uuid import UUID

from safereplay.projections import (
    BatchState,
    EventSource,
    ParkedEvent,
    Projection,
    ProjectionStore,
    StoreError,
)
from safereplay.projections.errors import RedriveConflict, error_summary

__all__ = ["RedriveResult", "redrive_parked"]

#: Passes over the parked list: the follower may park behind an aggregate meanwhile.
MAX_PASSES = 5


@dataclass(frozen=True)
class RedriveResult:
    resolved: int
    still_parked: int
    aggregates: int
    last_error: str | None


def redrive_parked(
    projection: Projection,
    *,
    build: int,
    store: ProjectionStore,
    source: EventSource,
    aggregates: Sequence[str] | None = None,
) -> RedriveResult:
    """Re-apply the parked events of ``build`` (optionally only of ``aggregates``)."""
    cls = type(projection)
    wanted = {UUID(a) for a in aggregates} if aggregates else None
    handlers = projection.handlers()
    resolved = 0
    touched: set[UUID] = set()
    failed_aggregates: set[UUID] = set()
    last_error: str | None = None
    for _ in range(MAX_PASSES):
        pending: dict[UUID, list[ParkedEvent]] = defaultdict(list)
        for event in store.parked(cls.name, build=build):
            if (wanted is None or event.aggregate_id in wanted) and (
                event.aggregate_id not in failed_aggregates
            ):
                pending[event.aggregate_id].append(event)
        if not pending:
            break
        for aggregate, events in sorted(pending.items(), key=lambda item: item[1][0].position):
            touched.add(aggregate)
            state = BatchState(cls.table_map, store.row_reader(cls.name, build))
            done: list[int] = []
            failed: list[ParkedEvent] = []
            for index, event in enumerate(events):
                notifications = source.read(after=event.position - 1, upto=event.position, limit=1)
                try:
                    if not notifications:
                        raise LookupError(f"position {event.position} is not in the log")
                    envelope = source.decode(notifications[0])
                    handlers[event.topic](envelope, state)
                except StoreError:
                    raise
                except Exception as exc:
                    last_error = f"{type(exc).__name__}: {error_summary(exc)}"
                    now = datetime.now(UTC)
                    failed.append(
                        replace(
                            event,
                            attempts=event.attempts + 1,
                            last_seen_at=now,
                            error_type=type(exc).__name__,
                            error_message=error_summary(exc),
                            reason="failed again on redrive",
                            blocked_by=None,
                        )
                    )
                    failed += [
                        replace(later, blocked_by=event.position) for later in events[index + 1 :]
                    ]
                    failed_aggregates.add(aggregate)
                    break
                done.append(event.position)
            try:
                resolved += store.resolve_parked(
                    cls.name, build, resolved=done, writes=state.writes(), failed=failed
                )
            except RedriveConflict:
                continue  # another redrive took these; the next pass sees what is left
    still = [
        e for e in store.parked(cls.name, build=build) if wanted is None or e.aggregate_id in wanted
    ]
    return RedriveResult(
        resolved=resolved,
        still_parked=len(still),
        aggregates=len(touched),
        last_error=last_error,
    )

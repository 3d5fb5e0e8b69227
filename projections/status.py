"""Lag and status of projections, and read-your-writes.

:func:`status` reports, for the event log: the head position and the high-water
mark (the head may be above the mark while a hole is being proved dead); and per
projection: its live build, its position per partition, the backlog, the last
commit time, the events applied, and the events parked now (``parked_now``: not
re-driven yet) apart from those since re-driven (``redriven``); ``events_parked``
is the running total of both. Frozen dataclasses, ready for
``--json``.

The **backlog** is every position between the projection and the log's head,
including those **held back**: committed above a position still in doubt (a
transaction that may yet commit there, or a hole not yet proven dead), so above
the high-water mark, where no reader may go yet. A projection at the mark with
events held back is not caught up: its backlog is the held-back count, and
``held_back_since`` says since when the oldest doubt has held them (the
PostgreSQL mark proves each doubt within its liveness bound, ``docs/gaps.md``).

A projection's **position** is the position every one of its partitions has
reached, for a complete partitioning (all of ``0..n-1`` for some ``n``); 0 when
it has none yet.

:func:`wait_for_position` blocks until a projection has applied a position (for
example the head right after a write), or the high-water mark covers it and no
event the projection handles lies between its position and that one.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from safereplay.projections.errors import DatabaseUnavailable, UnknownProjection, WaitTimeout
from safereplay.projections.source import EventSource, Partition
from safereplay.projections.store import (
    Checkpoint,
    ProjectionLike,
    ProjectionStore,
    projection_class,
)

__all__ = [
    "PartitionStatus",
    "ProjectionStatus",
    "StatusReport",
    "covered_position",
    "projection_status",
    "status",
    "wait_for_position",
]


@dataclass(frozen=True)
class PartitionStatus:
    """One partition's position; ``backlog`` counts up to the head, ``held_back`` of
    those lie above the high-water mark."""

    index: int
    count: int
    position: int
    backlog: int
    held_back: int
    events_applied: int
    #: Events ever parked here (a running total: re-driven ones included).
    events_parked: int
    committed_at: datetime | None
    #: Events parked now (not re-driven yet) of this partition's aggregates.
    parked_now: int = 0
    #: Parked events since re-driven (resolved) of this partition's aggregates.
    redriven: int = 0
    #: Parked events an operator skipped (they can never apply) of its aggregates.
    skipped: int = 0


@dataclass(frozen=True)
class ProjectionStatus:
    """One projection's live build (or the build asked for).

    ``backlog`` is the positions from ``position`` up to the log's head;
    ``held_back`` of them lie above the high-water mark, unreadable until the
    doubt below them is settled.
    """

    name: str
    build: int
    version: int
    position: int
    backlog: int
    held_back: int
    events_applied: int
    #: Events ever parked (a running total: re-driven ones included).
    events_parked: int
    last_commit_at: datetime | None
    partitions: tuple[PartitionStatus, ...]
    #: Events parked now: not re-driven yet (``safereplay parked list``).
    parked_now: int = 0
    #: Parked events since re-driven (resolved).
    redriven: int = 0
    #: Parked events an operator skipped (``safereplay parked skip``): never applied.
    skipped: int = 0

    @property
    def caught_up(self) -> bool:
        return self.backlog == 0


@dataclass(frozen=True)
class StatusReport:
    """The log and its projections at ``taken_at``.

    ``held_back`` is the positions above the high-water mark up to the head (not
    yet safe to read); ``held_back_since`` when the oldest doubt holding them was
    first seen (None when nothing is held back).
    """

    source: str
    head_position: int
    high_water_mark: int
    held_back: int
    held_back_since: datetime | None
    taken_at: datetime
    projections: tuple[ProjectionStatus, ...]


def _complete_groups(checkpoints: Iterable[Checkpoint]) -> dict[int, list[Checkpoint]]:
    groups: dict[int, list[Checkpoint]] = {}
    for checkpoint in checkpoints:
        groups.setdefault(checkpoint.partition.count, []).append(checkpoint)
    return {
        count: sorted(group, key=lambda c: c.partition.index)
        for count, group in groups.items()
        if {c.partition.index for c in group} == set(range(count))
    }


def _best_group(checkpoints: Iterable[Checkpoint]) -> list[Checkpoint]:
    groups = _complete_groups(checkpoints)
    if not groups:
        return []
    return max(groups.values(), key=lambda group: min(c.position for c in group))


def covered_position(checkpoints: Sequence[Checkpoint]) -> int:
    """The position every partition of some complete partitioning has reached."""
    group = _best_group(checkpoints)
    return min((c.position for c in group), default=0)


def _backlog(position: int, *, mark: int, head: int) -> tuple[int, int]:
    """``(backlog, held_back)`` of a position: up to the head, and above the mark."""
    held_back = max(0, head - max(mark, position))
    return max(0, mark - position) + held_back, held_back


def projection_status(
    store: ProjectionStore,
    name: str,
    *,
    high_water_mark: int,
    build: int | None = None,
    head: int | None = None,
) -> ProjectionStatus:
    """Status of one projection (its live build unless ``build``).

    ``head`` is the log's head (default: the mark, so nothing is held back).
    """
    infos = {i.build: i for i in store.builds(name)}
    if not infos:
        raise UnknownProjection(
            f"no projection {name!r} in {store.description} "
            f"(known: {', '.join(store.projection_names()) or 'none'})"
        )
    build = store.resolve_build(name, build)
    checkpoints = store.checkpoints(name, build=build)
    parked = store.parked(name, build=build, include_resolved=True)

    def parked_in(partition: Partition | None) -> tuple[int, int, int]:
        """``(parked now, re-driven, skipped)`` of the aggregates of ``partition``
        (None: all)."""
        mine = [p for p in parked if partition is None or partition.contains(p.aggregate_id)]
        now = sum(1 for p in mine if p.resolved_at is None)
        skipped = sum(1 for p in mine if p.skipped)
        return now, len(mine) - now - skipped, skipped

    parked_now, redriven, skipped = parked_in(None)
    position = covered_position(checkpoints)
    commits = [c.committed_at for c in checkpoints if c.committed_at is not None]
    top = high_water_mark if head is None else max(head, high_water_mark)
    backlog, held_back = _backlog(position, mark=high_water_mark, head=top)
    return ProjectionStatus(
        name=name,
        build=build,
        version=infos[build].version if build in infos else 0,
        position=position,
        backlog=backlog,
        held_back=held_back,
        events_applied=sum(c.events_applied for c in checkpoints),
        events_parked=sum(c.events_parked for c in checkpoints),
        last_commit_at=max(commits, default=None),
        partitions=tuple(
            PartitionStatus(
                index=c.partition.index,
                count=c.partition.count,
                position=c.position,
                backlog=backlog,
                held_back=held_back,
                events_applied=c.events_applied,
                events_parked=c.events_parked,
                committed_at=c.committed_at,
                parked_now=now,
                redriven=resolved,
                skipped=passed,
            )
            for c in checkpoints
            for backlog, held_back in [_backlog(c.position, mark=high_water_mark, head=top)]
            for now, resolved, passed in [parked_in(c.partition)]
        ),
        parked_now=parked_now,
        redriven=redriven,
        skipped=skipped,
    )


def status(
    store: ProjectionStore, source: EventSource, names: Sequence[str] | None = None
) -> StatusReport:
    """Status of the log and of ``names`` (default: every projection in the store)."""
    head = source.head()
    mark = source.high_water_mark()
    # Events that committed after the head was read may have let the mark pass it.
    head = max(head, mark)
    chosen = list(names) if names is not None else store.projection_names()
    return StatusReport(
        source=source.description,
        head_position=head,
        high_water_mark=mark,
        held_back=head - mark,
        held_back_since=source.held_since() if head > mark else None,
        taken_at=datetime.now(UTC),
        projections=tuple(
            projection_status(store, n, high_water_mark=mark, head=head) for n in chosen
        ),
    )


def wait_for_position(
    store: ProjectionStore,
    projection: ProjectionLike | str,
    position: int,
    *,
    timeout: float,
    source: EventSource | None = None,
    build: int | None = None,
    poll_interval: float = 0.01,
) -> int:
    """Block until ``projection`` has applied ``position``; returns its position then.

    With ``source`` and a projection class (or instance), also returns as soon as
    the high-water mark covers ``position`` and no event the projection handles
    lies between each partition's position and ``position``: its state already
    reflects the log up to there. Raises :class:`~safereplay.projections.errors.WaitTimeout`
    after ``timeout`` seconds.
    """
    name = projection if isinstance(projection, str) else projection.name
    cls = None if isinstance(projection, str) else projection_class(projection)
    deadline = time.monotonic() + timeout
    pause = poll_interval
    reached = 0
    chosen: int | None = None
    lost: DatabaseUnavailable | None = None
    while True:
        try:
            chosen = build if build is not None else store.live_build(name)
            group = _best_group(store.checkpoints(name, build=chosen)) if chosen else []
            reached = min((c.position for c in group), default=0)
            if group and reached >= position:
                return reached
            if (
                group
                and source is not None
                and cls is not None
                and source.high_water_mark() >= position
                and not any(
                    source.read(
                        after=c.position,
                        upto=position,
                        limit=1,
                        topics=cls.topics,
                        partition=Partition(c.partition.index, c.partition.count),
                    )
                    for c in group
                    if c.position < position
                )
            ):
                return position
            lost = None
        except DatabaseUnavailable as exc:  # transient: ask again until the deadline
            lost = exc
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            where = "it has no live build" if chosen is None else f"it is at {reached}"
            if lost is not None:
                where = f"the database is unavailable: {lost}"
            raise WaitTimeout(
                f"projection {name!r} did not reach position {position} within "
                f"{timeout:g}s ({where})"
            ) from lost
        time.sleep(min(pause, remaining))
        pause = min(pause * 2, 0.1)

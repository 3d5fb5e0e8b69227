"""Starting jobs: rebuild, catch-up and redrive, each planned in full before it runs.

A job is created ``planned`` with everything a worker needs: the build it
writes, its partition count, each partition's start position and counters
(the completeness check's baseline) and its target position — the log's safe
head when the job was made. Workers run every partition to exactly that target;
the build then follows live (catch-up) or waits for the swap (rebuild).

- **rebuild**: a new build (``b + 1``) with empty tables beside the live one,
  split into P partitions at position 0. The first build of a projection (none
  yet, or only an empty live build 1 never written to, see :func:`never_built`)
  is built in that live build 1 itself, as a first catch-up would: live when
  complete, nothing to swap, and no empty build left live beside it.
- **catch-up**: the live build, split into P partitions at its current position.
  Its live follower waits meanwhile (a build is kept in one partitioning at a
  time) and goes on from the target when the job completes. A catch-up whose
  build is still split by an aborted catch-up resumes each partition from where
  it stopped. Events committed above a position still in doubt are **held
  back** (above the high-water mark, unreadable yet): the plan first waits, up
  to ``wait`` seconds, for the mark to pass the head as it was when asked
  (:func:`wait_for_safe_head`), then plans to the mark; what is still held back
  is in the :class:`CatchUpPlan`, never reported as "not behind".
- **redrive**: one partition, no positions moved: parked events re-applied.
- **replay**: positions a..b again, into a sandbox build (its own positions), or
  into the live build of a replay-safe projection (no positions moved).

The database refuses a second active job on the same projection.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from safereplay.projections import EventSource, Partition, PartitioningMismatch, ProjectionStore
from safereplay.recovery.errors import InvalidRequest, JobConflict
from safereplay.recovery.jobs.model import Job, JobKind
from safereplay.recovery.jobs.store import JobStore, NewJob
from safereplay.recovery.registry import ProjectionRegistry

__all__ = [
    "CatchUpPlan",
    "JobRequest",
    "SafeHead",
    "start_catch_up",
    "start_rebuild",
    "start_redrive",
    "never_built",
    "start_replay",
    "events_in_scope",
    "wait_for_safe_head",
]


@dataclass(frozen=True)
class JobRequest:
    """Who asks for a job, why, and how it may run."""

    principal: str
    reason: str
    partitions: int = 1
    max_concurrent_partitions: int | None = None
    events_per_second: float | None = None
    #: Extra job parameters: ``policy`` / ``breaker`` specs (see recovery.template).
    parameters: Mapping[str, Any] | None = None
    #: A staged rollout: these partitions wait until the others (the canary) verified.
    held_partitions: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not 1 <= self.partitions <= 256:
            raise InvalidRequest(f"partitions must be between 1 and 256, not {self.partitions}")
        if self.max_concurrent_partitions is not None and self.max_concurrent_partitions < 1:
            raise InvalidRequest("max concurrent partitions must be at least 1")
        if self.events_per_second is not None and self.events_per_second <= 0:
            raise InvalidRequest("the events/s cap must be positive")
        outside = [i for i in self.held_partitions if not 0 <= i < self.partitions]
        if outside or (self.held_partitions and len(set(self.held_partitions)) >= self.partitions):
            raise InvalidRequest(
                f"held partitions {list(self.held_partitions)} must be some, not all, of "
                f"partitions 0..{self.partitions - 1}"
            )


@dataclass(frozen=True)
class SafeHead:
    """The log's head when a plan was asked for, and the safe head it could plan to.

    ``held_back`` positions lie between them: committed above a position still in
    doubt (since ``held_back_since``, the oldest doubt), so not readable yet.
    ``waited`` is how long the plan waited for the mark to pass the head.
    """

    head: int
    mark: int
    held_back_since: datetime | None
    waited: float

    @property
    def held_back(self) -> int:
        return max(0, self.head - self.mark)


@dataclass(frozen=True)
class CatchUpPlan:
    """A catch-up's job (None: the projection is at the safe head already) and the
    safe head it was planned to, with what is held back above it."""

    job: Job | None
    safe_head: SafeHead


def wait_for_safe_head(source: EventSource, *, wait: float, poll: float = 0.05) -> SafeHead:
    """The high-water mark once it has passed the log's head as it is now, or after
    ``wait`` seconds, whichever comes first.

    Each look at the mark may itself wait a little (on PostgreSQL, up to
    ``SAFEREPLAY_PROJECTIONS_HOLE_WAIT``) while it proves a hole; ``poll`` paces
    the looks in between.
    """
    started = time.monotonic()
    head = source.head()
    mark = source.high_water_mark()
    while mark < head:
        remaining = started + wait - time.monotonic()
        if remaining <= 0:
            break
        time.sleep(min(poll, remaining))
        mark = source.high_water_mark()
    since = source.held_since() if mark < head else None
    return SafeHead(head=head, mark=mark, held_back_since=since, waited=time.monotonic() - started)


def _check_partitionable(registry: ProjectionRegistry, projection: str, partitions: int) -> None:
    cls = registry[projection]
    if partitions > 1 and not cls.partitionable:
        raise InvalidRequest(
            f"projection {projection!r} declares partitionable = False: run it with --partitions 1"
        )


def events_in_scope(
    source: EventSource, topics: Collection[str], *, starts: list[int], target: int
) -> list[int]:
    """Each partition's events to read: the stored events of ``topics`` in its
    aggregates and its range ``(start, target]``, counted once here (progress and
    ETA are measured against them; a count per poll could be slow on a big log)."""
    count = len(starts)
    if count > 1 and len(set(starts)) == 1:
        # One scan for every partition (a rebuild: all start together), not one each.
        return source.count_by_partition(
            after=starts[0], upto=target, partitions=count, topics=list(topics)
        )
    return [
        source.count(after=start, upto=target, topics=list(topics), partition=Partition(i, count))
        if start < target
        else 0
        for i, start in enumerate(starts)
    ]


def _new_job(
    request: JobRequest,
    *,
    kind: JobKind,
    projection: str,
    build: int,
    partitions: int,
    starts: list[int],
    baseline: list[int],
    target: int,
    scope: list[int] | None = None,
) -> NewJob:
    return NewJob(
        kind=kind,
        projection=projection,
        build=build,
        partition_count=partitions,
        principal=request.principal,
        reason=request.reason,
        start_positions=starts,
        target_position=target,
        max_concurrent_partitions=request.max_concurrent_partitions,
        events_per_second=request.events_per_second,
        parameters={**(request.parameters or {}), "baseline": baseline},
        held_partitions=request.held_partitions,
        events_in_scope=scope,
    )


def _refuse_if_busy(jobs: JobStore, projection: str) -> None:
    for job in jobs.list_jobs(projection=projection, active_only=True):
        raise JobConflict(
            f"projection {projection!r} already has an active job: {job.job_id} "
            f"({job.kind}, {job.state}); wait for it, or pause/abort it"
        )


def start_rebuild(
    request: JobRequest,
    *,
    projection: str,
    store: ProjectionStore,
    source: EventSource,
    jobs: JobStore,
    registry: ProjectionRegistry,
) -> Job:
    """A new build of ``projection``, rebuilt from position 0 in P partitions."""
    _check_partitionable(registry, projection, request.partitions)
    _refuse_if_busy(jobs, projection)
    cls = registry[projection]
    # The first build of a projection is built where it is read: in its live build
    # (made now, empty, at 0), not beside it, where it would leave an empty build
    # live to be swapped out. Any other goes beside the live one, whatever version
    # made that one (a new version's rebuild).
    first = never_built(store, projection, version=cls.version)
    build = store.prepare(cls) if first else store.create_build(cls)
    try:
        # The job starts where the repartitioned positions are, not at 0: a follower
        # of a first build may have committed between never_built and the repartition
        # (which regroups its position), and the job's counters count from there.
        checkpoints = store.repartition(projection, build, request.partitions)
        by_index = sorted(checkpoints, key=lambda c: c.partition.index)
        target = source.high_water_mark()
        starts = [c.position for c in by_index]
        job = jobs.create_job(
            _new_job(
                request,
                kind=JobKind.REBUILD,
                projection=projection,
                build=build,
                partitions=request.partitions,
                starts=starts,
                baseline=[c.events_applied + c.events_parked for c in by_index],
                target=target,
                scope=events_in_scope(source, cls.topics, starts=starts, target=target),
            )
        )
    except BaseException:
        if first:
            store.repartition(projection, build, 1)  # give the build back to its follower
        else:
            store.drop_build(projection, build)  # nothing half-made is left behind
        raise
    return job


def never_built(store: ProjectionStore, projection: str, *, version: int | None = None) -> bool:
    """Has ``projection`` no build yet, or only its first live one, never written to
    (and made by ``version``, if given)?

    A follower or a status check may have made build 1 (live, empty, at 0); a
    rebuild builds into it rather than beside it.
    """
    builds = store.builds(projection)
    if not builds:
        return True
    if len(builds) > 1 or builds[0].status != "live":
        return False
    if version is not None and builds[0].version != version:
        return False
    return all(
        c.position == 0 and c.committed_at is None and c.events_applied + c.events_parked == 0
        for c in store.checkpoints(projection, build=builds[0].build)
    )


def start_catch_up(
    request: JobRequest,
    *,
    projection: str,
    store: ProjectionStore,
    source: EventSource,
    jobs: JobStore,
    registry: ProjectionRegistry,
    wait: float = 0.0,
) -> CatchUpPlan:
    """Catch the live build up to the safe head in P partitions.

    First waits up to ``wait`` seconds for the high-water mark to pass the head
    (events held back above a position in doubt); then plans to the mark. The
    plan's job is None when the build is at the mark already; its ``safe_head``
    says what, if anything, is still held back above it.
    """
    _check_partitionable(registry, projection, request.partitions)
    _refuse_if_busy(jobs, projection)
    cls = registry[projection]
    build = store.prepare(cls)
    checkpoints = store.checkpoints(projection, build=build)
    counts = {c.partition.count for c in checkpoints}
    if counts and counts != {request.partitions}:
        try:
            checkpoints = store.repartition(projection, build, request.partitions)
        except PartitioningMismatch as exc:
            (count,) = counts
            raise InvalidRequest(
                f"{exc}. An earlier catch-up left the build in {count} partitions: run "
                f"catch-up with --partitions {count} to finish it"
            ) from exc
    elif not counts:
        checkpoints = store.repartition(projection, build, request.partitions)
    by_index = sorted(checkpoints, key=lambda c: c.partition.index)
    safe = wait_for_safe_head(source, wait=wait)
    target = safe.mark
    if all(c.position >= target for c in by_index):
        if request.partitions > 1:
            store.repartition(projection, build, 1)
        return CatchUpPlan(None, safe)
    starts = [c.position for c in by_index]
    try:
        job = jobs.create_job(
            _new_job(
                request,
                kind=JobKind.CATCH_UP,
                projection=projection,
                build=build,
                partitions=request.partitions,
                starts=starts,
                baseline=[c.events_applied + c.events_parked for c in by_index],
                target=target,
                scope=events_in_scope(source, cls.topics, starts=starts, target=target),
            )
        )
    except BaseException:
        if len({c.position for c in by_index}) == 1:
            store.repartition(projection, build, 1)  # give the build back to its follower
        raise
    return CatchUpPlan(job, safe)


def start_redrive(
    request: JobRequest,
    *,
    projection: str,
    store: ProjectionStore,
    jobs: JobStore,
    registry: ProjectionRegistry,
    build: int | None = None,
    aggregates: list[str] | None = None,
) -> Job:
    """A job that re-applies the parked events of a build (default: the live one)."""
    registry[projection]  # an unknown projection is refused here, clearly
    _refuse_if_busy(jobs, projection)
    build = store.resolve_build(projection, build)
    parked = store.parked(projection, build=build)
    if not parked:
        raise InvalidRequest(f"projection {projection!r} build {build} has no parked events")
    wanted = {str(a) for a in aggregates or []}
    in_scope = [p for p in parked if not wanted or str(p.aggregate_id) in wanted]
    return jobs.create_job(
        NewJob(
            kind=JobKind.REDRIVE,
            projection=projection,
            build=build,
            partition_count=1,
            principal=request.principal,
            reason=request.reason,
            target_position=max(p.position for p in parked),
            parameters={**(request.parameters or {}), "aggregates": aggregates or []},
            events_in_scope=[len(in_scope)],
        )
    )


def start_replay(
    request: JobRequest,
    *,
    projection: str,
    start: int,
    end: int,
    store: ProjectionStore,
    source: EventSource,
    jobs: JobStore,
    registry: ProjectionRegistry,
    into: str = "sandbox",
    partition: Partition | None = None,
    only_partitions: Collection[int] | None = None,
    aggregates: list[str] | None = None,
    confirmed: bool = False,
) -> Job:
    """Re-apply positions ``start..end`` (optionally one partition, or some aggregates).

    ``into="sandbox"``: a new build (never live, never swappable) gets exactly the
    effect of that range, with its own positions, so a crash anywhere resumes
    without applying anything twice. ``into="live"``: the live build, for
    replay-safe projections only and only when ``confirmed``; positions stay.
    """
    cls = registry[projection]
    head = source.high_water_mark()
    if not 1 <= start <= end:
        raise InvalidRequest(f"bad range {start}..{end}: it needs 1 <= from <= to")
    if end > head:
        raise InvalidRequest(f"bad range {start}..{end}: the log's safe head is {head}")
    if into not in ("sandbox", "live"):
        raise InvalidRequest(f"replay goes into 'sandbox' or 'live', not {into!r}")
    if aggregates and not cls.replay_safe:
        raise InvalidRequest(
            f"projection {projection!r} is not replay-safe: a replay of some aggregates "
            "only is for replay-safe projections (replay the whole range into a sandbox)"
        )
    if into == "live":
        if not cls.replay_safe:
            raise InvalidRequest(
                f"projection {projection!r} is not replay-safe (applying an event twice "
                "would change it): replay into a sandbox (--into sandbox), or rebuild"
            )
        if not confirmed:
            raise InvalidRequest(
                "replaying into the live build changes what readers see: confirm with --yes"
            )
    count = partition.count if partition is not None else request.partitions
    only = {partition.index} if partition is not None else only_partitions
    if only is not None and not all(0 <= index < count for index in only):
        raise InvalidRequest(f"partitions {sorted(only)} are not all within 0..{count - 1}")
    _check_partitionable(registry, projection, count)
    _refuse_if_busy(jobs, projection)
    starts = [start - 1 if only is None or index in only else end for index in range(count)]
    parameters = {"into": into, "aggregates": aggregates or []}
    request = JobRequest(
        principal=request.principal,
        reason=request.reason,
        partitions=count,
        max_concurrent_partitions=request.max_concurrent_partitions,
        events_per_second=request.events_per_second,
        parameters={**(request.parameters or {}), **parameters},
        held_partitions=request.held_partitions,
    )
    if into == "live":
        build = store.prepare(cls)
    else:
        store.prepare(cls)
        build = store.create_build(cls)
    try:
        if into == "sandbox":
            # The sandbox's partitions start just before the range (or at its end).
            store.repartition(projection, build, count)
            for index, position in enumerate(starts):
                if position > 0:
                    store.commit(
                        projection, build, Partition(index, count), expected=0, position=position
                    )
        new = _new_job(
            request,
            kind=JobKind.REPLAY,
            projection=projection,
            build=build,
            partitions=count,
            starts=starts,
            baseline=[0] * count,
            target=end,
            scope=events_in_scope(source, cls.topics, starts=starts, target=end),
        )
        new.range_start, new.range_end = start, end
        return jobs.create_job(new)
    except BaseException:
        if into == "sandbox":
            store.drop_build(projection, build)
        raise

"""The completeness check: a job reports success only if it can account for every position.

For one partition of a job that ran from ``start`` to ``target``:

1. the partition's committed position is exactly ``target``;
2. every event of the projection's types in the partition with
   ``start < position <= target`` (counted in the database) was either applied
   or parked: the store's counters, moved in the same transactions as the
   position, grew by exactly that count since the job began;
3. every position ``start < p <= target`` of the log is an event or a hole the
   high-water mark recorded as dead, and no recorded hole was filled later.

Anything else fails the partition with :class:`~safereplay.recovery.errors.IncompleteJob`,
naming the partition and the numbers that disagree.

A parked event counts as accounted for (it was read and set aside, with its
reason), whether it is parked now, re-driven, or **skipped** by an operator
because it can never apply (``safereplay parked skip``). Skipped events are never
applied, so :func:`check_build` reports them (how many, at which positions)
instead of letting them pass unseen.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from safereplay.projections import EventSource, Partition, ProjectionStore
from safereplay.recovery.errors import IncompleteJob
from safereplay.recovery.jobs.model import Job

__all__ = ["BuildCheck", "check_build", "check_log_accounted", "check_partition", "skipped_in"]


@dataclass(frozen=True)
class BuildCheck:
    """A build that accounts for every position up to ``position``; ``skipped`` are
    the positions of its parked events an operator skipped (accounted for, never
    applied)."""

    position: int
    skipped: tuple[int, ...] = ()


def skipped_in(store: ProjectionStore, projection: str, build: int) -> tuple[int, ...]:
    """Positions of the parked events of ``build`` that were skipped, in order."""
    parked = store.parked(projection, build=build, include_resolved=True)
    return tuple(p.position for p in parked if p.skipped)


def check_partition(
    job: Job,
    index: int,
    *,
    start: int,
    store: ProjectionStore,
    source: EventSource,
    topics: Sequence[str],
) -> None:
    target = job.target_position
    if target is None:
        raise IncompleteJob(f"job {job.job_id} has no target position")
    partition = Partition(index, job.partition_count)
    where = (
        f"job {job.job_id} ({job.kind} of {job.projection!r} build {job.build}) "
        f"partition {partition}"
    )
    checkpoint = store.checkpoint(job.projection, job.build, partition)
    if checkpoint.position != target:
        raise IncompleteJob(f"{where}: position {checkpoint.position}, not the target {target}")
    baselines = job.parameters.get("baseline") or [0] * job.partition_count
    done = checkpoint.events_applied + checkpoint.events_parked - int(baselines[index])
    expected = source.count(after=start, upto=target, topics=topics, partition=partition)
    if done != expected:
        raise IncompleteJob(
            f"{where}: {expected} events of the projection's types in ({start}, {target}] "
            f"but {done} were applied or parked"
        )
    check_log_accounted(source, after=start, upto=target, where=where)


def check_log_accounted(source: EventSource, *, after: int, upto: int, where: str) -> None:
    """Every position in ``(after, upto]`` is an event or a recorded dead hole."""
    events = source.count(after=after, upto=upto)
    holes = len(source.skipped_holes(after=after, upto=upto))
    if events + holes != upto - after:
        raise IncompleteJob(
            f"{where}: positions ({after}, {upto}] hold {events} events and {holes} recorded "
            f"holes: {upto - after - events - holes} positions are unaccounted for"
        )
    filled = source.watermark.filled_holes(after=after, upto=upto)
    if filled:
        raise IncompleteJob(
            f"{where}: recorded holes were filled later (events readers skipped): {filled[:10]}"
        )


def check_build(
    store: ProjectionStore,
    source: EventSource,
    *,
    projection: str,
    build: int,
    topics: Sequence[str],
) -> BuildCheck:
    """A whole build (one partition, built from position 0) accounts for every
    position up to its own; returns that position and the skipped parked events."""
    where = f"projection {projection!r} build {build}"
    checkpoints = store.checkpoints(projection, build=build)
    if len(checkpoints) != 1 or not checkpoints[0].partition.is_whole:
        raise IncompleteJob(f"{where}: its positions are still split into partitions")
    checkpoint = checkpoints[0]
    done = checkpoint.events_applied + checkpoint.events_parked
    expected = source.count(after=0, upto=checkpoint.position, topics=topics)
    if done != expected:
        raise IncompleteJob(
            f"{where}: {expected} events of the projection's types up to position "
            f"{checkpoint.position} but {done} were applied or parked"
        )
    check_log_accounted(source, after=0, upto=checkpoint.position, where=where)
    return BuildCheck(checkpoint.position, skipped_in(store, projection, build))

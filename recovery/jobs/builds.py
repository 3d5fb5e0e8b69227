"""Blue/green builds of a projection: seal after a job, swap, roll back, drop.

A rebuild writes build ``b + 1`` side by side with the live build ``b``; readers
keep reading ``b`` (the builds registry names the live build) and its follower
keeps it current. When the rebuild job completes, :func:`seal_job` regroups the
new build's partitions into one position. :func:`swap` then catches the new
build up to the head, checks that it accounts for every position, and makes it
live **in one transaction** (:meth:`~projections.ProjectionStore.set_live`): a
reader sees the old build or the new one, never a mix, and no event is missed —
each build keeps its own position, so the follower that moves to the new live
build goes on from exactly where the catch-up stopped. The previous build stays
(retired) for :func:`rollback` until :func:`drop_version` removes it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from safereplay.projections import (
    EventSource,
    FailFast,
    LiveBuildChanged,
    ProjectionRunner,
    ProjectionStore,
)
from safereplay.recovery.errors import InvalidRequest, JobConflict
from safereplay.recovery.jobs.completeness import check_build
from safereplay.recovery.jobs.model import Job, JobKind, JobState
from safereplay.recovery.jobs.store import JobStore
from safereplay.recovery.registry import ProjectionRegistry

__all__ = ["SwapResult", "drop_version", "rollback", "seal_job", "swap"]


@dataclass(frozen=True)
class SwapResult:
    projection: str
    previous: int | None
    live: int
    position: int
    #: Positions of the build's parked events that were skipped (never applied).
    skipped: tuple[int, ...] = ()


def seal_job(job: Job, *, store: ProjectionStore) -> None:
    """Regroup a completed rebuild's or catch-up's partitions into one position.

    Idempotent: a worker that died between completing the job and sealing it is
    made good by the next seal (the swap and later workers call it too).
    """
    if job.kind not in (JobKind.REBUILD, JobKind.CATCH_UP) or job.state != JobState.COMPLETED:
        return
    checkpoints = store.checkpoints(job.projection, build=job.build)
    if len(checkpoints) == 1 and checkpoints[0].partition.is_whole:
        return
    store.repartition(job.projection, job.build, 1)


def _rebuild_job(jobs: JobStore, projection: str, build: int) -> Job | None:
    for job in jobs.list_jobs(projection=projection, limit=1000):
        if job.kind == JobKind.REBUILD and job.build == build:
            return job
    return None


def swap(
    *,
    store: ProjectionStore,
    source: EventSource,
    jobs: JobStore,
    registry: ProjectionRegistry,
    projection: str,
    build: int | None = None,
    gate: Callable[[int], None] | None = None,
) -> SwapResult:
    """Make a completed rebuild live (the newest one unless ``build`` is named).

    ``gate`` is called with the build before anything is done; it raises to refuse
    the swap (a required drill that has not matched, for instance).
    """
    cls = registry[projection]
    builds = store.builds(projection)
    if not builds:
        raise InvalidRequest(f"projection {projection!r} has no builds in {store.description}")
    # The live build of the same reading as the statuses below (a second look could see
    # another swap's commit the first did not): set_live checks it is still live.
    live = next((b.build for b in builds if b.status == "live"), None)
    if build is None:
        candidates = [
            b.build
            for b in builds
            if b.status == "building" and _rebuild_job(jobs, projection, b.build) is not None
        ]
        if not candidates:
            # A never-built projection's first rebuild built its live build in place.
            first = _rebuild_job(jobs, projection, live) if live is not None else None
            # Or another swap made the newest rebuilt build live a moment ago.
            how = "built by its first rebuild in place" if len(builds) == 1 else "swapped in"
            also = (
                f": build {live} is live already, {how}"
                if first is not None and first.state == JobState.COMPLETED
                else ""
            )
            raise InvalidRequest(f"projection {projection!r} has no rebuilt build to swap in{also}")
        build = candidates[-1]
    info = next((b for b in builds if b.build == build), None)
    if info is None:
        raise InvalidRequest(f"projection {projection!r} has no build {build}")
    if info.status == "live":
        raise InvalidRequest(f"build {build} of {projection!r} is already live")
    job = _rebuild_job(jobs, projection, build)
    if job is None or job.state != JobState.COMPLETED:
        state = "no rebuild job" if job is None else f"rebuild job {job.job_id} is {job.state}"
        raise InvalidRequest(
            f"build {build} of {projection!r} cannot be swapped in: {state}; only a build "
            "whose rebuild completed (every position accounted for) can go live"
        )
    if gate is not None:
        gate(build)
    seal_job(job, store=store)
    # Catch the new build up to the head with the code that will serve it; a
    # handler failure here stops the swap, the live build is untouched.
    runner = ProjectionRunner(cls(), source=source, store=store, build=build, policy=FailFast())
    runner.catch_up()
    checked = check_build(
        store, source, projection=projection, build=build, topics=list(cls.topics)
    )
    _set_live(store, projection, build, replacing=live)
    return SwapResult(
        projection=projection,
        previous=live,
        live=build,
        position=checked.position,
        skipped=checked.skipped,
    )


def rollback(*, store: ProjectionStore, projection: str) -> SwapResult:
    """Make the previously live build live again, in one transaction."""
    builds = store.builds(projection)
    live = next((b.build for b in builds if b.status == "live"), None)
    retired = [b.build for b in builds if b.status == "retired"]
    if live is None or not retired:
        raise InvalidRequest(
            f"projection {projection!r} has no previous build to roll back to "
            "(dropped, or never swapped)"
        )
    previous = retired[-1]
    _set_live(store, projection, previous, replacing=live)
    position = min((c.position for c in store.checkpoints(projection, build=previous)), default=0)
    return SwapResult(projection=projection, previous=live, live=previous, position=position)


def _set_live(
    store: ProjectionStore, projection: str, build: int, *, replacing: int | None
) -> None:
    """Make ``build`` live if ``replacing`` is still the live build: of two swaps (or
    rollbacks) at once, the second is refused, not reported as a second success."""
    try:
        store.set_live(projection, build, replacing=replacing)
    except LiveBuildChanged as exc:
        raise JobConflict(str(exc)) from exc


def drop_version(*, store: ProjectionStore, jobs: JobStore, projection: str, build: int) -> None:
    """Drop a build that is neither live nor used by an active job."""
    if store.live_build(projection) == build:
        raise InvalidRequest(
            f"build {build} of {projection!r} is live: swap or roll back before dropping it"
        )
    if build not in {b.build for b in store.builds(projection)}:
        raise InvalidRequest(f"projection {projection!r} has no build {build}")
    for job in jobs.list_jobs(projection=projection, active_only=True):
        if job.build == build:
            raise JobConflict(
                f"job {job.job_id} ({job.kind}, {job.state}) still uses build {build} of "
                f"{projection!r}: abort it first"
            )
    store.drop_build(projection, build)

"""``safereplay follow``: live followers of projections, as one long-running process.

One :class:`~projections.ProjectionRunner` per projection, each in its own thread
with its own connections, following the projection's *live* build: after a
swap or a rollback it moves to the new live build, and while a partitioned
catch-up holds the build it waits. Failures meet the live policy (retry, then
park), so one poison event never stops a projection; every event a follower
parks is recorded in the audit trail (where and why, never the payload).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from safereplay.projections import (
    EventSource,
    ParkedEvent,
    Projection,
    ProjectionRunner,
    ProjectionStore,
    RunnerOptions,
    RunnerThread,
)
from safereplay.recovery.jobs.observer import NO_WORK_OBSERVER, WorkObserver
from safereplay.recovery.resilience.policies import PolicySet, RulesPolicy

__all__ = ["FollowReport", "follow_projections"]


@dataclass(frozen=True)
class FollowReport:
    projection: str
    build: int
    applied: int
    parked: int
    error: str | None


def follow_projections(
    projections: Sequence[type[Projection]],
    *,
    open_store: Callable[[], ProjectionStore],
    open_source: Callable[[], EventSource],
    options: RunnerOptions,
    stop: threading.Event,
    on_parked: Callable[[Sequence[ParkedEvent]], None] | None = None,
    policies: PolicySet | None = None,
    observer: WorkObserver = NO_WORK_OBSERVER,
) -> list[FollowReport]:
    """Follow ``projections`` until ``stop`` is set; a follower that fails is reported.

    Each follower gets a store and a source of its own (``open_store``,
    ``open_source``): its own connections, so one slow or failing follower does
    not hold the others' transactions. ``observer`` counts their work (kind
    ``live``): each follower's batches are its heartbeat.
    """
    policy = RulesPolicy((policies or PolicySet()).live)
    threads: list[RunnerThread] = []
    closers: list[object] = []
    try:
        for projection in projections:
            store = open_store()
            source = open_source()
            closers += [store, source]
            runner = ProjectionRunner(
                projection(),
                source=source,
                store=store,
                options=options,
                policy=policy,
                on_parked=on_parked,
                observer=observer.runner("live"),
            )
            threads.append(runner.in_background())
        stop.wait()
    finally:
        reports = []
        for thread in threads:
            error: str | None = None
            try:
                thread.stop()
            except Exception as exc:  # a follower that failed: say which, and why
                error = f"{type(exc).__name__}: {exc}"
            runner = thread.runner
            reports.append(
                FollowReport(runner.name, runner.build, runner.applied, runner.parked, error)
            )
        for closer in reversed(closers):
            getattr(closer, "close", lambda: None)()
    return reports

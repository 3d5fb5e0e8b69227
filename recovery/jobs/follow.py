"""``safereplay follow``: live followers of projections, as one long-running process.

One :class:`~projections.ProjectionRunner` per projection, each in its own thread
with its own connections, following the projection's *live* build: after a
swap or a rollback it moves to the new live build, and while a partitioned
catch-up holds the build it waits. Failures meet the live policy (retry, then
park), so one poison event never stops a projection; every event a follower
parks is recorded in the audit trail (where and why, never the payload).

An **integrity** failure (a stored event that fails authentication or decryption,
names a key not in the ring, or cannot be decoded) follows ``on_integrity_failure``
instead: with ``pause`` (the default) the follower stops just before it, records a
conflict (subject ``follower:PROJECTION:PARTITION``) and waits, applying nothing,
until an operator resolves it (``safereplay conflicts resolve``): ``retry`` reads
the event again, ``park`` parks it and goes on. ``park`` parks at once; ``fail``
stops the follower with the error.

With a :class:`~safereplay.recovery.jobs.heartbeats.FollowerHeartbeats`, the
process writes each live follower's heartbeat (its position, and its retries since
the last beat) once per ``heartbeat_interval``: one short write per follower per
interval, whatever the event rate, so that stall detection can tell a follower
that beats but does not move from one that is idle or gone.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from safereplay.projections import (
    EventSource,
    HandlerFailed,
    ParkedEvent,
    Projection,
    ProjectionRunner,
    ProjectionStore,
    RunnerOptions,
    RunnerThread,
)
from safereplay.projections.errors import error_summary
from safereplay.recovery.jobs.conflicts import ConflictStore, NewConflict
from safereplay.recovery.jobs.heartbeats import FollowerHeartbeats
from safereplay.recovery.jobs.observer import NO_WORK_OBSERVER, WorkObserver
from safereplay.recovery.resilience.policies import (
    IntegrityAction,
    IntegrityPolicy,
    PolicySet,
    RulesPolicy,
    integrity_kind,
)

__all__ = [
    "DEFAULT_HEARTBEAT_INTERVAL",
    "RESTART_STOP_TIMEOUT",
    "FollowReport",
    "PausingFollower",
    "follow_projections",
    "follower_subject",
]

logger = logging.getLogger(__name__)

#: Seconds between two heartbeats of a follower (see :func:`follow_projections`).
DEFAULT_HEARTBEAT_INTERVAL = 5.0
#: Seconds a restart waits for a stalled follower to stop before abandoning it.
RESTART_STOP_TIMEOUT = 10.0
#: Seconds between two looks at whether a follower stopped with an error.
FAILURE_POLL = 0.5


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
    heartbeats: FollowerHeartbeats | None = None,
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL,
    on_integrity_failure: IntegrityAction = "pause",
    conflicts: ConflictStore | None = None,
    after_beat: Callable[[Callable[[str], None]], object] | None = None,
) -> list[FollowReport]:
    """Follow ``projections`` until ``stop`` is set, or until a follower fails: then
    every follower stops and the failure is reported (the process never runs on with a
    dead follower, silently behind).

    Each follower gets a store and a source of its own (``open_store``,
    ``open_source``): its own connections, so one slow or failing follower does
    not hold the others' transactions. ``observer`` counts their work (kind
    ``live``). ``heartbeats`` (default: none written) records each live follower's
    position every ``heartbeat_interval`` seconds. ``on_integrity_failure`` and
    ``conflicts``: see the module docstring (without ``conflicts``, ``pause`` fails).
    ``after_beat`` (with
    ``heartbeats``): called after each beat with ``restart(projection)``, which stops
    that projection's follower (a stuck one is abandoned after
    :data:`RESTART_STOP_TIMEOUT` seconds: its thread is a daemon) and starts a new one.
    """
    live = RulesPolicy((policies or PolicySet()).live)
    if on_integrity_failure == "pause" and conflicts is None:
        on_integrity_failure = "fail"  # nowhere to record a conflict: stop loudly instead
    threads: list[RunnerThread] = []
    closers: list[object] = []
    beating: _Beating | None = None

    def start(projection: type[Projection]) -> RunnerThread:
        store = open_store()
        source = open_source()
        closers.extend([store, source])
        runner = ProjectionRunner(
            projection(),
            source=source,
            store=store,
            options=options,
            policy=IntegrityPolicy(live, on_integrity_failure),
            on_parked=on_parked,
            observer=observer.runner("live"),
        )
        follower = PausingFollower(runner, conflicts)
        follower.start()
        return follower

    def restart(name: str) -> None:
        for index, projection in enumerate(projections):
            if projection.name != name:
                continue
            try:
                threads[index].stop(timeout=RESTART_STOP_TIMEOUT)
            except Exception as exc:  # stuck or failed: replaced all the same
                logger.warning("follower %r restarted after: %s", name, exc)
            threads[index] = start(projection)
            if beating is not None:
                beating.restarted(index)

    try:
        for projection in projections:
            threads.append(start(projection))
        beating = _Beating(heartbeats, threads) if heartbeats is not None else None
        tick = min(FAILURE_POLL, heartbeat_interval) if beating is not None else FAILURE_POLL
        next_beat = time.monotonic() + heartbeat_interval
        while not stop.wait(tick):
            failed = [t.runner.name for t in threads if not t.alive and t.error is not None]
            if failed:
                # A follower stopped with an error (it gave up on a database that stayed
                # away, or a failure no policy parks): the process stops too and reports
                # it (the command exits non-zero), instead of running on while that
                # projection falls behind with nothing to say so but one log line.
                logger.error("follower(s) of %s stopped with an error: stopping", failed)
                stop.set()
                break
            if beating is not None and time.monotonic() >= next_beat:
                next_beat = time.monotonic() + heartbeat_interval
                beating.beat()
                if after_beat is not None:
                    try:
                        after_beat(restart)
                    except Exception as exc:  # never stops the followers
                        logger.warning("a check after the heartbeat failed: %s", exc)
    finally:
        if beating is not None:
            beating.stopped()
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


class _Beating:
    """The follow process's heartbeats: one row per live follower, beaten together."""

    def __init__(self, heartbeats: FollowerHeartbeats, threads: Sequence[RunnerThread]) -> None:
        self._heartbeats = heartbeats
        self._threads = threads
        self._owner = f"{socket.gethostname()}:{os.getpid()}"
        self._retries = [0] * len(threads)
        self.beat()

    def beat(self) -> None:
        for index, thread in enumerate(self._threads):
            runner = thread.runner
            position = runner.position
            if not thread.alive or position is None:
                continue  # a dead follower's beat stops: its age says so
            retries = runner.retries + runner.connection_retries
            try:
                self._heartbeats.beat(
                    projection=runner.name,
                    partition=str(runner.partition),
                    build=runner.build,
                    owner=self._owner,
                    position=position,
                    retries=retries - self._retries[index],
                )
            except Exception as exc:
                # A lost heartbeat must never stop a follower: the follower's own
                # connection retries what matters; the next beat tries again.
                logger.warning("follower heartbeat of %r not written: %s", runner.name, exc)
                continue
            self._retries[index] = retries

    def restarted(self, index: int) -> None:
        """The follower at ``index`` is a new runner: its retries count from 0."""
        self._retries[index] = 0

    def stopped(self) -> None:
        for thread in self._threads:
            runner = thread.runner
            try:
                self._heartbeats.stopped(
                    projection=runner.name, partition=str(runner.partition), owner=self._owner
                )
            except Exception as exc:
                logger.warning("follower %r not marked stopped: %s", runner.name, exc)


def follower_subject(projection: str, partition: str) -> str:
    """The subject of a live follower's conflict."""
    return f"follower:{projection}:{partition}"


class PausingFollower(RunnerThread):
    """A follower thread that pauses on an integrity failure until it is resolved.

    The runner stopped before the failing event (its position is the one before
    it): a conflict is recorded and the thread waits, polling the conflict every
    ``resolution_poll`` seconds, applying nothing. Resolved by ``retry``, it
    follows again from there; by ``park``, the runner's policy parks that position
    first. Any other failure ends the thread as a :class:`RunnerThread`'s does.
    """

    def __init__(
        self,
        runner: ProjectionRunner,
        conflicts: ConflictStore | None,
        *,
        resolution_poll: float = 0.5,
    ) -> None:
        super().__init__(runner)
        self.conflicts = conflicts
        self.resolution_poll = resolution_poll

    def _run(self) -> None:
        runner = self.runner
        try:
            while not self.stop_event.is_set():
                try:
                    runner.follow(self.stop_event)
                    return
                except HandlerFailed as exc:
                    cause = exc.__cause__
                    kind = integrity_kind(cause)
                    policy = runner.policy
                    if (
                        cause is None
                        or kind is None
                        or self.conflicts is None
                        or not isinstance(policy, IntegrityPolicy)
                        or policy.action != "pause"
                    ):
                        raise
                    resolution = self._pause(exc.position, cause, kind)
                    if resolution == "park":
                        runner.policy = IntegrityPolicy(
                            policy.inner,
                            policy.action,
                            policy.park_positions | {exc.position},
                        )
        except BaseException as exc:
            self.error = exc
            logger.error("projection runner %r stopped: %s", runner, exc)

    def _pause(self, position: int, error: BaseException, kind: str) -> str | None:
        """Record the conflict; wait for its resolution (None: stopped meanwhile)."""
        assert self.conflicts is not None
        runner = self.runner
        conflict = self.conflicts.raise_conflict(
            NewConflict(
                subject=follower_subject(runner.name, str(runner.partition)),
                kind=kind,
                reason=f"{type(error).__name__}: {error_summary(error)}",
                projection=runner.name,
                build=runner.build,
                position=position,
            )
        )
        logger.error(
            "live follower of %r paused by conflict %s: %s",
            runner.name,
            conflict.conflict_id,
            conflict.describe(),
        )
        while not self.stop_event.wait(self.resolution_poll):
            current = self.conflicts.get(conflict.conflict_id)
            if not current.open:
                logger.warning(
                    "live follower of %r resumes: conflict %s resolved (%s by %s)",
                    runner.name,
                    current.conflict_id,
                    current.resolution,
                    current.resolved_by,
                )
                return current.resolution
        return None

"""What a worker or a follower process tells an observer: the seam for its metrics.

Beside the runner's own callbacks (:class:`~safereplay.projections.RunnerObserver`,
one per job kind so that its counts carry the kind), a process reports its
heartbeat (each poll and each batch) and the state of a job's circuit breaker
when it changes. The default observer does nothing; ``--metrics-port`` plugs in
the Prometheus one (``safereplay.recovery.operations.metrics_process``), so the
jobs layer depends on no metrics library.
"""

from __future__ import annotations

from typing import Protocol

from safereplay.projections import NO_OBSERVER, RunnerObserver

__all__ = ["NO_WORK_OBSERVER", "NoWorkObserver", "WorkObserver"]


class WorkObserver(Protocol):
    def runner(self, kind: str) -> RunnerObserver:
        """The observer of a runner applying a job of ``kind`` (``live``: a follower)."""

    def heartbeat(self) -> None:
        """The process is alive and polling."""

    def breaker_changed(self, projection: str, state: str) -> None:
        """A job's breaker on ``projection`` is ``closed``, ``half-open`` or ``open`` now."""


class NoWorkObserver:
    """The default: nothing observed."""

    def runner(self, kind: str) -> RunnerObserver:
        return NO_OBSERVER

    def heartbeat(self) -> None:
        pass

    def breaker_changed(self, projection: str, state: str) -> None:
        pass


NO_WORK_OBSERVER: WorkObserver = NoWorkObserver()

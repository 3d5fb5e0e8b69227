"""What a runner tells an observer as it works: the seam for process metrics.

A :class:`~safereplay.projections.runner.ProjectionRunner` calls its observer once
per batch it polls, once per commit (with the events it applied and parked) and
once per handler failure. The default observer does nothing. The projections
package depends on no metrics library: the recovery side plugs one in (see
``safereplay.recovery.operations.metrics_process``).

Calls are made from the runner's own thread, per batch rather than per event, so
an observer costs the hot path a method call per batch; an observer must be
cheap and must not raise.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from safereplay.projections.store import ParkedEvent

__all__ = ["NO_OBSERVER", "NoObserver", "RunnerObserver"]


class RunnerObserver(Protocol):
    """Callbacks of a runner; ``projection`` is the projection's name."""

    def polled(self, projection: str) -> None:
        """A batch was run (whether it read anything or not): the runner is alive."""

    def committed(self, projection: str, applied: int, parked: Sequence[ParkedEvent]) -> None:
        """A commit applied ``applied`` events and parked ``parked``."""

    def failed(self, projection: str, error: BaseException, *, retrying: bool) -> None:
        """A handler (or the decoding of its event) raised ``error``; ``retrying``: the
        failure policy retries it (else it parks it or fails the run)."""


class NoObserver:
    """The default observer: does nothing."""

    def polled(self, projection: str) -> None:
        pass

    def committed(self, projection: str, applied: int, parked: Sequence[ParkedEvent]) -> None:
        pass

    def failed(self, projection: str, error: BaseException, *, retrying: bool) -> None:
        pass


NO_OBSERVER: RunnerObserver = NoObserver()

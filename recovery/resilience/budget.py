"""A retry budget: retries capped to a share of recent requests, so a recovering
receiver is not flooded.

A retry policy alone multiplies the load on a receiver that is struggling: every
call that fails is sent again, and again. A budget (as Finagle's and Envoy's retry
budgets) lets a destination's retries be at most ``ratio`` of the first attempts
made in the last ``window`` seconds, plus a floor of ``min_retries_per_second``
(so a quiet destination can still retry its few calls). A refused retry is not
lost: the runner leaves the row owed for a later cycle.

Not thread-safe: the reaction runner calls it under its destination's lock, as it
calls the breaker.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

__all__ = ["RetryBudget"]


class RetryBudget:
    """Retries allowed in any ``window`` seconds: ``ratio`` x the requests made in it
    plus ``min_retries_per_second`` x ``window`` (defaults: 0.2, 10 s, 1.0).

    :meth:`record_request` for every first attempt (never for a retry);
    :meth:`try_retry` before every retry: True (and counted) when the budget has room.
    ``clock``: seconds, monotonic (injectable for tests).
    """

    def __init__(
        self,
        *,
        ratio: float = 0.2,
        window: float = 10.0,
        min_retries_per_second: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ratio < 0 or min_retries_per_second < 0:
            raise ValueError("ratio and min_retries_per_second must be >= 0")
        if window <= 0:
            raise ValueError("window must be positive")
        self.ratio = ratio
        self.window = window
        self.min_retries_per_second = min_retries_per_second
        self._clock = clock
        self._requests: deque[float] = deque()
        self._retries: deque[float] = deque()

    def _prune(self, now: float) -> None:
        horizon = now - self.window
        for times in (self._requests, self._retries):
            while times and times[0] <= horizon:
                times.popleft()

    def record_request(self) -> None:
        """A first attempt went out: it earns ``ratio`` of a retry for ``window`` s."""
        now = self._clock()
        self._prune(now)
        self._requests.append(now)

    def allowed(self) -> float:
        """Retries the last ``window`` seconds allow (spent or not)."""
        self._prune(self._clock())
        return self.ratio * len(self._requests) + self.min_retries_per_second * self.window

    def available(self) -> int:
        """Retries that may go out now."""
        return max(0, int(self.allowed() - len(self._retries)))

    def try_retry(self) -> bool:
        """May one retry go out now? If so it is counted (spent)."""
        now = self._clock()
        if self.available() < 1:
            return False
        self._retries.append(now)
        return True

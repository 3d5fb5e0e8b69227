"""A token bucket capping events per second, so a rebuild does not starve live traffic."""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["Throttle"]


class Throttle:
    """Allows ``rate`` events per second on average, bursts up to ``burst``.

    ``rate=None`` means unlimited. :meth:`acquire` sleeps (through the injectable
    ``sleep``) just long enough to keep the average under the cap.
    """

    def __init__(
        self,
        rate: float | None,
        *,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate is not None and rate <= 0:
            raise ValueError("throttle rate must be positive (or None for unlimited)")
        self.rate = rate
        self.burst = burst if burst is not None else (rate or 0.0)
        self._clock = clock
        self._sleep = sleep
        self._tokens = self.burst
        self._updated = clock()

    def _refill(self) -> None:
        now = self._clock()
        assert self.rate is not None
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now

    def acquire(self, events: int) -> float:
        """Take ``events`` tokens, sleeping if needed; returns the time slept."""
        if self.rate is None or events <= 0:
            return 0.0
        self._refill()
        self._tokens -= events
        if self._tokens >= 0:
            return 0.0
        # Debt model: a batch larger than the burst is allowed, then paid back.
        wait = -self._tokens / self.rate
        self._sleep(wait)
        self._refill()
        return wait

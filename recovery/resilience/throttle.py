"""A token bucket capping events per second, so a rebuild does not starve live traffic;
and the recent rate a worker reports (what the cap let through)."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

__all__ = ["RecentRate", "Throttle"]


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


class RecentRate:
    """Events/s over a worker's last ``window`` seconds (what ``jobs`` and ``watch``
    show, and the ETA divides by): an average since the start would hide a slow-down
    and overstate a throttled job's first batches."""

    def __init__(self, *, window: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self._window = window
        self._clock = clock
        self._total = 0
        self._samples: deque[tuple[float, int]] = deque([(clock(), 0)])

    def add(self, events: int) -> float | None:
        """Count ``events`` done now; the rate over the window (None: no time yet)."""
        now = self._clock()
        self._total += events
        self._samples.append((now, self._total))
        # Keep one sample at or before the window's start, so the window is full.
        while len(self._samples) > 2 and self._samples[1][0] <= now - self._window:
            self._samples.popleft()
        began, before = self._samples[0]
        return (self._total - before) / (now - began) if now > began else None

"""A circuit breaker per job, so that a recovery cannot become a message storm.

States::

    closed ──(N consecutive failures, or error rate ≥ r over the last W outcomes)──▶ open
    open ──(cool-down elapsed)──▶ half-open
    half-open ──(probe succeeds)──▶ closed
    half-open ──(probe fails)──▶ open (cool-down restarts)

While open, :meth:`CircuitBreaker.allow` is False and workers wait instead of
hammering a failing dependency; in half-open exactly ``half_open_probes`` calls
are let through. The state is a plain value (:meth:`snapshot`) so a job can
persist it and show it to operators.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

__all__ = ["STATES", "BreakerSettings", "BreakerSnapshot", "CircuitBreaker"]

State = Literal["closed", "half-open", "open"]
#: The states from the best to the worst (the metrics show the worst among jobs).
STATES: tuple[State, ...] = get_args(State)


@dataclass(frozen=True)
class BreakerSettings:
    failure_threshold: int = 5
    error_rate: float = 0.5
    window: int = 20
    min_samples: int = 10
    cool_down: float = 5.0
    half_open_probes: int = 1

    def __post_init__(self) -> None:
        if self.failure_threshold < 1 or self.window < 1 or self.half_open_probes < 1:
            raise ValueError("breaker thresholds must be >= 1")
        if not 0 < self.error_rate <= 1:
            raise ValueError("breaker error_rate must be in (0, 1]")
        if self.cool_down < 0:
            raise ValueError("breaker cool_down must not be negative")


@dataclass(frozen=True)
class BreakerSnapshot:
    state: State
    consecutive_failures: int
    recent_failures: int
    recent_outcomes: int
    opened_count: int
    retry_at: float | None


class CircuitBreaker:
    def __init__(
        self,
        settings: BreakerSettings | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings or BreakerSettings()
        self._clock = clock
        self._state: State = "closed"
        self._consecutive = 0
        self._outcomes: deque[bool] = deque(maxlen=self.settings.window)
        self._opened_at = 0.0
        self._probes_left = 0
        self._opened_count = 0

    @property
    def state(self) -> State:
        self._maybe_half_open()
        return self._state

    def _maybe_half_open(self) -> None:
        if self._state == "open" and self._clock() - self._opened_at >= self.settings.cool_down:
            self._state = "half-open"
            self._probes_left = self.settings.half_open_probes

    def allow(self) -> bool:
        """May one more unit of work run now? (Consumes a probe when half-open.)"""
        self._maybe_half_open()
        if self._state == "closed":
            return True
        if self._state == "half-open" and self._probes_left > 0:
            self._probes_left -= 1
            return True
        return False

    def wait_time(self) -> float:
        """Seconds until the breaker will let a probe through (0 when it would now)."""
        self._maybe_half_open()
        if self._state != "open":
            return 0.0
        return max(0.0, self._opened_at + self.settings.cool_down - self._clock())

    def record_success(self) -> None:
        self._outcomes.append(True)
        self._consecutive = 0
        if self._state == "half-open":
            self._state = "closed"
            self._outcomes.clear()

    def record_failure(self) -> None:
        self._outcomes.append(False)
        self._consecutive += 1
        if self._state == "half-open" or self._should_open():
            self._open()

    def _should_open(self) -> bool:
        if self._state != "closed":
            return False
        if self._consecutive >= self.settings.failure_threshold:
            return True
        samples = len(self._outcomes)
        failures = samples - sum(self._outcomes)
        return samples >= self.settings.min_samples and failures / samples >= (
            self.settings.error_rate
        )

    def _open(self) -> None:
        self._state = "open"
        self._opened_at = self._clock()
        self._opened_count += 1
        self._probes_left = 0

    def snapshot(self) -> BreakerSnapshot:
        state = self.state
        return BreakerSnapshot(
            state=state,
            consecutive_failures=self._consecutive,
            recent_failures=len(self._outcomes) - sum(self._outcomes),
            recent_outcomes=len(self._outcomes),
            opened_count=self._opened_count,
            retry_at=self._opened_at + self.settings.cool_down if state == "open" else None,
        )

"""A destination's breaker, throttle and retry budget, asked under one lock.

A destination's deliveries run on several threads of the runner's pool; the values
they consult (:mod:`safereplay.reactions.resilience`) are not thread-safe, so one
guard per destination holds them and calls them under its lock. It also tells the
runner when an attempt's outcome changed the breaker's state (what the ledger keeps
for status), under the same lock, so two threads' writes cannot land out of order.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from safereplay.reactions.delivery import DeliveryOutcome
from safereplay.reactions.resilience import Breaker, RetryBudget, Throttle

__all__ = ["DestinationGuard"]


class DestinationGuard:
    """A destination's breaker, throttle and retry budget, called under one lock.

    ``on_change`` is told the breaker's state when an attempt's outcome changed it
    from the one last written (under the lock, so two threads' writes keep order).
    """

    def __init__(
        self,
        breaker: Breaker,
        throttle: Throttle | None,
        budget: RetryBudget | None,
        poll: float,
        on_change: Callable[[str], None],
    ) -> None:
        self.breaker = breaker
        self.throttle = throttle
        self.budget = budget
        self._poll = poll
        self._on_change = on_change
        self._written: str | None = None
        self._lock = threading.Lock()

    def write_state(self) -> None:
        """Write the breaker's state as it is now (whether it changed or not)."""
        with self._lock:
            self._written = self.breaker.state
            self._on_change(self._written)

    def requested(self) -> None:
        """A row's first attempt in this cycle goes out (it earns the budget retries)."""
        if self.budget is not None:
            with self._lock:
                self.budget.record_request()

    def may_retry(self) -> bool:
        """Does the retry budget let one more retry go out (counted if so)?"""
        if self.budget is None:
            return True
        with self._lock:
            return self.budget.try_retry()

    def admit(self, stop: threading.Event) -> bool:
        """Wait until the breaker lets one call through (False: stopped meanwhile).

        Once let through, the call is made: a half-open breaker's probe must be
        followed by its outcome (:meth:`record`), or the breaker would wait for it.
        """
        while True:
            if stop.is_set():
                return False
            with self._lock:
                allowed = self.breaker.allow()
                wait = self.breaker.wait_time()
            if allowed:
                break
            stop.wait(max(wait, self._poll))
        if self.throttle is not None:
            with self._lock:
                self.throttle.acquire(1)
        return True

    def record(self, outcome: DeliveryOutcome) -> None:
        # A permanent refusal is an answer from a working receiver: for the breaker a
        # success (it must hear of every call it let through, or a half-open breaker
        # would wait for its probe's result for ever).
        with self._lock:
            if outcome.kind == "retryable":
                self.breaker.record_failure()
            else:
                self.breaker.record_success()
            state = self.breaker.state
            if self._written is not None and state != self._written:
                self._written = state
                self._on_change(state)

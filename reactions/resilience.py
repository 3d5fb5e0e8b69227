"""What the runner asks about failures: the shapes of a retry policy, a breaker, a
throttle and a retry budget.

The values themselves (:class:`~safereplay.recovery.resilience.policies.RetryThenPark`,
:class:`~safereplay.recovery.resilience.breaker.CircuitBreaker`,
:class:`~safereplay.recovery.resilience.throttle.Throttle`,
:class:`~safereplay.recovery.resilience.budget.RetryBudget`, exponential back-off with
jitter) live in ``recovery/resilience``, a layer *above* this one, so reactions
cannot import them. Rather than a second copy, the runner takes them as
parameters described by these protocols, which those values already satisfy;
whoever wires a runner (the recovery layer, a test) passes them in. (If more
layers come to need them, they belong one layer down, beside the projections'
:class:`~safereplay.projections.failure.Decision` they already return.)

A breaker, a throttle and a retry budget are kept *per destination*: a down CRM opens the CRM's
breaker and leaves the mail relay's closed. The runner calls each one under a lock
of its own (those values are not thread-safe, and a destination's deliveries run
on several threads).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from safereplay.projections.failure import Decision

__all__ = [
    "NO_BREAKER",
    "Breaker",
    "BreakerFactory",
    "NoBreaker",
    "RetryBudget",
    "RetryPolicy",
    "Throttle",
]


class RetryPolicy(Protocol):
    """After failed attempt number ``attempt`` (1-based, counted in the ledger, so a
    restart does not reset it): retry after a delay, park, or fail (stop; the row
    stays owed)."""

    def decide(self, attempt: int) -> Decision: ...


class Breaker(Protocol):
    """A circuit breaker over one destination."""

    @property
    def state(self) -> str: ...

    def allow(self) -> bool:
        """May one more call go out now?"""
        ...

    def wait_time(self) -> float:
        """Seconds until a call may go out (0: now, or as soon as a probe is free)."""
        ...

    def record_success(self) -> None: ...

    def record_failure(self) -> None: ...


class Throttle(Protocol):
    """A rate cap: ``acquire(n)`` returns once ``n`` calls may go out (seconds slept)."""

    def acquire(self, events: int) -> float: ...


class RetryBudget(Protocol):
    """Caps a destination's retries to a share of its recent requests (so a receiver
    that recovers is not flooded by everything that failed while it was down).

    The runner calls :meth:`record_request` for a row's first attempt in a cycle,
    and :meth:`try_retry` when the policy says retry: False leaves the row owed
    (``failed``) for a later cycle, and its aggregate's chain stops for this one.
    """

    def record_request(self) -> None: ...

    def try_retry(self) -> bool:
        """May one retry go out now (and if so, it is counted)?"""
        ...


#: Destination name -> its breaker (called once per destination per runner).
BreakerFactory = Callable[[str], Breaker]


class NoBreaker:
    """A breaker that never opens: the default when none is given."""

    state = "closed"

    def allow(self) -> bool:
        return True

    def wait_time(self) -> float:
        return 0.0

    def record_success(self) -> None:
        return None

    def record_failure(self) -> None:
        return None


NO_BREAKER = NoBreaker()

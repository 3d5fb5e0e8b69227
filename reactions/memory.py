"""An in-memory destination that records every call: for tests, drills and demos.

:class:`RecordingDestination` plays a receiver: it keeps every call it was given
(:attr:`~RecordingDestination.calls`) and the deliveries it acknowledged, and answers
with what its ``answer`` function says for the n-th call carrying a key. Helpers
build the usual answers: :func:`always`, :func:`failing_times`.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable

from safereplay.reactions.delivery import Delivery, DeliveryOutcome

__all__ = ["Answer", "RecordingDestination", "always", "failing_times"]

#: (the delivery, how many times its key was sent before this call + 1) -> the outcome.
Answer = Callable[[Delivery, int], DeliveryOutcome]


def always(outcome: DeliveryOutcome) -> Answer:
    """Every call comes to ``outcome``."""
    return lambda delivery, attempt: outcome


def failing_times(times: int, outcome: DeliveryOutcome | None = None) -> Answer:
    """The first ``times`` calls per key fail (default: a retryable 503), then succeed."""
    failure = outcome or DeliveryOutcome.retry(503, "service unavailable")

    def answer(delivery: Delivery, attempt: int) -> DeliveryOutcome:
        return failure if attempt <= times else DeliveryOutcome.ok(200)

    return answer


class RecordingDestination:
    """A destination in memory; thread-safe (the runner calls it from its workers)."""

    def __init__(self, name: str, *, answer: Answer | None = None) -> None:
        self._name = name
        self.answer: Answer = answer or always(DeliveryOutcome.ok(200))
        self._lock = threading.Lock()
        self._sent: Counter[str] = Counter()
        #: Every call, in the order received.
        self.calls: list[Delivery] = []
        #: The calls answered ``delivered``, in the order received.
        self.acknowledged: list[Delivery] = []

    @property
    def name(self) -> str:
        return self._name

    def send(self, delivery: Delivery) -> DeliveryOutcome:
        with self._lock:
            self._sent[delivery.idempotency_key] += 1
            attempt = self._sent[delivery.idempotency_key]
            self.calls.append(delivery)
        outcome = self.answer(delivery, attempt)
        if outcome.delivered:
            with self._lock:
                self.acknowledged.append(delivery)
        return outcome

    def acknowledged_keys(self) -> set[str]:
        with self._lock:
            return {d.idempotency_key for d in self.acknowledged}

    def times_sent(self, key: str) -> int:
        with self._lock:
            return self._sent[key]

"""The reaction runner: read the log, record what is owed, deliver it, retry, park.

A cycle (:meth:`ReactionRunner.run_once`) has two steps, each usable alone:

1. :meth:`~ReactionRunner.record_new` reads the events above the reaction's
   position (below the log's high-water mark, only the topics it reacts to, in
   batches of ``batch_size``), maps each to its deliveries, and records them as
   ``pending`` rows together with the new position, in one transaction (see
   :mod:`safereplay.reactions.ledger` for what that guarantees at a crash);
2. :meth:`~ReactionRunner.deliver_owed` sends every owed row (``pending`` or
   ``failed``, in position order). Per destination, deliveries run on a pool of
   ``concurrency`` threads, one *chain* per aggregate: an aggregate's events go out
   one after the other, in position order, while different aggregates go out
   concurrently. Destinations have pools, breakers and throttles of their own, so
   a destination that is down never holds up another one.

A failed attempt (a retryable outcome, or an exception from the destination,
recorded by its type only) is recorded with the ledger's attempt count, then the
:class:`~safereplay.reactions.resilience.RetryPolicy` decides: retry after its
back-off (the thread waits, interruptibly), park (the row and, behind it, every
later event of the same aggregate to that destination), or fail (the row stays
owed; the aggregate's chain stops for this cycle). A permanent refusal (a 4xx) is
parked at once. While a destination's breaker is open, its chains wait for it
(each attempt is let through by :meth:`Breaker.allow`).

**One runner per reaction at a time.** A second runner of the same reaction
cannot record the same events twice (its batch fails with
:class:`~safereplay.reactions.errors.LedgerConflict`), but it would send the same
owed rows alongside the first one: still at least once with the same keys, but
no longer in order per aggregate. A lease per reaction (as recovery's jobs have)
is not here yet, nor are re-delivery of what was parked and the recovery surface
(status, CLI, API): issue #20.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from uuid import UUID

from eventsourcing.persistence import Notification

from safereplay.projections.source import EventSource
from safereplay.reactions.delivery import Delivery, DeliveryOutcome
from safereplay.reactions.errors import DeliveryMappingFailed, ReactionDefinitionError
from safereplay.reactions.ledger import DeliveryLedger, LedgerEntry
from safereplay.reactions.reaction import Destination, Reaction
from safereplay.reactions.resilience import (
    NO_BREAKER,
    Breaker,
    BreakerFactory,
    RetryPolicy,
    Throttle,
)

__all__ = ["CycleResult", "ReactionOptions", "ReactionRunner"]


@dataclass(frozen=True)
class ReactionOptions:
    """How a runner reads and sends (keyword-only; defaults in brackets).

    ``batch_size`` events read per :meth:`~ReactionRunner.record_new` [500];
    ``owed_limit`` owed rows taken per :meth:`~ReactionRunner.deliver_owed` [5000];
    ``concurrency`` calls in flight per destination [4]; ``breaker_poll`` seconds
    between looks at a breaker that lets nothing through yet [0.05].
    """

    batch_size: int = 500
    owed_limit: int = 5000
    concurrency: int = 4
    breaker_poll: float = 0.05

    def __post_init__(self) -> None:
        if min(self.batch_size, self.owed_limit, self.concurrency) < 1:
            raise ValueError("batch_size, owed_limit and concurrency must be >= 1")
        if self.breaker_poll <= 0:
            raise ValueError("breaker_poll must be positive")


@dataclass(frozen=True)
class CycleResult:
    """What one cycle did: events read, rows recorded, and how the owed rows ended.

    ``failed``: attempts the policy said to stop after (still owed); ``waiting``:
    rows left owed because the runner was stopped or an earlier event of the same
    aggregate is still owed.
    """

    position: int
    events: int
    recorded: int
    caught_up: bool
    delivered: int = 0
    parked: int = 0
    failed: int = 0
    waiting: int = 0

    @property
    def settled(self) -> int:
        return self.delivered + self.parked


class _Guard:
    """A destination's breaker and throttle, called under one lock."""

    def __init__(self, breaker: Breaker, throttle: Throttle | None, poll: float) -> None:
        self.breaker = breaker
        self.throttle = throttle
        self._poll = poll
        self._lock = threading.Lock()

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


class ReactionRunner:
    """Runs one reaction over one event source into one ledger (see the module docstring).

    ``destinations``: one per name the reaction delivers to (more are refused, as
    are missing ones). ``policy``: what to do after a failed attempt. ``breakers``
    and ``throttles``: destination name -> its breaker / throttle (default: none).
    """

    def __init__(
        self,
        reaction: Reaction,
        *,
        source: EventSource,
        ledger: DeliveryLedger,
        destinations: Sequence[Destination],
        policy: RetryPolicy,
        breakers: BreakerFactory | None = None,
        throttles: Callable[[str], Throttle | None] | None = None,
        options: ReactionOptions | None = None,
    ) -> None:
        by_name = {d.name: d for d in destinations}
        if len(by_name) != len(destinations):
            raise ReactionDefinitionError("two destinations have the same name")
        if set(by_name) != set(reaction.destinations):
            raise ReactionDefinitionError(
                f"reaction {reaction.name!r} delivers to {sorted(reaction.destinations)}, "
                f"the runner was given {sorted(by_name)}"
            )
        self.reaction = reaction
        self.source = source
        self.ledger = ledger
        self.policy = policy
        self.options = options or ReactionOptions()
        self._destinations = by_name
        self._guards = {
            name: _Guard(
                breakers(name) if breakers else NO_BREAKER,
                throttles(name) if throttles else None,
                self.options.breaker_poll,
            )
            for name in by_name
        }
        self._pools: dict[str, ThreadPoolExecutor] = {}
        # Deliveries recorded by this runner, by (event id, destination): sent without
        # reading the event again. A resumed runner re-reads (the ledger has no payloads).
        self._recorded: dict[tuple[UUID, str], Delivery] = {}
        self._stop = threading.Event()

    @property
    def name(self) -> str:
        return self.reaction.name

    def breaker(self, destination: str) -> Breaker:
        """``destination``'s breaker (its ``state`` is what status shows)."""
        return self._guards[destination].breaker

    def stop(self) -> None:
        """Ask the running cycle to stop: waits end, no new attempt starts."""
        self._stop.set()

    # -- step 1: record ------------------------------------------------------------------

    def record_new(self) -> CycleResult:
        """Record the deliveries owed by the next batch of events (one transaction)."""
        expected = self.ledger.position(self.name)
        mark = self.source.high_water_mark()
        if expected >= mark:
            return CycleResult(position=expected, events=0, recorded=0, caught_up=True)
        size = self.options.batch_size
        notifications = self.source.read(
            after=expected, upto=mark, limit=size, topics=self.reaction.topics
        )
        # A short batch read everything up to the mark: the position moves to the
        # mark, past the events of other topics in between.
        position = notifications[-1].id if len(notifications) == size else mark
        deliveries: list[Delivery] = []
        for notification in notifications:
            deliveries.extend(self._map(notification))
        recorded = self.ledger.record(
            self.name, expected=expected, position=position, deliveries=deliveries
        )
        for delivery in deliveries:
            self._recorded[(delivery.event_id, delivery.destination)] = delivery
        return CycleResult(
            position=position,
            events=len(notifications),
            recorded=recorded,
            caught_up=position >= mark,
        )

    def _map(self, notification: Notification) -> list[Delivery]:
        """The deliveries one event owes (the reaction's mapping, checked)."""
        position, topic = notification.id, notification.topic
        try:
            envelope = self.source.decode(notification)
            deliveries = list(self.reaction.deliveries(envelope))
        except Exception as exc:
            event_type = topic.rpartition(":")[2] or topic
            raise DeliveryMappingFailed(
                self.name, position=position, event_type=event_type, error=exc
            ) from exc
        for delivery in deliveries:
            if delivery.reaction != self.name or delivery.destination not in self._destinations:
                raise ReactionDefinitionError(
                    f"reaction {self.name!r} mapped position {position} to a delivery of "
                    f"reaction {delivery.reaction!r} to {delivery.destination!r}"
                )
        return deliveries

    # -- step 2: deliver -----------------------------------------------------------------

    def deliver_owed(self) -> CycleResult:
        """Send every owed row (at most ``owed_limit``), chains per aggregate, and wait."""
        owed = self.ledger.owed(self.name, limit=self.options.owed_limit)
        position = self.ledger.position(self.name)
        if not owed:
            return CycleResult(position=position, events=0, recorded=0, caught_up=True)
        blocked = self.ledger.parked_aggregates(self.name)
        chains: dict[tuple[str, UUID], list[LedgerEntry]] = {}
        for entry in owed:  # in position order: each chain is too
            chains.setdefault((entry.destination, entry.aggregate_id), []).append(entry)
        futures: list[Future[Counter[str]]] = [
            self._pool(destination).submit(
                self._run_chain, chain, blocked.get((destination, aggregate))
            )
            for (destination, aggregate), chain in chains.items()
        ]
        tally: Counter[str] = Counter()
        errors: list[BaseException] = []
        for future in futures:
            try:
                tally.update(future.result())
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]
        return CycleResult(
            position=position,
            events=0,
            recorded=0,
            caught_up=True,
            delivered=tally["delivered"],
            parked=tally["parked"],
            failed=tally["failed"],
            waiting=tally["waiting"],
        )

    def _pool(self, destination: str) -> ThreadPoolExecutor:
        pool = self._pools.get(destination)
        if pool is None:
            pool = self._pools[destination] = ThreadPoolExecutor(
                max_workers=self.options.concurrency,
                thread_name_prefix=f"reaction-{self.name}-{destination}",
            )
        return pool

    def _run_chain(self, chain: list[LedgerEntry], parked_at: int | None) -> Counter[str]:
        """One aggregate's owed rows to one destination, strictly in order."""
        tally: Counter[str] = Counter()
        for index, entry in enumerate(chain):
            if self._stop.is_set():
                tally["waiting"] += len(chain) - index
                break
            if parked_at is not None and parked_at < entry.position:
                # Order per aggregate: nothing goes out behind a parked event.
                reason = f"parked behind position {parked_at} (same aggregate)"
                tally["parked" if self.ledger.park(entry, reason) else "settled"] += 1
                self._recorded.pop((entry.event_id, entry.destination), None)
                continue
            ending = self._deliver(entry)
            tally[ending] += 1
            if ending == "parked":
                parked_at = entry.position
            elif ending in ("failed", "waiting"):
                tally["waiting"] += len(chain) - index - 1
                break
        return tally

    def _deliver(self, entry: LedgerEntry) -> str:
        """Attempt ``entry`` until it is delivered, parked, failed or stopped."""
        delivery = self._delivery_for(entry)
        key = (entry.event_id, entry.destination)
        if delivery is None:
            parked = self.ledger.park(
                entry, "the reaction no longer maps this event to this destination"
            )
            return "parked" if parked else "settled"
        destination = self._destinations[entry.destination]
        guard = self._guards[entry.destination]
        attempt = entry.attempts
        while True:
            if not guard.admit(self._stop):
                return "waiting"
            outcome = self._send(destination, delivery)
            attempt += 1
            guard.record(outcome)
            park: str | None = None
            retry_after: float | None = None
            if outcome.kind == "permanent":
                park = "refused permanently by the destination"
            elif not outcome.delivered:
                decision = self.policy.decide(attempt)
                if decision.action == "park":
                    park = decision.reason or "the retry policy gave up"
                elif decision.action == "retry":
                    retry_after = decision.delay
            settled = self.ledger.record_attempt(entry, outcome, park=park)
            if settled is None:  # settled meanwhile by another runner or an operator
                self._recorded.pop(key, None)
                return "settled"
            if settled.state in ("delivered", "parked"):
                self._recorded.pop(key, None)
                return settled.state
            if retry_after is None:
                return "failed"
            if self._stop.wait(retry_after):
                return "waiting"

    @staticmethod
    def _send(destination: Destination, delivery: Delivery) -> DeliveryOutcome:
        try:
            return destination.send(delivery)
        except Exception as exc:
            # The type only: a message may carry a URL, a header or a response body.
            return DeliveryOutcome.retry(None, f"{type(exc).__name__} raised by the destination")

    def _delivery_for(self, entry: LedgerEntry) -> Delivery | None:
        """The delivery a row owes: recorded by this runner, else mapped again."""
        known = self._recorded.get((entry.event_id, entry.destination))
        if known is not None:
            return known
        found = self.source.read(after=entry.position - 1, upto=entry.position, limit=1)
        if not found:
            return None
        for delivery in self._map(found[0]):
            if delivery.destination == entry.destination and delivery.event_id == entry.event_id:
                return delivery
        return None

    # -- cycles ----------------------------------------------------------------------------

    def run_once(self) -> CycleResult:
        """Record the next batch, then deliver what is owed."""
        recorded = self.record_new()
        sent = self.deliver_owed()
        return CycleResult(
            position=recorded.position,
            events=recorded.events,
            recorded=recorded.recorded,
            caught_up=recorded.caught_up,
            delivered=sent.delivered,
            parked=sent.parked,
            failed=sent.failed,
            waiting=sent.waiting,
        )

    def run_until_idle(self, *, max_cycles: int = 10_000) -> list[CycleResult]:
        """Cycles until one is caught up and settles nothing (or the runner is stopped)."""
        results: list[CycleResult] = []
        for _ in range(max_cycles):
            result = self.run_once()
            results.append(result)
            idle = result.caught_up and result.events == 0 and result.settled == 0
            if idle or self._stop.is_set():
                break
        return results

    def close(self) -> None:
        """Stop, and let the destinations' threads go (the ledger and source stay open)."""
        self.stop()
        for pool in self._pools.values():
            pool.shutdown(wait=True)
        self._pools.clear()

    def __enter__(self) -> ReactionRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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

A failed attempt the policy would retry is also asked of the destination's
:class:`~safereplay.reactions.resilience.RetryBudget`, when it has one: retries are
capped to a share of recent first attempts, so a receiver that comes back is not
flooded by all that failed while it was down. A refused retry leaves the row owed
(``failed``) and stops its aggregate's chain for this cycle (counted ``deferred``).

**One runner per reaction at a time**, coordinated through the ledger only: a
runner takes the reaction's lease (:meth:`DeliveryLedger.acquire_lease`, for
``lease_seconds``) before it records or delivers, and renews it from a small thread
every third of that while a cycle runs (a cycle of 40,000 deliveries takes
minutes). A second runner is refused with
:class:`~safereplay.reactions.errors.ReactionBusy` naming the holder, until the
holder's :meth:`~ReactionRunner.close` releases the lease or it runs out (a runner
that died). A runner whose renewal finds the lease taken stops (no new attempt
starts) and raises :class:`ReactionBusy` at the end of its cycle: two runners would
send an aggregate's events out of order. (Even so, the position check makes a
second runner's recording fail with
:class:`~safereplay.reactions.errors.LedgerConflict`, and a row is settled once.)

Each destination's breaker state is written to the ledger
(:meth:`DeliveryLedger.record_breaker`) when the runner first delivers and whenever
an attempt changes it: what status shows. Every delivery runs in a
:class:`~safereplay.projections.replay_context.ReplayContext` (``live`` in a cycle;
:meth:`~ReactionRunner.deliver_owed` takes another reason, e.g. ``redelivery``), which a
destination reads (the webhook sends it as a header).
"""

from __future__ import annotations

import contextvars
import logging
import os
import socket
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from uuid import UUID

from eventsourcing.persistence import Notification

from safereplay.projections.replay_context import ReplayContext, ReplayReason, replaying
from safereplay.projections.source import EventSource
from safereplay.reactions.delivery import Delivery, DeliveryOutcome
from safereplay.reactions.errors import (
    DeliveryMappingFailed,
    ReactionBusy,
    ReactionDefinitionError,
)
from safereplay.reactions.guard import DestinationGuard
from safereplay.reactions.ledger import DeliveryLedger, LedgerEntry
from safereplay.reactions.reaction import Destination, Reaction
from safereplay.reactions.resilience import (
    NO_BREAKER,
    Breaker,
    BreakerFactory,
    RetryBudget,
    RetryPolicy,
    Throttle,
)

__all__ = ["CycleResult", "ReactionOptions", "ReactionRunner", "default_holder"]

logger = logging.getLogger(__name__)


def default_holder() -> str:
    """``{hostname}:{pid}:{6 random hex digits}``: names the process holding a lease
    (the random part tells two runners of one process apart); no secret in it."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class ReactionOptions:
    """How a runner reads and sends (keyword-only; defaults in brackets).

    ``batch_size`` events read per :meth:`~ReactionRunner.record_new` [500];
    ``owed_limit`` owed rows taken per :meth:`~ReactionRunner.deliver_owed` [5000];
    ``concurrency`` calls in flight per destination [4]; ``breaker_poll`` seconds
    between looks at a breaker that lets nothing through yet [0.05];
    ``lease_seconds`` the reaction's lease lasts unless renewed (renewed every third
    of it while a cycle runs) [30.0].
    """

    batch_size: int = 500
    owed_limit: int = 5000
    concurrency: int = 4
    breaker_poll: float = 0.05
    lease_seconds: float = 30.0

    def __post_init__(self) -> None:
        if min(self.batch_size, self.owed_limit, self.concurrency) < 1:
            raise ValueError("batch_size, owed_limit and concurrency must be >= 1")
        if self.breaker_poll <= 0 or self.lease_seconds <= 0:
            raise ValueError("breaker_poll and lease_seconds must be positive")


@dataclass(frozen=True)
class CycleResult:
    """What one cycle did: events read, rows recorded, and how the owed rows ended.

    ``failed``: attempts the policy said to stop after (still owed); ``deferred``:
    rows the policy would retry but the destination's retry budget refused (still
    owed, for a later cycle); ``waiting``: rows left owed because the runner was
    stopped or an earlier event of the same aggregate is still owed.
    """

    position: int
    events: int
    recorded: int
    caught_up: bool
    delivered: int = 0
    parked: int = 0
    failed: int = 0
    waiting: int = 0
    deferred: int = 0

    @property
    def settled(self) -> int:
        return self.delivered + self.parked


class ReactionRunner:
    """Runs one reaction over one event source into one ledger (see the module docstring).

    ``destinations``: one per name the reaction delivers to (more are refused, as
    are missing ones). ``policy``: what to do after a failed attempt. ``breakers``,
    ``throttles`` and ``budgets``: destination name -> its breaker / throttle / retry
    budget (default: none). ``holder``: who holds the reaction's lease, as
    :class:`~safereplay.reactions.errors.ReactionBusy` names it to others (default
    :func:`default_holder`).
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
        budgets: Callable[[str], RetryBudget | None] | None = None,
        options: ReactionOptions | None = None,
        holder: str | None = None,
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
        self.holder = holder or default_holder()
        self._guards = {
            name: DestinationGuard(
                breakers(name) if breakers else NO_BREAKER,
                throttles(name) if throttles else None,
                budgets(name) if budgets else None,
                self.options.breaker_poll,
                self._breaker_writer(name),
            )
            for name in by_name
        }
        self._breakers_written = False
        # Lease scopes open in this (the calling) thread: run_once's steps share one.
        self._lease_depth = 0
        self._leased = False
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

    def budget(self, destination: str) -> RetryBudget | None:
        """``destination``'s retry budget (None: its retries are not capped)."""
        return self._guards[destination].budget

    def stop(self) -> None:
        """Ask the running cycle to stop: waits end, no new attempt starts."""
        self._stop.set()

    # -- the lease -----------------------------------------------------------------------

    @contextmanager
    def _lease(self) -> Iterator[None]:
        """Hold the reaction's lease for the block, renewed from a thread meanwhile.

        Raises :class:`ReactionBusy` before the block when another runner holds it,
        and after it when a renewal found it taken (the runner was stopped then).
        """
        if self._lease_depth:
            yield
            return
        seconds = self.options.lease_seconds
        self.ledger.acquire_lease(self.name, self.holder, seconds=seconds)
        self._leased = True
        lost: list[ReactionBusy] = []
        done = threading.Event()

        def renew() -> None:
            while not done.wait(seconds / 3):
                try:
                    self.ledger.acquire_lease(self.name, self.holder, seconds=seconds)
                except ReactionBusy as exc:
                    lost.append(exc)
                    self._stop.set()  # no new attempt: another runner sends now
                    return
                except Exception as exc:
                    # A database blip: the lease still runs; the next renewal may pass.
                    logger.warning("reaction %r: lease not renewed: %s", self.name, exc)

        renewer = threading.Thread(target=renew, name=f"reaction-{self.name}-lease", daemon=True)
        self._lease_depth += 1
        renewer.start()
        try:
            yield
        finally:
            self._lease_depth -= 1
            done.set()
            renewer.join()
        if lost:
            self._leased = False
            raise lost[0]

    def _breaker_writer(self, destination: str) -> Callable[[str], None]:
        def write(state: str) -> None:
            try:
                self.ledger.record_breaker(self.name, destination, state)
            except Exception as exc:
                # What status shows, not what is delivered: never stops a delivery.
                logger.warning(
                    "reaction %r: breaker state of %r not written: %s", self.name, destination, exc
                )

        return write

    # -- step 1: record ------------------------------------------------------------------

    def record_new(self) -> CycleResult:
        """Record the deliveries owed by the next batch of events (one transaction)."""
        with self._lease():
            return self._record_new()

    def _record_new(self) -> CycleResult:
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
        with replaying(ReplayContext("live", self.name)):
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

    def deliver_owed(
        self,
        *,
        reason: ReplayReason = "live",
        forced: bool = False,
        destination: str | None = None,
        upto: int | None = None,
    ) -> CycleResult:
        """Send every owed row (at most ``owed_limit``), chains per aggregate, and wait.

        ``reason`` and ``forced``: the replay context every delivery runs in (what a
        destination reads: ``redelivery`` after an operator re-opened rows).
        ``destination`` and ``upto``: only that destination's rows, only those at or
        below that position (a re-delivery's scope: an earlier owed event of the same
        aggregate is inside it, since order per aggregate comes first).
        """
        with self._lease():
            return self._deliver_owed(
                ReplayContext(reason, self.name, forced=forced), destination=destination, upto=upto
            )

    def _deliver_owed(
        self, context: ReplayContext, *, destination: str | None = None, upto: int | None = None
    ) -> CycleResult:
        if not self._breakers_written:
            for guard in self._guards.values():
                guard.write_state()
            self._breakers_written = True
        owed = self.ledger.owed(
            self.name, limit=self.options.owed_limit, destination=destination, upto=upto
        )
        position = self.ledger.position(self.name)
        if not owed:
            return CycleResult(position=position, events=0, recorded=0, caught_up=True)
        blocked = self.ledger.parked_aggregates(self.name)
        chains: dict[tuple[str, UUID], list[LedgerEntry]] = {}
        for entry in owed:  # in position order: each chain is too
            chains.setdefault((entry.destination, entry.aggregate_id), []).append(entry)
        # A ContextVar does not follow work into a pool's threads: each chain runs in
        # a copy of this context, the replay context set in it.
        with replaying(context):
            futures: list[Future[Counter[str]]] = [
                self._pool(destination).submit(
                    contextvars.copy_context().run,
                    self._run_chain,
                    chain,
                    blocked.get((destination, aggregate)),
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
            deferred=tally["deferred"],
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
            elif ending in ("failed", "waiting", "deferred"):
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
        first = True
        while True:
            if not guard.admit(self._stop):
                return "waiting"
            if first:
                guard.requested()
                first = False
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
            if not guard.may_retry():
                return "deferred"  # owed (failed): a later cycle sends it
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
        """Record the next batch, then deliver what is owed (``live``), under one lease."""
        with self._lease():
            recorded = self._record_new()
            sent = self._deliver_owed(ReplayContext("live", self.name))
        return CycleResult(
            position=recorded.position,
            events=recorded.events,
            recorded=recorded.recorded,
            caught_up=recorded.caught_up,
            delivered=sent.delivered,
            parked=sent.parked,
            failed=sent.failed,
            waiting=sent.waiting,
            deferred=sent.deferred,
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
        """Stop, let the destinations' threads go and release the reaction's lease (the
        ledger and source stay open)."""
        self.stop()
        for pool in self._pools.values():
            pool.shutdown(wait=True)
        self._pools.clear()
        if self._leased:
            self._leased = False
            try:
                self.ledger.release_lease(self.name, self.holder)
            except Exception as exc:
                # Not released: it runs out after lease_seconds, then another takes it.
                logger.warning("reaction %r: lease not released: %s", self.name, exc)

    def __enter__(self) -> ReactionRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

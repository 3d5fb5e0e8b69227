"""Issue #20, how reaction runners coordinate and hold back, on SQLite and PostgreSQL:

- one runner per reaction: a second runner is refused with ReactionBusy naming the
  holder (and sends nothing) until the first one's close releases the lease, or its
  lease runs out (a runner that died); a cycle that runs for longer than the lease
  keeps it by renewing it; a runner whose lease was taken meanwhile stops sending
  and raises ReactionBusy at the end of its cycle;
- each destination's breaker state is written to the ledger (status reads it);
- a destination's retry budget caps a flood of retries: the rows it refuses stay
  owed (``failed``), counted ``deferred``, and their aggregates' chains stop;
- every delivery runs in a replay context: ``live`` in a cycle, ``redelivery``
  (forced or not) when the runner is asked to deliver for that reason.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from reaction_fixtures import (
    QUICK,
    PostgresReactionWorld,
    ReactionContract,
    ReactionWorld,
    SQLiteReactionWorld,
)

from safereplay.projections import ReplayContext, current_replay_context
from safereplay.reactions import (
    Delivery,
    DeliveryOutcome,
    ReactionBusy,
    RecordingDestination,
    always,
)
from safereplay.recovery.resilience.breaker import BreakerSettings, CircuitBreaker
from safereplay.recovery.resilience.budget import RetryBudget
from safereplay.recovery.resilience.policies import RetryThenPark

NAME = "run_events"


def wait_until(condition: Callable[[], object], what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


class Gate:
    """An answer that holds every call until :meth:`open` (the test looks meanwhile)."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.opened = threading.Event()

    def __call__(self, delivery: Delivery, attempt: int) -> DeliveryOutcome:
        self.entered.set()
        assert self.opened.wait(120), "the test never opened the gate"
        return DeliveryOutcome.ok(200)

    def open(self) -> None:
        self.opened.set()


class InThread:
    """Runs ``work`` in a thread and keeps what it returned or raised."""

    def __init__(self, work: Callable[[], object]) -> None:
        self.result: object = None
        self.error: BaseException | None = None

        def run() -> None:
            try:
                self.result = work()
            except BaseException as exc:
                self.error = exc

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def join(self) -> None:
        self.thread.join(120)
        assert not self.thread.is_alive(), "the cycle did not end"


class CoordinationCases(ReactionContract):
    def test_a_second_runner_is_refused_until_the_first_is_closed(
        self, world: ReactionWorld
    ) -> None:
        events = world.events()
        first_crm, second_crm = RecordingDestination("crm"), RecordingDestination("crm")
        first = world.runner([first_crm], holder="host-a:101:aaaaaa", batch_size=5)
        second = world.runner([second_crm], holder="host-b:202:bbbbbb")
        assert first.record_new().recorded > 0

        for step in (second.run_once, second.record_new, second.deliver_owed):
            with pytest.raises(ReactionBusy, match="being run by host-a:101:aaaaaa") as busy:
                step()
            assert busy.value.holder == "host-a:101:aaaaaa"
        assert second_crm.calls == [], "a refused runner sends nothing"
        lease = second.ledger.lease(NAME)
        assert lease is not None and lease.holder == "host-a:101:aaaaaa"

        first.close()
        assert second.ledger.lease(NAME) is None, "close released the lease"
        second.run_until_idle()
        assert len(second_crm.acknowledged_keys()) == len(events)
        assert first_crm.calls == []

    def test_a_lease_that_runs_out_is_taken_over(self, world: ReactionWorld) -> None:
        events = world.events()
        crm = RecordingDestination("crm")
        dead = world.runner([crm], holder="host-a:101:dead00", lease_seconds=0.5)
        dead.record_new()  # and dies: never closed, never renews
        taker = world.runner([crm], holder="host-b:202:taker0")
        wait_until(lambda: taker.ledger.lease(NAME) is None, "the dead runner's lease to run out")

        taker.run_until_idle()
        assert len(crm.acknowledged_keys()) == len(events)
        lease = taker.ledger.lease(NAME)
        assert lease is not None and lease.holder == "host-b:202:taker0"

    def test_a_long_cycle_renews_its_lease(self, world: ReactionWorld) -> None:
        gate = Gate()
        crm = RecordingDestination("crm", answer=gate)
        runner = world.runner([crm], holder="host-a:101:long00", lease_seconds=1.0)
        cycle = InThread(runner.run_once)
        try:
            assert gate.entered.wait(120), "no call was made"
            taken = runner.ledger.lease(NAME)
            assert taken is not None
            # Held past the lease's first term: renewed (by the cycle's own thread).
            wait_until(
                lambda: (
                    (lease := runner.ledger.lease(NAME)) is not None
                    and lease.expires_at >= taken.expires_at + 1.0
                ),
                "a renewal",
            )
            other = world.runner([RecordingDestination("crm")], holder="host-b:202:other0")
            with pytest.raises(ReactionBusy, match="host-a:101:long00"):
                other.record_new()
        finally:
            gate.open()
            cycle.join()
        assert cycle.error is None and runner.ledger.owed(NAME) == []

    def test_a_runner_that_lost_its_lease_stops_and_says_so(self, world: ReactionWorld) -> None:
        gate = Gate()
        crm = RecordingDestination("crm", answer=gate)
        runner = world.runner([crm], holder="host-a:101:lost00", lease_seconds=0.6, concurrency=1)
        cycle = InThread(runner.run_once)
        try:
            assert gate.entered.wait(120), "no call was made"
            # An operator frees the lease and another runner takes it meanwhile.
            ledger = runner.ledger

            def take_over() -> bool:
                ledger.release_lease(NAME, "host-a:101:lost00")
                try:
                    ledger.acquire_lease(NAME, "host-b:202:intrud", seconds=600)
                except ReactionBusy:
                    return False  # renewed between the two: again
                return True

            wait_until(take_over, "the lease taken over")
            wait_until(runner._stop.is_set, "the runner to see its lease gone")
        finally:
            gate.open()
            cycle.join()
        assert isinstance(cycle.error, ReactionBusy)
        assert cycle.error.holder == "host-b:202:intrud"
        assert len(crm.calls) == 1, "no call started after the lease was lost"
        lease = runner.ledger.lease(NAME)
        assert lease is not None and lease.holder == "host-b:202:intrud"
        runner.close()
        assert runner.ledger.lease(NAME) == lease, "closing does not release another's lease"

    def test_breaker_states_are_written_per_destination(self, world: ReactionWorld) -> None:
        crm = RecordingDestination("crm", answer=always(DeliveryOutcome.retry(503, "down")))
        mail = RecordingDestination("mail")
        breakers = {
            name: CircuitBreaker(BreakerSettings(failure_threshold=3, cool_down=0.01))
            for name in ("crm", "mail")
        }
        runner = world.runner(
            [crm, mail], policy=RetryThenPark(attempts=2, backoff=QUICK), breakers=breakers.get
        )
        assert runner.ledger.breaker_states(NAME) == {}
        runner.run_once()

        states = runner.ledger.breaker_states(NAME)
        assert set(states) == {"crm", "mail"}
        assert states["mail"].state == "closed"
        assert states["mail"].changed_at == states["mail"].updated_at, "written once"
        # crm's breaker opened (and, its cool-down short, may be probing again).
        assert states["crm"].state in {"open", "half-open"}
        assert states["crm"].changed_at > states["mail"].changed_at

    def test_a_retry_budget_caps_a_flood_of_failures(self, world: ReactionWorld) -> None:
        events = world.events()
        first_events = {aggregate for _, _, aggregate in events}
        crm = RecordingDestination("crm", answer=always(DeliveryOutcome.retry(503, "down")))
        # The clock stands still (until the test moves it): the cap is exact.
        now = [0.0]
        budget = RetryBudget(
            ratio=0.5, window=10.0, min_retries_per_second=0.2, clock=lambda: now[0]
        )
        runner = world.runner(
            [crm],
            policy=RetryThenPark(attempts=50, backoff=QUICK),
            budgets=lambda name: budget,
        )

        result = runner.run_once()

        chains = len(first_events)
        # Without the budget each chain's first event would be sent 50 times.
        assert len(crm.calls) <= chains + int(0.5 * chains + 0.2 * 10.0)
        assert result.deferred == chains and result.parked == result.delivered == 0
        assert result.waiting == len(events) - chains
        owed = runner.ledger.owed(NAME)
        assert len(owed) == len(events), "nothing lost: all still owed"
        assert {e.state for e in owed if e.attempts} == {"failed"}
        assert sum(e.attempts for e in owed) == len(crm.calls)

        # The receiver recovers: later cycles send what was deferred, in order.
        crm.answer = always(DeliveryOutcome.ok(200))
        now[0] += 60.0
        runner.run_until_idle()
        assert runner.ledger.owed(NAME) == []
        assert len(crm.acknowledged_keys()) == len(events)

    def test_deliveries_run_in_a_replay_context(self, world: ReactionWorld) -> None:
        events = world.events()
        seen: list[ReplayContext | None] = []

        def note(delivery: Delivery, attempt: int) -> DeliveryOutcome:
            seen.append(current_replay_context())
            return DeliveryOutcome.ok(200)

        crm = RecordingDestination("crm", answer=note)
        runner = world.runner([crm], batch_size=10)
        runner.run_once()
        assert seen and set(seen) == {ReplayContext("live", NAME)}
        while not runner.record_new().caught_up:
            pass

        seen.clear()
        result = runner.deliver_owed(reason="redelivery", forced=True)
        assert result.delivered == len(seen) == len(events) - 10 > 0
        assert set(seen) == {ReplayContext("redelivery", NAME, forced=True)}
        assert current_replay_context() is None, "the caller's context is left alone"

    def test_a_scoped_delivery_sends_one_destination_up_to_a_position(
        self, world: ReactionWorld
    ) -> None:
        events = world.events()
        crm = RecordingDestination("crm")
        mail = RecordingDestination("mail", answer=always(DeliveryOutcome.retry(503, "down")))
        runner = world.runner([crm, mail], policy=RetryThenPark(attempts=1, backoff=QUICK))
        runner.record_new()
        middle = events[len(events) // 2][0]

        # A re-delivery to the CRM up to the middle: the mail relay, still down, is
        # not tried on the way, and nothing after the middle goes out.
        result = runner.deliver_owed(reason="redelivery", destination="crm", upto=middle)

        assert mail.calls == []
        sent = {position for position, _, _ in events if position <= middle}
        assert result.delivered == len(crm.acknowledged_keys()) == len(sent)
        owed = runner.ledger.owed(NAME)
        assert {(e.destination, e.position <= middle) for e in owed} == {
            ("crm", False),
            ("mail", True),
            ("mail", False),
        }


class TestSQLiteCoordination(SQLiteReactionWorld, CoordinationCases):
    """The cases on SQLite."""


@pytest.mark.postgres
class TestPostgresCoordination(PostgresReactionWorld, CoordinationCases):
    """The cases on PostgreSQL."""

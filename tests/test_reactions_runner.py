"""Issue #20, the reaction runner against recording destinations, on SQLite and PostgreSQL:

- every event is delivered once to each destination: the distinct idempotency keys
  a destination acknowledged are the events, and the ledger agrees;
- a destination failing N times per call, then succeeding, is retried with
  back-off and everything is delivered (the ledger counts the attempts);
- a destination always failing: its breaker opens, each aggregate's first event is
  parked after the policy's attempts and the aggregate's later events are parked
  behind it (never sent), while the other destination delivers everything;
- a crash after the pending rows committed and before any send, or after a send
  and before its outcome committed: a new runner delivers what was owed, with the
  same keys (at least once; the distinct keys are still the events);
- a stopped runner starts no new call and leaves the rest owed for the next one;
- each destination's throttle is asked for every call to it;
- a reaction whose mapping fails stops without moving its position.
"""

from __future__ import annotations

from collections import defaultdict
from uuid import UUID

import pytest
from reaction_fixtures import (
    QUICK,
    PostgresReactionWorld,
    ReactionContract,
    ReactionWorld,
    RunEvents,
    SQLiteReactionWorld,
    reaction_named,
)

from safereplay.domain.envelope import Envelope
from safereplay.reactions import (
    Delivery,
    DeliveryMappingFailed,
    DeliveryOutcome,
    ReactionDefinitionError,
    ReactionRunner,
    RecordingDestination,
    always,
    failing_times,
    idempotency_key,
)
from safereplay.recovery.resilience.breaker import BreakerSettings, CircuitBreaker
from safereplay.recovery.resilience.policies import RetryThenPark


class Crash(BaseException):
    """The process dies here (not an Exception: nothing in the runner handles it)."""


def in_order_per_aggregate(calls: list[Delivery]) -> bool:
    seen: dict[UUID, int] = {}
    for call in calls:
        if seen.get(call.aggregate_id, 0) > call.position:
            return False
        seen[call.aggregate_id] = call.position
    return True


class RunnerCases(ReactionContract):
    def test_every_event_is_delivered_once_to_each_destination(self, world: ReactionWorld) -> None:
        events = world.events()
        crm, mail = RecordingDestination("crm"), RecordingDestination("mail")
        runner = world.runner([crm, mail], batch_size=7)

        results = runner.run_until_idle()

        assert sum(r.events for r in results) == len(events) > 10
        for destination in (crm, mail):
            assert len(destination.calls) == len(events), "once each: nothing failed"
            expected = {idempotency_key("run_events", destination.name, e) for _, e, _ in events}
            assert destination.acknowledged_keys() == expected
            assert in_order_per_aggregate(destination.calls)
        ledger = runner.ledger.entries("run_events")
        assert len(ledger) == 2 * len(events)
        assert {e.state for e in ledger} == {"delivered"} and {e.attempts for e in ledger} == {1}
        assert runner.ledger.position("run_events") == world.source.high_water_mark()
        # Idle: a further cycle reads nothing and sends nothing.
        again = runner.run_once()
        assert (again.events, again.settled, len(crm.calls)) == (0, 0, len(events))

    def test_a_destination_failing_then_succeeding_is_retried(self, world: ReactionWorld) -> None:
        events = world.events()
        crm = RecordingDestination("crm", answer=failing_times(2))
        runner = world.runner([crm], policy=RetryThenPark(attempts=5, backoff=QUICK))

        runner.run_until_idle()

        assert len(crm.calls) == 3 * len(events)
        assert len(crm.acknowledged_keys()) == len(crm.acknowledged) == len(events)
        entries = runner.ledger.entries("run_events")
        assert {(e.state, e.attempts, e.last_status) for e in entries} == {("delivered", 3, 200)}
        assert all(e.first_attempt_at and e.delivered_at for e in entries)
        assert in_order_per_aggregate(crm.acknowledged)

    def test_a_destination_always_failing_is_parked_in_order_and_breaks_alone(
        self, world: ReactionWorld
    ) -> None:
        events = world.events()
        crm = RecordingDestination("crm", answer=always(DeliveryOutcome.retry(503, "down")))
        mail = RecordingDestination("mail")
        breakers = {
            name: CircuitBreaker(BreakerSettings(failure_threshold=3, cool_down=0.01))
            for name in ("crm", "mail")
        }
        runner = world.runner(
            [crm, mail], policy=RetryThenPark(attempts=2, backoff=QUICK), breakers=breakers.get
        )

        result = runner.run_once()

        assert result.delivered == len(events) and result.parked == len(events)
        assert mail.acknowledged_keys() == {
            idempotency_key("run_events", "mail", e) for _, e, _ in events
        }
        # Only each aggregate's first event was ever sent to crm (twice: the policy's
        # attempts); every later event waits behind it, parked without a call.
        first: dict[UUID, int] = {}
        for position, _, aggregate in events:
            first.setdefault(aggregate, position)
        assert {c.position for c in crm.calls} == set(first.values())
        assert len(crm.calls) == 2 * len(first)
        parked = runner.ledger.entries("run_events", destination="crm")
        assert {e.state for e in parked} == {"parked"} and len(parked) == len(events)
        for entry in parked:
            if entry.position == first[entry.aggregate_id]:
                assert (entry.attempts, entry.last_status) == (2, 503)
                assert entry.last_detail == "down; still failing after 2 attempts"
            else:
                assert entry.attempts == 0
                assert entry.last_detail == (
                    f"parked behind position {first[entry.aggregate_id]} (same aggregate)"
                )
        assert runner.ledger.parked_aggregates("run_events") == {
            ("crm", aggregate): position for aggregate, position in first.items()
        }
        assert breakers["crm"].snapshot().opened_count >= 1
        assert breakers["mail"].snapshot().opened_count == 0
        assert runner.breaker("mail").state == "closed"
        assert {e.state for e in runner.ledger.entries("run_events", destination="mail")} == {
            "delivered"
        }

    def test_a_crash_after_recording_and_before_sending_loses_nothing(
        self, world: ReactionWorld
    ) -> None:
        events = world.events()
        crm = RecordingDestination("crm")
        first = world.runner([crm])
        while not first.record_new().caught_up:
            pass
        owed = first.ledger.owed("run_events")
        assert len(owed) == len(events) and crm.calls == []
        first.close()  # dies here: the rows are pending, nothing was sent

        second = world.runner([crm])
        second.run_until_idle()

        assert len(crm.calls) == len(events)
        assert crm.acknowledged_keys() == {e.idempotency_key for e in owed}
        # Mapped again from the log (the ledger holds no payload): the same content.
        assert {c.payload["event_id"] for c in crm.calls} == {str(e) for _, e, _ in events}
        assert {e.state for e in second.ledger.entries("run_events")} == {"delivered"}

    def test_a_crash_between_a_send_and_its_record_sends_it_again_with_its_key(
        self, world: ReactionWorld
    ) -> None:
        events = world.events()
        receiver = RecordingDestination("crm")

        def crash_after_the_first_call(delivery: Delivery, attempt: int) -> DeliveryOutcome:
            if len(receiver.calls) == 1:
                raise Crash  # the receiver got it; its outcome is never recorded
            return DeliveryOutcome.ok(200)

        receiver.answer = crash_after_the_first_call
        crashing = world.runner([receiver], concurrency=1)
        with pytest.raises(Crash):
            crashing.run_once()
        crashing.close()
        lost = receiver.calls[0]
        (row,) = [e for e in crashing.ledger.owed("run_events") if e.event_id == lost.event_id]
        assert row.state == "pending" and row.attempts == 0

        receiver.answer = always(DeliveryOutcome.ok(200))
        world.runner([receiver]).run_until_idle()

        assert receiver.times_sent(lost.idempotency_key) == 2, "at least once: sent again"
        assert len({c.idempotency_key for c in receiver.calls}) == len(events)
        delivered = world.runners[-1].ledger.entries("run_events", state="delivered")
        assert len(delivered) == len(events)

    def test_a_stopped_runner_leaves_the_rest_owed_for_the_next(self, world: ReactionWorld) -> None:
        events = world.events()
        crm = RecordingDestination("crm")
        stopping = world.runner([crm], concurrency=2)

        def stop_at_the_first_call(delivery: Delivery, attempt: int) -> DeliveryOutcome:
            stopping.stop()
            return DeliveryOutcome.retry(503, "going down")

        crm.answer = stop_at_the_first_call
        result = stopping.run_once()
        assert result.delivered == 0 and result.waiting > 0
        assert len(crm.calls) <= 2, "no call starts after the stop (two were in flight)"
        assert len(stopping.ledger.owed("run_events")) == len(events)
        stopping.close()  # releases the reaction's lease for the next runner

        crm.answer = always(DeliveryOutcome.ok(200))
        world.runner([crm]).run_until_idle()
        assert len(crm.acknowledged_keys()) == len(crm.acknowledged) == len(events)

    def test_a_reaction_that_cannot_map_an_event_stops_where_it_is(
        self, world: ReactionWorld
    ) -> None:
        broken_at: list[int] = []

        class Broken(RunEvents):
            name = "broken"

            def deliveries(self, envelope: Envelope) -> list[Delivery]:
                if envelope.event_type == "Run.Completed":
                    broken_at.append(envelope.position or 0)
                    raise KeyError("secret-value")
                return list(super().deliveries(envelope))

        crm = RecordingDestination("crm")
        runner = world.runner([crm], reaction=Broken(destinations=["crm"]), batch_size=1000)
        with pytest.raises(DeliveryMappingFailed, match="Run.Completed") as raised:
            runner.run_once()
        assert "secret-value" not in str(raised.value)
        assert runner.ledger.position("broken") == 0 and runner.ledger.owed("broken") == []
        assert crm.calls == [] and broken_at

    def test_a_runner_needs_exactly_the_reactions_destinations(self, world: ReactionWorld) -> None:
        with pytest.raises(ReactionDefinitionError, match="delivers to"):
            world.runner([RecordingDestination("crm")], reaction=RunEvents(destinations=["mail"]))
        with pytest.raises(ReactionDefinitionError, match="same name"):
            world.runner(
                [RecordingDestination("crm"), RecordingDestination("crm")],
                reaction=RunEvents(destinations=["crm"]),
            )

    def test_each_destination_has_a_throttle_of_its_own(self, world: ReactionWorld) -> None:
        events = world.events()
        taken: dict[str, int] = defaultdict(int)

        class Counting:
            def __init__(self, destination: str) -> None:
                self.destination = destination

            def acquire(self, events: int) -> float:
                taken[self.destination] += events
                return 0.0

        crm = RecordingDestination("crm", answer=failing_times(1))
        mail = RecordingDestination("mail")
        runner = world.runner([crm, mail])
        runner = ReactionRunner(
            runner.reaction,
            source=runner.source,
            ledger=runner.ledger,
            destinations=[crm, mail],
            policy=runner.policy,
            throttles=Counting,
            options=runner.options,
        )
        runner.run_until_idle()
        # One token per call: crm's retries took theirs too.
        assert taken == {"crm": len(crm.calls), "mail": len(mail.calls)}
        assert len(crm.calls) == 2 * len(events) and len(mail.calls) == len(events)
        runner.close()

    def test_reactions_keep_positions_of_their_own(self, world: ReactionWorld) -> None:
        events = world.events()
        crm = RecordingDestination("crm")
        world.runner([crm]).run_until_idle()
        other = reaction_named("run_events_copy")
        world.runner([crm], reaction=other(destinations=["crm"])).run_until_idle()
        per_reaction: dict[str, int] = defaultdict(int)
        for call in crm.acknowledged:
            per_reaction[call.reaction] += 1
        assert per_reaction == {"run_events": len(events), "run_events_copy": len(events)}


class TestSQLiteRunner(SQLiteReactionWorld, RunnerCases):
    """The cases on SQLite."""


@pytest.mark.postgres
class TestPostgresRunner(PostgresReactionWorld, RunnerCases):
    """The cases on PostgreSQL."""

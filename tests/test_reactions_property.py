"""Issue #20, a property of the reaction runner (SQLite and PostgreSQL): whatever the
destinations answer (failing a few times, always, or refusing outright), every
event ends delivered or parked to each destination, never lost and never owed;
a row is delivered exactly when the receiver acknowledged its key; and no event
of an aggregate is delivered behind a parked one.
"""

from __future__ import annotations

import itertools
from uuid import UUID

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reaction_fixtures import (
    QUICK,
    PostgresReactionWorld,
    ReactionWorld,
    SQLiteReactionWorld,
    reaction_named,
)

from safereplay.reactions import Delivery, DeliveryOutcome, RecordingDestination
from safereplay.recovery.resilience.breaker import BreakerSettings, CircuitBreaker
from safereplay.recovery.resilience.policies import RetryThenPark

#: How a receiver treats a key: fail that many times then succeed, or ALWAYS / REFUSE.
ALWAYS, REFUSE = -1, -2
patterns = st.lists(st.integers(min_value=REFUSE, max_value=3), min_size=1, max_size=6)
_names = itertools.count()


def receiver(name: str, pattern: list[int]) -> RecordingDestination:
    def answer(delivery: Delivery, attempt: int) -> DeliveryOutcome:
        failures = pattern[UUID(delivery.idempotency_key).int % len(pattern)]
        if failures == REFUSE:
            return DeliveryOutcome.permanent(422, "unprocessable")
        if failures == ALWAYS or attempt <= failures:
            return DeliveryOutcome.retry(503, "unavailable")
        return DeliveryOutcome.ok(200)

    return RecordingDestination(name, answer=answer)


class PropertyCases:
    @pytest.mark.timeout(300)
    @settings(
        max_examples=10,
        deadline=None,
        # The examples share the test's world (each reacts under a name of its own,
        # from position 0); the subclasses differ only in the backend.
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.differing_executors,
        ],
    )
    @given(crm_pattern=patterns, mail_pattern=patterns, concurrency=st.sampled_from([1, 3, 8]))
    def test_every_event_ends_delivered_or_parked(
        self,
        world: ReactionWorld,
        crm_pattern: list[int],
        mail_pattern: list[int],
        concurrency: int,
    ) -> None:
        name = f"prop_{next(_names)}"
        reaction = reaction_named(name)
        destinations = [receiver("crm", crm_pattern), receiver("mail", mail_pattern)]
        breakers = {
            d.name: CircuitBreaker(BreakerSettings(failure_threshold=2, cool_down=0.002))
            for d in destinations
        }
        runner = world.runner(
            destinations,
            reaction=reaction(destinations=["crm", "mail"]),
            policy=RetryThenPark(attempts=3, backoff=QUICK),
            breakers=breakers.get,
            concurrency=concurrency,
            batch_size=9,
        )
        runner.run_until_idle()

        events = world.events()
        entries = runner.ledger.entries(name)
        assert runner.ledger.owed(name) == []
        assert {(e.event_id, e.destination) for e in entries} == {
            (event, d.name) for _, event, _ in events for d in destinations
        }, "one row per event and destination: nothing lost"
        assert len({e.idempotency_key for e in entries}) == 2 * len(events)
        for destination in destinations:
            acknowledged = destination.acknowledged_keys()
            mine = [e for e in entries if e.destination == destination.name]
            assert {e.idempotency_key for e in mine if e.state == "delivered"} == acknowledged
            parked_aggregates: set[UUID] = set()
            for entry in sorted(mine, key=lambda e: e.position):
                assert entry.state in ("delivered", "parked")
                if entry.state == "parked":
                    parked_aggregates.add(entry.aggregate_id)
                else:
                    assert entry.aggregate_id not in parked_aggregates, "order kept"
        runner.close()


class TestSQLiteProperty(SQLiteReactionWorld, PropertyCases):
    """The cases on SQLite."""


@pytest.mark.postgres
class TestPostgresProperty(PostgresReactionWorld, PropertyCases):
    """The cases on PostgreSQL."""

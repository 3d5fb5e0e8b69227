"""Issue #20, re-delivery in the reactions layer, on SQLite and PostgreSQL:

- a destination that refused everything leaves its rows parked; the plan counts
  them and a re-delivery sends each one once, with its unchanged key;
- a destination added after the events were recorded: the plan counts its
  deliveries as not recorded, and a re-delivery records and sends them;
- while another runner holds the reaction's lease, the rows are reopened and left
  owed for it (``delivered_by`` names it);
- a selection is validated (range, destination name).
"""

from __future__ import annotations

from collections import Counter

import pytest
from reaction_fixtures import (
    PostgresReactionWorld,
    ReactionContract,
    ReactionWorld,
    RunEvents,
    SQLiteReactionWorld,
)

from safereplay.reactions import (
    CycleResult,
    DeliveryOutcome,
    ReactionBusy,
    ReactionDefinitionError,
    RecordingDestination,
    always,
)
from safereplay.reactions.redelivery import RedeliverySelection, plan_redelivery, redeliver


class RedeliveryCases(ReactionContract):
    def test_parked_rows_and_a_new_destination_are_redelivered_once(
        self, world: ReactionWorld
    ) -> None:
        events = world.events()
        down = RecordingDestination("crm", answer=always(DeliveryOutcome.retry(503)))
        first = world.runner([down])
        first.run_until_idle()
        first.close()  # it lets go of the reaction's lease: the next runner may run it
        # Retried, then parked; an aggregate's later events parked behind, never sent.
        assert down.acknowledged == []
        assert first.ledger.counts("run_events") == {("crm", "parked"): len(events)}
        recorded_keys = {r.idempotency_key for r in first.ledger.select("run_events")}

        crm = RecordingDestination("crm")
        mail = RecordingDestination("mail")
        both = RunEvents(destinations=["crm", "mail"])
        runner = world.runner([crm, mail], reaction=both)
        selection = RedeliverySelection(reaction="run_events")
        plan = plan_redelivery(
            both, source=runner.source, ledger=runner.ledger, selection=selection
        )
        by_name = {d.destination: d for d in plan.destinations}
        assert (by_name["crm"].parked, by_name["crm"].would_send) == (len(events), len(events))
        assert (by_name["mail"].not_recorded, by_name["mail"].would_send) == (
            len(events),
            len(events),
        )
        assert plan.would_send == 2 * len(events) and len(plan.sample) == 20
        assert [s.state for s in plan.sample[:2]] == ["parked", "not_recorded"]
        assert all(s.payload is None and s.payload_bytes > 100 for s in plan.sample)

        result = redeliver(
            both, source=runner.source, ledger=runner.ledger, selection=selection, runner=runner
        )
        assert (result.reopened, result.recorded, result.forced) == (len(events), len(events), 0)
        assert (result.delivered, result.still_owed, result.delivered_by) == (
            2 * len(events),
            0,
            None,
        )
        for destination in (crm, mail):
            keys = Counter(d.idempotency_key for d in destination.acknowledged)
            assert len(keys) == len(events) and max(keys.values()) == 1
        rows = runner.ledger.select("run_events", destination="crm")
        assert {r.idempotency_key for r in rows} == crm.acknowledged_keys()
        assert crm.acknowledged_keys() == recorded_keys, "the keys recorded first"

    def test_a_runner_holding_the_lease_delivers_them(self, world: ReactionWorld) -> None:
        events = world.events()
        down = RecordingDestination("crm", answer=always(DeliveryOutcome.permanent(400)))
        world.runner([down]).run_until_idle()

        busy = world.runner([RecordingDestination("crm")])

        def held(*args: object, **kwargs: object) -> CycleResult:
            raise ReactionBusy("run_events", holder="host-a pid 42", expires_at=0.0)

        busy.deliver_owed = held  # type: ignore[method-assign]
        selection = RedeliverySelection(reaction="run_events", first=events[1][0])
        result = redeliver(
            busy.reaction, source=busy.source, ledger=busy.ledger, selection=selection, runner=busy
        )
        assert result.delivered_by == "host-a pid 42"
        assert result.reopened == result.still_owed == len(events) - 1
        assert [e.position for e in busy.ledger.owed("run_events")] == [e[0] for e in events[1:]]

    def test_a_selection_is_checked(self, world: ReactionWorld) -> None:
        with pytest.raises(ReactionDefinitionError, match="must not be above last"):
            RedeliverySelection(reaction="run_events", first=5, last=2)
        with pytest.raises(ReactionDefinitionError, match="destination name"):
            RedeliverySelection(reaction="run_events", destination="Not A Name")
        runner = world.runner([RecordingDestination("crm")])
        with pytest.raises(ReactionDefinitionError, match="has no destination 'mail'"):
            plan_redelivery(
                runner.reaction,
                source=runner.source,
                ledger=runner.ledger,
                selection=RedeliverySelection(reaction="run_events", destination="mail"),
            )


class TestSQLiteRedelivery(SQLiteReactionWorld, RedeliveryCases):
    pass


@pytest.mark.postgres
class TestPostgresRedelivery(PostgresReactionWorld, RedeliveryCases):
    pass

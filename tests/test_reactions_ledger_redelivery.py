"""Issue #20, the ledger's re-delivery primitives, one contract on SQLite and PostgreSQL:

- ``select`` finds a reaction's rows by position range (inclusive), recording time
  and destination, whatever their state;
- ``reopen`` moves failed, parked and pending rows back to ``pending`` in one
  transaction and counts a re-delivery on each; a delivered row only when forced
  (counted as forced too);
- ``record_missing`` inserts the rows an event at or below the position owes and
  lacks (a destination added later), leaving existing rows and the position alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from reaction_fixtures import A, B, LedgerContract, delivery, postgres_ledgers, sqlite_ledgers

from safereplay.reactions import Delivery, DeliveryLedger, DeliveryOutcome


class RedeliveryLedgerCases(LedgerContract):
    def test_select_filters_by_range_time_and_destination(self, ledger_at: Any) -> None:
        times = iter([100.0, 200.0, 300.0])
        ledger = ledger_at(clock=lambda: next(times))
        ledger.record(
            "orders",
            expected=0,
            position=3,
            deliveries=[delivery(1), delivery(2, B), delivery(3, A, "mail")],
        )
        ledger.record("orders", expected=3, position=6, deliveries=[delivery(5), delivery(6, B)])
        delivered = ledger.owed("orders")[0]
        ledger.record_attempt(delivered, DeliveryOutcome.ok(200))

        def positions(**filters: Any) -> list[int]:
            return [e.position for e in ledger.select("orders", **filters)]

        assert positions() == [1, 2, 3, 5, 6], "every state, delivered included"
        assert positions(first=2, last=5) == [2, 3, 5], "both ends inclusive"
        assert positions(since=200.0) == [5, 6], "recorded at or after"
        assert positions(destination="mail") == [3]
        assert positions(first=2, destination="crm", limit=2) == [2, 5]
        assert ledger.select("invoices") == []

    def test_reopen_moves_owed_and_parked_rows_back(self, ledger: DeliveryLedger) -> None:
        rows = [delivery(1), delivery(2, B), delivery(3), delivery(4, B)]
        ledger.record("orders", expected=0, position=4, deliveries=rows)
        one, two, three, _four = ledger.owed("orders")
        ledger.record_attempt(one, DeliveryOutcome.ok(200))
        ledger.record_attempt(two, DeliveryOutcome.retry(503))
        ledger.record_attempt(three, DeliveryOutcome.retry(503), park="gave up")

        assert ledger.reopen(ledger.select("orders"), forced=False) == 3
        by_position = {e.position: e for e in ledger.select("orders")}
        assert [by_position[p].state for p in (1, 2, 3, 4)] == [
            "delivered",
            "pending",
            "pending",
            "pending",
        ]
        assert [by_position[p].redeliveries for p in (1, 2, 3, 4)] == [0, 1, 1, 1]
        assert by_position[2].attempts == 1, "the attempts stay: the row's history"
        assert all(e.forced_redeliveries == 0 for e in by_position.values())

        # Forced: the acknowledged row too, counted as forced.
        assert ledger.reopen([by_position[1]], forced=True) == 1
        (again,) = ledger.select("orders", last=1)
        assert (again.state, again.redeliveries, again.forced_redeliveries) == ("pending", 1, 1)
        assert again.acknowledgements == 1
        assert ledger.reopen([], forced=True) == 0

    def test_record_missing_adds_rows_below_the_position_only(self, ledger: DeliveryLedger) -> None:
        crm = delivery(2)
        ledger.record("orders", expected=0, position=5, deliveries=[crm])
        mail = Delivery(**{**crm.__dict__, "destination": "mail"})
        assert ledger.record_missing("orders", [crm, mail]) == 1
        assert [(e.position, e.destination, e.state) for e in ledger.select("orders")] == [
            (2, "crm", "pending"),
            (2, "mail", "pending"),
        ]
        assert ledger.position("orders") == 5, "the position does not move"
        with pytest.raises(ValueError, match="above reaction 'orders'"):
            ledger.record_missing("orders", [delivery(6)])
        assert len(ledger.select("orders")) == 2, "nothing of a refused batch is kept"


class TestSQLiteRedeliveryLedger(RedeliveryLedgerCases):
    @pytest.fixture
    def ledger_at(self, tmp_path: Path) -> Iterator[Callable[..., DeliveryLedger]]:
        yield from sqlite_ledgers(tmp_path)


@pytest.mark.postgres
class TestPostgresRedeliveryLedger(RedeliveryLedgerCases):
    @pytest.fixture
    def ledger_at(self, request: pytest.FixtureRequest) -> Iterator[Callable[..., Any]]:
        yield from postgres_ledgers(request)

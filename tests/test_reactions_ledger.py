"""Issue #20, the delivery ledger, one contract on SQLite and PostgreSQL:

- a batch's ``pending`` rows and the reaction's position commit together, or
  nothing does (a stale position is a conflict; a delivery outside the batch is
  refused), and recording the same delivery again leaves its row alone;
- an attempt's outcome moves an owed row to delivered / failed / parked, with its
  attempts, status, detail and times; a settled row no longer changes;
- parked rows tell which (destination, aggregate) later events wait behind; a
  summary per destination counts the rows by state and dates the oldest owed;
- the tables are the ``reactions`` component of the schema catalog: a process
  that may not migrate refuses a database without them; a version-1 ledger is
  upgraded in place to version 2, its rows kept (a delivered one acknowledged once);
- a reaction's lease is held by one holder at a time: another is refused with
  ReactionBusy naming the holder until it is released or runs out; the holder renews;
- a destination's breaker state is written per reaction; its ``changed_at`` moves
  only when the state does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from reaction_fixtures import A, B, LedgerContract, delivery, postgres_ledgers, sqlite_ledgers

from safereplay.domain.errors import DatabaseSchemaOutdated
from safereplay.domain.schema import SchemaStep, ensure_schema
from safereplay.projections.sqltemplate import PostgresRenderer, Renderer, SQLiteRenderer
from safereplay.reactions import (
    Delivery,
    DeliveryLedger,
    DeliveryOutcome,
    LedgerConflict,
    PostgresDeliveryLedger,
    ReactionBusy,
)
from safereplay.reactions.ledger import BreakerRecord, Lease
from safereplay.reactions.ledger_sql import SQLDeliveryLedger
from safereplay.reactions.ledger_statements import (
    REACTIONS_COMPONENT,
    REACTIONS_SCHEMA_VERSION,
    TYPES,
)

# The ledger as version 1 made it: no leases, no acknowledgement or re-delivery counts,
# no breaker states.
V1_DDL = (
    """CREATE TABLE {reaction_positions} (
        reaction {text} PRIMARY KEY, position {bigint} NOT NULL,
        updated_at double precision NOT NULL)""",
    """CREATE TABLE {reaction_deliveries} (
        reaction {text} NOT NULL, event_id {uuid} NOT NULL, destination {text} NOT NULL,
        position {bigint} NOT NULL, aggregate_id {uuid} NOT NULL,
        aggregate_version {bigint} NOT NULL, event_type {text} NOT NULL,
        idempotency_key {text} NOT NULL, state {text} NOT NULL,
        attempts {int} NOT NULL DEFAULT 0, last_status {int}, last_detail {text},
        recorded_at double precision NOT NULL, first_attempt_at double precision,
        last_attempt_at double precision, delivered_at double precision,
        PRIMARY KEY (reaction, event_id, destination))""",
    """CREATE INDEX {idx_reaction_deliveries_state}
        ON {reaction_deliveries} (reaction, state, position)""",
)
V1_ROWS = (
    "INSERT INTO {reaction_positions} (reaction, position, updated_at) VALUES ('orders', 2, 1.0)",
    "INSERT INTO {reaction_deliveries} (reaction, event_id, destination, position, "
    "aggregate_id, aggregate_version, event_type, idempotency_key, state, attempts, "
    "recorded_at, first_attempt_at, last_attempt_at, delivered_at) VALUES ('orders', "
    "%(first)s, 'crm', 1, %(aggregate)s, 1, 'Order.Placed', 'key-1', 'delivered', 1, "
    "1.0, 2.0, 2.0, 2.0)",
    "INSERT INTO {reaction_deliveries} (reaction, event_id, destination, position, "
    "aggregate_id, aggregate_version, event_type, idempotency_key, state, attempts, "
    "recorded_at) VALUES ('orders', %(second)s, 'crm', 2, %(aggregate)s, 2, "
    "'Order.Shipped', 'key-2', 'pending', 0, 1.0)",
)


def set_up_version_1(ledger: DeliveryLedger, renderer: Renderer[Any], ids: dict[str, Any]) -> None:
    """Make ``ledger``'s database a version-1 ledger (recorded so in the catalog), with
    one delivered and one pending row."""
    assert isinstance(ledger, SQLDeliveryLedger)
    types = {k: renderer.text(v) for k, v in TYPES[renderer.dialect].items()}

    def apply(cursor: Any, from_version: int) -> None:
        for template in V1_DDL:
            cursor.execute(renderer.render(template, **types))

    step = SchemaStep(REACTIONS_COMPONENT, 1, apply, "the reactions' ledger, version 1")
    ensure_schema(ledger._schema_database(), [step], migrate=True)
    with ledger._transaction("write version-1 rows", write=True) as tx:
        for template in V1_ROWS:
            tx.execute(template, ids)


class LedgerCases(LedgerContract):
    def renderer(self, ledger: DeliveryLedger) -> Renderer[Any]:
        """The backend's renderer (for the version-1 tables)."""
        raise NotImplementedError

    def test_a_version_1_ledger_is_upgraded_in_place(self, ledger_at: Any) -> None:
        old = ledger_at()
        first, second = uuid4(), uuid4()
        dump = old._dump_id
        ids = {"first": dump(first), "second": dump(second), "aggregate": dump(A)}
        set_up_version_1(old, self.renderer(old), ids)
        assert old._schema_database().recorded()[REACTIONS_COMPONENT] == 1

        ledger = ledger_at()  # a process of this version opens it: upgraded to 2
        (delivered,) = ledger.entries("orders", state="delivered")
        (pending,) = ledger.owed("orders")
        assert ledger._schema_database().recorded()[REACTIONS_COMPONENT] == 2
        assert (delivered.event_id, delivered.acknowledgements, delivered.attempts) == (
            first,
            1,
            1,
        )
        assert (pending.event_id, pending.acknowledgements, pending.state) == (second, 0, "pending")
        assert delivered.redeliveries == delivered.forced_redeliveries == 0
        assert ledger.position("orders") == 2 and ledger.lease("orders") is None
        assert ledger.breaker_states("orders") == {}
        # And it works as a version-2 ledger.
        assert ledger.acquire_lease("orders", "host:1:aa", seconds=30).holder == "host:1:aa"
        done = ledger.record_attempt(pending, DeliveryOutcome.ok(200))
        assert done is not None and done.acknowledgements == 1

    def test_rows_and_position_commit_together(self, ledger: DeliveryLedger) -> None:
        assert ledger.position("orders") == 0 and ledger.owed("orders") == []
        batch = [delivery(2, A, "mail"), delivery(2, A), delivery(5, B)]
        batch[1] = Delivery(**{**batch[0].__dict__, "destination": "crm"})
        assert ledger.record("orders", expected=0, position=9, deliveries=batch) == 3
        assert ledger.position("orders") == 9

        owed = ledger.owed("orders")
        assert [(e.position, e.destination) for e in owed] == [(2, "crm"), (2, "mail"), (5, "crm")]
        first = owed[0]
        assert (first.state, first.attempts, first.last_status) == ("pending", 0, None)
        assert first.idempotency_key == batch[1].idempotency_key
        assert first.aggregate_id == A and first.event_type == "Order.Placed"
        assert first.first_attempt_at is None and first.delivered_at is None

        # A stale position: a conflict, and nothing of that batch is kept.
        with pytest.raises(LedgerConflict, match="expected position 0 but it is now 9"):
            ledger.record("orders", expected=0, position=12, deliveries=[delivery(11)])
        assert ledger.position("orders") == 9 and len(ledger.owed("orders")) == 3
        # A delivery outside (expected, position]: refused, nothing moves.
        with pytest.raises(ValueError, match="outside"):
            ledger.record("orders", expected=9, position=12, deliveries=[delivery(13)])
        assert ledger.position("orders") == 9
        with pytest.raises(ValueError, match="forward"):
            ledger.record("orders", expected=9, position=8, deliveries=[])
        # Another reaction has a position of its own.
        assert ledger.position("invoices") == 0

    def test_recording_a_row_again_leaves_it_alone(self, ledger: DeliveryLedger) -> None:
        owed = delivery(3)
        ledger.record("orders", expected=0, position=3, deliveries=[owed])
        (entry,) = ledger.owed("orders")
        ledger.record_attempt(entry, DeliveryOutcome.ok(200))
        again = Delivery(**{**owed.__dict__, "position": 4})
        assert ledger.record("orders", expected=3, position=4, deliveries=[again]) == 0
        (kept,) = ledger.entries("orders")
        assert (kept.state, kept.position) == ("delivered", 3)

    def test_attempts_settle_an_owed_row(self, ledger: DeliveryLedger) -> None:
        ledger.record("orders", expected=0, position=4, deliveries=[delivery(1), delivery(4, B)])
        first, second = ledger.owed("orders")

        failed = ledger.record_attempt(first, DeliveryOutcome.retry(503, "unavailable"))
        assert failed is not None
        assert (failed.state, failed.attempts, failed.last_status) == ("failed", 1, 503)
        assert failed.last_detail == "unavailable" and failed.owed
        assert failed.first_attempt_at == failed.last_attempt_at is not None

        done = ledger.record_attempt(failed, DeliveryOutcome.ok(201, "created"))
        assert done is not None and done.state == "delivered" and done.attempts == 2
        assert done.delivered_at is not None and done.first_attempt_at == failed.first_attempt_at
        # Settled: a late attempt (another runner's) changes nothing, and says so.
        assert ledger.record_attempt(first, DeliveryOutcome.retry(500)) is None
        assert ledger.entries("orders", state="delivered")[0].attempts == 2

        parked = ledger.record_attempt(
            second, DeliveryOutcome.retry(502, "bad gateway"), park="still failing"
        )
        assert parked is not None and parked.state == "parked" and parked.attempts == 1
        assert parked.last_detail == "bad gateway; still failing"
        assert ledger.owed("orders") == []
        assert not ledger.park(second, "again"), "a parked row is not owed"

    def test_parked_rows_hold_their_aggregate_back(self, ledger: DeliveryLedger) -> None:
        rows = [delivery(1, A), delivery(2, A, "mail"), delivery(3, A), delivery(4, B)]
        ledger.record("orders", expected=0, position=4, deliveries=rows)
        by_position = {e.position: e for e in ledger.owed("orders")}
        assert ledger.record_attempt(by_position[1], DeliveryOutcome.permanent(400), park="no")
        assert ledger.park(by_position[3], "parked behind position 1")
        assert ledger.parked_aggregates("orders") == {("crm", A): 1}
        assert [e.position for e in ledger.owed("orders")] == [2, 4]
        assert ledger.counts("orders") == {("crm", "parked"): 2, ("mail", "pending"): 1} | {
            ("crm", "pending"): 1
        }
        assert [e.position for e in ledger.entries("orders", destination="mail")] == [2]
        assert [e.last_detail for e in ledger.entries("orders", state="parked")] == [
            "no",
            "parked behind position 1",
        ]

    def test_a_summary_per_destination_names_the_oldest_owed(self, ledger_at: Any) -> None:
        times = iter([100.0, 200.0, 300.0])
        ledger = ledger_at(clock=lambda: next(times))
        assert ledger.summary("orders") == []
        ledger.record("orders", expected=0, position=2, deliveries=[delivery(1), delivery(2, B)])
        ledger.record(
            "orders", expected=2, position=3, deliveries=[delivery(3), delivery(3, B, "mail")]
        )
        first = ledger.owed("orders")[0]
        ledger.record_attempt(first, DeliveryOutcome.ok(200))  # at 300
        crm, mail = ledger.summary("orders")
        assert (crm.destination, crm.pending, crm.delivered, crm.owed) == ("crm", 2, 1, 2)
        assert crm.oldest_owed_at == 100.0, "position 2 was recorded at 100"
        assert (mail.pending, mail.failed, mail.parked, mail.oldest_owed_at) == (1, 0, 0, 200.0)

    def test_the_tables_are_a_component_of_the_schema_catalog(
        self, ledger_at: Callable[..., DeliveryLedger]
    ) -> None:
        refusing = ledger_at(migrate_on_start=False)
        with pytest.raises(DatabaseSchemaOutdated, match="'reactions' is not set up"):
            refusing.position("orders")
        migrating = ledger_at()
        assert migrating.position("orders") == 0
        assert ledger_at(migrate_on_start=False).position("orders") == 0
        assert REACTIONS_COMPONENT == "reactions" and REACTIONS_SCHEMA_VERSION == 2

    def test_a_delivered_attempt_counts_an_acknowledgement(self, ledger: DeliveryLedger) -> None:
        ledger.record("orders", expected=0, position=1, deliveries=[delivery(1)])
        (entry,) = ledger.owed("orders")
        failed = ledger.record_attempt(entry, DeliveryOutcome.retry(503))
        assert failed is not None and failed.acknowledgements == 0
        done = ledger.record_attempt(failed, DeliveryOutcome.ok(200))
        assert done is not None and (done.acknowledgements, done.attempts) == (1, 2)

    def test_one_holder_at_a_time_until_released_or_run_out(self, ledger_at: Any) -> None:
        now = [1000.0]
        ledger = ledger_at(clock=lambda: now[0])
        assert ledger.lease("orders") is None
        first = ledger.acquire_lease("orders", "host-a:1:aa", seconds=30)
        assert first == Lease("orders", "host-a:1:aa", 1030.0)
        assert ledger.lease("orders") == first
        assert ledger.position("orders") == 0, "the position row is made, at 0"

        with pytest.raises(ReactionBusy, match="being run by host-a:1:aa") as busy:
            ledger.acquire_lease("orders", "host-c:3:cc", seconds=30)
        assert (busy.value.holder, busy.value.expires_at) == ("host-a:1:aa", 1030.0)
        assert ledger.acquire_lease("invoices", "host-c:3:cc", seconds=30), "its own lease"

        # The holder renews; another holder's release changes nothing.
        now[0] = 1020.0
        assert ledger.acquire_lease("orders", "host-a:1:aa", seconds=30).expires_at == 1050.0
        ledger.release_lease("orders", "host-c:3:cc")
        assert ledger.lease("orders") == Lease("orders", "host-a:1:aa", 1050.0)

        # Run out (not renewed): another holder takes it over.
        now[0] = 1050.0
        assert ledger.lease("orders") is None
        taken = ledger.acquire_lease("orders", "host-c:3:cc", seconds=10)
        assert taken == Lease("orders", "host-c:3:cc", 1060.0)
        with pytest.raises(ReactionBusy):
            ledger.acquire_lease("orders", "host-a:1:aa", seconds=30)

        # Released: free at once, and the position was never touched.
        ledger.release_lease("orders", "host-c:3:cc")
        assert ledger.lease("orders") is None
        assert ledger.acquire_lease("orders", "host-a:1:aa", seconds=30).holder == "host-a:1:aa"
        ledger.record("orders", expected=0, position=2, deliveries=[delivery(2)])
        assert ledger.position("orders") == 2
        assert ledger.lease("orders") == Lease("orders", "host-a:1:aa", 1080.0)

    def test_breaker_states_change_time_moves_with_the_state(self, ledger_at: Any) -> None:
        now = [100.0]
        ledger = ledger_at(clock=lambda: now[0])
        assert ledger.breaker_states("orders") == {}
        ledger.record_breaker("orders", "crm", "closed")
        now[0] = 110.0
        ledger.record_breaker("orders", "crm", "closed")
        ledger.record_breaker("orders", "mail", "closed")
        assert ledger.breaker_states("orders")["crm"] == BreakerRecord(
            "crm", "closed", 100.0, 110.0
        )
        now[0] = 120.0
        ledger.record_breaker("orders", "crm", "open")
        now[0] = 130.0
        ledger.record_breaker("orders", "crm", "open")
        states = ledger.breaker_states("orders")
        assert states == {
            "crm": BreakerRecord("crm", "open", 120.0, 130.0),
            "mail": BreakerRecord("mail", "closed", 110.0, 110.0),
        }
        assert ledger.breaker_states("invoices") == {}


class TestSQLiteLedger(LedgerCases):
    def renderer(self, ledger: DeliveryLedger) -> Renderer[Any]:
        return SQLiteRenderer()

    @pytest.fixture
    def ledger_at(self, tmp_path: Path) -> Iterator[Callable[..., DeliveryLedger]]:
        yield from sqlite_ledgers(tmp_path)


@pytest.mark.postgres
class TestPostgresLedger(LedgerCases):
    def renderer(self, ledger: DeliveryLedger) -> Renderer[Any]:
        assert isinstance(ledger, PostgresDeliveryLedger)
        return PostgresRenderer(ledger.schema)

    @pytest.fixture
    def ledger_at(self, request: pytest.FixtureRequest) -> Iterator[Callable[..., Any]]:
        yield from postgres_ledgers(request)

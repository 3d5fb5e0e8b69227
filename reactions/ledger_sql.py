"""The delivery ledger's SQL and logic, written once for SQLite and PostgreSQL.

Templates use the notation of :mod:`safereplay.projections.sqltemplate`: a slot
``{reaction_deliveries}`` is the table ``safereplay_reaction_deliveries``, values are
always bound parameters. The table definitions fill type slots from :data:`TYPES`
(the one place the backends differ in text). The tables are set up by one schema
step, the ``reactions`` component of the schema catalog
(:mod:`safereplay.domain.schema`), never created ad hoc.

:class:`SQLDeliveryLedger` holds the logic; a backend gives it transactions
(:meth:`SQLDeliveryLedger._transaction`), its schema catalog and its id encoding.
"""

from __future__ import annotations

import time
from abc import abstractmethod
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol
from uuid import UUID

from safereplay.domain.schema import SchemaDatabase, SchemaStep, ensure_schema
from safereplay.projections.sqltemplate import Renderer
from safereplay.reactions.delivery import Delivery, DeliveryOutcome
from safereplay.reactions.errors import LedgerConflict
from safereplay.reactions.ledger import (
    DeliveryLedger,
    DeliveryState,
    DestinationSummary,
    LedgerEntry,
)

__all__ = [
    "REACTIONS_COMPONENT",
    "REACTIONS_SCHEMA_VERSION",
    "SQLDeliveryLedger",
    "Tx",
    "ledger_schema_step",
]

#: The ledger's component in the schema catalog and its version: raise it with any
#: change to the tables below, and make :func:`ledger_schema_step` upgrade to it.
REACTIONS_COMPONENT = "reactions"
REACTIONS_SCHEMA_VERSION = 2

#: Type names per backend (SQLite keeps ids as text and times as REAL seconds).
TYPES: Mapping[str, Mapping[str, str]] = {
    "sqlite": {"text": "TEXT", "int": "INTEGER", "bigint": "INTEGER", "uuid": "TEXT"},
    "postgres": {"text": "text", "int": "integer", "bigint": "bigint", "uuid": "uuid"},
}

CREATE_POSITIONS = """
CREATE TABLE IF NOT EXISTS {reaction_positions} (
    reaction {text} PRIMARY KEY,
    position {bigint} NOT NULL,
    updated_at double precision NOT NULL,
    lease_holder {text},
    lease_expires_at double precision
)"""

CREATE_DELIVERIES = """
CREATE TABLE IF NOT EXISTS {reaction_deliveries} (
    reaction {text} NOT NULL,
    event_id {uuid} NOT NULL,
    destination {text} NOT NULL,
    position {bigint} NOT NULL,
    aggregate_id {uuid} NOT NULL,
    aggregate_version {bigint} NOT NULL,
    event_type {text} NOT NULL,
    idempotency_key {text} NOT NULL,
    state {text} NOT NULL,
    attempts {int} NOT NULL DEFAULT 0,
    last_status {int},
    last_detail {text},
    recorded_at double precision NOT NULL,
    first_attempt_at double precision,
    last_attempt_at double precision,
    delivered_at double precision,
    acknowledgements {int} NOT NULL DEFAULT 0,
    redeliveries {int} NOT NULL DEFAULT 0,
    forced_redeliveries {int} NOT NULL DEFAULT 0,
    PRIMARY KEY (reaction, event_id, destination)
)"""

# A destination's breaker, as the runner holding the reaction's lease last saw it:
# what status shows for a destination (a breaker lives in a runner's memory).
CREATE_DESTINATIONS = """
CREATE TABLE IF NOT EXISTS {reaction_destinations} (
    reaction {text} NOT NULL,
    destination {text} NOT NULL,
    breaker_state {text} NOT NULL,
    breaker_changed_at double precision NOT NULL,
    updated_at double precision NOT NULL,
    PRIMARY KEY (reaction, destination)
)"""

# What a runner looks for at every cycle: a reaction's owed rows, in position order.
CREATE_OWED_INDEX = """
CREATE INDEX IF NOT EXISTS {idx_reaction_deliveries_state}
ON {reaction_deliveries} (reaction, state, position)"""

DDL = (CREATE_POSITIONS, CREATE_DELIVERIES, CREATE_OWED_INDEX, CREATE_DESTINATIONS)

# From version 1 (before leases, acknowledgement counts, re-delivery counts and
# breaker states): the columns the tables above have since.
UPGRADE_FROM_1 = (
    "ALTER TABLE {reaction_positions} ADD COLUMN lease_holder {text}",
    "ALTER TABLE {reaction_positions} ADD COLUMN lease_expires_at double precision",
    "ALTER TABLE {reaction_deliveries} ADD COLUMN acknowledgements {int} NOT NULL DEFAULT 0",
    "ALTER TABLE {reaction_deliveries} ADD COLUMN redeliveries {int} NOT NULL DEFAULT 0",
    "ALTER TABLE {reaction_deliveries} ADD COLUMN forced_redeliveries {int} NOT NULL DEFAULT 0",
    # Rows delivered under version 1 were acknowledged once.
    "UPDATE {reaction_deliveries} SET acknowledgements = 1 WHERE state = 'delivered'",
)

_COLUMNS = (
    "reaction, event_id, destination, position, aggregate_id, aggregate_version, event_type, "
    "idempotency_key, state, attempts, last_status, last_detail, recorded_at, "
    "first_attempt_at, last_attempt_at, delivered_at, acknowledgements, redeliveries, "
    "forced_redeliveries"
)

SELECT_POSITION = "SELECT position FROM {reaction_positions} WHERE reaction = %(reaction)s"
INSERT_POSITION = (
    "INSERT INTO {reaction_positions} (reaction, position, updated_at) "
    "VALUES (%(reaction)s, 0, %(now)s) ON CONFLICT (reaction) DO NOTHING"
)
MOVE_POSITION = (
    "UPDATE {reaction_positions} SET position = %(position)s, updated_at = %(now)s "
    "WHERE reaction = %(reaction)s AND position = %(expected)s"
)
INSERT_DELIVERY = (
    "INSERT INTO {reaction_deliveries} (reaction, event_id, destination, position, "
    "aggregate_id, aggregate_version, event_type, idempotency_key, state, attempts, "
    "recorded_at) VALUES (%(reaction)s, %(event_id)s, %(destination)s, %(position)s, "
    "%(aggregate_id)s, %(aggregate_version)s, %(event_type)s, %(idempotency_key)s, "
    "'pending', 0, %(now)s) ON CONFLICT (reaction, event_id, destination) DO NOTHING"
)
_KEY = "reaction = %(reaction)s AND event_id = %(event_id)s AND destination = %(destination)s"
SELECT_ENTRY = f"SELECT {_COLUMNS} FROM {{reaction_deliveries}} WHERE {_KEY}"
SELECT_OWED = (
    f"SELECT {_COLUMNS} FROM {{reaction_deliveries}} WHERE reaction = %(reaction)s "
    "AND state IN ('pending', 'failed') ORDER BY position, destination LIMIT %(limit)s"
)
SELECT_PARKED_AGGREGATES = (
    "SELECT destination, aggregate_id, min(position) AS first_position "
    "FROM {reaction_deliveries} WHERE reaction = %(reaction)s AND state = 'parked' "
    "GROUP BY destination, aggregate_id"
)
# Only an owed row changes: an attempt recorded by a runner that lost a race with
# another one (or with an operator's park) changes nothing, and says so.
RECORD_ATTEMPT = (
    "UPDATE {reaction_deliveries} SET state = %(state)s, attempts = attempts + 1, "
    "last_status = %(status)s, last_detail = %(detail)s, "
    "first_attempt_at = COALESCE(first_attempt_at, %(now)s), last_attempt_at = %(now)s, "
    "delivered_at = %(delivered_at)s, acknowledgements = acknowledgements + %(acknowledged)s "
    f"WHERE {_KEY} AND state IN ('pending', 'failed')"
)
PARK = (
    "UPDATE {reaction_deliveries} SET state = 'parked', last_detail = %(detail)s "
    f"WHERE {_KEY} AND state IN ('pending', 'failed')"
)
SELECT_ENTRIES = (
    f"SELECT {_COLUMNS} FROM {{reaction_deliveries}} WHERE reaction = %(reaction)s "
    # CAST: PostgreSQL cannot tell a bare NULL parameter's type.
    "AND (CAST(%(destination)s AS text) IS NULL OR destination = %(destination)s) "
    "AND (CAST(%(state)s AS text) IS NULL OR state = %(state)s) "
    "ORDER BY position, destination LIMIT %(limit)s"
)
SELECT_COUNTS = (
    "SELECT destination, state, count(*) AS n FROM {reaction_deliveries} "
    "WHERE reaction = %(reaction)s GROUP BY destination, state"
)


# An operator's selection (re-delivery): every filter is optional. CAST: PostgreSQL
# cannot tell a bare NULL parameter's type.
SELECT_RANGE = (
    f"SELECT {_COLUMNS} FROM {{reaction_deliveries}} WHERE reaction = %(reaction)s "
    "AND (CAST(%(first)s AS bigint) IS NULL OR position >= %(first)s) "
    "AND (CAST(%(last)s AS bigint) IS NULL OR position <= %(last)s) "
    "AND (CAST(%(since)s AS double precision) IS NULL OR recorded_at >= %(since)s) "
    "AND (CAST(%(destination)s AS text) IS NULL OR destination = %(destination)s) "
    "ORDER BY position, destination LIMIT %(limit)s"
)
# Back to pending for another round of attempts; a delivered row only when forced.
# The attempts count stays: it is the row's history (and what the retry policy reads).
REOPEN = (
    "UPDATE {reaction_deliveries} SET state = 'pending', "
    "redeliveries = redeliveries + 1, "
    "forced_redeliveries = forced_redeliveries "
    "+ CASE WHEN state = 'delivered' THEN 1 ELSE 0 END "
    f"WHERE {_KEY} AND (state IN ('pending', 'failed', 'parked') "
    "OR (state = 'delivered' AND %(forced)s = 1))"
)


SELECT_SUMMARY = (
    "SELECT destination, "
    "sum(CASE WHEN state = 'pending' THEN 1 ELSE 0 END) AS pending, "
    "sum(CASE WHEN state = 'failed' THEN 1 ELSE 0 END) AS failed, "
    "sum(CASE WHEN state = 'parked' THEN 1 ELSE 0 END) AS parked, "
    "sum(CASE WHEN state = 'delivered' THEN 1 ELSE 0 END) AS delivered, "
    "min(CASE WHEN state IN ('pending', 'failed') THEN recorded_at END) AS oldest_owed_at "
    "FROM {reaction_deliveries} WHERE reaction = %(reaction)s "
    "GROUP BY destination ORDER BY destination"
)


def ledger_schema_step(statements: Sequence[Any], upgrades: Sequence[Any] = ()) -> SchemaStep:
    """The ``reactions`` step: a backend's rendered :data:`DDL` statements, and
    :data:`UPGRADE_FROM_1` (rendered) for a database at version 1."""
    rendered = list(statements)
    from_1 = list(upgrades)

    def apply(cursor: Any, from_version: int) -> None:
        if from_version == 1:
            for statement in from_1:
                cursor.execute(statement)
        for statement in rendered:
            cursor.execute(statement)

    return SchemaStep(
        REACTIONS_COMPONENT,
        REACTIONS_SCHEMA_VERSION,
        apply,
        "the reactions' delivery ledger: deliveries, positions and leases, breaker states",
    )


def render_ddl(renderer: Renderer[Any]) -> list[Any]:
    """:data:`DDL` for ``renderer``'s backend, type slots filled from :data:`TYPES`."""
    return _render(renderer, DDL)


def render_upgrades(renderer: Renderer[Any]) -> list[Any]:
    """:data:`UPGRADE_FROM_1` for ``renderer``'s backend."""
    return _render(renderer, UPGRADE_FROM_1)


def _render(renderer: Renderer[Any], templates: Sequence[str]) -> list[Any]:
    types = {k: renderer.text(v) for k, v in TYPES[renderer.dialect].items()}
    return [renderer.render(template, **types) for template in templates]


class Tx(Protocol):
    """One ledger transaction: templates in, rows (as dicts) out."""

    def rows(self, template: str, params: Mapping[str, Any]) -> list[dict[str, Any]]: ...

    def execute(self, template: str, params: Mapping[str, Any]) -> int:
        """Run a statement; the number of rows it changed."""
        ...


class SQLDeliveryLedger(DeliveryLedger):
    """The ledger's logic over a backend's transactions (see the module's docstring).

    ``clock`` gives the times recorded (seconds since the epoch). ``migrate_on_start``:
    may the first use set the tables up (``SAFEREPLAY_MIGRATE_ON_START``)?
    """

    def __init__(
        self, *, migrate_on_start: bool = True, clock: Callable[[], float] | None = None
    ) -> None:
        self.migrate_on_start = migrate_on_start
        self._clock = clock or time.time
        self._ready = False

    # -- what a backend gives ---------------------------------------------------------

    @abstractmethod
    def _transaction(self, what: str, *, write: bool) -> AbstractContextManager[Tx]: ...

    @abstractmethod
    def _schema_database(self) -> SchemaDatabase: ...

    @abstractmethod
    def _ddl(self) -> list[Any]: ...

    @abstractmethod
    def _upgrades(self) -> list[Any]: ...

    @abstractmethod
    def _dump_id(self, value: UUID) -> Any: ...

    # -- the interface ----------------------------------------------------------------

    def ensure_schema(self) -> None:
        if not self._ready:
            step = ledger_schema_step(self._ddl(), self._upgrades())
            ensure_schema(self._schema_database(), [step], migrate=self.migrate_on_start)
            self._ready = True

    def _tx(self, what: str, *, write: bool) -> AbstractContextManager[Tx]:
        self.ensure_schema()
        return self._transaction(what, write=write)

    def position(self, reaction: str) -> int:
        with self._tx(f"read reaction {reaction!r}'s position", write=False) as tx:
            rows = tx.rows(SELECT_POSITION, {"reaction": reaction})
        return int(rows[0]["position"]) if rows else 0

    def record(
        self, reaction: str, *, expected: int, position: int, deliveries: Sequence[Delivery]
    ) -> int:
        if position < expected:
            raise ValueError(f"a reaction's position only moves forward ({expected} -> {position})")
        now = self._clock()
        inserted = 0
        with self._tx(f"record reaction {reaction!r}'s deliveries", write=True) as tx:
            tx.execute(INSERT_POSITION, {"reaction": reaction, "now": now})
            moved = tx.execute(
                MOVE_POSITION,
                {"reaction": reaction, "position": position, "expected": expected, "now": now},
            )
            if moved != 1:
                found = tx.rows(SELECT_POSITION, {"reaction": reaction})
                # Raising rolls the transaction back: no row of this batch is kept.
                raise LedgerConflict(
                    reaction,
                    expected=expected,
                    found=int(found[0]["position"]) if found else None,
                )
            for delivery in deliveries:
                if delivery.reaction != reaction:
                    raise ValueError(
                        f"a delivery of reaction {delivery.reaction!r} recorded for {reaction!r}"
                    )
                if not expected < delivery.position <= position:
                    raise ValueError(
                        f"delivery at position {delivery.position} is outside the recorded "
                        f"range ({expected}, {position}]"
                    )
                inserted += tx.execute(
                    INSERT_DELIVERY,
                    {
                        "reaction": reaction,
                        "event_id": self._dump_id(delivery.event_id),
                        "destination": delivery.destination,
                        "position": delivery.position,
                        "aggregate_id": self._dump_id(delivery.aggregate_id),
                        "aggregate_version": delivery.aggregate_version,
                        "event_type": delivery.event_type,
                        "idempotency_key": delivery.idempotency_key,
                        "now": now,
                    },
                )
        return inserted

    def owed(self, reaction: str, *, limit: int = 1000) -> list[LedgerEntry]:
        with self._tx(f"read reaction {reaction!r}'s owed deliveries", write=False) as tx:
            rows = tx.rows(SELECT_OWED, {"reaction": reaction, "limit": limit})
        return [_entry(row) for row in rows]

    def parked_aggregates(self, reaction: str) -> dict[tuple[str, UUID], int]:
        with self._tx(f"read reaction {reaction!r}'s parked aggregates", write=False) as tx:
            rows = tx.rows(SELECT_PARKED_AGGREGATES, {"reaction": reaction})
        return {
            (str(r["destination"]), _uuid(r["aggregate_id"])): int(r["first_position"])
            for r in rows
        }

    def record_attempt(
        self, entry: LedgerEntry, outcome: DeliveryOutcome, *, park: str | None = None
    ) -> LedgerEntry | None:
        now = self._clock()
        state: DeliveryState = (
            "delivered" if outcome.delivered else ("parked" if park is not None else "failed")
        )
        detail = outcome.detail
        if park is not None and not outcome.delivered:
            detail = f"{detail}; {park}"
        key = self._key(entry)
        with self._tx(f"record an attempt of {_name(entry)}", write=True) as tx:
            changed = tx.execute(
                RECORD_ATTEMPT,
                {
                    **key,
                    "state": state,
                    "status": outcome.status,
                    "detail": detail.strip("; ") or None,
                    "now": now,
                    "delivered_at": now if outcome.delivered else None,
                    "acknowledged": 1 if outcome.delivered else 0,
                },
            )
            rows = tx.rows(SELECT_ENTRY, key) if changed else []
        return _entry(rows[0]) if rows else None

    def park(self, entry: LedgerEntry, reason: str) -> bool:
        with self._tx(f"park {_name(entry)}", write=True) as tx:
            return tx.execute(PARK, {**self._key(entry), "detail": reason}) == 1

    def entries(
        self,
        reaction: str,
        *,
        destination: str | None = None,
        state: DeliveryState | None = None,
        limit: int = 10_000,
    ) -> list[LedgerEntry]:
        params = {"reaction": reaction, "destination": destination, "state": state, "limit": limit}
        with self._tx(f"read reaction {reaction!r}'s ledger", write=False) as tx:
            rows = tx.rows(SELECT_ENTRIES, params)
        return [_entry(row) for row in rows]

    def counts(self, reaction: str) -> dict[tuple[str, DeliveryState], int]:
        with self._tx(f"count reaction {reaction!r}'s deliveries", write=False) as tx:
            rows = tx.rows(SELECT_COUNTS, {"reaction": reaction})
        return {(str(r["destination"]), r["state"]): int(r["n"]) for r in rows}

    def summary(self, reaction: str) -> list[DestinationSummary]:
        with self._tx(f"summarise reaction {reaction!r}'s deliveries", write=False) as tx:
            rows = tx.rows(SELECT_SUMMARY, {"reaction": reaction})
        return [
            DestinationSummary(
                destination=str(r["destination"]),
                pending=int(r["pending"]),
                failed=int(r["failed"]),
                parked=int(r["parked"]),
                delivered=int(r["delivered"]),
                oldest_owed_at=_optional_float(r["oldest_owed_at"]),
            )
            for r in rows
        ]

    def select(
        self,
        reaction: str,
        *,
        first: int | None = None,
        last: int | None = None,
        since: float | None = None,
        destination: str | None = None,
        limit: int = 100_000,
    ) -> list[LedgerEntry]:
        params = {
            "reaction": reaction,
            "first": first,
            "last": last,
            "since": since,
            "destination": destination,
            "limit": limit,
        }
        with self._tx(f"select reaction {reaction!r}'s deliveries", write=False) as tx:
            rows = tx.rows(SELECT_RANGE, params)
        return [_entry(row) for row in rows]

    def reopen(self, entries: Sequence[LedgerEntry], *, forced: bool) -> int:
        if not entries:
            return 0
        reopened = 0
        reactions = sorted({e.reaction for e in entries})
        with self._tx(f"reopen deliveries of {', '.join(reactions)}", write=True) as tx:
            for entry in entries:
                reopened += tx.execute(REOPEN, {**self._key(entry), "forced": 1 if forced else 0})
        return reopened

    def record_missing(self, reaction: str, deliveries: Sequence[Delivery]) -> int:
        if not deliveries:
            return 0
        now = self._clock()
        inserted = 0
        with self._tx(f"record reaction {reaction!r}'s missing deliveries", write=True) as tx:
            found = tx.rows(SELECT_POSITION, {"reaction": reaction})
            position = int(found[0]["position"]) if found else 0
            for delivery in deliveries:
                if delivery.reaction != reaction:
                    raise ValueError(
                        f"a delivery of reaction {delivery.reaction!r} recorded for {reaction!r}"
                    )
                if delivery.position > position:
                    # Above the position: the runner records it (with the position).
                    raise ValueError(
                        f"delivery at position {delivery.position} is above reaction "
                        f"{reaction!r}'s position {position}"
                    )
                inserted += tx.execute(INSERT_DELIVERY, self._insert_params(delivery, now))
        return inserted

    def _insert_params(self, delivery: Delivery, now: float) -> dict[str, Any]:
        return {
            "reaction": delivery.reaction,
            "event_id": self._dump_id(delivery.event_id),
            "destination": delivery.destination,
            "position": delivery.position,
            "aggregate_id": self._dump_id(delivery.aggregate_id),
            "aggregate_version": delivery.aggregate_version,
            "event_type": delivery.event_type,
            "idempotency_key": delivery.idempotency_key,
            "now": now,
        }

    def _key(self, entry: LedgerEntry) -> dict[str, Any]:
        return {
            "reaction": entry.reaction,
            "event_id": self._dump_id(entry.event_id),
            "destination": entry.destination,
        }


def _name(entry: LedgerEntry) -> str:
    return (
        f"reaction {entry.reaction!r}'s delivery of position {entry.position} "
        f"to {entry.destination!r}"
    )


def _uuid(value: Any) -> UUID:
    return value if isinstance(value, UUID) else UUID(str(value))


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _entry(row: Mapping[str, Any]) -> LedgerEntry:
    return LedgerEntry(
        reaction=str(row["reaction"]),
        event_id=_uuid(row["event_id"]),
        destination=str(row["destination"]),
        position=int(row["position"]),
        aggregate_id=_uuid(row["aggregate_id"]),
        aggregate_version=int(row["aggregate_version"]),
        event_type=str(row["event_type"]),
        idempotency_key=str(row["idempotency_key"]),
        state=row["state"],
        attempts=int(row["attempts"]),
        last_status=None if row["last_status"] is None else int(row["last_status"]),
        last_detail=row["last_detail"],
        recorded_at=float(row["recorded_at"]),
        first_attempt_at=_optional_float(row["first_attempt_at"]),
        last_attempt_at=_optional_float(row["last_attempt_at"]),
        delivered_at=_optional_float(row["delivered_at"]),
        acknowledgements=int(row["acknowledgements"]),
        redeliveries=int(row["redeliveries"]),
        forced_redeliveries=int(row["forced_redeliveries"]),
    )

"""The delivery ledger's logic, written once for SQLite and PostgreSQL.

The tables and statements are in :mod:`safereplay.reactions.ledger_statements`
(set up by one schema step, the ``reactions`` component of the schema catalog).

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

from safereplay.domain.schema import SchemaDatabase, ensure_schema
from safereplay.reactions.delivery import Delivery, DeliveryOutcome
from safereplay.reactions.errors import LedgerConflict, ReactionBusy
from safereplay.reactions.ledger import (
    BreakerRecord,
    DeliveryLedger,
    DeliveryState,
    DestinationSummary,
    Lease,
    LedgerEntry,
)
from safereplay.reactions.ledger_statements import (
    ACQUIRE_LEASE,
    INSERT_DELIVERY,
    INSERT_POSITION,
    MOVE_POSITION,
    PARK,
    REACTIONS_COMPONENT,
    REACTIONS_SCHEMA_VERSION,
    RECORD_ATTEMPT,
    RECORD_BREAKER,
    RELEASE_LEASE,
    REOPEN,
    SELECT_BREAKERS,
    SELECT_COUNTS,
    SELECT_ENTRIES,
    SELECT_ENTRY,
    SELECT_LEASE,
    SELECT_OWED,
    SELECT_PARKED_AGGREGATES,
    SELECT_POSITION,
    SELECT_RANGE,
    SELECT_SUMMARY,
    ledger_schema_step,
    render_ddl,
    render_upgrades,
)

__all__ = [
    "REACTIONS_COMPONENT",
    "REACTIONS_SCHEMA_VERSION",
    "SQLDeliveryLedger",
    "Tx",
    "ledger_schema_step",
    "render_ddl",
    "render_upgrades",
]


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
                inserted += tx.execute(INSERT_DELIVERY, self._insert_params(delivery, now))
        return inserted

    def owed(
        self,
        reaction: str,
        *,
        limit: int = 1000,
        destination: str | None = None,
        upto: int | None = None,
    ) -> list[LedgerEntry]:
        params = {"reaction": reaction, "limit": limit, "destination": destination, "upto": upto}
        with self._tx(f"read reaction {reaction!r}'s owed deliveries", write=False) as tx:
            rows = tx.rows(SELECT_OWED, params)
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

    # -- leases and breakers ---------------------------------------------------------

    def acquire_lease(self, reaction: str, holder: str, *, seconds: float) -> Lease:
        if seconds <= 0:
            raise ValueError("a lease lasts a positive number of seconds")
        now = self._clock()
        params = {"reaction": reaction, "holder": holder, "now": now, "expires_at": now + seconds}
        with self._tx(f"take reaction {reaction!r}'s lease", write=True) as tx:
            tx.execute(INSERT_POSITION, params)
            if tx.execute(ACQUIRE_LEASE, params) == 1:
                return Lease(reaction, holder, now + seconds)
            (row,) = tx.rows(SELECT_LEASE, params)
        raise ReactionBusy(
            reaction, holder=str(row["lease_holder"]), expires_at=float(row["lease_expires_at"])
        )

    def release_lease(self, reaction: str, holder: str) -> None:
        with self._tx(f"release reaction {reaction!r}'s lease", write=True) as tx:
            tx.execute(RELEASE_LEASE, {"reaction": reaction, "holder": holder})

    def lease(self, reaction: str) -> Lease | None:
        with self._tx(f"read reaction {reaction!r}'s lease", write=False) as tx:
            rows = tx.rows(SELECT_LEASE, {"reaction": reaction})
        if not rows or rows[0]["lease_holder"] is None or rows[0]["lease_expires_at"] is None:
            return None
        expires_at = float(rows[0]["lease_expires_at"])
        if expires_at <= self._clock():
            return None
        return Lease(reaction, str(rows[0]["lease_holder"]), expires_at)

    def record_breaker(self, reaction: str, destination: str, state: str) -> None:
        params = {
            "reaction": reaction,
            "destination": destination,
            "state": state,
            "now": self._clock(),
        }
        with self._tx(
            f"record reaction {reaction!r}'s breaker for {destination!r}", write=True
        ) as tx:
            tx.execute(RECORD_BREAKER, params)

    def breaker_states(self, reaction: str) -> dict[str, BreakerRecord]:
        with self._tx(f"read reaction {reaction!r}'s breakers", write=False) as tx:
            rows = tx.rows(SELECT_BREAKERS, {"reaction": reaction})
        return {
            str(r["destination"]): BreakerRecord(
                destination=str(r["destination"]),
                state=str(r["breaker_state"]),
                changed_at=float(r["breaker_changed_at"]),
                updated_at=float(r["updated_at"]),
            )
            for r in rows
        }

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

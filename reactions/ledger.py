"""The delivery ledger: what each reaction owes, sent and gave up on, per event and destination.

One row per (reaction, event, destination), and one position per reaction::

    reaction_deliveries (reaction, event_id, destination,            -- the key
                         position, aggregate_id, aggregate_version, event_type,
                         idempotency_key, state, attempts, last_status, last_detail,
                         recorded_at, first_attempt_at, last_attempt_at, delivered_at,
                         acknowledgements, redeliveries, forced_redeliveries)
    reaction_positions  (reaction, position, updated_at, lease_holder, lease_expires_at)
    reaction_destinations (reaction, destination, breaker_state, breaker_changed_at, updated_at)

States: ``pending`` (owed, no attempt recorded yet), ``failed`` (owed; the last
recorded attempt failed and the policy will retry), ``delivered`` (the destination
acknowledged an attempt), ``parked`` (not owed any more until an operator redrives
it: the failure policy gave up, the destination refused it permanently, or an
earlier event of the same aggregate to the same destination is parked).

**The guarantee, precisely.** A runner reads events above the reaction's position
and, in *one* transaction (:meth:`DeliveryLedger.record`), inserts a ``pending``
row for every delivery they owe and moves the position past them. Only then does it
send; each attempt's outcome is recorded afterwards, in another transaction
(:meth:`DeliveryLedger.record_attempt`). So, whenever the process dies:

- before the first commit: nothing is recorded and the position has not moved; the
  next runner reads the same events again (nothing lost);
- between the commit and a send, or between a send and the commit of its outcome:
  the row is still ``pending`` / ``failed``; the next runner sends it again, with
  the *same* idempotency key (delivered at least once; a receiver that remembers
  keys sees it in effect once);
- a row is ``delivered`` only after the destination acknowledged an attempt
  (nothing is ever recorded as delivered that was not).

The payload is never stored: a runner that resumes re-reads the event at the
row's position and maps it again (a reaction's mapping is pure).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args
from uuid import UUID

from safereplay.reactions.delivery import Delivery, DeliveryOutcome

__all__ = [
    "DELIVERY_STATES",
    "OWED_STATES",
    "DeliveryLedger",
    "DeliveryState",
    "DestinationSummary",
    "LedgerEntry",
]

DeliveryState = Literal["pending", "delivered", "failed", "parked"]
DELIVERY_STATES: tuple[DeliveryState, ...] = get_args(DeliveryState)
#: The states a runner still has to send.
OWED_STATES: tuple[DeliveryState, ...] = ("pending", "failed")


@dataclass(frozen=True)
class LedgerEntry:
    """One row of the ledger: no payload, times in seconds since the epoch."""

    reaction: str
    event_id: UUID
    destination: str
    position: int
    aggregate_id: UUID
    aggregate_version: int
    event_type: str
    idempotency_key: str
    state: DeliveryState
    attempts: int
    last_status: int | None
    last_detail: str | None
    recorded_at: float
    first_attempt_at: float | None
    last_attempt_at: float | None
    delivered_at: float | None
    #: How many attempts the destination acknowledged (more than 1 only after a
    #: forced re-delivery, or a repeat sent after a crash before its outcome was
    #: committed: the receiver dropped it by its key).
    acknowledgements: int = 0
    #: How many times an operator re-opened the row (``redeliver``), and how many of
    #: those re-opened an acknowledged row (forced, with a reason).
    redeliveries: int = 0
    forced_redeliveries: int = 0

    @property
    def owed(self) -> bool:
        return self.state in OWED_STATES


@dataclass(frozen=True)
class DestinationSummary:
    """A reaction's rows to one destination, by state, and the oldest still owed
    (``oldest_owed_at``: when it was recorded, seconds since the epoch; None: none)."""

    destination: str
    pending: int
    failed: int
    parked: int
    delivered: int
    oldest_owed_at: float | None

    @property
    def owed(self) -> int:
        return self.pending + self.failed


class DeliveryLedger(ABC):
    """The ledger behind one small interface; SQLite and PostgreSQL implement it."""

    @property
    @abstractmethod
    def description(self) -> str:
        """Which ledger this is (no secrets), for messages."""

    @abstractmethod
    def ensure_schema(self) -> None:
        """Check (and, if this process may migrate, set up) the ledger's tables."""

    @abstractmethod
    def position(self, reaction: str) -> int:
        """The reaction's position: every event at or below it is recorded (0: none)."""

    @abstractmethod
    def record(
        self, reaction: str, *, expected: int, position: int, deliveries: Sequence[Delivery]
    ) -> int:
        """One transaction: a ``pending`` row per delivery, the position moved to
        ``position`` if it is still ``expected`` (else :class:`~safereplay.reactions.
        errors.LedgerConflict`, nothing written). A row that exists is left as it is.
        Returns the number of rows inserted."""

    @abstractmethod
    def owed(self, reaction: str, *, limit: int = 1000) -> list[LedgerEntry]:
        """Rows still to send (``pending``, ``failed``), in position order, at most ``limit``."""

    @abstractmethod
    def parked_aggregates(self, reaction: str) -> dict[tuple[str, UUID], int]:
        """(destination, aggregate id) -> the first parked position: later events of
        that aggregate to that destination wait behind it (are parked too)."""

    @abstractmethod
    def record_attempt(
        self, entry: LedgerEntry, outcome: DeliveryOutcome, *, park: str | None = None
    ) -> LedgerEntry | None:
        """Record one attempt's outcome: ``delivered``, else ``failed`` (``parked``
        with ``park`` as the reason, when given). Only an owed row changes; None when
        the row was not owed any more (another runner settled it)."""

    @abstractmethod
    def park(self, entry: LedgerEntry, reason: str) -> bool:
        """Park an owed row without an attempt (behind a parked one); False if not owed."""

    @abstractmethod
    def entries(
        self,
        reaction: str,
        *,
        destination: str | None = None,
        state: DeliveryState | None = None,
        limit: int = 10_000,
    ) -> list[LedgerEntry]:
        """The reaction's rows in position order (then by destination)."""

    @abstractmethod
    def counts(self, reaction: str) -> dict[tuple[str, DeliveryState], int]:
        """(destination, state) -> number of rows."""

    @abstractmethod
    def summary(self, reaction: str) -> list[DestinationSummary]:
        """Per destination (by name): rows by state and the oldest owed one."""

    # -- re-delivery: an operator's selection of rows, sent again ------------------------

    @abstractmethod
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
        """The reaction's rows in position order (then by destination), whatever their
        state: positions ``first`` to ``last`` (inclusive), recorded at or after
        ``since`` (seconds since the epoch), to ``destination``; at most ``limit``."""

    @abstractmethod
    def reopen(self, entries: Sequence[LedgerEntry], *, forced: bool) -> int:
        """One transaction: each row back to ``pending`` if it is failed, parked or
        pending, or delivered when ``forced`` (an operator's decision, with a reason);
        counts one more re-delivery on it (and a forced one, for a delivered row).
        A delivered row without ``forced`` is left as it is. Returns the rows reopened."""

    @abstractmethod
    def record_missing(self, reaction: str, deliveries: Sequence[Delivery]) -> int:
        """Insert a ``pending`` row for each delivery at or below the reaction's position
        that has none (a destination added after its events were recorded); rows that
        exist are left alone and the position does not move. Returns the rows inserted."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    def __enter__(self) -> DeliveryLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

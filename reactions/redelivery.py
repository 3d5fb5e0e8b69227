"""Re-delivery: plan, then send again, exactly what a downstream outage missed.

An operator selects a reaction's deliveries (:class:`RedeliverySelection`: a
position range, rows recorded since a time, one destination) and first *plans*
(:func:`plan_redelivery`, a dry run that sends nothing): the events in range are
read from the log (the reaction's topics only), mapped again with the reaction
(pure), and compared with the ledger. Per destination, the plan counts the rows
``delivered``, ``failed``, ``parked``, ``pending`` (owed, attempted before),
``never_attempted`` (owed, no attempt yet) and ``not_recorded`` (events the
reaction maps that have no row: above its position, or a destination added
after they were recorded), and how many a re-delivery ``would_send``.

:func:`redeliver` then records the missing rows of events at or below the
reaction's position (above it, the runner records them as it goes), reopens the
selected rows (failed, parked and pending ones; acknowledged ones only when the
selection is *forced*), and has a runner deliver them, with their unchanged
idempotency keys. If another runner holds the reaction's lease
(:class:`~safereplay.reactions.errors.ReactionBusy`), the reopened rows are left
owed and that runner delivers them.

``since`` selects rows *recorded* at or after that time; the events searched for
missing rows then start at the oldest such row (events before it were recorded
earlier), or above the reaction's position when none was.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any
from uuid import UUID

import orjson

from safereplay.projections.source import EventSource
from safereplay.reactions.delivery import Delivery
from safereplay.reactions.errors import ReactionBusy, ReactionDefinitionError
from safereplay.reactions.ledger import DeliveryLedger, LedgerEntry
from safereplay.reactions.reaction import Reaction, check_destination_name
from safereplay.reactions.runner import ReactionRunner

__all__ = [
    "SAMPLE_LIMIT",
    "DestinationPlan",
    "PlannedDelivery",
    "RedeliveryPlan",
    "RedeliveryResult",
    "RedeliverySelection",
    "plan_redelivery",
    "redeliver",
]

#: How many of the deliveries a plan would send it lists (the first, by position).
SAMPLE_LIMIT = 20
#: Events read from the log per query while planning.
_READ_BATCH = 1000
_NO_PAYLOAD: Mapping[str, Any] = MappingProxyType({})
#: The most ledger rows one selection reads.
_MAX_ROWS = 100_000


@dataclass(frozen=True)
class RedeliverySelection:
    """Which of ``reaction``'s deliveries to send again.

    ``first``/``last``: positions, inclusive (None: from the start / to the end);
    ``since``: rows recorded at or after this time (seconds since the epoch);
    ``destination``: only this one; ``force``: acknowledged deliveries too (an
    operator's decision, audited with its reason).
    """

    reaction: str
    first: int | None = None
    last: int | None = None
    since: float | None = None
    destination: str | None = None
    force: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.reaction, str) or not self.reaction:
            raise ReactionDefinitionError("a re-delivery needs a reaction name")
        for name, value in (("first", self.first), ("last", self.last)):
            if value is not None and (isinstance(value, bool) or value < 1):
                raise ReactionDefinitionError(f"{name} must be a position (1 or more)")
        if self.first is not None and self.last is not None and self.first > self.last:
            raise ReactionDefinitionError(
                f"first ({self.first}) must not be above last ({self.last})"
            )
        if self.since is not None and self.since < 0:
            raise ReactionDefinitionError("since must be a time (seconds since the epoch)")
        if self.destination is not None:
            check_destination_name(self.destination)

    def as_dict(self) -> dict[str, Any]:
        return {
            "reaction": self.reaction,
            "first": self.first,
            "last": self.last,
            "since": self.since,
            "destination": self.destination,
            "force": self.force,
        }


@dataclass(frozen=True)
class DestinationPlan:
    """One destination's share of a plan (see the module's docstring)."""

    destination: str
    delivered: int = 0
    failed: int = 0
    parked: int = 0
    pending: int = 0
    never_attempted: int = 0
    not_recorded: int = 0
    would_send: int = 0


@dataclass(frozen=True)
class PlannedDelivery:
    """One delivery a re-delivery would send: where, what, and how big (its payload,
    what the destination receives, only when asked for)."""

    position: int
    event_type: str
    destination: str
    idempotency_key: str
    #: Its ledger state, or ``not_recorded`` (recorded by the re-delivery first).
    state: str
    attempts: int
    payload_bytes: int | None
    payload: Mapping[str, Any] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class RedeliveryPlan:
    """What a re-delivery of ``selection`` would do; nothing was sent or changed."""

    reaction: str
    selection: RedeliverySelection
    position: int
    destinations: tuple[DestinationPlan, ...]
    would_send: int
    sample: tuple[PlannedDelivery, ...]
    sample_limit: int = SAMPLE_LIMIT


@dataclass(frozen=True)
class RedeliveryResult:
    """What a re-delivery did. ``delivered``/``parked``/``failed``/``still_owed``:
    the selected rows' states afterwards (``still_owed``: pending or failed)."""

    reopened: int
    forced: int
    recorded: int
    delivered: int
    parked: int
    failed: int
    still_owed: int
    #: The holder of the reaction's lease that will deliver them, when another
    #: runner does; None when this re-delivery delivered them itself.
    delivered_by: str | None = None


@dataclass(frozen=True)
class _Survey:
    plan: RedeliveryPlan
    reopen: tuple[LedgerEntry, ...]
    record: tuple[Delivery, ...]


def _events(
    source: EventSource, reaction: Reaction, *, after: int, upto: int
) -> Iterator[tuple[int, list[Delivery]]]:
    """(position, deliveries) of every event the reaction maps in ``(after, upto]``."""
    while after < upto:
        found = source.read(after=after, upto=upto, limit=_READ_BATCH, topics=reaction.topics)
        if not found:
            return
        for notification in found:
            envelope = source.decode(notification)
            yield notification.id, list(reaction.deliveries(envelope))
        after = found[-1].id


def _payload_bytes(delivery: Delivery | None) -> int | None:
    if delivery is None:
        return None
    return len(orjson.dumps(dict(delivery.payload), option=orjson.OPT_SORT_KEYS))


def _survey(
    reaction: Reaction,
    *,
    source: EventSource,
    ledger: DeliveryLedger,
    selection: RedeliverySelection,
    payloads: bool,
    sample_limit: int,
) -> _Survey:
    if selection.reaction != reaction.name:
        raise ReactionDefinitionError(
            f"a selection of reaction {selection.reaction!r} planned for {reaction.name!r}"
        )
    name = reaction.name
    position = ledger.position(name)
    rows = ledger.select(
        name,
        first=selection.first,
        last=selection.last,
        destination=selection.destination,
        limit=_MAX_ROWS,
    )
    if (
        selection.destination is not None
        and selection.destination not in reaction.destinations
        and not rows
    ):
        raise ReactionDefinitionError(
            f"reaction {name!r} has no destination {selection.destination!r} (it delivers "
            f"to {', '.join(reaction.destinations)})"
        )
    existing = {(r.event_id, r.destination) for r in rows}
    since = selection.since
    counted = [r for r in rows if since is None or r.recorded_at >= since]
    if selection.first is not None:
        low = selection.first
    elif since is not None:
        low = min((r.position for r in counted), default=position + 1)
    else:
        low = 1
    mark = source.high_water_mark()
    high = mark if selection.last is None else min(selection.last, mark)

    resend = ("failed", "parked", "pending") + (("delivered",) if selection.force else ())
    resent = {(r.event_id, r.destination) for r in counted if r.state in resend}
    # The deliveries the sample shows (the first ones sent, by position), kept with
    # their payloads; every other payload is dropped as soon as it is mapped.
    mapped: dict[tuple[UUID, str], Delivery] = {}
    last_sampled = 0
    record: list[Delivery] = []  # missing rows a re-delivery records (at or below the position)
    not_recorded: Counter[str] = Counter()
    for at, deliveries in _events(source, reaction, after=low - 1, upto=high):
        for delivery in deliveries:
            if selection.destination not in (None, delivery.destination):
                continue
            key = (delivery.event_id, delivery.destination)
            absent = key not in existing
            if absent:
                not_recorded[delivery.destination] += 1
                if at <= position:
                    # The ledger keeps no payload: the runner maps the event again.
                    record.append(replace(delivery, payload=_NO_PAYLOAD))
            sent = key in resent or (absent and at <= position)
            if sent and (len(mapped) < sample_limit or at == last_sampled):
                mapped[key] = delivery
                last_sampled = at

    tally: dict[str, Counter[str]] = {}
    reopen: list[LedgerEntry] = []
    for row in counted:
        kind = "never_attempted" if row.state == "pending" and row.attempts == 0 else row.state
        counts = tally.setdefault(row.destination, Counter())
        counts[kind] += 1
        if row.state in resend:
            reopen.append(row)
            counts["would_send"] += 1
    for destination, count in not_recorded.items():
        tally.setdefault(destination, Counter())["not_recorded"] += count
    for delivery in record:
        tally[delivery.destination]["would_send"] += 1

    planned = sorted(
        [
            (
                row.position,
                row.destination,
                row.idempotency_key,
                row.event_type,
                row.state,
                row.attempts,
                mapped.get((row.event_id, row.destination)),
            )
            for row in reopen
        ]
        + [
            (
                d.position,
                d.destination,
                d.idempotency_key,
                d.event_type,
                "not_recorded",
                0,
                mapped.get((d.event_id, d.destination)),
            )
            for d in record
        ],
        key=lambda item: (item[0], item[1]),
    )
    sample = tuple(
        PlannedDelivery(
            position=at,
            event_type=event_type,
            destination=destination,
            idempotency_key=key,
            state=state,
            attempts=attempts,
            payload_bytes=_payload_bytes(delivery),
            payload=(
                MappingProxyType(dict(delivery.payload))
                if payloads and delivery is not None
                else None
            ),
        )
        for at, destination, key, event_type, state, attempts, delivery in planned[:sample_limit]
    )
    names = sorted(
        set(tally)
        | ({selection.destination} if selection.destination else set(reaction.destinations))
    )
    destinations = tuple(
        DestinationPlan(
            destination=d,
            delivered=tally.get(d, Counter())["delivered"],
            failed=tally.get(d, Counter())["failed"],
            parked=tally.get(d, Counter())["parked"],
            pending=tally.get(d, Counter())["pending"],
            never_attempted=tally.get(d, Counter())["never_attempted"],
            not_recorded=tally.get(d, Counter())["not_recorded"],
            would_send=tally.get(d, Counter())["would_send"],
        )
        for d in names
    )
    plan = RedeliveryPlan(
        reaction=name,
        selection=selection,
        position=position,
        destinations=destinations,
        would_send=len(planned),
        sample=sample,
        sample_limit=sample_limit,
    )
    return _Survey(plan, tuple(reopen), tuple(record))


def plan_redelivery(
    reaction: Reaction,
    *,
    source: EventSource,
    ledger: DeliveryLedger,
    selection: RedeliverySelection,
    payloads: bool = False,
    sample_limit: int = SAMPLE_LIMIT,
) -> RedeliveryPlan:
    """What a re-delivery of ``selection`` would send (a dry run: nothing changes).

    ``source`` must decode events (the reaction maps them); ``payloads``: the
    sample carries what would be sent, not only its size [False].
    """
    return _survey(
        reaction,
        source=source,
        ledger=ledger,
        selection=selection,
        payloads=payloads,
        sample_limit=sample_limit,
    ).plan


def redeliver(
    reaction: Reaction,
    *,
    source: EventSource,
    ledger: DeliveryLedger,
    selection: RedeliverySelection,
    runner: ReactionRunner,
) -> RedeliveryResult:
    """Record what is missing, reopen the selection, deliver it (see the module's
    docstring). ``runner`` runs ``reaction`` over the same ledger; it is used for one
    delivery round (or none, when another runner holds the lease)."""
    if runner.reaction.name != reaction.name:
        raise ReactionDefinitionError(
            f"a runner of {runner.reaction.name!r} cannot re-deliver {reaction.name!r}"
        )
    survey = _survey(
        reaction,
        source=source,
        ledger=ledger,
        selection=selection,
        payloads=False,
        sample_limit=0,
    )
    recorded = ledger.record_missing(reaction.name, survey.record)
    forced = sum(1 for e in survey.reopen if e.state == "delivered")
    reopened = ledger.reopen(survey.reopen, forced=selection.force)
    keys = {(e.event_id, e.destination) for e in survey.reopen} | {
        (d.event_id, d.destination) for d in survey.record
    }
    positions = [e.position for e in survey.reopen] + [d.position for d in survey.record]
    delivered_by: str | None = None
    # The selection's destination, up to its last row: another destination still down
    # is not tried on the way. (An owed earlier event of a selected aggregate goes too:
    # order per aggregate comes first.)
    destination, upto = selection.destination, max(positions, default=0)
    try:
        # Round after round while rounds settle some; a round ends when each chain is
        # done or has stopped at a failure.
        while True:
            cycle = runner.deliver_owed(
                reason="redelivery", forced=selection.force, destination=destination, upto=upto
            )
            owed = ledger.owed(reaction.name, limit=1, destination=destination, upto=upto)
            if cycle.settled == 0 or not owed:
                break
    except ReactionBusy as busy:
        delivered_by = busy.holder
    states: Counter[str] = Counter()
    if positions:
        for row in ledger.select(
            reaction.name,
            first=min(positions),
            last=max(positions),
            destination=selection.destination,
            limit=_MAX_ROWS,
        ):
            if (row.event_id, row.destination) in keys:
                states[row.state] += 1
    return RedeliveryResult(
        reopened=reopened,
        forced=forced if selection.force else 0,
        recorded=recorded,
        delivered=states["delivered"],
        parked=states["parked"],
        failed=states["failed"],
        still_owed=states["pending"] + states["failed"],
        delivered_by=delivered_by,
    )

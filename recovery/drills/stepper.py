"""The replay stepper: one projection replayed in a sandbox, one event at a time.

It answers "which event turned this read model wrong?" before a replay is planned:

1. a **sandbox** (a temporary SQLite file, or a PostgreSQL schema of its own,
   see :mod:`~safereplay.recovery.drills.sandbox`) is opened; the live build is
   never opened at all — only the event log is read — and the sandbox's store
   must not be the live one (checked, :class:`InvalidRequest` otherwise);
2. every event of the projection before ``start`` is folded into the sandbox
   with the normal :class:`~projections.ProjectionRunner` in batches (events the
   handlers reject are parked, as a drill does);
3. the events from ``start`` on are applied **one at a time** (a runner with a
   batch of one, so parking and blocking behave exactly as in a rebuild). Before
   each, the event is folded into an in-memory batch that is never written, which
   names the rows it writes; those rows are read before and after the commit,
   and the ones that changed make the step's changes (an insert has no
   ``before``, a delete no ``after``);
4. the sandbox is dropped, also when anything fails.

Each step shows the event's envelope — position, event id, type, topic, aggregate
id and version, time, correlation and causation ids, source, the id of the key
that sealed it (never key material) — and its payload only when ``payloads`` is
set (the operation sets it for principals who may read payloads; see
docs/security.md). A handler's error message may quote the payload: it is shown
only with the payload, otherwise only the error's type.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from uuid import UUID

from eventsourcing.persistence import Notification

from safereplay.domain.envelope import Envelope, event_id_for
from safereplay.domain.keyring import is_sealed, sealed_key_id
from safereplay.projections import (
    BatchState,
    EventSource,
    Projection,
    ProjectionRunner,
    ProjectionStore,
    ReplayContext,
    RunnerOptions,
    StoreError,
    TableWrites,
    replaying,
)
from safereplay.projections.tables import Table
from safereplay.recovery.drills.sandbox import Sandbox
from safereplay.recovery.drills.views import canonical_value
from safereplay.recovery.errors import InvalidRequest
from safereplay.recovery.resilience.policies import ErrorRules, Park, RulesPolicy

__all__ = [
    "DEFAULT_STEP_COUNT",
    "RowChange",
    "Step",
    "StepEnvelope",
    "StepResult",
    "step_projection",
]

#: Events stepped when neither an end nor a count is given (capped by the setting).
DEFAULT_STEP_COUNT = 20

Outcome = Literal["applied", "parked", "blocked"]


@dataclass(frozen=True)
class StepEnvelope:
    """An event's envelope: where and what it is, never its payload or a secret.

    The fields read from the decrypted event (time, correlation, causation,
    source, type, schema version) are None when it could not be decoded.
    """

    position: int
    event_id: str
    topic: str
    aggregate_id: str
    aggregate_version: int
    key_id: str | None
    event_type: str | None = None
    schema_version: int | None = None
    occurred_at: str | None = None
    correlation_id: str | None = None
    causation_id: str | None = None
    source: str | None = None


@dataclass(frozen=True)
class RowChange:
    """One projection row an event changed: ``before`` None for an insert, ``after``
    None for a delete. Values are canonical (the same on both backends)."""

    table: str
    key: tuple[Any, ...]
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    #: ``insert``, ``update`` or ``delete`` (from ``before`` and ``after``).
    kind: Literal["insert", "update", "delete"] = field(init=False)

    def __post_init__(self) -> None:
        kind = "insert" if self.before is None else "delete" if self.after is None else "update"
        object.__setattr__(self, "kind", kind)


@dataclass(frozen=True)
class Step:
    """One event applied in the sandbox and what it did to the rows."""

    envelope: StepEnvelope
    outcome: Outcome
    changes: tuple[RowChange, ...]
    #: The decoded payload (canonical JSON types), only when payloads are shown.
    payload: dict[str, Any] | None = None
    #: Why the event was parked: the error's type, its message only with payloads.
    error: str | None = None
    #: A blocked event waits behind the parked event of its aggregate at this position.
    blocked_by: int | None = None

    def summary(self) -> str:
        if self.outcome == "blocked":
            return f"not applied: its aggregate is parked at position {self.blocked_by}"
        if self.outcome == "parked":
            return f"parked: {self.error}"
        if not self.changes:
            return "changed nothing"
        kinds = [f"{c.kind} {c.table}" for c in self.changes]
        return "changed " + ", ".join(kinds)


@dataclass(frozen=True)
class StepResult:
    projection: str
    version: int
    #: The first and last position asked for (``to`` is where the sandbox ends).
    start: int
    to: int
    #: The high-water mark of the event log when the steps were read.
    head: int
    #: Only this aggregate's events were stepped (None: every event of the projection).
    aggregate: str | None
    #: Events folded in batches, before ``start`` and between the steps of one
    #: aggregate (and those parked among them).
    folded: int
    folded_parked: int
    steps: tuple[Step, ...]
    payloads_shown: bool
    #: Why payloads are not shown ("" when they are).
    payloads_note: str
    sandbox: str


def _plain(value: Any) -> Any:
    """A payload as JSON types (UUIDs and times as text)."""
    return json.loads(json.dumps(value, default=str))


def _key_id(notification: Notification) -> str | None:
    state = notification.state
    if isinstance(state, bytes | bytearray | memoryview) and is_sealed(bytes(state)):
        try:
            return sealed_key_id(bytes(state))
        except Exception:  # a malformed header: the decode below says what is wrong
            return None
    return None


def _envelope(notification: Notification, envelope: Envelope | None) -> StepEnvelope:
    aggregate_id = _uuid(notification.originator_id)
    version = int(notification.originator_version)
    shown = StepEnvelope(
        position=int(notification.id),
        event_id=str(event_id_for(aggregate_id, version)),
        topic=notification.topic,
        aggregate_id=str(aggregate_id),
        aggregate_version=version,
        key_id=_key_id(notification),
    )
    if envelope is None:
        return shown
    return StepEnvelope(
        **{
            **shown.__dict__,
            "event_id": str(envelope.event_id),
            "event_type": envelope.event_type,
            "schema_version": envelope.schema_version,
            "occurred_at": _utc(envelope.occurred_at),
            "correlation_id": str(envelope.correlation_id),
            "causation_id": None if envelope.causation_id is None else str(envelope.causation_id),
            "source": envelope.source,
        }
    )


def _written_keys(writes: Sequence[TableWrites]) -> list[tuple[Table, tuple[Any, ...]]]:
    """Every (table, key) a batch's folded writes touch, in table then write order."""
    found: list[tuple[Table, tuple[Any, ...]]] = []
    for write in writes:
        names = [c.name for c in write.table.key]
        keys = list(write.deletes)
        keys += [tuple(row[n] for n in names) for row in write.upserts]
        for rows in write.merges.values():
            keys += [tuple(row[n] for n in names) for row in rows]
        seen: set[tuple[Any, ...]] = set()
        for key in keys:
            if key not in seen:
                seen.add(key)
                found.append((write.table, key))
    return found


def _canonical_row(table: Table, row: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A row as the drills compare it (the store has decoded its JSON columns)."""
    if row is None:
        return None
    return {c.name: canonical_value(c, row.get(c.name), json_as_text=False) for c in table.columns}


def _check_range(
    start: int, end: int | None, count: int | None, head: int, max_events: int
) -> None:
    if start < 1:
        raise InvalidRequest(f"--from must be a position of 1 or more, not {start}")
    if end is not None and count is not None:
        raise InvalidRequest("give --to or --count, not both")
    if count is not None and not 1 <= count <= max_events:
        raise InvalidRequest(
            f"--count {count} is over the cap of {max_events} events a step may show "
            "(SAFEREPLAY_STEP_MAX_EVENTS)"
            if count > max_events
            else f"--count must be 1 or more, not {count}"
        )
    if start > head:
        raise InvalidRequest(f"--from {start} is past the head of the event log (position {head})")
    if end is not None:
        if start > end:
            raise InvalidRequest(f"--from {start} is after --to {end}: nothing to step")
        if end > head:
            raise InvalidRequest(f"--to {end} is past the head of the event log (position {head})")


def _events(
    source: EventSource,
    projection: type[Projection],
    *,
    start: int,
    upto: int,
    limit: int,
    aggregate: UUID | None,
) -> list[Notification]:
    """The first ``limit`` events of ``projection`` (of ``aggregate`` only, if given)
    at positions ``start`` to ``upto``; an aggregate's are found page by page."""
    topics = list(projection.topics)
    if aggregate is None:
        return source.read(after=start - 1, upto=upto, limit=limit, topics=topics)
    found: list[Notification] = []
    after = start - 1
    while after < upto and len(found) < limit:
        page = source.read(after=after, upto=upto, limit=_PAGE, topics=topics)
        found += [n for n in page if _uuid(n.originator_id) == aggregate]
        if len(page) < _PAGE:
            break
        after = int(page[-1].id)
    return found[:limit]


_PAGE = 5000


def _utc(moment: datetime) -> str:
    """A time as ISO 8601 in UTC (a naive one is UTC already), as the CLI shows times."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def _uuid(value: object) -> UUID:
    return value if isinstance(value, UUID) else UUID(str(value))


def step_projection(
    projection: Projection,
    *,
    source: EventSource,
    sandbox: Sandbox,
    start: int,
    end: int | None = None,
    count: int | None = None,
    aggregate: UUID | None = None,
    max_events: int = 200,
    payloads: bool = False,
    payloads_note: str = "",
    live_store: str | None = None,
    options: RunnerOptions | None = None,
) -> StepResult:
    """Replay ``projection`` in ``sandbox``: in batches up to ``start - 1``, then one
    event at a time from ``start`` to ``end`` (or ``count`` events of the projection;
    default :data:`DEFAULT_STEP_COUNT`), at most ``max_events`` steps.

    ``aggregate``: step only that aggregate's events; the others in between are
    folded in batches (not shown), so every row is what a rebuild would hold.
    ``live_store``: the live store's description; a sandbox that is it is refused.
    ``payloads``: show each event's payload (the caller decided the principal may).
    """
    cls = type(projection)
    head = source.high_water_mark()
    _check_range(start, end, count, head, max_events)
    wanted = count if count is not None else None if end is not None else DEFAULT_STEP_COUNT
    wanted = None if wanted is None else min(wanted, max_events)
    upto = end if end is not None else head
    limit = (wanted or max_events) + 1
    events = _events(source, cls, start=start, upto=upto, limit=limit, aggregate=aggregate)
    if wanted is None and len(events) > max_events:
        which = f"{cls.name!r}" if aggregate is None else f"aggregate {aggregate}"
        raise InvalidRequest(
            f"positions {start} to {end} hold more than {max_events} events of {which} "
            "(SAFEREPLAY_STEP_MAX_EVENTS): narrow the range or use --count"
        )
    events = events[: wanted or max_events]
    to = end if end is not None else (int(events[-1].id) if events else start - 1)
    park = RulesPolicy(ErrorRules(default=Park()))
    with sandbox.opened() as (store, _reader):
        if live_store is not None and store.description == live_store:
            raise InvalidRequest(f"the stepper never writes the live store ({live_store})")
        folded = folded_parked = 0

        def fold(until: int) -> int:
            """Fold every event up to ``until`` in batches; the build's number."""
            nonlocal folded, folded_parked
            runner = ProjectionRunner(
                projection, source=source, store=store, options=options, policy=park
            )
            runner.catch_up(until=until)
            if runner.checkpoint().position != until:
                raise InvalidRequest(
                    f"the event log offers events of {cls.name!r} only up to position "
                    f"{runner.checkpoint().position}, not {until}: step from there"
                )
            folded, folded_parked = folded + runner.applied, folded_parked + runner.parked
            return runner.build

        build = fold(start - 1)
        steps: list[Step] = []
        for notification in events:
            if aggregate is not None:
                fold(int(notification.id) - 1)
            # A runner of its own for each step: the position moved since the last one.
            stepper = ProjectionRunner(
                projection,
                source=source,
                store=store,
                build=build,
                options=RunnerOptions(batch_size=1),
                policy=park,
                replay=ReplayContext("replay", cls.name),
            )
            steps.append(_step(stepper, store, notification, payloads=payloads))
        if end is not None:
            fold(end)  # events of other aggregates and topics up to ``end``
        return StepResult(
            projection=cls.name,
            version=cls.version,
            start=start,
            to=to,
            head=head,
            aggregate=None if aggregate is None else str(aggregate),
            folded=folded,
            folded_parked=folded_parked,
            steps=tuple(steps),
            payloads_shown=payloads,
            payloads_note="" if payloads else payloads_note,
            sandbox=sandbox.description,
        )


def _step(
    runner: ProjectionRunner, store: ProjectionStore, notification: Notification, *, payloads: bool
) -> Step:
    name, build = runner.name, runner.build
    envelope: Envelope | None = None
    touched: list[tuple[Table, tuple[Any, ...]]] = []
    try:
        envelope = runner.source.decode(notification)
        handler = runner.projection.handlers().get(notification.topic)
        if handler is not None:
            # The same fold a batch makes, never written: it names the rows the event writes.
            dry = BatchState(type(runner.projection).table_map, store.row_reader(name, build))
            with replaying(ReplayContext("replay", name)):
                handler(envelope, dry)
            touched = _written_keys(dry.writes())
    except StoreError:
        raise
    except Exception:  # noqa: S110 - the runner below meets the same error and parks it
        pass
    before = [store.read_row(name, build, table, key) for table, key in touched]
    parked_before = runner.parked
    runner.run_batch(until=int(notification.id))
    after = [store.read_row(name, build, table, key) for table, key in touched]
    changes = tuple(
        RowChange(table.name, key, _canonical_row(table, old), _canonical_row(table, new))
        for (table, key), old, new in zip(touched, before, after, strict=True)
        if old != new
    )
    shown = _envelope(notification, envelope)
    payload = _plain(dict(envelope.payload)) if payloads and envelope is not None else None
    if runner.parked == parked_before:
        return Step(shown, "applied", changes, payload)
    record = next(p for p in store.parked(name, build=build) if p.position == int(notification.id))
    if record.blocked_by is not None:
        return Step(shown, "blocked", (), payload, blocked_by=record.blocked_by)
    error = f"{record.error_type}: {record.error_message}" if payloads else record.error_type
    return Step(shown, "parked", (), payload, error=error)

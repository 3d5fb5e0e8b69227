"""Reactions through the dispatch layer: status, re-delivery (planned, then run), the live runner.

- ``reactions.status`` (view, a monitoring read): per reaction, its position and how
  far behind the log it is, its lease, and per destination the ledger's rows by
  state, the oldest owed and its breaker;
- ``reactions.plan`` (view, audited): what a re-delivery of a selection would send
  (:func:`~safereplay.reactions.redelivery.plan_redelivery`); payloads only when
  asked (``payloads``), and never in the audit trail (it records parameters only);
- ``reactions.redeliver`` (operate, with a reason; ``force`` — acknowledged rows
  too — shows in the audited parameters): record, reopen, deliver;
- ``reactions.run`` (operate, long-running): the live runner of ``safereplay react``.

Each is scoped ``reaction:NAME`` (``reaction:*`` for a status of every reaction).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from safereplay.domain.errors import ConfigurationError
from safereplay.reactions import (
    DeliveryLedger,
    Reaction,
    ReactionDefinitionError,
    ReactionRunner,
)
from safereplay.reactions.redelivery import (
    RedeliveryPlan,
    RedeliverySelection,
    plan_redelivery,
    redeliver,
)
from safereplay.reactions.settings import webhook_settings
from safereplay.recovery.errors import InvalidRequest
from safereplay.recovery.operations.automation import auto_redrive_reaction
from safereplay.recovery.operations.dispatch import OperationContext, Operations, int_parameter
from safereplay.recovery.operations.reaction_runtime import parse_since, running
from safereplay.recovery.operations.rebuilds import stop_on_signals
from safereplay.recovery.security.access import Permission

if TYPE_CHECKING:
    from safereplay.recovery.operations.context import RecoveryContext

__all__ = ["THIS_COMMAND", "register_reaction_operations", "selection_of"]

#: ``delivered_by`` when the re-delivery delivered the rows itself.
THIS_COMMAND = "this command"


def reaction_scope(parameters: Mapping[str, Any]) -> str:
    name = parameters.get("reaction")
    if not isinstance(name, str) or not name:
        raise InvalidRequest("this operation needs a reaction name")
    return f"reaction:{name}"


def status_scope(parameters: Mapping[str, Any]) -> str:
    name = parameters.get("reaction")
    return f"reaction:{name}" if isinstance(name, str) and name else "reaction:*"


@contextmanager
def _as_invalid_request() -> Iterator[None]:
    """A reaction's definition error (a bad selection) as the operator's bad input."""
    try:
        yield
    except ReactionDefinitionError as exc:
        raise InvalidRequest(str(exc)) from None


def selection_of(parameters: Mapping[str, Any]) -> RedeliverySelection:
    """The parameters of ``reactions.plan`` / ``reactions.redeliver`` as a selection."""
    with _as_invalid_request():
        return RedeliverySelection(
            reaction=str(parameters["reaction"]),
            first=int_parameter(parameters, "first"),
            last=int_parameter(parameters, "last"),
            since=parse_since(parameters.get("since")),
            destination=parameters.get("destination") or None,
            force=bool(parameters.get("force")),
        )


def _lease(ledger: DeliveryLedger, reaction: str) -> dict[str, Any] | None:
    """The reaction's lease as status shows it; None while no runner holds it."""
    lease = ledger.lease(reaction)
    return None if lease is None else {"holder": lease.holder, "expires_at": lease.expires_at}


def _breakers(ledger: DeliveryLedger, reaction: str) -> dict[str, tuple[str, float]]:
    """Destination -> (breaker state, when it changed), as its runner last saw them."""
    return {d: (r.state, r.changed_at) for d, r in ledger.breaker_states(reaction).items()}


def _stop_with(runner: ReactionRunner, stop: threading.Event) -> None:
    """Stop ``runner`` when ``stop`` is set (a signal, or the operation's end)."""

    def watch() -> None:
        stop.wait()
        runner.stop()

    threading.Thread(target=watch, daemon=True, name=f"stop-{runner.name}").start()


def _configured(destination: str) -> bool:
    try:
        webhook_settings(destination)
    except ConfigurationError:
        return False
    return True


def reaction_status(
    context: RecoveryContext, reaction: Reaction, *, head: int, now: float
) -> dict[str, Any]:
    """One reaction's entry of ``reactions.status`` (see the module's docstring)."""
    ledger = context.ledger
    position = ledger.position(reaction.name)
    behind = (
        context.log.count(after=position, upto=head, topics=reaction.topics)
        if head > position
        else 0
    )
    summaries = {s.destination: s for s in ledger.summary(reaction.name)}
    breakers = _breakers(ledger, reaction.name)
    destinations = []
    for name in sorted(set(reaction.destinations) | set(summaries)):
        summary = summaries.get(name)
        oldest = None if summary is None else summary.oldest_owed_at
        breaker = breakers.get(name)
        destinations.append(
            {
                "destination": name,
                "configured": name in reaction.destinations and _configured(name),
                "pending": 0 if summary is None else summary.pending,
                "failed": 0 if summary is None else summary.failed,
                "parked": 0 if summary is None else summary.parked,
                "delivered": 0 if summary is None else summary.delivered,
                "owed": 0 if summary is None else summary.owed,
                "oldest_owed_at": oldest,
                "oldest_owed_age_seconds": None if oldest is None else max(0.0, now - oldest),
                "breaker_state": None if breaker is None else breaker[0],
                "breaker_changed_at": None if breaker is None else breaker[1],
            }
        )
    return {
        "name": reaction.name,
        "version": reaction.version,
        "topics": list(reaction.topics),
        "position": position,
        "head": head,
        "behind": behind,
        "lease": _lease(ledger, reaction.name),
        "destinations": destinations,
    }


def plan_json(plan: RedeliveryPlan, *, payloads: bool) -> dict[str, Any]:
    """``reactions.plan``'s answer."""
    sample = []
    for item in plan.sample:
        entry: dict[str, Any] = {
            "position": item.position,
            "event_type": item.event_type,
            "destination": item.destination,
            "idempotency_key": item.idempotency_key,
            "state": item.state,
            "attempts": item.attempts,
            "payload_bytes": item.payload_bytes,
        }
        if payloads:
            entry["payload"] = None if item.payload is None else dict(item.payload)
        sample.append(entry)
    return {
        "reaction": plan.reaction,
        "selection": plan.selection.as_dict(),
        "destinations": [
            {
                "destination": d.destination,
                "delivered": d.delivered,
                "failed": d.failed,
                "parked": d.parked,
                "pending": d.pending,
                "never_attempted": d.never_attempted,
                "not_recorded": d.not_recorded,
                "would_send": d.would_send,
            }
            for d in plan.destinations
        ],
        "would_send": plan.would_send,
        "sample": sample,
        "sample_limit": plan.sample_limit,
    }


def register_reaction_operations(operations: Operations, context: RecoveryContext) -> None:
    def status(ctx: OperationContext, p: Mapping[str, Any]) -> dict[str, Any]:
        registry = context.reactions
        names = [p["reaction"]] if p.get("reaction") else list(registry)
        reactions = [registry[name] for name in names]  # an unknown name is refused
        # The log's head only: nothing is decrypted.
        head = max(context.log.head(), context.log.high_water_mark())
        now = time.time()
        return {
            "reactions": [
                reaction_status(context, reaction, head=head, now=now) for reaction in reactions
            ]
        }

    def plan(ctx: OperationContext, p: Mapping[str, Any]) -> dict[str, Any]:
        reaction = context.reactions[str(p["reaction"])]
        payloads = bool(p.get("payloads"))
        selection = selection_of(p)
        with _as_invalid_request():
            found = plan_redelivery(
                reaction,
                source=context.source,
                ledger=context.ledger,
                selection=selection,
                payloads=payloads,
            )
        return plan_json(found, payloads=payloads)

    def redeliver_selection(ctx: OperationContext, p: Mapping[str, Any]) -> dict[str, Any]:
        reaction = context.reactions[str(p["reaction"])]
        selection = selection_of(p)
        with running(context, reaction) as runner, stop_on_signals() as stop:
            # Ctrl-C / SIGTERM: no new attempt starts; what is reopened stays owed.
            _stop_with(runner, stop)
            try:
                with _as_invalid_request():
                    result = redeliver(
                        reaction,
                        source=context.source,
                        ledger=context.ledger,
                        selection=selection,
                        runner=runner,
                    )
            finally:
                stop.set()
        return {
            "reaction": reaction.name,
            "selection": selection.as_dict(),
            "reopened": result.reopened,
            "forced": result.forced,
            "recorded": result.recorded,
            "delivered": result.delivered,
            "parked": result.parked,
            "failed": result.failed,
            "still_owed": result.still_owed,
            "delivered_by": result.delivered_by or THIS_COMMAND,
        }

    def run(ctx: OperationContext, p: Mapping[str, Any]) -> dict[str, Any]:
        reaction = context.reactions[str(p["reaction"])]
        once = bool(p.get("once"))
        poll = context.recovery.reaction_poll_seconds
        totals = {"cycles": 0, "events": 0, "recorded": 0, "delivered": 0, "parked": 0}
        with running(context, reaction) as runner, stop_on_signals() as stop:
            if p.get("stop_after") is not None:  # tests and smoke runs
                threading.Timer(float(p["stop_after"]), stop.set).start()
            _stop_with(runner, stop)
            failed = 0
            try:
                while not stop.is_set():
                    for cycle in runner.run_until_idle():
                        totals["cycles"] += 1
                        totals["events"] += cycle.events
                        totals["recorded"] += cycle.recorded
                        totals["delivered"] += cycle.delivered
                        totals["parked"] += cycle.parked
                        failed += cycle.failed
                    # Recovery flag auto_redrive (off by default): a destination back.
                    auto_redrive_reaction(context, reaction, runner)
                    if once:
                        break
                    context.source.wait(poll, stop)
            finally:
                stop.set()
            owed = sum(s.owed for s in context.ledger.summary(reaction.name))
        return {
            "reaction": reaction.name,
            **totals,
            "failed": failed,
            "owed": owed,
            "position": context.ledger.position(reaction.name),
        }

    operations.register(
        "reactions.status",
        permission=Permission.VIEW,
        handler=status,
        scope=status_scope,
        scope_reads=False,
        summary="each reaction's position and, per destination, deliveries by state",
        monitoring=True,
    )
    operations.register(
        "reactions.plan",
        permission=Permission.VIEW,
        handler=plan,
        scope=reaction_scope,
        scope_reads=False,
        summary="what a re-delivery would send: delivered, failed, parked, never attempted",
    )
    operations.register(
        "reactions.redeliver",
        permission=Permission.OPERATE,
        handler=redeliver_selection,
        scope=reaction_scope,
        scope_reads=False,
        summary="send a reaction's missed deliveries again (acknowledged ones only forced)",
    )
    operations.register(
        "reactions.run",
        permission=Permission.OPERATE,
        handler=run,
        scope=reaction_scope,
        scope_reads=False,
        summary="run a reaction live: record new events' deliveries and send them",
        long_running=True,
    )

"""The replay stepper as an operation (``step``): view permission on the projection.

Payloads are shown only when asked (``payloads``) **and** the principal holds the
operate permission on the projection (what lets it re-drive, replay and rebuild
it: the role trusted with the events themselves); a viewer gets the envelopes and
the row changes, and the result says why the payloads are left out. Every step
call is audited by the dispatch layer; one that showed payloads also gets a
``step.payloads`` entry naming the positions whose payloads were read.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from uuid import UUID

from safereplay.recovery.drills.stepper import StepResult, step_projection
from safereplay.recovery.errors import InvalidRequest
from safereplay.recovery.operations.dispatch import OperationContext, Operations, int_parameter
from safereplay.recovery.operations.drills import new_sandbox
from safereplay.recovery.security.access import Permission
from safereplay.recovery.security.audit import AuditRecord

if TYPE_CHECKING:
    from safereplay.recovery.operations.context import RecoveryContext

__all__ = ["PAYLOAD_PERMISSION", "live_store_description", "register_step_operations"]

#: What a principal needs on ``projection:NAME`` to see the payloads of its events.
PAYLOAD_PERMISSION = Permission.OPERATE


def live_store_description(context: RecoveryContext) -> str:
    """The live projection store's description (as its store object gives it), read
    from the settings alone: the stepper refuses a sandbox that is this store."""
    if context.domain.backend == "sqlite":
        path = context.projection_settings.sqlite_store_path(context.domain)
        return f"SQLite projection store {str(path)!r}"
    _conninfo, schema = context.projection_settings.postgres_store(context.domain)
    return f"PostgreSQL projection store (schema {schema!r})"


def register_step_operations(operations: Operations, context: RecoveryContext) -> None:
    def step(ctx: OperationContext, p: Mapping[str, Any]) -> StepResult:
        projection = context.registry[str(p["projection"])]
        start = int_parameter(p, "from")
        if start is None:
            raise InvalidRequest("step needs --from: the first position to apply one at a time")
        aggregate = p.get("aggregate")
        try:
            aggregate_id = None if aggregate in (None, "") else UUID(str(aggregate))
        except ValueError:
            raise InvalidRequest(f"aggregate must be a UUID, not {aggregate!r}") from None
        asked = bool(p.get("payloads"))
        scope = f"projection:{projection.name}"
        allowed = context.access.allows(ctx.principal.name, PAYLOAD_PERMISSION, scope)
        if not asked:
            note = "payloads are shown only when asked (--payloads)"
        elif not allowed:
            note = (
                f"payloads need the {PAYLOAD_PERMISSION} permission on {scope!r}; "
                f"{ctx.principal.name!r} holds view only"
            )
        else:
            note = ""
        result = step_projection(
            projection(),
            source=context.source,
            sandbox=new_sandbox(context),
            start=start,
            end=int_parameter(p, "to"),
            count=int_parameter(p, "count"),
            aggregate=aggregate_id,
            max_events=context.recovery.step_max_events,
            payloads=asked and allowed,
            payloads_note=note,
            live_store=live_store_description(context),
            options=context.runner_options(),
        )
        if result.payloads_shown and result.steps:
            context.audit.append(
                AuditRecord(
                    actor=ctx.principal.name,
                    action="step.payloads",
                    scope=scope,
                    reason=ctx.reason,
                    outcome="succeeded",
                    parameters={
                        "positions": [s.envelope.position for s in result.steps],
                        "from": result.start,
                        "to": result.to,
                    },
                )
            )
        return result

    operations.register(
        "step",
        permission=Permission.VIEW,
        handler=step,
        summary=(
            "replay a projection in a sandbox one event at a time: each event's envelope "
            "and the rows it changed (payloads to operators, when asked)"
        ),
    )

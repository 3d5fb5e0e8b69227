"""Integrity conflicts through the dispatch layer: ``conflicts.list``, ``conflicts.resolve``.

A conflict is work that stopped itself on a failed integrity check
(:mod:`safereplay.recovery.jobs.conflicts`). Listing them is a routine read (view
on ``projection:*``); resolving one is an operator's explicit decision (operate on
the conflict's projection, or ``projection:*`` for one that names none), audited
with its reason: ``retry`` after fixing the cause, ``park`` to park that one event
and go on. The paused job partition is given back to the workers at once.

A gate pauses what the other checks' conflicts stand for: while the audit chain's
conflict (``audit verify`` failed) is open, no recovery work starts
(:data:`STARTS_WORK`); while a drill's conflict (a checksum that did not match) is
open, that projection is not swapped. Both are refused as conflicts, naming the
conflict and the command that resolves it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from safereplay.recovery.errors import InvalidRequest, JobConflict
from safereplay.recovery.jobs.conflicts import RESOLUTIONS, Conflict
from safereplay.recovery.operations.dispatch import (
    GateCall,
    OperationContext,
    Operations,
    limit_parameter,
)
from safereplay.recovery.operations.shapes import iso_time
from safereplay.recovery.security.access import Permission

if TYPE_CHECKING:
    from safereplay.recovery.operations.context import RecoveryContext

__all__ = ["MAX_CONFLICTS", "STARTS_WORK", "conflict_json", "register_conflict_operations"]

#: Operations that start or run recovery work: refused while the audit chain's
#: conflict is open.
STARTS_WORK = frozenset(
    {"rebuild", "catch-up", "replay", "parked.redrive", "retry-partition", "worker", "follow"}
)

#: The most conflicts one ``conflicts.list`` shows (``--limit``); the default is 100.
MAX_CONFLICTS = 10_000


def conflict_json(conflict: Conflict) -> dict[str, Any]:
    """One conflict as the CLI's ``--json`` and the API show it (times in ISO 8601)."""
    shown = asdict(conflict)
    shown["raised_at"] = iso_time(conflict.raised_at)
    shown["resolved_at"] = None if conflict.resolved_at is None else iso_time(conflict.resolved_at)
    return shown


def _conflict_id(p: Mapping[str, Any]) -> str:
    conflict_id = p.get("conflict_id")
    if not isinstance(conflict_id, str) or not conflict_id.strip():
        raise InvalidRequest("this operation needs a conflict id (see `safereplay conflicts list`)")
    return conflict_id.strip()


def register_conflict_operations(operations: Operations, context: RecoveryContext) -> None:
    def list_conflicts(ctx: OperationContext, p: Mapping[str, Any]) -> list[dict[str, Any]]:
        limit = limit_parameter(p, most=MAX_CONFLICTS)
        shown = context.conflicts.list(open_only=not p.get("include_resolved"), limit=limit)
        return [conflict_json(c) for c in shown[:limit]]

    def scope(p: Mapping[str, Any]) -> str:
        projection = context.conflicts.get(_conflict_id(p)).projection
        return f"projection:{projection or '*'}"

    def resolve(ctx: OperationContext, p: Mapping[str, Any]) -> dict[str, Any]:
        action = p.get("action")
        if action not in RESOLUTIONS:
            raise InvalidRequest(
                f"--action must be one of {', '.join(RESOLUTIONS)}, not {action!r}"
            )
        resolved = context.conflicts.resolve(
            _conflict_id(p), resolution=action, reason=ctx.reason, principal=ctx.principal.name
        )
        return conflict_json(resolved)

    def pause_on_open_checks(call: GateCall) -> None:
        if call.operation not in STARTS_WORK and call.operation != "swap":
            return
        open_now = context.conflicts.open_subjects()
        audit = open_now.get("audit")
        if audit is not None and call.operation in STARTS_WORK:
            raise JobConflict(
                f"recovery work is paused by conflict {audit.conflict_id} ({audit.reason}); "
                f"once the trail is restored: `safereplay conflicts resolve "
                f"{audit.conflict_id} --action retry --reason ...`"
            )
        projection = call.parameters.get("projection")
        for conflict in open_now.values():
            drill = conflict.kind == "drill" and conflict.projection == projection
            if call.operation == "swap" and drill:
                raise JobConflict(
                    f"swaps of {projection!r} are paused by conflict "
                    f"{conflict.conflict_id} ({conflict.reason}); after a matching drill: "
                    f"`safereplay conflicts resolve {conflict.conflict_id} --action retry "
                    f"--reason ...`"
                )

    operations.add_gate(pause_on_open_checks)
    operations.register(
        "conflicts.list",
        permission=Permission.VIEW,
        handler=list_conflicts,
        scope="projection:*",
        summary="list open (or all) integrity conflicts: work paused by a failed check",
        monitoring=True,
    )
    operations.register(
        "conflicts.resolve",
        permission=Permission.OPERATE,
        handler=resolve,
        scope=scope,
        scope_reads=True,
        summary="resolve an integrity conflict (retry, or park its event); the work resumes",
    )

"""Integrity conflicts through the dispatch layer: ``conflicts.list``, ``conflicts.resolve``.

A conflict is work that stopped itself on a failed integrity check
(:mod:`safereplay.recovery.jobs.conflicts`). Listing them is a routine read (view
on ``projection:*``); resolving one is an operator's explicit decision (operate on
the conflict's projection, or ``projection:*`` for one that names none), audited
with its reason: ``retry`` after fixing the cause, ``park`` to park that one event
and go on. The paused job partition is given back to the workers at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from safereplay.recovery.errors import InvalidRequest
from safereplay.recovery.jobs.conflicts import RESOLUTIONS, Conflict
from safereplay.recovery.operations.dispatch import OperationContext, Operations, limit_parameter
from safereplay.recovery.operations.shapes import iso_time
from safereplay.recovery.security.access import Permission

if TYPE_CHECKING:
    from safereplay.recovery.operations.context import RecoveryContext

__all__ = ["MAX_CONFLICTS", "conflict_json", "register_conflict_operations"]

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

"""Reading projections through the dispatch layer: status and parked events."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from safereplay.projections import StatusReport, open_source, status
from safereplay.recovery.operations.dispatch import OperationContext, Operations
from safereplay.recovery.security.access import Permission

if TYPE_CHECKING:
    from safereplay.recovery.operations.context import RecoveryContext

__all__ = ["register_projection_operations"]


def register_projection_operations(operations: Operations, context: RecoveryContext) -> None:
    def parked_list(ctx: OperationContext, p: Mapping[str, Any]) -> list[dict[str, Any]]:
        parked = context.projection_store.parked(
            p["projection"], include_resolved=bool(p.get("include_resolved"))
        )
        # Parked records hold where and why, never a payload: safe to show a viewer.
        return [asdict(event) for event in parked]

    def status_report(ctx: OperationContext, p: Mapping[str, Any]) -> StatusReport:
        names = list(p.get("projections") or []) or None
        # The log's head and safe head need no key ring: nothing is decrypted here.
        with open_source(context.domain, settings=context.projection_settings) as source:
            return status(context.projection_store, source, names)

    def status_scope(parameters: Mapping[str, Any]) -> str:
        names = list(parameters.get("projections") or [])
        return f"projection:{names[0]}" if len(names) == 1 else "projection:*"

    operations.register(
        "status",
        permission=Permission.VIEW,
        handler=status_report,
        scope=status_scope,
        summary="head, safe head, and each projection's position, backlog and last commit",
    )
    operations.register(
        "parked.list",
        permission=Permission.VIEW,
        handler=parked_list,
        summary="list parked (dead-letter) events of a projection",
    )

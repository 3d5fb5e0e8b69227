"""Operations on projections that recovery jobs build on (more arrive with rebuilds)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from recovery.access import Permission
from recovery.operations import OperationContext, Operations

if TYPE_CHECKING:
    from recovery.context import RecoveryContext

__all__ = ["register_projection_operations"]


def register_projection_operations(operations: Operations, context: RecoveryContext) -> None:
    def parked_list(ctx: OperationContext, p: Mapping[str, Any]) -> list[dict[str, Any]]:
        parked = context.projection_store.parked(
            p["projection"], include_resolved=bool(p.get("include_resolved"))
        )
        # Parked records hold where and why, never a payload: safe to show a viewer.
        return [asdict(event) for event in parked]

    operations.register(
        "parked.list",
        permission=Permission.VIEW,
        handler=parked_list,
        summary="list parked (dead-letter) events of a projection",
    )

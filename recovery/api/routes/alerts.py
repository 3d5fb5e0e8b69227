"""Stall and anomaly alerts: evaluated on each read (see docs/alerts.md)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from safereplay.recovery.api.callers import CallerDep

__all__ = ["router"]

router = APIRouter(prefix="/api", tags=["alerts"])


@router.get("/alerts", summary="evaluate the stall and anomaly rules, then list alerts")
def alerts(
    caller: CallerDep,
    include_cleared: Annotated[
        bool, Query(description="Cleared alerts too, after the open ones.")
    ] = False,
    limit: Annotated[int, Query(ge=1, le=10_000, description="The most alerts listed.")] = 100,
) -> Any:
    """``{"evaluated_at", "alerts": [...]}``, as ``safereplay alerts --json`` shows it."""
    return caller.run("alerts", include_cleared=include_cleared, limit=limit)

"""Integrity conflicts: work paused by a failed integrity check, and its resolution."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query
from pydantic import Field

from safereplay.recovery.api.callers import CallerDep
from safereplay.recovery.api.routes.bodies import Reasoned

__all__ = ["router"]

router = APIRouter(prefix="/api", tags=["conflicts"])

ConflictId = Annotated[
    str, Path(min_length=1, max_length=100, description="The conflict's id (GET /api/conflicts).")
]


class ResolveBody(Reasoned):
    """How to resolve it (``safereplay conflicts resolve``)."""

    action: Literal["retry", "park"] = Field(
        description="retry (after fixing the cause) or park (park that event, go on)."
    )


@router.get("/conflicts", summary="open (or all) integrity conflicts: where, why, never payloads")
def conflicts_list(
    caller: CallerDep,
    include_resolved: Annotated[
        bool, Query(description="Resolved conflicts too, after the open ones.")
    ] = False,
    limit: Annotated[int, Query(ge=1, le=10_000, description="The most listed.")] = 100,
) -> Any:
    """As ``safereplay conflicts list --json`` shows them."""
    return caller.run("conflicts.list", include_resolved=include_resolved, limit=limit)


@router.post(
    "/conflicts/{conflict_id}/resolve",
    summary="resolve an integrity conflict (retry, or park its event); the work resumes",
)
def conflicts_resolve(caller: CallerDep, conflict_id: ConflictId, body: ResolveBody) -> Any:
    return caller.run(
        "conflicts.resolve", reason=body.reason, conflict_id=conflict_id, action=body.action
    )

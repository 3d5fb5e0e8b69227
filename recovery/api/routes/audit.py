"""The audit trail: list its entries (filtered), verify it."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Query

from safereplay.recovery.api.callers import CallerDep
from safereplay.recovery.operations.security import audit_list_parameters

__all__ = ["MAX_ENTRIES", "router"]

router = APIRouter(prefix="/api/audit", tags=["audit"])

#: The most entries one listing returns.
MAX_ENTRIES = 1000


@router.get("", summary="audit entries, oldest first (filters narrow them)")
def audit_list(
    caller: CallerDep,
    actor: Annotated[str | None, Query(max_length=200, description="Only this principal.")] = None,
    projection: Annotated[
        str | None, Query(max_length=200, description="Only this projection.")
    ] = None,
    job: Annotated[UUID | None, Query(description="Only this job id.")] = None,
    action: Annotated[str | None, Query(max_length=200, description="Only this operation.")] = None,
    since: Annotated[datetime | None, Query(description="From this time (ISO 8601).")] = None,
    until: Annotated[datetime | None, Query(description="Up to this time (ISO 8601).")] = None,
    limit: Annotated[
        int, Query(ge=1, le=MAX_ENTRIES, description="At most this many entries.")
    ] = 100,
) -> Any:
    filters = audit_list_parameters(
        actor=actor,
        projection=projection,
        job=job,
        action=action,
        since=since,
        until=until,
        limit=limit,
    )
    return caller.run("audit.list", **filters)


@router.get(
    "/verify",
    summary="verify the chain, signatures, head and latest anchor (needs administer)",
)
def audit_verify(caller: CallerDep) -> Any:
    return caller.run("audit.verify")

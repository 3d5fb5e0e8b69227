"""Change requests (four-eyes approval, docs/security.md): list, show, approve, reject.

A call to any other endpoint that ``SAFEREPLAY_APPROVAL_REQUIRED`` names is
answered ``202 Accepted`` with ``{"awaiting_approval": <the request>, "message"}``:
nothing ran yet (see :class:`~safereplay.recovery.api.callers.Caller`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query

from safereplay.recovery.api.callers import CallerDep
from safereplay.recovery.api.routes.bodies import Reasoned

__all__ = ["router"]

router = APIRouter(prefix="/api/requests", tags=["approval"])

RequestId = Annotated[
    str,
    Path(
        min_length=8,
        max_length=32,
        pattern=r"^[0-9a-f]+$",
        description="A change request's id, or an unambiguous prefix of it (8+ hex digits).",
    ),
]


@router.get("", summary="list change requests, newest first")
def list_requests(
    caller: CallerDep,
    state: Annotated[
        Literal["pending", "approved", "rejected", "expired", "failed"] | None,
        Query(description="Only requests in this state."),
    ] = None,
    scope: Annotated[
        str | None,
        Query(
            max_length=100,
            description="Only requests within this scope (default: all you may view, "
            "checked on projection:*).",
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=10_000, description="The most listed.")] = 100,
) -> Any:
    """As ``safereplay requests list --json``; needs the view permission on ``scope``
    (default: projection:*)."""
    return caller.run("requests.list", state=state, filter_scope=scope, limit=limit)


@router.get("/{request_id}", summary="one change request")
def show_request(caller: CallerDep, request_id: RequestId) -> Any:
    return caller.run("requests.show", request_id=request_id)


@router.post("/{request_id}/approve", summary="approve a change request: its operation runs")
def approve_request(caller: CallerDep, request_id: RequestId, body: Reasoned) -> Any:
    """Runs the stored operation as its requester; refused for the requester, and for
    an expired, decided or stale request (409)."""
    return caller.run("requests.approve", reason=body.reason, request_id=request_id)


@router.post("/{request_id}/reject", summary="reject a change request (with a reason)")
def reject_request(caller: CallerDep, request_id: RequestId, body: Reasoned) -> Any:
    return caller.run("requests.reject", reason=body.reason, request_id=request_id)

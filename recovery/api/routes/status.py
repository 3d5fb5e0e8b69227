"""Who am I, the store's status and the projections."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from safereplay.recovery.api.callers import CallerDep
from safereplay.recovery.security.access import ROLE_PERMISSIONS

__all__ = ["router"]

router = APIRouter(prefix="/api", tags=["status"])


@router.get("/me", summary="the signed-in principal and what it may do where")
def me(caller: CallerDep) -> dict[str, Any]:
    """The caller's own grants (what the dashboard shows buttons for). Reading
    one's own grants needs no permission, so it is not an operation."""
    grants = caller.context.access.grants(caller.principal.name)
    permissions: dict[str, list[str]] = {}
    for grant in grants:
        for permission in ROLE_PERMISSIONS[grant.role]:
            permissions.setdefault(str(permission), []).append(grant.scope)
    return {
        "principal": caller.principal.name,
        "kind": caller.principal.kind,
        "grants": [{"role": str(g.role), "scope": g.scope} for g in grants],
        "permissions": {k: sorted(set(v)) for k, v in sorted(permissions.items())},
    }


@router.get("/status", summary="head, safe head, and each projection's position and backlog")
def status(caller: CallerDep, projection: str | None = None) -> Any:
    return caller.run("status", projections=[projection] if projection else [])


@router.get("/projections", summary="every registered projection: builds, state and backlog")
def projections(caller: CallerDep) -> Any:
    return caller.run("projections")

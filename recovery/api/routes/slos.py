"""Replay SLOs: each target's status and error budget, and their breaches (docs/slo.md)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query

from safereplay.recovery.api.callers import CallerDep

__all__ = ["router"]

router = APIRouter(prefix="/api", tags=["slos"])

Kind = Annotated[Literal["projection", "reaction"], Path(description="projection or reaction")]
Name = Annotated[str, Path(min_length=1, max_length=200, description="Its name.")]


@router.get("/slos", summary="sample the replay SLOs if due, then each target and its budget")
def slos(caller: CallerDep) -> Any:
    """``{"evaluated_at", "window_seconds", "slos": [...]}``, as ``safereplay slo --json``."""
    return caller.run("slo.status")


@router.get("/slos/history", summary="the replay SLOs' breaches over the window")
def slo_history(
    caller: CallerDep,
    limit: Annotated[int, Query(ge=1, le=10_000, description="The most breaches listed.")] = 100,
) -> Any:
    """``{"evaluated_at", "window_seconds", "breaches": [...]}``, open ones first."""
    return caller.run("slo.history", limit=limit)


@router.get("/slos/{kind}/{name}", summary="one projection's or reaction's SLO targets")
def slos_of(caller: CallerDep, kind: Kind, name: Name) -> Any:
    """As ``/api/slos``, only the targets of that projection or reaction."""
    return caller.run("slo.status", subject=f"{kind}:{name}")

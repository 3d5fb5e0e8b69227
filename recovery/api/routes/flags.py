"""Recovery flags and the operations switch (see docs/security.md)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from pydantic import ConfigDict, Field

from safereplay.recovery.api.callers import CallerDep
from safereplay.recovery.api.routes.bodies import Reasoned

__all__ = ["router"]

router = APIRouter(prefix="/api", tags=["flags"])

FlagPath = Annotated[
    str,
    Path(
        max_length=40,
        description="auto_catch_up, auto_redrive, auto_rebuild or auto_restart_stalled",
    ),
]
TargetPath = Annotated[str, Path(max_length=80, description="projection:NAME or reaction:NAME")]


class FlagChange(Reasoned):
    """What changes (the rest is kept, or its default); why."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool | None = Field(default=None, description="On or off (kept if not given).")
    partitions: list[str] | None = Field(
        default=None, max_length=4096, description="Roll out to these partitions only."
    )
    share: int | None = Field(
        default=None, ge=1, le=100, description="Roll out to this share of partitions (%)."
    )
    all_partitions: bool | None = Field(default=None, description="Roll out to every partition.")
    backlog_threshold: int | None = Field(
        default=None, ge=0, description="auto_catch_up: act above this backlog (events)."
    )
    max_restarts: int | None = Field(
        default=None, ge=1, le=100, description="auto_restart_stalled: restarts per window."
    )
    window_seconds: int | None = Field(
        default=None, ge=60, le=604_800, description="auto_restart_stalled: the window (s)."
    )


@router.get("/flags", summary="the recovery flags that are set, and the operations switch")
def flags_list(caller: CallerDep) -> Any:
    return caller.run("flags.list")


@router.get("/flags/history", summary="every change of a flag, a threshold or the switch")
def flags_history(
    caller: CallerDep,
    limit: Annotated[int, Query(ge=1, le=10_000, description="The most changes listed.")] = 100,
) -> Any:
    return caller.run("flags.history", limit=limit)


@router.put("/flags/{flag}/{target}", summary="set a recovery flag on a target")
def flags_set(caller: CallerDep, flag: FlagPath, target: TargetPath, body: FlagChange) -> Any:
    changes = body.model_dump(exclude={"reason"}, exclude_none=True)
    return caller.run("flags.set", reason=body.reason, flag=flag, target=target, **changes)


@router.delete("/flags/{flag}/{target}", summary="unset a recovery flag (back to off)")
def flags_unset(caller: CallerDep, flag: FlagPath, target: TargetPath, body: Reasoned) -> Any:
    return caller.run("flags.unset", reason=body.reason, flag=flag, target=target)


@router.get("/switch", summary="the operations switch: frozen or not, by whom, why")
def switch_status(caller: CallerDep) -> Any:
    return caller.run("switch.status")


@router.post("/switch/freeze", summary="freeze every change for everyone but the holder")
def switch_freeze(caller: CallerDep, body: Reasoned) -> Any:
    return caller.run("switch.freeze", reason=body.reason)


@router.post("/switch/unfreeze", summary="unfreeze operations (the holder, or an admin)")
def switch_unfreeze(caller: CallerDep, body: Reasoned) -> Any:
    return caller.run("switch.unfreeze", reason=body.reason)

"""Parked (dead-letter) events: list them (where and why, never a payload),
re-drive them after a fix, skip one that can never apply."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Path, Query
from pydantic import Field

from safereplay.recovery.api.callers import CallerDep
from safereplay.recovery.api.routes.bodies import Reasoned
from safereplay.recovery.api.routes.paths import ProjectionName
from safereplay.recovery.operations.parked import parse_parked_id

__all__ = ["router"]

router = APIRouter(prefix="/api", tags=["parked"])


class RedriveBody(Reasoned):
    """What to re-drive (``safereplay parked redrive``): every parked event of the
    build, or only some aggregates'."""

    aggregates: list[UUID] = Field(
        default_factory=list, max_length=1000, description="Only these aggregates (--aggregate)."
    )
    build: int | None = Field(default=None, ge=1, description="The build (default: the live one).")


class SkipBody(Reasoned):
    """Which build the parked event is in (``safereplay parked skip``)."""

    build: int | None = Field(default=None, ge=1, description="The build (default: the live one).")


@router.get(
    "/projections/{name}/parked",
    summary="a projection's parked events in position order: where and why, never payloads",
)
def parked_list(
    caller: CallerDep,
    name: ProjectionName,
    include_resolved: Annotated[
        bool, Query(description="Also re-driven and skipped ones.")
    ] = False,
) -> Any:
    return caller.run("parked.list", projection=name, include_resolved=include_resolved)


@router.post(
    "/projections/{name}/parked/redrive",
    summary="plan a redrive of parked events, in order, after a fix (a worker runs it)",
)
def redrive(caller: CallerDep, name: ProjectionName, body: RedriveBody) -> Any:
    parameters: dict[str, Any] = {"aggregates": [str(a) for a in body.aggregates]}
    if body.build is not None:
        parameters["build"] = body.build
    return caller.run("parked.redrive", reason=body.reason, projection=name, **parameters)


@router.post(
    "/parked/{parked_id}/skip",
    summary="skip a parked event that can never apply (resolved, never applied)",
)
def skip(
    caller: CallerDep,
    parked_id: Annotated[
        str,
        Path(
            max_length=220,
            description="PROJECTION:POSITION, as the parked list shows it (e.g. run_status:42).",
        ),
    ],
    body: SkipBody,
) -> Any:
    projection, position = parse_parked_id(parked_id)
    return caller.run(
        "parked.skip",
        reason=body.reason,
        projection=projection,
        position=position,
        build=body.build,
    )

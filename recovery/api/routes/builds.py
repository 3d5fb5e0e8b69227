"""Builds of a projection: start a rebuild, a catch-up or a replay (the job is
planned; workers run it), swap, roll back, drop a build, read rows, run and list
drills.

The bodies take the parameters the command line's commands take, with the same
bounds; an unknown field is refused (422), so a misspelt option is never ignored.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Query
from pydantic import Field

from safereplay.recovery.api.callers import CallerDep
from safereplay.recovery.api.routes.bodies import Reasoned
from safereplay.recovery.api.routes.paths import ProjectionName

__all__ = ["router"]

router = APIRouter(prefix="/api/projections/{name}", tags=["builds"])

#: The most partitions a job, a drill or a replay splits into (as the CLI's --partitions).
MAX_PARTITIONS = 256

Partitions = Annotated[
    int | None,
    Field(ge=1, le=MAX_PARTITIONS, description="Split into this many partitions (--partitions)."),
]


class JobBody(Reasoned):
    """A rebuild's or a catch-up's options (``safereplay rebuild`` / ``catch-up``)."""

    partitions: Partitions = None
    max_concurrent: int | None = Field(
        default=None,
        ge=1,
        le=MAX_PARTITIONS,
        description="Partitions running at once, all workers together (--max-concurrent).",
    )
    max_rate: float | None = Field(
        default=None,
        ge=1.0,
        allow_inf_nan=False,
        description="Cap on events per second for the whole job (--max-rate).",
    )

    def parameters(self) -> dict[str, Any]:
        return {
            "partitions": self.partitions,
            "max_concurrent_partitions": self.max_concurrent,
            "events_per_second": self.max_rate,
        }


class ReplayBody(Reasoned):
    """A replay's range and options (``safereplay replay``)."""

    start: int = Field(ge=1, description="First position to re-apply (--from).")
    end: int = Field(ge=1, description="Last position to re-apply (--to).")
    into: Literal["sandbox", "live"] = Field(
        default="sandbox",
        description="sandbox (a new build, never live) or live (replay-safe projections only).",
    )
    partition: str | None = Field(
        default=None,
        pattern=r"^[0-9]{1,3}/[0-9]{1,3}$",
        description="Only this partition, as INDEX/COUNT (e.g. 1/4).",
    )
    aggregates: list[UUID] = Field(
        default_factory=list, max_length=1000, description="Only these aggregates (--aggregate)."
    )
    confirmed: bool = Field(default=False, description="Confirm a replay into live (--yes).")
    partitions: Partitions = None


class BuildBody(Reasoned):
    """Which build (``safereplay swap``)."""

    build: int | None = Field(
        default=None, ge=1, description="The build to make live (default: the newest)."
    )


class DropBody(Reasoned):
    """The build to drop (``safereplay drop-version``): never the live one."""

    build: int = Field(ge=1, description="The build to drop.")


class DrillBody(Reasoned):
    """A drill's options (``safereplay drill``)."""

    build: int | None = Field(
        default=None, ge=1, description="The build to compare (default: the live one)."
    )
    partitions: Partitions = None


def _given(**parameters: Any) -> dict[str, Any]:
    """The parameters that were given: an absent one takes the operation's default."""
    return {key: value for key, value in parameters.items() if value is not None}


@router.post("/rebuild", summary="plan a blue/green rebuild into a new build (workers run it)")
def rebuild(caller: CallerDep, name: ProjectionName, body: JobBody) -> Any:
    return caller.run("rebuild", reason=body.reason, projection=name, **body.parameters())


@router.post("/catch-up", summary="plan a catch-up of the live build to the head")
def catch_up(caller: CallerDep, name: ProjectionName, body: JobBody) -> Any:
    return caller.run("catch-up", reason=body.reason, projection=name, **body.parameters())


@router.post("/replay", summary="plan a replay of a range of positions, into a sandbox or live")
def replay(caller: CallerDep, name: ProjectionName, body: ReplayBody) -> Any:
    return caller.run(
        "replay",
        reason=body.reason,
        projection=name,
        start=body.start,
        end=body.end,
        into=body.into,
        aggregates=[str(a) for a in body.aggregates],
        confirmed=body.confirmed,
        **_given(partition=body.partition, partitions=body.partitions),
    )


@router.post("/swap", summary="make a completed build live (default: the newest), in one step")
def swap(caller: CallerDep, name: ProjectionName, body: BuildBody) -> Any:
    return caller.run("swap", reason=body.reason, projection=name, **_given(build=body.build))


@router.post("/rollback", summary="make the previously live build live again")
def rollback(caller: CallerDep, name: ProjectionName, body: Reasoned) -> Any:
    return caller.run("rollback", reason=body.reason, projection=name)


@router.post("/drop-version", summary="drop a build that is not live")
def drop_version(caller: CallerDep, name: ProjectionName, body: DropBody) -> Any:
    return caller.run("drop-version", reason=body.reason, projection=name, build=body.build)


@router.get("/rows", summary="rows of one of the projection's tables, in key order")
def rows(
    caller: CallerDep,
    name: ProjectionName,
    table: Annotated[str, Query(max_length=200, description="One of its declared tables.")],
    where: Annotated[
        list[str] | None,
        Query(max_length=32, description="Only rows with COLUMN=VALUE (repeatable, all hold)."),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=10_000, description="At most this many rows.")] = 100,
    build: Annotated[int | None, Query(ge=1, description="This build (default: live).")] = None,
) -> Any:
    return caller.run(
        "rows", projection=name, table=table, where=where or [], limit=limit, build=build
    )


@router.get("/drills", summary="the projection's past drills, newest first")
def drills(
    caller: CallerDep,
    name: ProjectionName,
    build: Annotated[int | None, Query(ge=1, description="Only this build's drills.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="At most this many drills.")] = 20,
) -> Any:
    return caller.run("drills.list", projection=name, limit=limit, **_given(build=build))


@router.post(
    "/drill", summary="rebuild into a sandbox and compare it with the live build (recorded)"
)
def drill(caller: CallerDep, name: ProjectionName, body: DrillBody) -> Any:
    return caller.run(
        "drill",
        reason=body.reason,
        projection=name,
        **_given(build=body.build, partitions=body.partitions),
    )

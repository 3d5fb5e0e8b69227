"""The replay stepper: one projection replayed in a sandbox, one event at a time
(``safereplay step``). Each event's envelope and the rows it changed; payloads only
to a principal with the operate permission on the projection who asks for them."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, model_validator

from safereplay.recovery.api.callers import CallerDep
from safereplay.recovery.api.routes.paths import ProjectionName

__all__ = ["StepBody", "router"]

router = APIRouter(prefix="/api/projections/{name}", tags=["builds"])


class StepBody(BaseModel):
    """Which positions to step (``safereplay step --from N [--to M | --count K]``)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    start: int = Field(
        alias="from", ge=1, description="The first position applied one at a time (--from)."
    )
    to: int | None = Field(default=None, ge=1, description="The last position, inclusive (--to).")
    count: int | None = Field(
        default=None,
        ge=1,
        description="Step this many events of the projection (--count; default 20, at most "
        "SAFEREPLAY_STEP_MAX_EVENTS).",
    )
    aggregate: UUID | None = Field(
        default=None,
        description="Step only this aggregate's events; the others are folded (--aggregate).",
    )
    payloads: bool = Field(
        default=False,
        description="Show each event's payload (--payloads): the operate permission is needed.",
    )

    @model_validator(mode="after")
    def _one_range(self) -> StepBody:
        if self.to is not None and self.count is not None:
            raise ValueError("give to or count, not both")
        if self.to is not None and self.start > self.to:
            raise ValueError(f"from {self.start} is after to {self.to}: nothing to step")
        return self

    def parameters(self) -> dict[str, Any]:
        given: dict[str, Any] = {"from": self.start, "to": self.to, "count": self.count}
        if self.aggregate is not None:
            given["aggregate"] = str(self.aggregate)
        found = {key: value for key, value in given.items() if value is not None}
        return {**found, "payloads": True} if self.payloads else found


@router.post(
    "/step",
    summary="replay a projection in a sandbox one event at a time: envelopes and row changes",
)
def step(caller: CallerDep, name: ProjectionName, body: StepBody) -> Any:
    return caller.run("step", projection=name, **body.parameters())

"""Reactions: where each one is and what it owes per destination; plan a
re-delivery of what a downstream outage missed, then run it.

The same operations as the command line's ``safereplay status`` and
``safereplay redeliver`` (``reactions.status``, ``reactions.plan``,
``reactions.redeliver``), through the same dispatch layer: checked on the scope
``reaction:NAME`` and audited. Planning is a read, audited (it says what would be
sent); re-delivering changes the ledger, so it needs operate and a reason. A
re-delivery sends the selection's destination's owed deliveries up to the
selection's last position, as ``safereplay redeliver`` does.
Neither answer holds a payload: a plan's sample lists positions, event types,
idempotency keys and sizes.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from safereplay.recovery.api.callers import CallerDep
from safereplay.recovery.api.routes.bodies import Reasoned

__all__ = ["router"]

router = APIRouter(prefix="/api/reactions", tags=["reactions"])

ReactionName = Annotated[
    str, Path(min_length=1, max_length=200, description="The reaction's name.")
]


class Selection(BaseModel):
    """Which deliveries: positions ``first`` to ``last`` (both included), recorded
    ``since`` a time, to one ``destination``; every one of the reaction's owed,
    failed and parked deliveries when nothing narrows it."""

    model_config = ConfigDict(extra="forbid")

    first: int | None = Field(default=None, ge=1, description="First position (--from).")
    last: int | None = Field(default=None, ge=1, description="Last position (--to).")
    since: AwareDatetime | None = Field(
        default=None,
        description="Only deliveries recorded at or after this time (--since): ISO 8601 "
        "with its offset, or seconds since the epoch.",
        examples=["2026-12-06T14:00:00Z"],
    )
    destination: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="Only this destination (--destination).",
    )
    force: bool = Field(
        default=False,
        description="Also send again what the destination already acknowledged (--force): "
        "audited as forced.",
    )

    @model_validator(mode="after")
    def _ordered(self) -> Selection:
        if self.first is not None and self.last is not None and self.last < self.first:
            raise ValueError(f"last ({self.last}) is before first ({self.first})")
        return self

    def parameters(self) -> dict[str, Any]:
        """The operation's parameters: only those given (an absent one takes its default)."""
        given: dict[str, Any] = {
            "first": self.first,
            "last": self.last,
            "since": None if self.since is None else self.since.timestamp(),
            "destination": self.destination,
        }
        return {key: value for key, value in given.items() if value is not None} | {
            "force": self.force
        }


class PlanBody(Selection):
    """What a re-delivery would cover (``safereplay redeliver --dry-run``)."""


class RedeliveryBody(Selection, Reasoned):
    """A re-delivery (``safereplay redeliver``): the selection, and why."""


@router.get(
    "",
    summary="every reaction: position, backlog, lease, and per destination what is "
    "pending, failed, parked, delivered, the oldest undelivered age and the breaker",
)
def reactions(caller: CallerDep) -> Any:
    return caller.run("reactions.status")


@router.get("/{name}", summary="one reaction's position and destinations (as in the list)")
def reaction(caller: CallerDep, name: ReactionName) -> Any:
    # An unknown name is refused by the operation (404); a known one is listed alone.
    return caller.run("reactions.status", reaction=name)["reactions"][0]


@router.post(
    "/{name}/redelivery-plan",
    summary="plan a re-delivery (a dry run, audited): per destination what is delivered, "
    "failed, parked, pending or never attempted, and what would be sent",
)
def plan(caller: CallerDep, name: ReactionName, body: PlanBody) -> Any:
    return caller.run("reactions.plan", reaction=name, **body.parameters())


@router.post(
    "/{name}/redeliveries",
    summary="re-deliver: reopen the selection's failed and parked deliveries (acknowledged "
    "ones only with force) and send them now (that destination's, up to that position)",
)
def redeliver(caller: CallerDep, name: ReactionName, body: RedeliveryBody) -> Any:
    return caller.run("reactions.redeliver", reason=body.reason, reaction=name, **body.parameters())

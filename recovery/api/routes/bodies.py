"""Request bodies shared by the endpoints (pydantic: validated at the edge)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Reasoned"]


class Reasoned(BaseModel):
    """The body of a call that changes state: why (kept in the audit trail)."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field(
        min_length=1,
        max_length=1000,
        description="Why this is done: recorded in the audit trail.",
        examples=["integrity check failed on the canary"],
    )

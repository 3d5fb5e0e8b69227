"""Path parameters that several routers take (one declaration each, one set of bounds)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path

__all__ = ["JobId", "ProjectionName"]

JobId = Annotated[
    str,
    Path(
        description="A job id, or an unambiguous prefix of one (at least 8 hex digits).",
        max_length=36,
    ),
]
ProjectionName = Annotated[
    str, Path(min_length=1, max_length=200, description="The projection's name.")
]

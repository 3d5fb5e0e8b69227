"""``parked.skip``: resolve a parked event that can never apply, without applying it.

A poison event (its payload can never be handled, whatever the fix) would keep its
aggregate blocked and count as "parked now" forever. Skipping it is an operator's
decision, so it goes through the dispatch layer: checked (operate on the
projection), audited with its reason, intent first. The event's record stays in
the parked table (when, why it failed, why it was skipped): ``status`` counts it
apart from re-driven ones, and the completeness check reports it as accounted for.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from safereplay.recovery.errors import InvalidRequest
from safereplay.recovery.operations.dispatch import OperationContext, Operations, int_parameter
from safereplay.recovery.security.access import Permission

if TYPE_CHECKING:
    from safereplay.recovery.operations.context import RecoveryContext

__all__ = ["parse_parked_id", "register_parked_operations"]


def parse_parked_id(parked_id: str) -> tuple[str, int]:
    """``PROJECTION:POSITION`` (as ``parked list`` shows it) -> its two parts."""
    projection, colon, position = parked_id.rpartition(":")
    if not colon or not projection or not position.isdigit():
        raise InvalidRequest(
            f"{parked_id!r} is not a parked event's id: PROJECTION:POSITION, as "
            "`safereplay parked list PROJECTION` shows it (e.g. run_status:1234)"
        )
    return projection, int(position)


def register_parked_operations(operations: Operations, context: RecoveryContext) -> None:
    def skip(ctx: OperationContext, p: Mapping[str, Any]) -> dict[str, Any]:
        position = int_parameter(p, "position")
        if position is None or position < 1:
            raise InvalidRequest("parked skip needs the parked event's position (1 or more)")
        store = context.projection_store
        build = store.resolve_build(p["projection"], int_parameter(p, "build"))
        skipped = store.skip_parked(p["projection"], build, position, reason=ctx.reason)
        # Where and why, never a payload (a parked record holds none).
        return asdict(skipped)

    operations.register(
        "parked.skip",
        permission=Permission.OPERATE,
        handler=skip,
        summary="skip a parked event that can never apply (resolved, never applied)",
    )

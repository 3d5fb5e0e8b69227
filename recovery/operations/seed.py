"""``seed``: events of the reference domain from the command line, through the dispatch layer.

Records whole workflows and runs of :mod:`safereplay.domain.workload` (created,
published, started, steps, completed...) through the application's validated
edge, sealed under the key ring like any event, until at least the number of
events asked for is recorded. Checked (operate on ``*``) and audited.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from safereplay.domain.workload import record_workload
from safereplay.recovery.errors import InvalidRequest
from safereplay.recovery.operations.dispatch import OperationContext, Operations, int_parameter
from safereplay.recovery.security.access import Permission

if TYPE_CHECKING:
    from safereplay.recovery.operations.context import RecoveryContext

__all__ = ["MAX_SEED_EVENTS", "register_seed_operations"]

MAX_SEED_EVENTS = 1_000_000


def register_seed_operations(operations: Operations, context: RecoveryContext) -> None:
    def seed(ctx: OperationContext, p: Mapping[str, Any]) -> dict[str, Any]:
        wanted = int_parameter(p, "events")
        if wanted is None or not 1 <= wanted <= MAX_SEED_EVENTS:
            raise InvalidRequest(f"seed needs --events between 1 and {MAX_SEED_EVENTS}")
        app = context.app
        first = app.head_position()
        recorded = workflows = runs = 0
        while recorded < wanted:
            summary = record_workload(
                app,
                workflows=1,
                runs_per_workflow=max(1, min(20, (wanted - recorded) // 8)),
                seed=first + recorded + 1,
                source=f"seed:{ctx.principal.name}",
            )
            recorded += summary.events
            workflows += summary.workflows
            runs += summary.runs
        return {
            "events": recorded,
            "workflows": workflows,
            "runs": runs,
            "from_position": first + 1,
            "head_position": app.head_position(),
        }

    operations.register(
        "seed",
        permission=Permission.OPERATE,
        handler=seed,
        scope="*",
        summary="record events of the reference domain (workflows and their runs)",
    )

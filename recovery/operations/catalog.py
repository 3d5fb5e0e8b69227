"""The table of every operation the dispatch layer runs, and the one way to build it.

Each concern's module registers its own operations (``register_*``); this table
lists those registrars, and :func:`open_operations` reads it. Nothing imports
this module back: the command line, the demo and (later) the HTTP API call
:func:`open_operations` and then :meth:`~.dispatch.Operations.run`, so every
caller gets the same permission check and the same audit entry.
"""

from __future__ import annotations

from collections.abc import Callable

from safereplay.recovery.operations.alerts import register_alert_operations
from safereplay.recovery.operations.approvals import register_approval_operations
from safereplay.recovery.operations.conflicts import register_conflict_operations
from safereplay.recovery.operations.context import RecoveryContext
from safereplay.recovery.operations.dispatch import Operations
from safereplay.recovery.operations.drills import register_drill_operations
from safereplay.recovery.operations.flags import register_flag_operations
from safereplay.recovery.operations.jobs import register_job_operations
from safereplay.recovery.operations.metrics import register_metrics_operations
from safereplay.recovery.operations.parked import register_parked_operations
from safereplay.recovery.operations.projections import register_projection_operations
from safereplay.recovery.operations.reactions import register_reaction_operations
from safereplay.recovery.operations.rebuilds import register_recovery_operations
from safereplay.recovery.operations.schema import register_schema_operations
from safereplay.recovery.operations.security import register_security_operations
from safereplay.recovery.operations.seed import register_seed_operations
from safereplay.recovery.operations.slos import register_slo_operations
from safereplay.recovery.operations.steps import register_step_operations
from safereplay.recovery.operations.templates import register_template_operations

__all__ = ["REGISTRARS", "Registrar", "open_operations"]

#: Registers one concern's operations on the dispatcher, bound to a context.
Registrar = Callable[[Operations, RecoveryContext], None]

#: Every concern's registrar; an operation's name is registered once across them all.
#: Four-eyes approval's comes last: its gate checks that the operations
#: ``SAFEREPLAY_APPROVAL_REQUIRED`` names are all registered.
REGISTRARS: tuple[Registrar, ...] = (
    register_security_operations,
    register_projection_operations,
    register_job_operations,
    register_drill_operations,
    register_template_operations,
    register_recovery_operations,
    register_schema_operations,
    register_seed_operations,
    register_parked_operations,
    register_metrics_operations,
    register_alert_operations,
    register_reaction_operations,
    register_step_operations,
    register_conflict_operations,
    register_slo_operations,
    register_flag_operations,
    register_approval_operations,
)


def open_operations(context: RecoveryContext) -> Operations:
    """The dispatcher with every operation registered, running against ``context``.

    Checks the access-control and audit tables in the schema catalog first (the
    dispatcher checks grants and appends audit entries from its first call); see
    :meth:`RecoveryContext.ensure_schema`.
    """
    operations = Operations(access=context.access, audit=context.audit, anchoring=context.anchoring)
    for register in REGISTRARS:
        register(operations, context)
    return operations

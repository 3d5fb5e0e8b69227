"""The ``migrate`` operation: set up or upgrade every component's tables, audited.

``safereplay migrate --reason ...`` runs, in order, the event store's step
(``events:<table>``: eventsourcing's tables, functions and types), the
high-water mark's (``watermark:<table>``, PostgreSQL), the projection store's
(``projections``), the reactions' delivery ledger (``reactions``, in the event
store's database) and the recovery tables' (``recovery``), each through the
schema catalog (:mod:`safereplay.domain.schema`): a step runs only where the
catalog says its component is missing or older, under the database's migration
lock, all of it or none.

Like every operation it needs a grant (``admin`` on ``*``) and is audited. But the
access-control and audit tables are themselves part of what it sets up, so on a
database that has no principal yet (none can be authenticated, nothing can be
granted) it runs as a **bootstrap**: :func:`migrate_bootstrap` needs no token, is
refused as soon as any principal exists (as ``principals bootstrap`` is), and
writes its audit entry (actor ``bootstrap``) into the trail it has just set up.
Whoever can run it can already write to the database, so it adds no power.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from safereplay.domain.schema import MigrationRun, ensure_event_store, explicit_migration
from safereplay.reactions.backends import open_ledger
from safereplay.recovery.database import recorded_rows
from safereplay.recovery.errors import InvalidRequest
from safereplay.recovery.migrations.steps import ensure_recovery_schema
from safereplay.recovery.operations.dispatch import OperationContext, Operations
from safereplay.recovery.security.access import Permission
from safereplay.recovery.security.audit import AuditRecord

if TYPE_CHECKING:
    from safereplay.recovery.operations.context import RecoveryContext

__all__ = [
    "BOOTSTRAP_ACTOR",
    "migrate_bootstrap",
    "migrate_components",
    "needs_bootstrap",
    "register_schema_operations",
]

#: Who a bootstrap migration is recorded as (no principal exists to name).
BOOTSTRAP_ACTOR = "bootstrap"


def migrate_components(context: RecoveryContext, actor: str) -> dict[str, Any]:
    """Run every component's missing steps, as ``actor``; what was found and done."""
    with explicit_migration(actor) as run:
        # The application's constructor checks (here: migrates) its event store; if
        # it was opened before, the explicit call below finds it current.
        app = context.app
        ensure_event_store(app, migrate=True)
        context.source.ensure_schema()
        context.projection_store.ensure_schema()
        ledger = open_ledger(context.domain)
        try:
            ledger.ensure_schema()
        finally:
            ledger.close()
        ensure_recovery_schema(context.database, migrate=True)
    return _report(run)


def _report(run: MigrationRun) -> dict[str, Any]:
    applied = {(a.where, a.component): a for a in run.applied}
    return {
        "applied_by": run.actor,
        "applied": [
            {
                "component": a.component,
                "where": a.where,
                "from_version": a.from_version,
                "to_version": a.to_version,
            }
            for a in run.applied
        ],
        "components": [
            {
                "component": s.component,
                "where": s.where,
                "version": s.code_version,
                "state": "migrated" if (s.where, s.component) in applied else "current",
            }
            for s in run.states
        ],
    }


def needs_bootstrap(context: RecoveryContext) -> bool:
    """No principal exists (or not even the table): nobody could be authenticated."""
    return not recorded_rows(context.database, "SELECT name FROM {principals} LIMIT 1", {})


def migrate_bootstrap(context: RecoveryContext, *, reason: str) -> dict[str, Any]:
    """Migrate a database that has no principal yet, and audit it as ``bootstrap``.

    Refused once a principal exists: from then on ``migrate`` goes through the
    dispatch layer with an admin's token.
    """
    if not needs_bootstrap(context):
        raise InvalidRequest(
            "principals exist: run `safereplay migrate` with an admin's token "
            "(SAFEREPLAY_TOKEN or SAFEREPLAY_TOKEN_FILE)"
        )
    if not reason.strip():
        raise InvalidRequest("migrate changes the database: give a reason (--reason)")
    report = migrate_components(context, BOOTSTRAP_ACTOR)
    # The trail exists now (the migration set it up): the entry goes into it.
    context.audit.append(
        AuditRecord(
            actor=BOOTSTRAP_ACTOR,
            action="migrate",
            scope="*",
            reason=reason,
            outcome="succeeded",
            parameters={"bootstrap": True, "applied": report["applied"]},
        )
    )
    return report


def register_schema_operations(operations: Operations, context: RecoveryContext) -> None:
    def migrate(ctx: OperationContext, p: Mapping[str, Any]) -> dict[str, Any]:
        return migrate_components(context, ctx.principal.name)

    operations.register(
        "migrate",
        permission=Permission.ADMINISTER,
        handler=migrate,
        scope="*",
        summary="set up or upgrade every component's tables (the schema catalog)",
    )

"""The drill as an operation: permission checked and every attempt audited by the dispatch layer."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from safereplay.recovery.drills.drill import DrillResult, DrillStore, run_drill
from safereplay.recovery.drills.sandbox import PostgresSandbox, Sandbox, SQLiteSandbox
from safereplay.recovery.drills.views import PostgresStoreReader, SQLiteStoreReader, StoreReader
from safereplay.recovery.jobs.conflicts import NewConflict
from safereplay.recovery.operations.dispatch import OperationContext, Operations, int_parameter
from safereplay.recovery.security.access import Permission

if TYPE_CHECKING:
    from safereplay.recovery.operations.context import RecoveryContext

__all__ = ["live_reader", "new_sandbox", "raise_drill_conflict", "register_drill_operations"]


def live_reader(context: RecoveryContext) -> StoreReader:
    """A read-only reader of the projection store the context points at."""
    if context.domain.backend == "sqlite":
        return SQLiteStoreReader(context.projection_settings.sqlite_store_path(context.domain))
    conninfo, schema = context.projection_settings.postgres_store(context.domain)
    return PostgresStoreReader(conninfo, schema=schema)


def new_sandbox(context: RecoveryContext) -> Sandbox:
    """A sandbox beside the projection store: a temporary file, or a schema of its own."""
    if context.domain.backend == "sqlite":
        return SQLiteSandbox()
    conninfo, schema = context.projection_settings.postgres_store(context.domain)
    return PostgresSandbox(conninfo, store_schema=schema)


def register_drill_operations(operations: Operations, context: RecoveryContext) -> None:
    def drill(ctx: OperationContext, p: Mapping[str, Any]) -> DrillResult:
        projection = context.registry[p["projection"]]
        result = run_drill(
            projection(),
            live=live_reader(context),
            source=context.source,
            sandbox=new_sandbox(context),
            principal=ctx.principal.name,
            reason=ctx.reason,
            build=int_parameter(p, "build"),
            partitions=int_parameter(p, "partitions"),
            default_partitions=context.recovery.partitions,
            options=context.runner_options(),
        )
        drills = DrillStore(context.database)
        context.ensure_schema()
        drills.record(result)
        raise_drill_conflict(context, result)
        return result

    def drills_list(ctx: OperationContext, p: Mapping[str, Any]) -> list[DrillResult]:
        return DrillStore(context.database).drills(
            p["projection"], build=int_parameter(p, "build"), limit=int_parameter(p, "limit") or 20
        )

    operations.register(
        "drill",
        permission=Permission.OPERATE,
        handler=drill,
        summary="rebuild a projection into a sandbox and compare it with the live build",
    )
    operations.register(
        "drills.list",
        permission=Permission.VIEW,
        handler=drills_list,
        summary="list a projection's drills, newest first",
    )


def raise_drill_conflict(context: RecoveryContext, result: DrillResult) -> None:
    """A drill whose checksums do not match pauses the projection's swaps (see
    operations.conflicts) until an operator resolves the conflict — under the
    ``pause`` policy; ``park`` and ``fail`` leave the drill's record as the signal."""
    if result.match or context.recovery.on_integrity_failure != "pause":
        return
    context.conflicts.raise_conflict(
        NewConflict(
            subject=f"drill:{result.projection}:{result.build}",
            kind="drill",
            reason=f"{result.summary()} (drill {result.drill_id})",
            projection=result.projection,
            build=result.build,
            position=result.position,
        )
    )

"""CLI: ``safereplay migrate``, the schema catalog's explicit migration."""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table

from safereplay.recovery.cli.security import Json, Reason
from safereplay.recovery.cli.support import console, emit, recovery_context
from safereplay.recovery.operations.catalog import open_operations
from safereplay.recovery.operations.schema import migrate_bootstrap, needs_bootstrap

__all__ = ["migrate_command", "register"]


def migrate_command(reason: Reason, as_json: Json = False) -> None:
    """Set up or upgrade the tables of every component (events, high-water mark,
    projections, recovery) to this code's schema versions; audited.

    Needs an admin grant on `*`, except on a database without any principal yet,
    where it runs as a bootstrap (audited as `bootstrap`). Runs only the steps the
    schema catalog says are missing; safe to run again.
    """
    # The context does not check the recovery tables' version first: the caller is
    # authenticated against the access tables as they are, then they are migrated.
    with recovery_context(check_schema=False, create=True) as context:
        if needs_bootstrap(context):
            report = migrate_bootstrap(context, reason=reason)
        else:
            caller = context.caller()
            report = open_operations(context).run(caller, "migrate", reason=reason)
    emit(report, as_json=as_json, human=_table)


def _table(report: dict[str, Any]) -> None:
    table = Table(title=f"schema migration by {report['applied_by']}")
    for column in ("component", "where", "version", "state"):
        table.add_column(column)
    for row in report["components"]:
        table.add_row(row["component"], row["where"], str(row["version"]), row["state"])
    console.print(table)
    applied = len(report["applied"])
    console.print(f"{applied} step(s) applied" if applied else "every component was current")


def register(app: typer.Typer) -> None:
    app.command("migrate")(migrate_command)

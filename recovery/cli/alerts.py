"""CLI: ``alerts`` (evaluate the stall and anomaly rules, list alerts), and the open
alerts ``status`` shows under its table."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from safereplay.recovery.cli.security import Json
from safereplay.recovery.cli.support import RunAsCaller, console, emit, operation
from safereplay.recovery.errors import AccessDenied

__all__ = ["alerts_table", "open_alerts", "print_open_alerts", "register"]


def alerts_table(result: Any) -> Table:
    """The alerts of an ``alerts`` result, open ones first."""
    table = Table(title=f"alerts (evaluated {result['evaluated_at']})")
    for column in ("rule", "subject", "severity", "value", "threshold", "raised", "cleared"):
        table.add_column(column)
    for alert in result["alerts"]:
        table.add_row(
            alert["rule"],
            alert["subject"],
            alert["severity"],
            f"{alert['value']:g}",
            f"{alert['threshold']:g}",
            alert["raised_at"],
            alert["cleared_at"] or "open",
        )
    return table


def alerts_command(
    include_cleared: Annotated[
        bool, typer.Option("--all", help="Cleared alerts too, after the open ones.")
    ] = False,
    limit: Annotated[
        int, typer.Option(help="The most alerts listed (1 to 10000).", min=1, max=10_000)
    ] = 100,
    as_json: Json = False,
) -> None:
    """Evaluate the stall and anomaly rules now, then list open alerts (see docs/alerts.md).

    Raising or clearing an alert is recorded in the audit trail. Needs a viewer
    grant on projection:*.
    """
    result = operation("alerts", include_cleared=include_cleared, limit=limit)

    def human(found: Any) -> None:
        if not found["alerts"]:
            console.print("no open alerts" if not include_cleared else "no alerts")
            return
        console.print(alerts_table(found))
        for alert in found["alerts"]:
            if alert["cleared_at"] is None:
                console.print(f"- {alert['message']}", highlight=False, soft_wrap=True)

    emit(result, as_json=as_json, human=human)


def open_alerts(projections: list[str], run: RunAsCaller) -> list[dict[str, Any]] | None:
    """The open alerts (of those projections, if any are named) that ``status`` shows;
    None when the caller may not read alerts (they need view on projection:*, the
    status itself may need less). ``run``: the status command's signed-in caller."""
    try:
        result = run("alerts")
    except AccessDenied:
        return None
    return [
        a
        for a in result["alerts"]
        if not projections or a["projection"] is None or a["projection"] in projections
    ]


def print_open_alerts(alerts: list[dict[str, Any]] | None) -> None:
    """Under ``status``'s table: one line per open alert."""
    for alert in alerts or []:
        colour = "red" if alert["severity"] == "critical" else "yellow"
        console.print(
            f"[{colour}]alert {alert['rule']} ({alert['subject']}): {alert['message']}[/]",
            highlight=False,
            soft_wrap=True,
        )


def register(app: typer.Typer) -> None:
    app.command("alerts")(alerts_command)

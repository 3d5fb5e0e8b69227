"""CLI: ``slo`` (the replay SLOs' status and error budgets), ``slo history`` (their
breaches) and ``slo watch`` (sample them every interval in the foreground, as
``safereplay serve`` does in the background). See docs/slo.md."""

from __future__ import annotations

import contextlib
from typing import Annotated, Any

import typer
from rich.table import Table

from safereplay.recovery.cli.security import Json
from safereplay.recovery.cli.support import (
    cli_caller,
    console,
    emit,
    error_console,
    operation,
    recovery_context,
)
from safereplay.recovery.operations.catalog import open_operations
from safereplay.recovery.operations.context import RecoveryContext
from safereplay.recovery.operations.slos import SLOSampler
from safereplay.recovery.settings import SLOSettings

__all__ = ["register", "slo_app", "slo_table"]

slo_app = typer.Typer(help="Replay SLOs: targets, breaches, error budgets (docs/slo.md).")

Subject = Annotated[
    str | None,
    typer.Option("--subject", "-s", help="Only this projection or reaction: projection:NAME."),
]


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def slo_table(result: Any) -> Table:
    """The targets of an ``slo.status`` result, one row each."""
    days = result["window_seconds"] / 86_400
    table = Table(title=f"replay SLOs (evaluated {result['evaluated_at']}, window {days:g}d)")
    for column in ("slo", "value", "target", "state", "good", "objective", "budget left", "burn"):
        table.add_column(column)
    for slo in result["slos"]:
        budget = slo["budget"]
        state = "no samples" if slo["value"] is None else "ok"
        if slo["in_breach"]:
            state = f"[red]BREACH since {slo['breach_since']}[/]"
        table.add_row(
            slo["slo"],
            _figure(slo["value"]),
            _figure(slo["target"]),
            state,
            f"{budget['good_share']:.2%} of {budget['samples']}",
            f"{slo['objective']:.2%}",
            f"{budget['budget_remaining']:.1%}",
            f"{budget['burn_rate']:.2f} (1h {budget['burn_rate_1h']:.2f})",
        )
    return table


@slo_app.callback(invoke_without_command=True)
def slo_command(ctx: typer.Context, subject: Subject = None, as_json: Json = False) -> None:
    """Sample the SLOs if due, then show each target: its last value, whether it is in
    breach, and its error budget over the window (SAFEREPLAY_SLO_WINDOW).

    A breach opening or closing is recorded in the audit trail. Needs a viewer grant
    on projection:*.
    """
    if ctx.invoked_subcommand is not None:
        return
    result = operation("slo.status", subject=subject)

    def human(found: Any) -> None:
        if not found["slos"]:
            console.print("no SLO targets (set SAFEREPLAY_SLO_TARGETS, see docs/slo.md)")
            return
        console.print(slo_table(found))

    emit(result, as_json=as_json, human=human)


@slo_app.command("history")
def history_command(
    subject: Subject = None,
    limit: Annotated[
        int, typer.Option(help="The most breaches listed (1 to 10000).", min=1, max=10_000)
    ] = 100,
    as_json: Json = False,
) -> None:
    """The SLOs' breaches over the window, open ones first: start, end, worst value."""
    result = operation("slo.history", subject=subject, limit=limit)

    def human(found: Any) -> None:
        if not found["breaches"]:
            console.print("no breaches in the window")
            return
        table = Table(title="SLO breaches")
        for column in ("slo", "target", "worst", "opened", "closed", "seconds"):
            table.add_column(column)
        for b in found["breaches"]:
            table.add_row(
                b["slo"],
                _figure(b["target"]),
                _figure(b["worst"]),
                b["opened_at"],
                b["closed_at"] or "open",
                _figure(b["duration_seconds"]),
            )
        console.print(table)

    emit(result, as_json=as_json, human=human)


@slo_app.command("watch")
def watch_command(
    turns: Annotated[
        int | None, typer.Option(min=1, help="Stop after this many samples (default: never).")
    ] = None,
) -> None:
    """Sample the SLOs every SAFEREPLAY_SLO_SAMPLE_SECONDS until Ctrl-C, as `safereplay
    serve` does in the background (run it where no server runs).

    Needs a viewer grant on projection:* (checked once, at the start).
    """
    with recovery_context() as context:
        principal = cli_caller(context, "slo watch")
        open_operations(context).run(principal, "slo.status")  # the permission check
    caller = principal.name
    settings = SLOSettings.from_env()
    console.print(
        f"sampling the replay SLOs every {settings.sample_seconds:g}s as {caller!r} (Ctrl-C stops)",
        highlight=False,
    )

    def report(exc: Exception) -> None:
        error_console.print(f"[red]error:[/] SLO sample failed: {exc}", highlight=False)

    sampler = SLOSampler(
        RecoveryContext.from_env, sampled_by=caller, on_error=report, settings=settings
    )
    with contextlib.suppress(KeyboardInterrupt):
        sampler.run(turns=turns)


def register(app: typer.Typer) -> None:
    app.add_typer(slo_app, name="slo")

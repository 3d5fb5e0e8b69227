"""CLI: ``slo`` (the replay SLOs' status and error budgets), ``slo history`` (their
breaches) and ``slo watch`` (sample them every interval in the foreground, as
``safereplay serve`` does in the background). See docs/slo.md."""

from __future__ import annotations

import contextlib
import json
import sys
from typing import Annotated, Any

import typer
from rich.table import Table

from safereplay.recovery.cli.security import Json
from safereplay.recovery.cli.support import (
    RunAsCaller,
    cli_caller,
    console,
    emit,
    error_console,
    operation,
    recovery_context,
)
from safereplay.recovery.errors import AccessDenied
from safereplay.recovery.operations.catalog import open_operations
from safereplay.recovery.operations.context import RecoveryContext
from safereplay.recovery.operations.slos import Recorded, SLOSampler, breach_json
from safereplay.recovery.settings import SLOSettings

__all__ = ["breached_slos", "print_breached_slos", "register", "slo_app", "slo_table"]

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
    as_json: Json = False,
) -> None:
    """Sample the SLOs every SAFEREPLAY_SLO_SAMPLE_SECONDS until Ctrl-C, as `safereplay
    serve` does in the background (run it where no server runs). Says each breach
    opened or closed; with --json, one line per sample: the SLOs sampled, the
    breaches opened and closed.

    Needs a viewer grant on projection:* (checked once, at the start).
    """
    with recovery_context() as context:
        principal = cli_caller(context, "slo watch")
        open_operations(context).run(principal, "slo.status")  # the permission check
    caller = principal.name
    settings = SLOSettings.from_env()
    if not as_json:
        console.print(
            f"sampling the replay SLOs every {settings.sample_seconds:g}s as {caller!r} "
            "(Ctrl-C stops)",
            highlight=False,
        )

    def said(recorded: Recorded) -> None:
        if as_json:
            line = {
                "sampled": list(recorded.sampled),
                "opened": [breach_json(b) for b in recorded.opened],
                "closed": [breach_json(b) for b in recorded.closed],
            }
            sys.stdout.write(json.dumps(line) + "\n")
            sys.stdout.flush()
            return
        for b in recorded.opened:
            console.print(f"[red]breached: {b.slo} ({b.value:g} > {b.target:g})[/]")
        for b in recorded.closed:
            console.print(f"met again: {b.slo} ({b.value:g} <= {b.target:g})")

    def report(exc: Exception) -> None:
        error_console.print(f"[red]error:[/] SLO sample failed: {exc}", highlight=False)

    sampler = SLOSampler(
        RecoveryContext.from_env,
        sampled_by=caller,
        on_error=report,
        settings=settings,
        on_sample=said,
    )
    with contextlib.suppress(KeyboardInterrupt):
        sampler.run(turns=turns)


def breached_slos(projections: list[str], run: RunAsCaller) -> list[dict[str, Any]] | None:
    """The SLO targets in breach now (of those projections, if any are named) that
    ``status`` shows; None when the caller may not read SLOs."""
    try:
        result = run("slo.status")
    except AccessDenied:
        return None
    return [
        s
        for s in result["slos"]
        if s["in_breach"]
        and (not projections or s["kind"] != "projection" or s["subject"] in projections)
    ]


def print_breached_slos(slos: list[dict[str, Any]] | None) -> None:
    """Under ``status``'s table: one line per SLO in breach."""
    for slo in slos or []:
        console.print(
            f"[red]SLO {slo['slo']} breached since {slo['breach_since']}: "
            f"{slo['value']:g} against a target of {slo['target']:g}[/]",
            highlight=False,
            soft_wrap=True,
        )


def register(app: typer.Typer) -> None:
    app.add_typer(slo_app, name="slo")

"""The ``safereplay`` command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from typer.core import TyperGroup

from safereplay.domain import DomainError
from safereplay.recovery.cli import apply as cli_apply
from safereplay.recovery.cli import drills as cli_drill
from safereplay.recovery.cli import init as cli_init
from safereplay.recovery.cli import jobs as cli_jobs
from safereplay.recovery.cli import projections as cli_projections
from safereplay.recovery.cli import rebuilds as cli_recovery
from safereplay.recovery.cli import schema as cli_schema
from safereplay.recovery.cli import security as cli_security
from safereplay.recovery.cli import templates as cli_templates
from safereplay.recovery.cli.demo import run_demo, status_table
from safereplay.recovery.cli.support import (
    EXIT_INVALID,
    exit_code_for,
    fail,
    operation,
    refuse_token_arguments,
    to_jsonable,
)
from safereplay.recovery.errors import RecoveryError
from safereplay.recovery.settings import check_environment

__all__ = ["app", "main"]


class _TokenGuard(TyperGroup):
    """The root command: refuses a command line that holds an API token before parsing
    it, so that no parsing error echoes the token back."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:  # ctx: click's Context
        refuse_token_arguments(args)
        return super().parse_args(ctx, args)


app = typer.Typer(
    name="safereplay",
    help="Safe replay and recovery for event-sourced projections.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    cls=_TokenGuard,
)
console = Console()
error_console = Console(stderr=True)


@app.callback()
def _root() -> None:
    """Safe replay and recovery for event-sourced projections."""
    # Before any command creates or writes anything: a misspelt SAFEREPLAY_*
    # variable would otherwise leave its setting at the default, silently.
    try:
        check_environment()
    except DomainError as exc:
        fail(str(exc), EXIT_INVALID)


@app.command()
def demo(
    directory: Annotated[
        Path, typer.Option(help="Where the demo keeps its SQLite store and key file.")
    ] = Path(".safereplay-demo"),
    workflows: Annotated[int, typer.Option(min=1, max=1000)] = 6,
    runs: Annotated[int, typer.Option(min=1, max=10_000, help="Runs per workflow.")] = 12,
) -> None:
    """Record a workload into an encrypted SQLite store and summarise it.

    Run again, it starts over in its directory (one it made itself).
    """
    try:
        run_demo(directory, console=console, workflows=workflows, runs=runs)
    except RecoveryError as exc:
        fail(str(exc), exit_code_for(exc))


@app.command("status")
def status_command(
    projection: Annotated[
        list[str] | None,
        typer.Option("--projection", "-p", help="Only this projection (repeatable)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Head, high-water mark and each projection's position, backlog and last commit.

    Needs a viewer grant (the token in SAFEREPLAY_TOKEN or SAFEREPLAY_TOKEN_FILE)
    and decrypts nothing.
    """
    report = operation("status", projections=projection or [])
    if as_json:
        typer.echo(json.dumps(to_jsonable(report), indent=2))
    else:
        console.print(status_table(report))
        cli_jobs.print_stalled_jobs(projection or [])


cli_jobs.register(app)
cli_recovery.register(app, cli_jobs.parked_app)
cli_security.register(app)
cli_drill.register(app)
cli_templates.register(app)
cli_apply.register(app)
cli_schema.register(app)
cli_init.register(app)
cli_projections.register(app)


def main() -> None:
    try:
        app()
    except DomainError as exc:
        error_console.print(f"[red]error:[/] {exc}")
        raise SystemExit(2) from None


if __name__ == "__main__":  # worker processes: python -m recovery.cli worker ...
    main()

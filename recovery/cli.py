"""The ``safereplay`` command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from domain import DomainError
from recovery import cli_security
from recovery.demo import run_demo

__all__ = ["app", "main"]

app = typer.Typer(
    name="safereplay",
    help="Safe replay and recovery for event-sourced projections.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console()
error_console = Console(stderr=True)


@app.callback()
def _root() -> None:
    """Safe replay and recovery for event-sourced projections."""


@app.command()
def demo(
    directory: Annotated[
        Path, typer.Option(help="Where the demo keeps its SQLite store and key file.")
    ] = Path(".safereplay-demo"),
    workflows: Annotated[int, typer.Option(min=1, max=1000)] = 6,
    runs: Annotated[int, typer.Option(min=1, max=10_000, help="Runs per workflow.")] = 12,
) -> None:
    """Record a workload into an encrypted SQLite store and summarise it."""
    run_demo(directory, console=console, workflows=workflows, runs=runs)


cli_security.register(app)


def main() -> None:
    try:
        app()
    except DomainError as exc:
        error_console.print(f"[red]error:[/] {exc}")
        raise SystemExit(2) from None

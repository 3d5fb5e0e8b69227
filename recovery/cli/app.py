"""The ``safereplay`` command line.

Its root command sees the whole command line before it is parsed: it refuses one
that holds an API token, and with ``--json`` on it, it has every error written
as JSON (see :mod:`safereplay.recovery.cli.support`), usage errors included.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import psycopg
import typer
from eventsourcing.persistence import OperationalError as StoreOperationalError
from rich.console import Console
from typer.core import TyperGroup

from safereplay.domain import DomainError
from safereplay.domain.secret import hide_passwords
from safereplay.recovery.cli import alerts as cli_alerts
from safereplay.recovery.cli import apply as cli_apply
from safereplay.recovery.cli import change_requests as cli_requests
from safereplay.recovery.cli import conflicts as cli_conflicts
from safereplay.recovery.cli import drills as cli_drill
from safereplay.recovery.cli import flags as cli_flags
from safereplay.recovery.cli import init as cli_init
from safereplay.recovery.cli import jobs as cli_jobs
from safereplay.recovery.cli import projections as cli_projections
from safereplay.recovery.cli import reactions as cli_reactions
from safereplay.recovery.cli import rebuilds as cli_recovery
from safereplay.recovery.cli import schema as cli_schema
from safereplay.recovery.cli import security as cli_security
from safereplay.recovery.cli import serve as cli_serve
from safereplay.recovery.cli import slo as cli_slo
from safereplay.recovery.cli import steps as cli_steps
from safereplay.recovery.cli import templates as cli_templates
from safereplay.recovery.cli.demo import DemoResult, run_demo, status_table
from safereplay.recovery.cli.security import Json
from safereplay.recovery.cli.support import (
    EXIT_INVALID,
    EXIT_UNAVAILABLE,
    emit,
    exit_code_for,
    fail,
    refuse_token_arguments,
    signed_in,
    to_jsonable,
    use_json_errors,
)
from safereplay.recovery.errors import RecoveryError
from safereplay.recovery.settings import check_environment

__all__ = ["app", "main"]


def json_requested(args: Sequence[str]) -> bool:
    """Whether ``--json`` is an option on the command line (not after ``--``)."""
    for arg in args:
        if arg == "--":
            return False
        if arg == "--json":
            return True
    return False


class _TokenGuard(TyperGroup):
    """The root command: refuses a command line that holds an API token before parsing
    it, so that no parsing error echoes the token back; under ``--json``, writes
    click's usage errors as the JSON error object."""

    def main(  # type: ignore[override]  # the keyword arguments click's main takes
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        as_json = json_requested(argv)
        # Set on every run: a process (a test) may run several command lines.
        use_json_errors(as_json)
        if not as_json:
            return super().main(argv, prog_name, complete_var, standalone_mode, **extra)
        try:
            # Not standalone: click would print its usage error itself, as text.
            code = super().main(argv, prog_name, complete_var, False, **extra)
        except typer.TyperException as exc:  # click's usage errors (typer vendors click)
            context = getattr(exc, "ctx", None)
            hint = f" (see `{context.command_path} --help`)" if context is not None else ""
            fail(exc.format_message() + hint, exc.exit_code)
        except typer.Abort:
            fail("aborted", 1)
        if not standalone_mode:
            return code
        raise SystemExit(code if isinstance(code, int) else 0)

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
    workflows: Annotated[int, typer.Option(min=1, max=1000, help="Workflows to record.")] = 6,
    runs: Annotated[int, typer.Option(min=1, max=10_000, help="Runs per workflow.")] = 12,
    as_json: Json = False,
) -> None:
    """Record a workload into an encrypted SQLite store and summarise it.

    Run again, it starts over in its directory (one it made itself). With --json,
    the story goes to standard error and a summary to standard output.
    """
    try:
        result = run_demo(
            directory, console=error_console if as_json else console, workflows=workflows, runs=runs
        )
    except RecoveryError as exc:
        fail(str(exc), exit_code_for(exc))
    # The story has told everything already; JSON gets its figures (never the token).
    emit(_demo_summary(result), as_json=as_json, human=lambda summary: None)


def _demo_summary(result: DemoResult) -> dict[str, Any]:
    story = result.story
    return {
        "directory": str(result.directory.absolute()),
        "events": result.events,
        "head_position": result.head_position,
        "parked": None if story is None else story.parked,
        "redriven": None if story is None else story.redriven,
        "live_build": None if story is None else story.live_build,
        "audit_entries": None if story is None else story.audit_entries,
        "redelivered": None
        if story is None or story.reactions is None
        else story.reactions.redelivered,
        "token_file": str((result.directory / "demo-operator.token").absolute()),
    }


@app.command("status")
def status_command(
    projection: Annotated[
        list[str] | None,
        typer.Option("--projection", "-p", help="Only this projection (repeatable)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Head, high-water mark and each projection's position, backlog and last commit;
    each reaction's deliveries by state (with a grant on reaction:*).

    Needs a viewer grant (the token in SAFEREPLAY_TOKEN or SAFEREPLAY_TOKEN_FILE)
    and decrypts nothing.
    """
    with signed_in("status") as run:
        report = run("status", projections=projection or [])
        alerts = cli_alerts.open_alerts(projection or [], run)
        conflicts = cli_conflicts.open_conflicts(run)
        slos = cli_slo.breached_slos(projection or [], run)
        reactions = cli_reactions.reactions_for_status(run)

        def human(found: Any) -> None:
            console.print(status_table(report))
            cli_jobs.print_stalled_jobs(projection or [], run)
            cli_alerts.print_open_alerts(alerts)
            cli_conflicts.print_open_conflicts(conflicts)
            cli_slo.print_breached_slos(slos)
            if reactions:
                cli_reactions.print_reactions(reactions)

        # The report's fields, the open alerts and conflicts, the SLOs in breach and the
        # reactions (null: the caller may not read them).
        emit(
            {
                **to_jsonable(report),
                "open_alerts": alerts,
                "open_conflicts": conflicts,
                "slo_breaches": slos,
                "reactions": reactions,
            },
            as_json=as_json,
            human=human,
        )


cli_jobs.register(app)
cli_recovery.register(app, cli_jobs.parked_app)
cli_security.register(app)
cli_drill.register(app)
cli_templates.register(app)
cli_apply.register(app)
cli_schema.register(app)
cli_init.register(app)
cli_projections.register(app)
cli_serve.register(app)
cli_alerts.register(app)
cli_conflicts.register(app)
cli_slo.register(app)
cli_reactions.register(app)
cli_steps.register(app)
cli_flags.register(app)
cli_requests.register(app)


def main() -> None:
    try:
        app()
    except DomainError as exc:
        fail(str(exc), EXIT_INVALID)
    except (psycopg.OperationalError, StoreOperationalError) as exc:
        # The database went away mid-command (a restart, a terminated connection):
        # one clear message and a non-zero exit, not a trace. What the command
        # committed stands; its audit entry records the intent if not the outcome.
        # The exit code is a database that cannot be reached, as at the start of a
        # command (``recovery_context``): one code for "the database is not there".
        fail(
            f"the database connection failed during the command: "
            f"{hide_passwords(str(exc).strip())}; run the command again once the "
            "database is back (`safereplay status` shows what was done)",
            EXIT_UNAVAILABLE,
        )


if __name__ == "__main__":  # worker processes: python -m recovery.cli worker ...
    main()

"""CLI: ``safereplay init`` (a new store, its keys and first admin) and ``safereplay seed``.

``init`` writes the ``export`` lines to standard output and everything else to
standard error, so that ``eval "$(safereplay init)"`` points the shell at the
new store. No token, key or password is ever printed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from safereplay.domain import DomainError
from safereplay.projections import ProjectionError
from safereplay.recovery.cli.security import Json, Reason
from safereplay.recovery.cli.support import emit, error_console, exit_code_for, fail, operation
from safereplay.recovery.errors import RecoveryError
from safereplay.recovery.operations.initialise import InitReport, initialise

__all__ = ["init_command", "register", "seed_command"]


def init_command(
    directory: Annotated[
        Path,
        typer.Option("--dir", help="Where the key ring, audit key, token (and SQLite store) go."),
    ] = Path(".safereplay"),
    admin: Annotated[str, typer.Option(help="The first admin's name.")] = "admin",
    as_json: Json = False,
) -> None:
    """Create a store from nothing: key ring, audit key, schema, first admin and its token file.

    SQLite by default (in --dir); PostgreSQL when SAFEREPLAY_BACKEND=postgres (with
    SAFEREPLAY_POSTGRES_DSN and SAFEREPLAY_POSTGRES_SCHEMA). Refuses to overwrite
    anything (exit 2, nothing changed). With --json: the report (paths and export
    lines, never the token) as one JSON document instead.
    """
    try:
        report = initialise(directory, admin=admin)
    except (DomainError, ProjectionError, RecoveryError) as exc:
        fail(str(exc), exit_code_for(exc))
    emit(report, as_json=as_json, human=_say_initialised)


def _say_initialised(report: InitReport) -> None:
    say = error_console.print
    where = report.sqlite_path or f"PostgreSQL schema {report.postgres_schema!r}"
    say(f"store:      {where} ({', '.join(report.components)} set up; audited as bootstrap)")
    say(f"key ring:   {report.key_file} (0600, active key 'key-1')")
    say(f"audit key:  {report.audit_key_file} (0600)")
    say(
        f"admin:      {report.admin!r} (admin and key custodian); its token is in "
        f"{report.token_file} (0600), not shown"
    )
    say('point the other commands at this store (or run: eval "$(safereplay init ...)"):')
    for line in report.exports:
        typer.echo(line)
    say(
        'next: `safereplay seed --events 1000 --reason "first events"`, then '
        '`safereplay catch-up run_status --reason "first build"` and `safereplay status`'
    )


def seed_command(
    reason: Reason,
    events: Annotated[
        int, typer.Option("--events", "-e", min=1, max=1_000_000, help="At least this many.")
    ] = 1000,
    as_json: Json = False,
) -> None:
    """Record events of the reference domain (workflows and their runs), encrypted."""

    def human(result: Any) -> None:
        error_console.print(
            f"recorded {result['events']} events ({result['workflows']} workflows, "
            f"{result['runs']} runs) at positions {result['from_position']}.."
            f"{result['head_position']}",
            highlight=False,
        )

    emit(operation("seed", reason=reason, events=events), as_json=as_json, human=human)


def register(app: typer.Typer) -> None:
    app.command("init")(init_command)
    app.command("seed")(seed_command)

"""CLI: ``safereplay plan TEMPLATE`` and ``safereplay templates add|update|list|show``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.syntax import Syntax
from rich.table import Table

from safereplay.recovery.cli.security import Json, Reason
from safereplay.recovery.cli.support import (
    EXIT_INVALID,
    awaiting_approval,
    cli_caller,
    console,
    emit,
    fail,
    operation,
    recovery_context,
)
from safereplay.recovery.operations.approvals import AwaitingApproval
from safereplay.recovery.operations.catalog import open_operations
from safereplay.recovery.operations.templates import change_template
from safereplay.recovery.templates.plan import TemplatePlan
from safereplay.recovery.templates.store import ListedTemplate, StoredTemplate, TemplateChange

__all__ = ["Settings", "dry_run", "plan_command", "register", "templates_app"]

Settings = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        help="NAME=VALUE: set a parameter the template declares (repeatable), within its bounds.",
    ),
]

templates_app = typer.Typer(
    help="Recovery templates an organisation adds (admin only, audited with a diff).",
    no_args_is_help=True,
)


def _plan_report(plan: TemplatePlan) -> None:
    console.print(
        f"[bold]{plan.template}[/] ({plan.kind}, {plan.origin}): {plan.description}",
        highlight=False,
    )
    t = Table("projection", "partition", "after", "up to", "events")
    for projection in plan.projections:
        for part in projection.partitions:
            t.add_row(
                projection.projection,
                f"{part.partition}/{plan.partition_count}",
                str(part.after),
                str(part.upto),
                str(part.events),
            )
    if plan.projections:
        console.print(t)
    for projection in plan.projections:
        for note in projection.notes:
            console.print(f"note ({projection.projection}): {note}", highlight=False)
    console.print(f"events in scope: {plan.events} (log head {plan.head})")
    console.print("tables that would change: " + (", ".join(plan.tables) or "none"))
    estimate = plan.estimate
    console.print(
        f"estimated duration: {estimate.seconds:.1f} s at {estimate.events_per_second:.0f} "
        f"events/s ({estimate.basis})",
        highlight=False,
    )
    policy = plan.failure_policy
    console.print(
        f"failure policy: {policy['on_error']}, {policy['attempts']} attempt(s), breaker after "
        f"{policy['breaker']['failure_threshold']} failures",
        highlight=False,
    )
    throttle = ", ".join(f"{k} = {v}" for k, v in plan.throttle.items() if v is not None)
    console.print(f"throttle: {throttle or 'none'}", highlight=False)
    for stage in plan.stages:
        console.print(
            f"stage {stage.stage}: partitions {list(stage.partitions)}, {stage.when}",
            highlight=False,
        )
    console.print(f"changed: {plan.changes}")


def dry_run(operation_name: str, *, reason: str, as_json: bool, **parameters: Any) -> None:
    """``--dry-run`` of a command: the plan ``safereplay plan`` would show for the
    template the command amounts to (checked and audited as a plan). Changes nothing."""
    planned = operation("plan", reason=reason, dry_run={"operation": operation_name, **parameters})
    emit(planned, as_json=as_json, human=_plan_report)


def plan_command(
    template: Annotated[
        str, typer.Argument(help="A TOML file, a stored template or a shipped runbook name.")
    ],
    settings: Settings = None,
    as_json: Json = False,
) -> None:
    """Dry run: what applying TEMPLATE would do. Changes nothing.

    Projections and partitions in scope, events in scope, the tables that would
    change, an estimated duration, the failure policy, throttle and rollout stages.
    `--set NAME=VALUE` sets a parameter the template declares (`templates list`
    shows them); a value outside its bounds is refused (exit 2).
    """
    emit(
        operation("plan", template=template, settings=settings or []),
        as_json=as_json,
        human=_plan_report,
    )


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"template file {str(path)!r} cannot be read: {exc}", EXIT_INVALID)


def _change(path: Path, reason: str, *, update: bool, as_json: bool) -> None:
    text = _read(path)
    with recovery_context() as context:
        change = change_template(
            open_operations(context),
            cli_caller(context, "templates.update" if update else "templates.add"),
            text=text,
            reason=reason,
            update=update,
        )
    if isinstance(change, AwaitingApproval):
        awaiting_approval(change)
    emit(change, as_json=as_json, human=_say_changed)


def _say_changed(change: TemplateChange) -> None:
    stored = change.template
    console.print(
        f"template {stored.name!r} is at version {stored.version} (by {stored.author}); see "
        f"what it would do with `safereplay plan {stored.name}`",
        highlight=False,
        markup=False,
    )
    console.print(Syntax(change.diff, "diff"))


TemplateFile = Annotated[Path, typer.Argument(help="The template's TOML file.")]


@templates_app.command("add")
def templates_add(file: TemplateFile, reason: Reason, as_json: Json = False) -> None:
    """Add a template from a TOML file (rejected with every problem listed if invalid)."""
    _change(file, reason, update=False, as_json=as_json)


@templates_app.command("update")
def templates_update(file: TemplateFile, reason: Reason, as_json: Json = False) -> None:
    """Store a new version of a template (named in the file); the diff is audited."""
    _change(file, reason, update=True, as_json=as_json)


@templates_app.command("list")
def templates_list(as_json: Json = False) -> None:
    """Stored templates (latest versions) and the shipped runbooks, with what `--set` takes."""

    def table(rows: list[ListedTemplate]) -> None:
        # Narrow enough for 80 columns; --json has the author, time and hash too.
        t = Table("template", "source", "kind", "version", "--set NAME=VALUE")
        for r in rows:
            t.add_row(
                r.name,
                r.source,
                r.kind,
                "-" if r.version is None else f"{r.version} ({r.author})",
                ", ".join(r.parameters) or "-",
            )
            t.columns[0].no_wrap = True
        console.print(t)
        console.print(
            "shipped: a runbook that comes with safereplay; stored: added by an admin "
            "(`templates add`). Plan one with `safereplay plan NAME [--set NAME=VALUE]`",
            highlight=False,
        )

    emit(operation("templates.list"), as_json=as_json, human=table)


@templates_app.command("show")
def templates_show(
    name: Annotated[str, typer.Argument(help="The stored template's name.")],
    version: Annotated[int | None, typer.Option(min=1, help="Default: the latest.")] = None,
    as_json: Json = False,
) -> None:
    """A stored template's TOML."""

    def show(stored: StoredTemplate) -> None:
        console.print(f"# {stored.name} v{stored.version} by {stored.author}", highlight=False)
        console.print(Syntax(stored.text, "toml"))

    emit(operation("templates.show", name=name, version=version), as_json=as_json, human=show)


def register(app: typer.Typer) -> None:
    app.command("plan")(plan_command)
    app.add_typer(templates_app, name="templates")

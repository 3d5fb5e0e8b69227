"""CLI: ``conflicts list`` and ``conflicts resolve`` (work paused by an integrity check),
and the open conflicts ``status`` shows under its table."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

import typer
from rich.table import Column, Table

from safereplay.recovery.cli.security import Json, Reason
from safereplay.recovery.cli.support import RunAsCaller, console, emit, operation
from safereplay.recovery.errors import AccessDenied

__all__ = ["conflicts_app", "open_conflicts", "print_open_conflicts", "register"]

conflicts_app = typer.Typer(
    help="Integrity conflicts: work paused by a failed integrity check.", no_args_is_help=True
)


class Action(StrEnum):
    RETRY = "retry"
    PARK = "park"


def _where(conflict: Any) -> str:
    parts = []
    if conflict["projection"]:
        parts.append(f"{conflict['projection']} build {conflict['build']}")
    if conflict["job_id"]:
        parts.append(f"job {conflict['job_id'][:8]} partition {conflict['partition_index']}")
    return ", ".join(parts) or conflict["subject"]


@conflicts_app.command("list")
def conflicts_list(
    include_resolved: Annotated[
        bool, typer.Option("--all", help="Resolved conflicts too, after the open ones.")
    ] = False,
    limit: Annotated[
        int, typer.Option(help="The most conflicts listed (1 to 10000).", min=1, max=10_000)
    ] = 100,
    as_json: Json = False,
) -> None:
    """Open integrity conflicts (never a payload or key bytes). Needs view on projection:*."""
    rows = operation("conflicts.list", include_resolved=include_resolved, limit=limit)

    def table(result: Any) -> None:
        if not result:
            console.print("no open conflicts" if not include_resolved else "no conflicts")
            return
        t = Table(Column("id", no_wrap=True), "kind", "where", "position", "state", "reason")
        for c in result:
            state = c["state"]
            if c["resolution"]:
                state = f"{c['resolution']} by {c['resolved_by']}"
            t.add_row(
                c["conflict_id"],
                c["kind"],
                _where(c),
                "-" if c["position"] is None else str(c["position"]),
                state,
                c["reason"],
            )
        console.print(t)

    emit(rows, as_json=as_json, human=table)


@conflicts_app.command("resolve")
def conflicts_resolve(
    conflict_id: Annotated[str, typer.Argument(help="The conflict's id (`conflicts list`).")],
    action: Annotated[
        Action,
        typer.Option(help="retry (after fixing the cause) or park (park that event, go on)."),
    ],
    reason: Reason,
    as_json: Json = False,
) -> None:
    """Resolve an integrity conflict; the paused work resumes (workers claim it again).

    Audited with the reason. Needs operate on the conflict's projection.
    """
    resolved = operation(
        "conflicts.resolve", reason=reason, conflict_id=conflict_id, action=str(action)
    )

    def sentence(result: Any) -> None:
        console.print(
            f"conflict {result['conflict_id']} resolved ({result['resolution']}): "
            f"{_where(result)} resumes",
            highlight=False,
            soft_wrap=True,
        )

    emit(resolved, as_json=as_json, human=sentence)


def open_conflicts(run: RunAsCaller) -> list[dict[str, Any]] | None:
    """The open conflicts ``status`` shows; None when the caller may not read them."""
    try:
        result: list[dict[str, Any]] = run("conflicts.list")
    except AccessDenied:
        return None
    return result


def print_open_conflicts(conflicts: list[dict[str, Any]] | None) -> None:
    """Under ``status``'s table: one line per open conflict (the work it paused)."""
    for c in conflicts or []:
        at = "" if c["position"] is None else f" at position {c['position']}"
        console.print(
            f"[red]paused by conflict {c['conflict_id']} ({_where(c)}){at}: {c['reason']}[/]",
            highlight=False,
            soft_wrap=True,
        )


def register(app: typer.Typer) -> None:
    app.add_typer(conflicts_app, name="conflicts")

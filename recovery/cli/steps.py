"""CLI: ``safereplay step PROJECTION --from N [--to M | --count K] [--aggregate ID]
[--payloads]``."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.markup import escape

from safereplay.recovery.cli.security import Json
from safereplay.recovery.cli.support import console, emit, operation
from safereplay.recovery.drills.stepper import RowChange, Step, StepResult

__all__ = ["register", "step_command"]


def _values(row: dict[str, Any] | None) -> str:
    return "none" if row is None else json.dumps(row, sort_keys=True, ensure_ascii=False)


def _change(change: RowChange) -> str:
    key = "/".join(str(part) for part in change.key)
    if change.kind == "update" and change.before is not None and change.after is not None:
        before, after = change.before, change.after
        moved = {n: (before.get(n), after.get(n)) for n in after if before.get(n) != after.get(n)}
        listed = ", ".join(
            f"{n}: {json.dumps(a)} -> {json.dumps(b)}" for n, (a, b) in moved.items()
        )
        return f"    {change.table} {key} update: {listed}"
    return (
        f"    {change.table} {key} {change.kind}: before {_values(change.before)}, "
        f"after {_values(change.after)}"
    )


def _step(step: Step) -> None:
    e = step.envelope
    console.print(
        f"[bold]#{e.position}[/] {e.event_type or e.topic} aggregate {e.aggregate_id} "
        f"v{e.aggregate_version}",
        highlight=False,
    )
    console.print(
        f"  event {e.event_id}, at {e.occurred_at or '?'}, correlation "
        f"{e.correlation_id or '?'}, causation {e.causation_id or 'none'}, key "
        f"{e.key_id or 'none'}",
        highlight=False,
    )
    if step.payload is not None:
        payload = json.dumps(step.payload, sort_keys=True, ensure_ascii=False)
        console.print(f"  payload {escape(payload)}", highlight=False)
    console.print(f"  {escape(step.summary())}", highlight=False)
    for change in step.changes:
        console.print(escape(_change(change)), highlight=False)


def _steps(result: StepResult) -> None:
    console.print(
        f"stepping {result.projection!r} (version {result.version}) from position "
        f"{result.start} to {result.to} (head {result.head}): {result.folded} events folded "
        f"before and between, {len(result.steps)} stepped"
        f"{f' of aggregate {result.aggregate}' if result.aggregate else ''}; sandbox "
        f"{result.sandbox}",
        highlight=False,
    )
    if not result.payloads_shown:
        console.print(f"payloads not shown: {escape(result.payloads_note)}", highlight=False)
    for step in result.steps:
        _step(step)
    changed = sum(1 for s in result.steps if s.changes)
    console.print(
        f"{changed} of {len(result.steps)} events changed rows; the sandbox is removed and "
        "the live build was not touched",
        highlight=False,
    )


def step_command(
    projection: Annotated[str, typer.Argument(help="The projection's name.")],
    start: Annotated[
        int, typer.Option("--from", min=1, help="The first position applied one at a time.")
    ],
    to: Annotated[
        int | None, typer.Option("--to", min=1, help="The last position (inclusive).")
    ] = None,
    count: Annotated[
        int | None,
        typer.Option(
            "--count",
            min=1,
            help="Step this many events of the projection (default 20; at most "
            "SAFEREPLAY_STEP_MAX_EVENTS).",
        ),
    ] = None,
    aggregate: Annotated[
        str | None,
        typer.Option(
            "--aggregate",
            help="Step only this aggregate's events (the others are folded, not shown).",
        ),
    ] = None,
    payloads: Annotated[
        bool,
        typer.Option("--payloads", help="Show each event's payload (operate permission needed)."),
    ] = False,
    as_json: Json = False,
) -> None:
    """Replay PROJECTION in a sandbox, one event at a time from --from.

    Everything before --from is folded in batches first. For each event: its
    envelope (never a secret), its payload with --payloads for an operator, and
    the rows it changed, before and after. The live build is never touched; the
    sandbox is removed afterwards.
    """
    parameters: dict[str, Any] = {"projection": projection, "from": start}
    if to is not None:
        parameters["to"] = to
    if count is not None:
        parameters["count"] = count
    if aggregate is not None:
        parameters["aggregate"] = aggregate
    if payloads:
        parameters["payloads"] = True
    result: StepResult = operation("step", **parameters)
    emit(result, as_json=as_json, human=_steps)


def register(app: typer.Typer) -> None:
    app.command("step")(step_command)

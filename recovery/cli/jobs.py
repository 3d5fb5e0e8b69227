"""CLI: jobs (list, pause, resume, abort, continue a staged rollout) and parked
(dead-letter) events."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Column, Table

from safereplay.recovery.cli.progress import jobs_renderable
from safereplay.recovery.cli.security import Json, Reason
from safereplay.recovery.cli.support import (
    EXIT_INVALID,
    RunAsCaller,
    console,
    emit,
    fail,
    operation,
)
from safereplay.recovery.errors import InvalidRequest
from safereplay.recovery.operations.parked import parse_parked_id

__all__ = ["parked_app", "print_stalled_jobs", "register"]


def jobs_command(
    projection: Annotated[
        str | None, typer.Option("--projection", "-p", help="Only this projection's jobs.")
    ] = None,
    active: Annotated[bool, typer.Option(help="Only jobs not yet ended.")] = False,
    as_json: Json = False,
) -> None:
    """Jobs with state, progress (events done of those in scope), events/s, ETA,
    parked and retries; a failed partition with its error and the next command."""
    rows = operation("jobs.list", projection=projection, active_only=active)

    def table(result: Any) -> None:
        console.print(jobs_renderable(result, console))

    emit(rows, as_json=as_json, human=table)


def print_stalled_jobs(projections: list[str], run: RunAsCaller) -> None:
    """Under ``status``: each active job of those projections that no worker runs
    (read with ``run``, the status command's signed-in caller)."""
    if len(projections) > 1:
        return  # a list of all jobs could need a wider grant than the status itself
    rows = run("jobs.list", projection=projections[0] if projections else None, active_only=True)
    for row in rows:
        if row.get("stalled"):
            job_id = row["job_id"]
            console.print(
                f"[yellow]job {job_id} ({row['kind']} of {row['projection']}) is stalled: no "
                f"worker holds a partition. Resume it with the command that started it, or "
                f"`safereplay worker --job {job_id} --exit-when-idle`[/]",
                highlight=False,
                soft_wrap=True,
            )


#: What to say after a job control, by the state the job is in now.
_NEXT_STEP = {
    "paused": "workers stop at their next batch; continue it with `safereplay resume {job} "
    "--reason ...`",
    "running": "workers pick it up again (if none runs: `safereplay worker --job {job} "
    "--exit-when-idle`)",
}


def _control_done(result: Any) -> None:
    job, state = result["job_id"], result["state"]
    next_step = _NEXT_STEP.get(state, "")
    console.print(
        f"job {job} is {state}" + (f": {next_step.format(job=job)}" if next_step else ""),
        highlight=False,
        markup=False,
        soft_wrap=True,
    )


def _control(name: str) -> Any:
    def command(
        job_id: Annotated[str, typer.Argument(help="The job's id, or an unambiguous prefix.")],
        reason: Reason,
        as_json: Json = False,
    ) -> None:
        emit(operation(name, reason=reason, job_id=job_id), as_json=as_json, human=_control_done)

    command.__doc__ = f"{name.capitalize()} a job (the state is persisted for every process)."
    command.__name__ = f"{name}_command"
    return command


def continue_command(
    job_id: Annotated[str, typer.Argument(help="The job's id, or an unambiguous prefix.")],
    reason: Reason,
    as_json: Json = False,
) -> None:
    """Release a staged rollout's held partitions once its canary verified.

    Refused (exit 5) while the canary has not verified: abort the job instead, or
    wait for it.
    """

    def released(result: Any) -> None:
        job, count = result["job_id"], result["released_partitions"]
        console.print(
            f"job {job}: {count} held partition(s) released; workers pick them up (or run "
            f"`safereplay worker --job {job} --exit-when-idle`)"
            if count
            else f"job {job} holds no partitions: nothing to release",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )

    emit(
        operation("rollout.continue", reason=reason, job_id=job_id),
        as_json=as_json,
        human=released,
    )


parked_app = typer.Typer(help="Parked (dead-letter) events.", no_args_is_help=True)


@parked_app.command("list")
def parked_list(
    projection: Annotated[str, typer.Argument(help="The projection's name.")],
    include_resolved: Annotated[
        bool, typer.Option(help="Also re-driven and skipped ones.")
    ] = False,
    as_json: Json = False,
) -> None:
    """Parked events of a projection, in position order (never their payloads)."""
    rows = operation("parked.list", projection=projection, include_resolved=include_resolved)

    def table(result: Any) -> None:
        t = Table(
            Column("id", no_wrap=True),  # what `parked skip` takes
            "partition",
            "aggregate",
            "event",
            "error",
            "attempts",
            "blocked by",
        )
        for r in result:
            t.add_row(
                f"{r['projection']}:{r['position']}",
                f"{r['partition']['index']}/{r['partition']['count']}",
                str(r["aggregate_id"]),
                r["event_type"],
                f"{r['error_type']}: {r['error_message']}"
                + (f" (skipped: {r['skipped_reason']})" if r.get("skipped_reason") else ""),
                str(r["attempts"]),
                str(r["blocked_by"] or "-"),
            )
        console.print(t)

    emit(rows, as_json=as_json, human=table)


@parked_app.command("skip")
def parked_skip(
    parked_id: Annotated[
        str, typer.Argument(help="PROJECTION:POSITION, as `parked list` shows it.")
    ],
    reason: Reason,
    build: Annotated[int | None, typer.Option(help="The build (default: the live one).")] = None,
    as_json: Json = False,
) -> None:
    """Skip a parked event that can never apply: resolved without being applied.

    Audited with the reason; `status` counts it as skipped (not parked now), and the
    completeness check reports it as accounted for.
    """
    try:
        projection, position = parse_parked_id(parked_id)
    except InvalidRequest as exc:
        fail(str(exc), EXIT_INVALID)
    skipped = operation(
        "parked.skip", reason=reason, projection=projection, position=position, build=build
    )

    def sentence(result: Any) -> None:
        console.print(
            f"skipped the event parked at position {result['position']} of "
            f"{result['projection']} build {result['build']} ({result['event_type']}, "
            f"{result['error_type']}: {result['error_message']}); it will never be applied",
            highlight=False,
            soft_wrap=True,
        )

    emit(skipped, as_json=as_json, human=sentence)


def register(app: typer.Typer) -> None:
    app.add_typer(parked_app, name="parked")
    app.command("jobs")(jobs_command)
    for name in ("pause", "resume", "abort"):
        app.command(name)(_control(name))
    app.command("continue")(continue_command)

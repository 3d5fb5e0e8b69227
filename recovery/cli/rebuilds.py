"""CLI: rebuild, catch-up, replay, worker, watch, swap, rollback, drop-version,
retry-partition, parked redrive.

``rebuild`` and ``catch-up`` create the job through the dispatch layer (checked
and audited), then by default start ``--workers`` local worker processes and
show one progress bar per partition (events, rate, ETA) until the job ends. A
local worker that fails makes the command exit with 1, naming the worker and its
error (its partition was given back, so the others carry on).
Workers on other machines join with ``safereplay worker``. Every worker process
authenticates with the caller's token from the environment and runs through the
``worker`` operation, so it too is checked and audited.

The local worker processes and the progress watch live in ``local_workers``, the
renderers in ``progress`` and ``job_messages``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Annotated, Any
from uuid import UUID

import typer

from safereplay.projections.collector import apply_collector_policy
from safereplay.recovery.cli.interrupts import Interrupted, interruptible
from safereplay.recovery.cli.job_messages import (
    follow_table,
    say_dropped,
    say_not_completed,
    say_partition_retried,
    say_rolled_back,
    say_started,
    say_swapped,
    say_worker_report,
)
from safereplay.recovery.cli.local_workers import (
    ENDED,
    WorkerProcess,
    start_workers,
    stop_workers,
    watch_job,
    worker_failures,
)
from safereplay.recovery.cli.progress import (
    summary_table,
)
from safereplay.recovery.cli.security import Json, Reason
from safereplay.recovery.cli.support import (
    EXIT_NO,
    awaiting_approval,
    cli_caller,
    console,
    emit,
    error_console,
    operation,
    recovery_context,
    signed_in,
)
from safereplay.recovery.cli.templates import dry_run as plan_dry_run
from safereplay.recovery.jobs.model import JobState, JobStatus
from safereplay.recovery.operations.approvals import AwaitingApproval
from safereplay.recovery.operations.catalog import open_operations

__all__ = ["Workers", "register"]

Partitions = Annotated[
    int | None,
    typer.Option("--partitions", "-n", min=1, max=256, help="Split into this many partitions."),
]
Workers = Annotated[
    int,
    typer.Option(
        "--workers",
        "-w",
        min=0,
        max=64,
        help="Local worker processes to start (0: leave it to `safereplay worker`).",
    ),
]
MaxConcurrent = Annotated[
    int | None,
    typer.Option("--max-concurrent", min=1, help="Partitions running at once (all workers)."),
]
Rate = Annotated[
    float | None,
    typer.Option("--max-rate", min=1.0, help="Cap on events/s for the whole job."),
]
Projection = Annotated[str, typer.Argument(help="The projection's name.")]
JobId = Annotated[str, typer.Argument(help="The job's id, or an unambiguous prefix.")]
DryRun = Annotated[
    bool,
    typer.Option(
        "--dry-run",
        help="Print the plan (builds, partitions, events in scope, what would change) "
        "as `safereplay plan` does; change nothing.",
    ),
]


def _say_how_to_resume(status: JobStatus, operation_name: str, stop: Interrupted) -> None:
    job = status.job
    if job.state in ENDED:
        message = f"interrupted ({stop}): job {job.job_id} had already ended ({job.state})"
    else:
        message = (
            f"interrupted ({stop}): the local workers stopped and gave their partitions "
            f"back. Job {job.job_id} ({job.kind} of {job.projection}) is {job.state} and "
            f"resumes where it stopped: run the same command again (`safereplay "
            f"{operation_name} {job.projection} --reason ...`), or `safereplay worker --job "
            f"{job.job_id} --exit-when-idle`"
        )
    with contextlib.suppress(OSError):  # the terminal went away with the session (SIGHUP)
        error_console.print(f"[yellow]{message}[/]", highlight=False, soft_wrap=True)


def _run_job(
    operation_name: str,
    *,
    reason: str,
    workers: int,
    as_json: bool,
    **parameters: Any,
) -> None:
    with recovery_context() as context:
        caller = cli_caller(context, operation_name)
        started = open_operations(context).run(caller, operation_name, reason=reason, **parameters)
        if isinstance(started, AwaitingApproval):
            awaiting_approval(started)  # a replay into live, say: nothing runs yet
        _say_if_first_build(started, as_json=as_json)
        if started["job_id"] is None or workers == 0:
            emit(started, as_json=as_json, human=say_started)
            _exit_if_held_back(started, as_json=as_json)
            return
        job_id = UUID(started["job_id"])
        if not as_json and started.get("resumed"):
            console.print(
                f"job {job_id} was interrupted: resuming it (each partition from where it "
                "stopped, as planned when it started)"
            )
        if not as_json:
            console.print(
                f"job {job_id}: {started['kind']} of {started['projection']} build "
                f"{started['build']} to position {started['target_position']} in "
                f"{started['partitions']} partition(s), {workers} local worker(s)"
            )
        processes: list[WorkerProcess] = []
        try:
            with interruptible():
                processes += start_workers(str(job_id), workers)
                status = watch_job(context.jobs, job_id, workers=processes, lines=not as_json)
        except Interrupted as stop:
            stop_workers(processes)
            _say_how_to_resume(context.jobs.status(job_id), operation_name, stop)
            raise typer.Exit(stop.exit_code) from None
        except BaseException:
            # The watch failed (the database is gone and our workers have exited, say):
            # no local worker outlives the command that started it.
            stop_workers(processes, kill_after=30)
            raise
        failures = worker_failures(processes)
        on_terminal = console.is_terminal
        emit(
            status,
            as_json=as_json,
            human=lambda s: console.print(summary_table(s, lines=not on_terminal)),
        )
        if failures:
            # Even if the others finished the job: a worker that died is a fault to
            # look at (the same one may stop the next job).
            for failure in failures:
                error_console.print(f"[red]error:[/] {failure}", highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_NO)
        if status.job.state != JobState.COMPLETED:
            # Under --json on stderr: stdout stays one JSON document.
            say_not_completed(status, out=error_console if as_json else console)
            raise typer.Exit(EXIT_NO)
        _exit_if_held_back(started, as_json=as_json)
        if operation_name == "rebuild" and not as_json and started.get("live"):
            console.print(
                f"build {status.job.build} of {status.job.projection} is complete and live "
                f"(nothing to swap); read its rows with `safereplay rows "
                f"{status.job.projection} TABLE`"
            )
        elif operation_name == "rebuild" and not as_json:
            console.print(
                f"build {status.job.build} is complete; make it live with "
                f"`safereplay swap {status.job.projection} --reason ...`"
            )


def _say_if_first_build(started: Mapping[str, Any], *, as_json: bool) -> None:
    """A never-built projection's first rebuild builds its live build 1 (as a first
    catch-up would): say so before it runs, not after an empty build was swapped."""
    if started.get("live") and not as_json:
        console.print(
            f"{started['projection']} was never built: building build {started['build']}, "
            "live when complete",
            highlight=False,
            soft_wrap=True,
        )


def _exit_if_held_back(started: Mapping[str, Any], *, as_json: bool) -> None:
    """Exit 1 when events were held back above the plan's target (catch-up): the
    projection is not caught up, whatever the job did. On stderr with ``--json``,
    whose stdout stays one JSON document."""
    if not started.get("held_back"):
        return
    out = error_console if as_json else console
    out.print(
        f"not caught up: {started['held_back_detail']}. Those events will be read once the "
        "high-water mark passes them; run the catch-up again, or see `safereplay status` "
        "and docs/runbook.md (events held back)",
        highlight=False,
        soft_wrap=True,
    )
    raise typer.Exit(EXIT_NO)


def _job_command(operation_name: str, summary: str) -> Any:
    """A command that starts a ``rebuild`` or ``catch-up`` job and drives it."""

    def command(
        projection: Projection,
        reason: Reason,
        partitions: Partitions = None,
        workers: Workers = 2,
        max_concurrent: MaxConcurrent = None,
        max_rate: Rate = None,
        dry_run: DryRun = False,
        as_json: Json = False,
    ) -> None:
        (plan_dry_run if dry_run else _run_job)(
            operation_name,
            reason=reason,
            as_json=as_json,
            projection=projection,
            partitions=partitions,
            max_concurrent_partitions=max_concurrent,
            events_per_second=max_rate,
            **({} if dry_run else {"workers": workers}),
        )

    command.__doc__ = summary
    command.__name__ = f"{operation_name.replace('-', '_')}_command"
    return command


rebuild_command = _job_command(
    "rebuild", "Rebuild PROJECTION blue/green: a new build beside the live one, in partitions."
)
catch_up_command = _job_command(
    "catch-up", "Catch the live build of PROJECTION up to the head, in partitions."
)


#: ``worker`` and ``follow``: serve the process's own Prometheus metrics.
MetricsPort = Annotated[
    int | None,
    typer.Option(
        "--metrics-port",
        min=1,
        max=65535,
        help="Serve this process's Prometheus metrics at http://127.0.0.1:PORT/metrics "
        "(loopback only; default: off).",
    ),
]


def worker_command(
    projection: Annotated[
        str | None, typer.Option("--projection", "-p", help="Only jobs of this projection.")
    ] = None,
    job: Annotated[str | None, typer.Option("--job", help="Only this job.")] = None,
    exit_when_idle: Annotated[
        bool, typer.Option(help="Exit when no partition is left to claim.")
    ] = False,
    metrics_port: MetricsPort = None,
    host: Annotated[
        str | None,
        typer.Option(
            "--host",
            help="This worker's host identity, in its leases (HOST:PID:RANDOM) and its "
            "PostgreSQL connections' application_name (default: SAFEREPLAY_WORKER_HOST, "
            "else the hostname).",
        ),
    ] = None,
    as_json: Json = False,
) -> None:
    """Claim and run job partitions until stopped (SIGTERM/Ctrl-C gives them back)."""
    # A process of safereplay's own, doing nothing but replay: it sets the collector
    # policy of replay processes (projections/collector.py says why and what).
    apply_collector_policy()
    # The option is SAFEREPLAY_WORKER_HOST on the command line: it must be known before
    # the context opens its first connection (the sign-in's), so it overrides the
    # setting rather than travelling as an operation parameter.
    with signed_in("worker", recovery={} if host is None else {"worker_host": host}) as run:
        report = run(
            "worker",
            reason="worker process",
            projection=projection,
            job_id=job,
            exit_when_idle=exit_when_idle,
            metrics_port=metrics_port,
        )
    emit(report, as_json=as_json, human=say_worker_report)


def follow_command(
    projection: Annotated[
        list[str] | None,
        typer.Option("--projection", "-p", help="Only this projection (repeatable)."),
    ] = None,
    metrics_port: MetricsPort = None,
    as_json: Json = False,
) -> None:
    """Follow the projections' live builds until stopped (SIGTERM/Ctrl-C).

    Retries then parks a failing event (each park is audited), moves to the new
    live build after a swap or rollback, waits while a catch-up holds a build.
    """
    apply_collector_policy()  # a replay process of safereplay's own (see worker_command)
    reports = operation(
        "follow", reason="live follower", projections=projection or [], metrics_port=metrics_port
    )
    emit(reports, as_json=as_json, human=follow_table)
    if any(r.error for r in reports):
        raise typer.Exit(EXIT_NO)


def watch_command(
    job_id: JobId,
    as_json: Json = False,
    interval: Annotated[
        float,
        typer.Option(
            "--interval", min=0.1, help="Seconds between lines when the output is not a terminal."
        ),
    ] = 2.0,
) -> None:
    """Follow a job's progress (events done of those in scope, rate, ETA) until it ends.

    On a terminal, bars for the job and each partition; into a pipe or a file, one
    plain line per interval and a summary line at the end.
    """
    with recovery_context() as context:
        caller = cli_caller(context, "jobs.show")
        shown = open_operations(context).run(caller, "jobs.show", job_id=job_id)
        status = watch_job(
            context.jobs, shown.job.job_id, lines=not as_json, line_interval=interval
        )
        on_terminal = console.is_terminal
        emit(
            status,
            as_json=as_json,
            human=lambda s: console.print(summary_table(s, lines=not on_terminal)),
        )


def replay_command(
    projection: Projection,
    reason: Reason,
    start: Annotated[int, typer.Option("--from", min=1, help="First position to re-apply.")],
    end: Annotated[int, typer.Option("--to", min=1, help="Last position to re-apply.")],
    into: Annotated[
        str, typer.Option(help="sandbox (a new build, never live) or live (replay-safe only).")
    ] = "sandbox",
    partition: Annotated[
        str | None, typer.Option(help="Only this partition, as INDEX/COUNT (e.g. 1/4).")
    ] = None,
    aggregate: Annotated[
        list[str] | None, typer.Option("--aggregate", help="Only this aggregate (repeatable).")
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Confirm a replay into live.")] = False,
    partitions: Partitions = None,
    workers: Workers = 1,
    dry_run: DryRun = False,
    as_json: Json = False,
) -> None:
    """Re-apply positions FROM..TO of PROJECTION, idempotently."""
    (plan_dry_run if dry_run else _run_job)(
        "replay",
        reason=reason,
        as_json=as_json,
        **({} if dry_run else {"workers": workers}),
        projection=projection,
        start=start,
        end=end,
        into=into,
        partition=partition,
        aggregates=aggregate or [],
        confirmed=yes,
        partitions=partitions,
    )


def swap_command(
    projection: Projection,
    reason: Reason,
    build: Annotated[int | None, typer.Option(help="The build (default: the newest).")] = None,
    as_json: Json = False,
) -> None:
    """Make a completed rebuild live, in one transaction (the old build stays)."""
    emit(
        operation("swap", reason=reason, projection=projection, build=build),
        as_json=as_json,
        human=say_swapped,
    )


def rollback_command(projection: Projection, reason: Reason, as_json: Json = False) -> None:
    """Make the previously live build live again, in one transaction."""

    emit(
        operation("rollback", reason=reason, projection=projection),
        as_json=as_json,
        human=say_rolled_back,
    )


def drop_version_command(
    projection: Projection,
    reason: Reason,
    build: Annotated[int, typer.Option(help="The build to drop (never the live one).")],
    as_json: Json = False,
) -> None:
    """Drop a build that is not live: its tables, positions and parked events."""
    emit(
        operation("drop-version", reason=reason, projection=projection, build=build),
        as_json=as_json,
        human=say_dropped,
    )


def retry_partition_command(
    job_id: JobId,
    reason: Reason,
    partition: Annotated[int, typer.Option(help="The failed partition to run again.")],
    as_json: Json = False,
) -> None:
    """Run a failed partition of a job again (start a worker to pick it up)."""
    emit(
        operation("retry-partition", reason=reason, job_id=job_id, partition=partition),
        as_json=as_json,
        human=say_partition_retried,
    )


def parked_redrive_command(
    projection: Projection,
    reason: Reason,
    aggregate: Annotated[
        list[str] | None, typer.Option("--aggregate", help="Only this aggregate (repeatable).")
    ] = None,
    workers: Annotated[int, typer.Option(min=0, max=1, help="0: leave it to a worker.")] = 1,
    dry_run: DryRun = False,
    as_json: Json = False,
) -> None:
    """Re-apply parked events in order after a fix (idempotent)."""
    (plan_dry_run if dry_run else _run_job)(
        "parked.redrive",
        reason=reason,
        as_json=as_json,
        **({} if dry_run else {"workers": workers}),
        projection=projection,
        aggregates=aggregate or [],
    )


def register(app: typer.Typer, parked_app: typer.Typer) -> None:
    app.command("rebuild")(rebuild_command)
    app.command("catch-up")(catch_up_command)
    app.command("worker")(worker_command)
    app.command("watch")(watch_command)
    app.command("follow")(follow_command)
    app.command("replay")(replay_command)
    app.command("swap")(swap_command)
    app.command("rollback")(rollback_command)
    app.command("drop-version")(drop_version_command)
    app.command("retry-partition")(retry_partition_command)
    parked_app.command("redrive")(parked_redrive_command)

"""CLI: apply, a template's steps run by local worker processes, canary partitions first.

The steps go through the dispatch layer one by one (checked and audited); jobs
get ``--workers`` local worker processes each, as ``rebuild`` starts them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated
from uuid import UUID

import typer
from rich.table import Table

from safereplay.recovery.cli.local_workers import WorkerProcess, start_workers, worker_failures
from safereplay.recovery.cli.rebuilds import Workers
from safereplay.recovery.cli.security import Json, Reason
from safereplay.recovery.cli.support import (
    EXIT_NO,
    cli_caller,
    console,
    emit,
    error_console,
    fail,
    recovery_context,
)
from safereplay.recovery.cli.templates import Settings
from safereplay.recovery.jobs.model import JobStatus
from safereplay.recovery.jobs.store import JobStore
from safereplay.recovery.operations.catalog import open_operations
from safereplay.recovery.operations.templates import planned_template
from safereplay.recovery.templates.apply import (
    STEP_OPERATIONS,
    AppliedStep,
    apply_template,
    wait_for_job,
)

__all__ = ["ProcessDriver", "register"]


class ProcessDriver:
    """Worker processes on this machine for each job of a template; waits on the job."""

    def __init__(self, jobs: JobStore, workers: int) -> None:
        self.jobs = jobs
        self.workers = workers
        self.processes: list[WorkerProcess] = []
        self.by_job: dict[UUID, list[WorkerProcess]] = {}

    def start(self, job_id: UUID) -> None:
        started = start_workers(str(job_id), self.workers)
        self.by_job[job_id] = started
        self.processes += started

    def wait(self, job_id: UUID, done: Callable[[JobStatus], bool]) -> JobStatus:
        """The job's status once ``done`` holds; stops (exit 1) if every local worker
        of the job has exited before that. Workers wait while partitions are held for
        a canary, so all of them gone means they failed (an import error in the
        projection code, a lost database): polling on would wait forever."""
        workers = self.by_job.get(job_id, [])

        def done_or_abandoned(status: JobStatus) -> bool:
            return done(status) or (bool(workers) and all(w.poll() is not None for w in workers))

        status = wait_for_job(self.jobs.status, job_id, done_or_abandoned, poll=0.2)
        if done(status):
            return status
        # A worker may have finished the job just before it exited: read it once more.
        status = self.jobs.status(job_id)
        if not done(status):
            # Only named here: close() passes their error output on.
            failed = [f for w in workers if (f := w.failure()) is not None]
            fail(
                f"every local worker of job {job_id} exited while it was {status.job.state} "
                f"({'; '.join(failed) or 'they exited without an error'}). Nothing is lost: "
                "the job resumes where it stopped once the cause is fixed, with "
                f"`safereplay worker --job {job_id} --exit-when-idle`",
                EXIT_NO,
            )
        return status

    def close(self) -> None:
        stopped = []
        for process in self.processes:
            if process.poll() is None:
                process.terminate()  # SIGTERM: a worker gives its partition back
                stopped.append(process)
            process.wait()
        # Those stopped here were not failing: only the others' exits are reported.
        failed_alone = [p for p in self.processes if p not in stopped]
        for failure in worker_failures(failed_alone):
            error_console.print(f"[red]error:[/] {failure}", highlight=False, soft_wrap=True)
        for process in stopped:
            process.error_text()  # read and close its error file


def apply_command(
    template: Annotated[
        str, typer.Argument(help="A TOML file, a stored template or a shipped runbook name.")
    ],
    reason: Reason,
    workers: Workers = 2,
    settings: Settings = None,
    as_json: Json = False,
) -> None:
    """Run TEMPLATE (see `safereplay plan` for the dry run), canary partitions first.

    `--set NAME=VALUE` sets a parameter the template declares, within its bounds
    (as on `plan`); anything else is refused (exit 2) before any step runs.
    """
    with recovery_context() as context:
        caller = cli_caller(context, "apply")
        operations = open_operations(context)
        # Refused before the template is even resolved when no step could run.
        operations.require_any(
            caller,
            "apply",
            list(STEP_OPERATIONS.values()),
            reason=reason,
            parameters={"template": template, "workers": workers, "settings": settings or []},
        )
        context.ensure_schema()
        loaded, origin = planned_template(
            context, {"template": template, "settings": settings or []}
        )
        driver = ProcessDriver(context.jobs, max(1, workers))
        try:
            steps = apply_template(operations, caller, loaded, reason=reason, driver=driver)
        finally:
            driver.close()
        emit(steps, as_json=as_json, human=lambda s: _steps_table(origin, s))
        if not steps or steps[-1].outcome not in ("completed", "done"):
            raise typer.Exit(EXIT_NO)


def _steps_table(origin: str, steps: list[AppliedStep]) -> None:
    table = Table(title=f"applied {origin}")
    for column in ("projection", "operation", "job", "outcome", "detail"):
        table.add_column(column)
    for step in steps:
        table.add_row(
            step.projection or "-", step.operation, step.job_id or "-", step.outcome, step.detail
        )
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("apply")(apply_command)

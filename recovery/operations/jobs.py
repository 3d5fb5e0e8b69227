"""Job operations: list jobs with their progress, and pause, resume or abort one."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from safereplay.recovery.jobs.model import JobState
from safereplay.recovery.operations.dispatch import OperationContext, Operations
from safereplay.recovery.operations.job_ids import job_id_preparer, resolve_job_id
from safereplay.recovery.security.access import Permission

if TYPE_CHECKING:
    from safereplay.recovery.operations.context import RecoveryContext

__all__ = ["register_job_operations"]


def _job_scope(context: RecoveryContext) -> Any:
    """Scope of a job operation: the projection the job works on."""

    def scope(parameters: Mapping[str, Any]) -> str:
        job = context.jobs.get_job(resolve_job_id(context.jobs, parameters.get("job_id")))
        return f"projection:{job.projection}"

    return scope


def register_job_operations(operations: Operations, context: RecoveryContext) -> None:
    jobs = context.jobs

    def jobs_list(ctx: OperationContext, p: Mapping[str, Any]) -> list[dict[str, Any]]:
        listed = jobs.list_jobs(
            projection=p.get("projection"), active_only=bool(p.get("active_only"))
        )
        result = []
        now = jobs.clock()
        for job in listed:
            status = jobs.status(job.job_id)
            stalled = status.stalled(now)
            result.append(
                {
                    **asdict(job),
                    "stalled": stalled,
                    # Partitions an integrity conflict holds (`conflicts list`).
                    "paused_by_conflict": status.paused_by_conflict,
                    "live_workers": status.live_leases(now),
                    "events_applied": status.events_applied,
                    # Progress in events: done (applied or parked) of those in scope.
                    "events_done": status.events_done,
                    "events_in_scope": status.events_in_scope,
                    "parked": status.parked,
                    "retries": status.retries,
                    "conflicts": status.conflicts,
                    "events_per_second": status.events_per_second(now),
                    "eta_seconds": None if stalled else status.eta_seconds(now),
                    "partitions": [asdict(part) for part in status.partitions],
                }
            )
        return result

    def control(new_state: JobState) -> Any:
        def handler(ctx: OperationContext, p: Mapping[str, Any]) -> dict[str, Any]:
            job_id = resolve_job_id(jobs, p["job_id"])
            state = new_state
            if state == JobState.ABORTING and jobs.get_job(job_id).state in (
                JobState.PLANNED,
                JobState.FAILED,
            ):
                state = JobState.ABORTED  # no worker holds a partition: nothing to wind down
            job = jobs.transition(job_id, state)
            if state == JobState.ABORTING:
                job = jobs.finalize(job_id)
            return {"job_id": str(job.job_id), "state": str(job.state)}

        return handler

    operations.register(
        "jobs.list",
        permission=Permission.VIEW,
        handler=jobs_list,
        # Every projection's jobs: what a grant on projection:* (or *) covers.
        scope=lambda p: f"projection:{p.get('projection') or '*'}",
        summary="list jobs with progress, rate and ETA",
        scope_reads=False,
        monitoring=True,
    )
    for name, state in (
        ("pause", JobState.PAUSED),
        ("resume", JobState.RUNNING),
        ("abort", JobState.ABORTING),
    ):
        operations.register(
            name,
            permission=Permission.OPERATE,
            handler=control(state),
            scope=_job_scope(context),
            prepare=job_id_preparer(context),
            summary=f"{name} a job (workers see it at their next batch)",
        )

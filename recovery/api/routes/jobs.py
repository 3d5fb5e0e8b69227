"""Jobs: list and show them with their progress; pause, resume, abort; release a
staged rollout's held partitions; run a failed partition again."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query

from safereplay.recovery.api.callers import CallerDep
from safereplay.recovery.api.routes.bodies import Reasoned
from safereplay.recovery.api.routes.paths import JobId

__all__ = ["router"]

router = APIRouter(prefix="/api/jobs", tags=["jobs"])


@router.get("", summary="jobs with progress, rate and ETA, newest first")
def jobs_list(
    caller: CallerDep,
    projection: Annotated[str | None, Query(description="Only this projection's jobs.")] = None,
    active: Annotated[bool, Query(description="Only jobs that have not ended.")] = False,
) -> Any:
    parameters: dict[str, Any] = {"active_only": active}
    if projection:
        parameters["projection"] = projection
    return caller.run("jobs.list", **parameters)


@router.get("/{job_id}", summary="one job with its partitions' progress")
def job_show(caller: CallerDep, job_id: JobId) -> Any:
    return caller.run("jobs.show", job_id=job_id)


@router.post("/{job_id}/pause", summary="pause a job (workers see it at their next batch)")
def pause(caller: CallerDep, job_id: JobId, body: Reasoned) -> Any:
    return caller.run("pause", reason=body.reason, job_id=job_id)


@router.post("/{job_id}/resume", summary="resume a paused job")
def resume(caller: CallerDep, job_id: JobId, body: Reasoned) -> Any:
    return caller.run("resume", reason=body.reason, job_id=job_id)


@router.post("/{job_id}/abort", summary="abort a job (workers stop at their next batch)")
def abort(caller: CallerDep, job_id: JobId, body: Reasoned) -> Any:
    return caller.run("abort", reason=body.reason, job_id=job_id)


@router.post(
    "/{job_id}/continue",
    summary="release a staged rollout's held partitions once its canary verified",
)
def continue_rollout(caller: CallerDep, job_id: JobId, body: Reasoned) -> Any:
    return caller.run("rollout.continue", reason=body.reason, job_id=job_id)


@router.post(
    "/{job_id}/partitions/{partition}/retry", summary="run a failed partition of a job again"
)
def retry_partition(
    caller: CallerDep,
    job_id: JobId,
    partition: Annotated[int, Path(ge=0, le=4096, description="The partition's index.")],
    body: Reasoned,
) -> Any:
    return caller.run("retry-partition", reason=body.reason, job_id=job_id, partition=partition)

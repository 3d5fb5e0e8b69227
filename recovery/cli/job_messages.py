"""What the job commands say: one or two sentences per outcome, with the full ids and
the next command a person needs (rebuild, catch-up, replay, worker, follow, swap,
rollback, drop-version, retry-partition)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.table import Table

from safereplay.recovery.cli.support import console
from safereplay.recovery.jobs.follow import FollowReport
from safereplay.recovery.jobs.model import JobStatus, PartitionStatus
from safereplay.recovery.jobs.worker import PartitionOutcome, WorkerReport

__all__ = [
    "follow_table",
    "say",
    "say_dropped",
    "say_not_completed",
    "say_partition_retried",
    "say_rolled_back",
    "say_started",
    "say_swapped",
    "say_worker_report",
]


def say(text: str, *, out: Console = console) -> None:
    out.print(text, highlight=False, markup=False, soft_wrap=True)


def say_started(started: Mapping[str, Any]) -> None:
    """A job planned for workers elsewhere (``--workers 0``), or why there is none."""
    job_id = started["job_id"]
    if job_id is None:
        if not started.get("held_back"):  # else the held-back exit message says why
            say(f"no job was started ({started['state']})")
        return
    planned = "was interrupted: it resumes" if started.get("resumed") else "planned"
    say(
        f"job {job_id} ({started['kind']} of {started['projection']} build {started['build']}, "
        f"{started['partitions']} partition(s)) {planned}; start workers with "
        f"`safereplay worker --job {job_id} --exit-when-idle` on any machine"
    )


def say_not_completed(status: JobStatus, *, out: Console) -> None:
    """A job that ended otherwise than completed: why, and the commands that go on."""
    job = status.job
    say(f"job {job.job_id} is {job.state}" + (f": {job.error}" if job.error else ""), out=out)
    for part in status.partitions:
        if part.status == PartitionStatus.FAILED:
            say(
                f"partition {part.partition_index} failed: {part.last_error or 'no error kept'}. "
                f"Once its cause is fixed: `safereplay retry-partition {job.job_id} --partition "
                f"{part.partition_index} --reason ...`, then `safereplay worker --job "
                f"{job.job_id} --exit-when-idle`",
                out=out,
            )
        elif part.status == PartitionStatus.CONFLICT:
            say(
                f"partition {part.partition_index} is paused by an integrity conflict after "
                f"position {part.position}: {part.last_error or 'no error kept'}. "
                f"`safereplay conflicts list`, then `safereplay conflicts resolve ID --action "
                f"retry|park --reason ...` and `safereplay worker --job {job.job_id} "
                f"--exit-when-idle`",
                out=out,
            )


def say_worker_report(report: WorkerReport) -> None:
    counts = ", ".join(f"{report.count(o)} {o}" for o in PartitionOutcome if report.count(o))
    say(f"worker {report.worker_id} stopped: partitions {counts or 'none run'}")
    for job_id, index, outcome in report.outcomes:
        if outcome == PartitionOutcome.PAUSED:
            say(
                f"partition {index} of job {job_id} is paused by an integrity conflict: "
                f"`safereplay conflicts list`, then `safereplay conflicts resolve ID --action "
                f"retry|park --reason ...`"
            )
        if outcome == PartitionOutcome.FAILED:
            say(
                f"partition {index} of job {job_id} failed (see `safereplay jobs --json`); "
                f"once fixed: `safereplay retry-partition {job_id} --partition {index} "
                f"--reason ...`, then `safereplay worker --job {job_id} --exit-when-idle`"
            )


def follow_table(reports: list[FollowReport]) -> None:
    table = Table(title="followers stopped")
    for column in ("projection", "build", "applied", "parked", "error"):
        table.add_column(column)
    for r in reports:
        table.add_row(r.projection, str(r.build), str(r.applied), str(r.parked), r.error or "-")
    console.print(table)


def say_swapped(result: Mapping[str, Any]) -> None:
    name, previous = result["projection"], result["previous"]
    text = f"build {result['live']} of {name} is live (at position {result['position']})"
    if previous is not None:
        text += (
            f"; build {previous} stays: `safereplay rollback {name} --reason ...` makes it live "
            f"again, `safereplay drop-version {name} --build {previous} --reason ...` drops it"
        )
    say(text)


def say_rolled_back(result: Mapping[str, Any]) -> None:
    name, previous = result["projection"], result["previous"]
    say(
        f"build {result['live']} of {name} is live again (at position {result['position']})"
        + (
            f"; build {previous} stays (drop it with `safereplay drop-version {name} "
            f"--build {previous} --reason ...`)"
            if previous is not None
            else ""
        )
    )


def say_dropped(result: Mapping[str, Any]) -> None:
    say(
        f"build {result['dropped']} of {result['projection']} dropped: its tables, positions "
        "and parked events"
    )


def say_partition_retried(result: Mapping[str, Any]) -> None:
    job_id = result["job_id"]
    say(
        f"partition {result['partition']} of job {job_id} is {result['status']} again; run it "
        f"with `safereplay worker --job {job_id} --exit-when-idle`"
    )

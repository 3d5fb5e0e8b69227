"""How a job's progress reads: events done of events in scope, the rate, the ETA,
failures with the command that comes next, and a job list that fits a terminal.

Shared by ``watch`` (and the bars of ``rebuild``/``catch-up``) and ``jobs``; the
figures come from :class:`~safereplay.recovery.jobs.model.JobStatus` (or the
``jobs.list`` rows built from it), so every view agrees.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.table import Column, Table
from rich.text import Text

from safereplay.recovery.jobs.model import JobState, JobStatus, PartitionStatus

__all__ = [
    "NARROW",
    "failure_lines",
    "format_eta",
    "format_rate",
    "job_fields",
    "jobs_renderable",
    "partition_fields",
    "progress_line",
    "status_failure_lines",
    "summary_line",
    "summary_table",
]

#: Below this width the job list is one block per job instead of a table (a
#: table would cut the ids, which later commands need whole).
NARROW = 150


def format_rate(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:,.0f} ev/s"


def format_eta(eta: float | None, *, stalled: bool = False) -> str:
    if stalled:
        return "- (stalled)"
    if eta is None:
        return "?"
    return f"{eta:,.0f}s"


def _state(status: JobStatus, now: float) -> str:
    if status.paused_by_conflict:
        return "paused by conflict"
    return "stalled" if status.stalled(now) else str(status.job.state)


def progress_line(status: JobStatus, now: float) -> str:
    """One plain line (for a pipe or a log): id, state, events, rate, ETA."""
    job = status.job
    stalled = status.stalled(now)
    return (
        f"job {job.job_id} {_state(status, now)}: {status.events_done:,}/"
        f"{status.events_in_scope:,} events, {format_rate(status.events_per_second(now))}, "
        f"ETA {format_eta(status.eta_seconds(now), stalled=stalled)}"
    )


def summary_line(status: JobStatus) -> str:
    """The last line of a watch: how the job ended, in events and average rate."""
    job = status.job
    started = status.started_at()
    elapsed = job.updated_at - started if started is not None else 0.0
    return (
        f"job {job.job_id} {job.state}: {status.events_done:,}/{status.events_in_scope:,} "
        f"events ({status.events_applied:,} applied, {status.parked:,} parked) in "
        f"{elapsed:,.0f}s, {format_rate(status.events_per_second(job.updated_at))} average"
    )


def _partition_failure(job_id: str, index: int, position: int, error: str | None) -> str:
    return (
        f"partition {index} failed (committed up to position {position}): "
        f"{error or 'no error recorded'}. Next: `safereplay retry-partition {job_id} "
        f"--partition {index} --reason ...`, then `safereplay worker --job {job_id} "
        "--exit-when-idle`"
    )


def failure_lines(job: Mapping[str, Any], partitions: Sequence[Mapping[str, Any]]) -> list[str]:
    """Each failed partition's last error and the commands that run it again.

    Takes the plain rows (``jobs.list``'s, or a status's as dicts) so that the list
    and the watch say the same thing.
    """
    job_id = str(job["job_id"])
    lines = [
        _partition_failure(job_id, int(p["partition_index"]), int(p["position"]), p["last_error"])
        for p in partitions
        if str(p["status"]) == PartitionStatus.FAILED
    ]
    if not lines and str(job["state"]) == JobState.FAILED and job.get("error"):
        lines.append(f"job {job_id} failed: {job['error']}")
    return lines


def status_failure_lines(status: JobStatus) -> list[str]:
    job = status.job
    return failure_lines(
        {"job_id": job.job_id, "state": job.state, "error": job.error},
        [
            {
                "partition_index": p.partition_index,
                "position": p.position,
                "status": p.status,
                "last_error": p.last_error,
            }
            for p in status.partitions
        ],
    )


def _eta_text(row: Mapping[str, Any]) -> str:
    return format_eta(row["eta_seconds"], stalled=bool(row.get("stalled")))


def _state_text(row: Mapping[str, Any]) -> str:
    if row.get("paused_by_conflict"):
        return "[red]paused by conflict[/]"
    return "[yellow]stalled[/]" if row.get("stalled") else str(row["state"])


def _events_text(row: Mapping[str, Any]) -> str:
    return f"{row['events_done']:,}/{row['events_in_scope']:,}"


def _table(rows: Sequence[Mapping[str, Any]]) -> Table:
    # The full id (what job commands take) and the state are never wrapped or cut.
    # Only "by" and "reason" may wrap: the figures are never cut.
    table = Table(
        Column("job", no_wrap=True, min_width=36),
        Column("kind", no_wrap=True),
        Column("projection", no_wrap=True),
        Column("state", no_wrap=True, min_width=7),
        Column("events", justify="right", no_wrap=True),
        Column("ev/s", justify="right", no_wrap=True),
        Column("ETA", justify="right", no_wrap=True),
        Column("parked", justify="right", no_wrap=True),
        Column("retries", justify="right", no_wrap=True),
        "by",
        "reason",
    )
    for r in rows:
        table.add_row(
            str(r["job_id"]),
            str(r["kind"]),
            str(r["projection"]),
            _state_text(r),
            _events_text(r),
            f"{r['events_per_second']:,.0f}",
            _eta_text(r),
            str(r["parked"]),
            str(r["retries"]),
            str(r["principal"]),
            str(r["reason"]),
        )
    return table


def _block(row: Mapping[str, Any]) -> RenderableType:
    """One job in a few short lines: the full id alone on the first."""
    lines = [
        Text(f"job {row['job_id']}", style="bold"),
        Text.from_markup(f"  {row['kind']} of {row['projection']}: {_state_text(row)}"),
        Text(
            f"  {_events_text(row)} events, {row['events_per_second']:,.0f} ev/s, "
            f"ETA {_eta_text(row)}"
        ),
        Text(f"  parked {row['parked']}, retries {row['retries']}, by {row['principal']}"),
        Text(f"  reason: {row['reason']}"),
    ]
    return Group(*lines)


def jobs_renderable(rows: Sequence[Mapping[str, Any]], console: Console) -> RenderableType:
    """The job list: a table when the terminal is wide enough for whole ids and the
    columns, else one block per job; each failure with its next command after."""
    parts: list[RenderableType] = []
    if console.width >= NARROW:
        parts.append(_table(rows))
    else:
        for row in rows:
            parts.append(_block(row))
    for row in rows:
        for line in failure_lines(row, row.get("partitions") or []):
            parts.append(Text(line, style="red"))
    return Group(*parts)


def partition_fields(status: JobStatus, index: int, now: float) -> dict[str, Any]:
    part = status.partitions[index]
    eta = part.eta_seconds(now)
    state: str = part.status
    if status.stalled(now) and part.status in (PartitionStatus.PENDING, PartitionStatus.RUNNING):
        state, eta = "stalled: no live worker", None
    return {
        "rate": format_rate(part.rate(now)),
        "eta": format_eta(eta),
        "status": state if part.last_error is None else f"{state}: {part.last_error}",
    }


def job_fields(status: JobStatus, now: float) -> dict[str, Any]:
    stalled = status.stalled(now)
    return {
        "rate": format_rate(status.events_per_second(now)),
        "eta": format_eta(status.eta_seconds(now), stalled=stalled),
        "status": "stalled: no live worker" if stalled else str(status.job.state),
    }


def summary_table(status: JobStatus, *, lines: bool = False) -> Group:
    """How a job ended, per partition, then each failure with its next command.

    ``lines``: the output is not a terminal and :func:`summary_line` was written
    already (see ``watch_job``): only the failures follow it, plain.
    """
    job = status.job
    failures = [Text(line, style="red") for line in status_failure_lines(status)]
    if lines:
        return Group(*failures)
    table = Table(title=f"job {job.job_id}: {job.kind} of {job.projection} build {job.build}")
    for column in ("partition", "status", "events", "applied", "parked", "retries", "position"):
        table.add_column(column, justify="right")
    for part in status.partitions:
        table.add_row(
            str(part.partition_index),
            part.status,
            f"{part.done:,}/{part.scope:,}",
            f"{part.events_applied:,}",
            f"{part.parked:,}",
            str(part.retries),
            f"{part.position}/{part.target_position}",
        )
    return Group(table, Text(summary_line(status)), *failures)

"""CLI: the local worker processes of ``rebuild``, ``catch-up``, ``apply``, ``serve`` and
the demo: start them, watch their job's progress until it ends, stop them.

A local worker is ``safereplay worker --job ID --exit-when-idle`` in a child
process, authenticated with the caller's token from its environment (never on its
command line); its error output is kept so that a failure can name the worker and
say why.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from uuid import UUID

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
)

from safereplay.projections.errors import DatabaseUnavailable
from safereplay.recovery.cli.progress import (
    job_fields,
    partition_fields,
    progress_line,
    summary_line,
)
from safereplay.recovery.cli.support import console, error_console
from safereplay.recovery.jobs.model import JobState, JobStatus, PartitionStatus
from safereplay.recovery.jobs.store import JobStore

__all__ = [
    "ENDED",
    "WorkerProcess",
    "start_workers",
    "stop_workers",
    "watch_job",
    "worker_failures",
]

ENDED = (JobState.COMPLETED, JobState.FAILED, JobState.ABORTED)


class WorkerProcess(subprocess.Popen[bytes]):
    """A local worker process whose error output is kept, to say why it failed.

    Its stderr goes to a temporary file (a pipe could fill up and block it), which
    is passed on to this process's stderr once the worker has exited.
    """

    def __init__(self, command: list[str], *, number: int, env: Mapping[str, str] | None) -> None:
        self.number = number
        self._stderr_file = tempfile.TemporaryFile()  # noqa: SIM115 - closed by error_text()
        # Its own reports are not the caller's output.
        super().__init__(
            command,
            env=None if env is None else dict(env),
            stdout=subprocess.DEVNULL,
            stderr=self._stderr_file,
        )
        self._error_text: str | None = None

    def error_text(self) -> str:
        """What it wrote to stderr (read once it has exited)."""
        if self._error_text is None:
            self.wait()
            self._stderr_file.seek(0)
            self._error_text = self._stderr_file.read().decode("utf-8", "replace")
            self._stderr_file.close()
        return self._error_text

    def failure(self) -> str | None:
        """None if it exited with 0; else which worker failed, and why (its last line)."""
        code = self.wait()
        if code == 0:
            return None
        lines = [line.strip() for line in self.error_text().splitlines() if line.strip()]
        why = lines[-1] if lines else "no error output"
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        return f"worker {self.number} (pid {self.pid}) {how}: {why}"


def start_workers(
    job_id: str, count: int, *, env: Mapping[str, str] | None = None
) -> list[WorkerProcess]:
    """``count`` worker processes for one job; they exit when it has no work left.

    They authenticate with the token in their environment (``env``, default this
    process's), never on their command line.
    """
    command = [
        *(sys.executable, "-m", "safereplay.recovery.cli"),
        *("worker", "--job", job_id, "--exit-when-idle"),
    ]
    return [WorkerProcess(command, number=n, env=env) for n in range(1, count + 1)]


def worker_failures(workers: Sequence[WorkerProcess]) -> list[str]:
    """Wait for ``workers``; pass their error output on; one line per failed worker."""
    failures = []
    for worker in workers:
        text = worker.error_text()
        if text:
            sys.stderr.write(text)
        failure = worker.failure()
        if failure is not None:
            failures.append(failure)
    return failures


def _say_stalled(status: JobStatus) -> None:
    job_id = status.job.job_id
    error_console.print(
        f"[yellow]job {job_id} is stalled: no worker holds a partition. Resume it "
        f"with the command that started it, or `safereplay worker --job {job_id} "
        "--exit-when-idle`[/]",
        highlight=False,
        soft_wrap=True,
    )


def _say_line(line: str) -> None:
    console.print(line, highlight=False, soft_wrap=True, markup=False)
    console.file.flush()  # a pipe reader sees each line as it is written


def watch_job(
    jobs: JobStore,
    job_id: UUID,
    *,
    workers: Sequence[subprocess.Popen[bytes]] | None = None,
    interval: float = 0.25,
    lines: bool = False,
    line_interval: float = 2.0,
) -> JobStatus:
    """Show a job's progress until it ends (or its local workers have all exited).

    On a terminal: a bar for the job and one per partition (events done of those
    in scope, the recent rate, the ETA). Elsewhere (a pipe, a log) with ``lines``:
    one plain line every ``line_interval`` seconds and a summary line at the end,
    each flushed. Polls every ``interval`` seconds.

    The caller checks (through the dispatch layer) that the principal may view the
    job; polling its progress is not audited once per poll.
    """
    status = jobs.status(job_id)
    on_terminal = console.is_terminal
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TextColumn("ETA {task.fields[eta]}"),
        TextColumn("{task.fields[status]}"),
        console=console,
        disable=not on_terminal,
    ) as progress:
        now = jobs.clock()
        job_task = progress.add_task(
            "job", total=status.events_in_scope or 1, **job_fields(status, now)
        )
        tasks: list[TaskID] = []
        for part in status.partitions:
            tasks.append(
                progress.add_task(
                    f"partition {part.partition_index}/{status.job.partition_count}",
                    total=part.scope or 1,
                    **partition_fields(status, part.partition_index, now),
                )
            )
        said_stalled = False
        said_at: float | None = None
        while True:
            try:
                status = jobs.status(job_id)
            except DatabaseUnavailable:
                # The database went away for a moment (a restart): our workers wait for
                # it too. Ask again while any of them runs; else say why and stop.
                if workers is None or all(w.poll() is not None for w in workers):
                    raise
                time.sleep(interval)
                continue
            now = jobs.clock()
            if status.stalled(now) and workers is None and not said_stalled:
                said_stalled = True
                _say_stalled(status)
            progress.update(
                job_task,
                completed=status.events_done
                if status.events_in_scope
                else int(status.job.state == JobState.COMPLETED),
                **job_fields(status, now),
            )
            for task, part in zip(tasks, status.partitions, strict=True):
                done = part.done if part.scope else int(part.status == PartitionStatus.COMPLETED)
                progress.update(
                    task, completed=done, **partition_fields(status, part.partition_index, now)
                )
            ended = status.job.state in ENDED
            if lines and not on_terminal and not ended:
                moment = time.monotonic()
                if said_at is None or moment - said_at >= line_interval:
                    said_at = moment
                    _say_line(progress_line(status, now))
            if ended:
                break
            # Ours are done: wait on only while workers elsewhere still hold partitions.
            ours_done = workers is not None and all(w.poll() is not None for w in workers)
            if ours_done and not status.live_leases(jobs.clock()):
                break
            time.sleep(interval)
    if workers is not None:
        for worker in workers:
            worker.wait()
    final = jobs.status(job_id)
    if lines and not on_terminal:
        _say_line(
            summary_line(final) if final.job.state in ENDED else progress_line(final, jobs.clock())
        )
    return final


def stop_workers(processes: Sequence[WorkerProcess], *, kill_after: float | None = None) -> None:
    """SIGTERM to each local worker still running (it gives its partition back); wait
    for them, killing one still running after ``kill_after`` seconds (None: wait on)."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.error_text()  # read and close its error file

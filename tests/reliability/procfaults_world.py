"""Shared set-up of the process-fault scenarios: worker processes killed at a random
point of a job's progress, and the end-of-trial checks in the database."""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.process import BaseProcess
from typing import Any

from procfaults_checks import (
    account,
    dead_leases,
    projection_mismatches,
    reap,
    unsettled_jobs,
    wait_for,
)
from projection_fixtures import Log
from recovery_fixtures import Recovery, kill, spawn_worker, worker_pid
from trials import Trial

from safereplay.projections import Projection
from safereplay.recovery.jobs.model import Job, JobState

TrialsFactory = Callable[..., Iterator[Trial]]

#: Small batches, slowed a little: a job has many batches to be killed in.
SLOW: dict[str, Any] = {"batch_size": 5, "event_delay": 0.004, "lease_seconds": 1.0}


@contextmanager
def worker_processes() -> Iterator[list[BaseProcess]]:
    """Worker processes of a trial; whatever is left is killed at the end."""
    started: list[BaseProcess] = []
    try:
        yield started
    finally:
        for process in started:
            if process.is_alive():
                kill(process)
            process.join(10)


def moved(recovery: Recovery, job: Job) -> int:
    return sum(p.position - p.start_position for p in recovery.partitions(job))


def kill_a_busy_worker(
    recovery: Recovery, job: Job, processes: list[BaseProcess], *, after: int, rng: random.Random
) -> tuple[int, float] | None:
    """Once the job has moved past ``after`` positions, SIGKILL a worker holding one of
    its partitions (chosen by ``rng``); None if the job ended first. Returns the pid
    and this machine's time of the kill."""

    def busy() -> list[int] | bool:
        if recovery.job(job).state not in (JobState.PLANNED, JobState.RUNNING):
            return True  # ended: nothing left to kill
        if moved(recovery, job) < after:
            return False
        alive = {p.pid for p in processes if p.is_alive()}
        return [pid for p in recovery.partitions(job) if (pid := worker_pid(p)) in alive]

    found = wait_for(busy, what=f"a worker busy on job {job.job_id} past {after}", timeout=120)
    if found is True:
        return None
    assert isinstance(found, list)
    pid = rng.choice(sorted(found))
    kill(pid)
    at = time.time()
    [victim] = [p for p in processes if p.pid == pid]
    victim.join(10)
    assert victim.exitcode == -signal.SIGKILL
    processes.remove(victim)
    reap([pid])
    return pid, at


def finished(recovery: Recovery, job: Job, *, timeout: float = 180) -> Job:
    ended = (JobState.COMPLETED, JobState.FAILED, JobState.ABORTED)
    return wait_for(  # type: ignore[no-any-return]
        lambda: now if (now := recovery.job(job)).state in ended else None,
        what=f"job {job.job_id} to end",
        timeout=timeout,
    )


def check_build(
    trial: Trial,
    log: Log,
    recovery: Recovery,
    projection: type[Projection],
    build: int,
    *,
    head: int | None = None,
) -> None:
    """The end-of-trial invariants of one build, in the database, counted in the trial."""
    envelopes = log.envelopes()
    accounting = account(log, projection, build, envelopes, head=head)
    assert not accounting.problems, accounting.problems
    mismatches = projection_mismatches(log, recovery.store, projection, build, envelopes)
    assert not mismatches, mismatches
    stuck = unsettled_jobs(log)
    assert not stuck, stuck
    held = dead_leases(log)
    assert not held, held
    trial.checked(accounting.checked, losses=accounting.losses, duplicates=accounting.duplicates)


def spawn(recovery: Recovery, processes: list[BaseProcess], count: int = 1, **spec: Any) -> None:
    processes += [spawn_worker(recovery, **{**SLOW, **spec}) for _ in range(count)]

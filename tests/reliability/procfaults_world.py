"""Shared set-up of the process-fault scenarios: worker processes killed at a random
point of a job's progress, and the end-of-trial checks in the database."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from pathlib import Path
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
from recovery_fixtures import Recovery, kill, principals_world, spawn_worker, worker_pid
from reliability_trials import Trial

from safereplay.projections import Projection
from safereplay.recovery.jobs.model import Job, JobState
from safereplay.recovery.security.audit import AuditKey

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


# -- the command line in processes of its own --------------------------------------------------


def cli_env(log: Log, directory: Path, **extra: str) -> dict[str, str]:
    """The environment of an admin's ``safereplay`` commands on the log's store (its
    principals and audit key made here), plus ``extra`` settings."""
    audit_key = directory / f"audit-{uuid.uuid4().hex[:8]}.key"
    AuditKey.generate().save(audit_key)
    context, envs = principals_world(log.settings, audit_key)
    context.close()
    base = {k: v for k, v in os.environ.items() if not k.upper().startswith("SAFEREPLAY_")}
    return base | {"SAFEREPLAY_APPROVAL_REQUIRED": ""} | envs["admin"] | extra


@dataclass
class Command:
    """A ``safereplay`` command running in its own session (its workers with it)."""

    process: subprocess.Popen[bytes]
    output: Path

    def killed(self) -> None:
        """SIGKILL the command and every process of its session (its local workers)."""
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(60)

    def wait(self, timeout: float = 300) -> int:
        return self.process.wait(timeout)

    @property
    def text(self) -> str:
        return self.output.read_text(errors="replace")


def start_cli(env: dict[str, str], directory: Path, *args: str) -> Command:
    output = directory / f"cli-{uuid.uuid4().hex[:8]}.log"
    with output.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "safereplay.recovery.cli", *args],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Command(process, output)


def run_cli(env: dict[str, str], directory: Path, *args: str) -> str:
    """Run a command to its end; it must succeed. Returns its output."""
    command = start_cli(env, directory, *args)
    code = command.wait()
    assert code == 0, f"safereplay {' '.join(args)} exited {code}: {command.text[-3000:]}"
    return command.text


def kill_at_random(command: Command, rng: random.Random, *, within: float) -> bool:
    """SIGKILL ``command`` (and its session) after a random delay of up to ``within``
    seconds; False if it had already ended by then (nothing was killed)."""
    deadline = time.monotonic() + rng.uniform(0, within)
    while time.monotonic() < deadline:
        if command.process.poll() is not None:
            return False
        time.sleep(0.01)
    if command.process.poll() is not None:
        return False
    command.killed()
    return True


def run_here(env: dict[str, str], *args: str) -> str:
    """Run a command to its end in this process (the same code as ``safereplay``, without
    a new interpreter's start-up: for the runs that are not the ones killed)."""
    from typer.testing import CliRunner

    from safereplay.recovery.cli.app import app

    # Exactly the command's environment: this process's other SAFEREPLAY_* variables
    # (the suite's own SAFEREPLAY_RELIABILITY_*) are unset for the run, as the
    # command line refuses settings it does not know.
    unset: dict[str, str | None] = {
        k: None for k in os.environ if k.upper().startswith("SAFEREPLAY_") and k not in env
    }
    result = CliRunner().invoke(app, list(args), env={**unset, **env})
    assert result.exit_code == 0, f"safereplay {' '.join(args)}: {result.output[-3000:]}"
    return result.output

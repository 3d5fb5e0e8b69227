"""`safereplay apply` stops, naming why, when every local worker of its job has exited
before the job ended (an import error in the projection code, a lost database):
before, it polled the job's status forever."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any
from uuid import uuid4

import pytest

from safereplay.recovery.cli import apply


class ExitedWorker:
    """A worker process that died at start, as one with an unimportable projection does."""

    def __init__(self, number: int) -> None:
        self.number = number

    def poll(self) -> int:
        return 1

    def failure(self) -> str:
        return f"worker {self.number} exited with 1: ModuleNotFoundError: No module named 'app'"


class RunningJob:
    """A job store whose job never ends (nobody works on it)."""

    def status(self, job_id: Any) -> Any:
        return SimpleNamespace(job=SimpleNamespace(state="running"))


def test_apply_stops_when_every_local_worker_has_exited(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(
        apply, "start_workers", lambda job, count: [ExitedWorker(n) for n in (1, 2)]
    )
    driver = apply.ProcessDriver(RunningJob(), 2)  # type: ignore[arg-type]
    job_id = uuid4()
    driver.start(job_id)
    with pytest.raises(SystemExit) as stopped:
        driver.wait(job_id, lambda status: status.job.state == "completed")
    assert stopped.value.code == apply.EXIT_NO
    said = " ".join(capsys.readouterr().err.split())
    assert f"every local worker of job {job_id} exited while it was running" in said
    assert "No module named 'app'" in said
    assert f"safereplay worker --job {job_id} --exit-when-idle" in said


def test_apply_waits_while_a_worker_still_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    class Running(ExitedWorker):
        def poll(self) -> None:  # type: ignore[override]
            return None

    polls = []

    class EndsOnThirdPoll(RunningJob):
        def status(self, job_id: Any) -> Any:
            polls.append(job_id)
            state = "completed" if len(polls) >= 3 else "running"
            return SimpleNamespace(job=SimpleNamespace(state=state))

    monkeypatch.setattr(apply, "start_workers", lambda job, count: [Running(1), ExitedWorker(2)])
    driver = apply.ProcessDriver(EndsOnThirdPoll(), 2)  # type: ignore[arg-type]
    job_id = uuid4()
    driver.start(job_id)
    status = driver.wait(job_id, lambda s: s.job.state == "completed")
    assert status.job.state == "completed" and len(polls) == 3

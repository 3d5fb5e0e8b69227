"""An idle worker's poll lists the active jobs once, whoever it runs for."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import pytest
from projection_fixtures import OnPostgres, OnSQLite
from recovery_fixtures import Recovery, RecoveryContract

from safereplay.recovery.jobs.model import Job
from safereplay.recovery.jobs.plans import JobRequest
from safereplay.recovery.jobs.store import JobStore
from safereplay.recovery.jobs.worker import Worker, WorkerOptions


class CountingJobStore:
    """A job store that counts what a worker asks of it (and forwards everything)."""

    def __init__(self, jobs: JobStore) -> None:
        self._jobs = jobs
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._jobs, name)
        if not callable(attribute):
            return attribute

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return attribute(*args, **kwargs)

        return counted


class StopAfterPolls(threading.Event):
    """Stops the worker after ``polls`` idle waits, counting them."""

    def __init__(self, polls: int) -> None:
        super().__init__()
        self.polls = 0
        self._limit = polls

    def wait(self, timeout: float | None = None) -> bool:
        self.polls += 1
        if self.polls >= self._limit:
            self.set()
        return self.is_set()


class WorkerPollingContract(RecoveryContract):
    def idle_worker(self, recovery: Recovery, *, may_run: Any) -> tuple[Worker, CountingJobStore]:
        worker = recovery.worker(may_run=may_run)
        counting = CountingJobStore(worker.jobs)
        worker.jobs = counting  # type: ignore[assignment]
        # exit_when_idle: the poll also asks whether work is pending (someone holds a lease).
        worker.options = WorkerOptions(idle_interval=0.01, exit_when_idle=True)
        return worker, counting

    @pytest.mark.parametrize("scoped", [False, True], ids=["any job", "scoped by grants"])
    def test_an_idle_poll_lists_the_active_jobs_once(
        self, recovery: Recovery, scoped: bool
    ) -> None:
        # A job that is active but that this worker may not (or cannot) run: every
        # poll finds nothing to claim, settles nothing and waits.
        job = recovery.rebuild("run_status", JobRequest(principal="ops", reason="poll"))
        worker, counting = self.idle_worker(
            recovery, may_run=(lambda candidate: False) if scoped else None
        )
        held = recovery.jobs.claim("someone-else", lease_seconds=60, job_id=job.job_id)
        assert held is not None

        stop = StopAfterPolls(5)
        worker.run(stop)
        assert stop.polls == 5
        assert counting.calls["list_jobs"] == 5, counting.calls

    def test_a_worker_for_one_job_reads_that_job_once_per_poll(self, recovery: Recovery) -> None:
        job = recovery.rebuild("run_status", JobRequest(principal="ops", reason="poll"))
        worker, counting = self.idle_worker(recovery, may_run=lambda candidate: True)
        assert recovery.jobs.claim("someone-else", lease_seconds=60, job_id=job.job_id)

        stop = StopAfterPolls(4)
        worker.run(stop, job_id=job.job_id)
        assert (counting.calls["get_job"], counting.calls["list_jobs"]) == (4, 0), counting.calls

    def test_listing_once_still_exits_when_the_work_is_done(self, recovery: Recovery) -> None:
        job: Job = recovery.rebuild("run_status", JobRequest(principal="ops", reason="poll"))
        worker = recovery.worker(may_run=lambda candidate: True)
        report = worker.run()
        assert [outcome for _, _, outcome in report.outcomes] == ["completed"]
        assert recovery.job(job).state == "completed"


class TestSQLiteWorkerPolling(OnSQLite, WorkerPollingContract):
    pass


class TestPostgresWorkerPolling(OnPostgres, WorkerPollingContract):
    pass

"""A job's progress counters are committed with the batch they count.

A worker that dies between a batch's commit and its progress report (a crash
injected at that instant in this process, or a real SIGKILL of a worker process)
must leave the job partition's position and ``events_applied`` exactly where the
projection store's committed position and counters are: ``jobs``, status and the
completeness check then agree after any crash. SQLite and PostgreSQL.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from dataclasses import replace

import pytest
from projection_fixtures import OnPostgres, OnSQLite, handled_count
from recovery_fixtures import (
    QUICK_RUNNER,
    Recovery,
    RecoveryContract,
    expire_leases,
    finished,
    spawn_worker,
)

from safereplay.domain.workload import record_workload
from safereplay.projections import WorkflowStatistics
from safereplay.recovery.jobs.model import Job, JobState
from safereplay.recovery.jobs.plans import JobRequest

STATS = WorkflowStatistics
TWO = JobRequest(principal="ops", reason="statistics fixed", partitions=2)
SMALL_BATCHES = replace(QUICK_RUNNER, batch_size=5)
#: Seconds: a lease that outlasts any test (the test expires it instead of waiting).
LONG_LEASE = 3600.0


class Crash(BaseException):
    """The worker dying at a chosen instant: nothing in the worker catches it."""


def crash_after_commit(n: int) -> Callable[[str], None]:
    """A fault hook that kills the worker right after its ``n``-th batch commit."""
    commits = 0

    def hook(point: str) -> None:
        nonlocal commits
        if point == "after_commit":
            commits += 1
            if commits == n:
                raise Crash(f"after commit {n}")

    return hook


def assert_counters_agree(recovery: Recovery, job: Job) -> None:
    """Each partition's job counters are the store's committed ones (a rebuild starts at
    0); once the job is sealed (its build back in one partition), their totals are."""
    checkpoints = recovery.store.checkpoints(STATS.name, build=job.build)
    status = recovery.jobs.status(job.job_id)
    assert status.events_applied == recovery.applied(STATS, job.build)
    if recovery.job(job).state == JobState.COMPLETED:
        return  # sealed: the counters were carried over to the one partition left
    stored = {c.partition.index: c for c in checkpoints}
    for part in recovery.partitions(job):
        checkpoint = stored.get(part.partition_index)
        position = checkpoint.position if checkpoint else part.start_position
        applied = checkpoint.events_applied if checkpoint else 0
        parked = checkpoint.events_parked if checkpoint else 0
        assert (part.position, part.events_applied, part.parked) == (position, applied, parked), (
            f"partition {part.partition_index}: the job says position {part.position}, "
            f"{part.events_applied} applied, {part.parked} parked; the store committed "
            f"position {position}, {applied} applied, {parked} parked"
        )


class JobCounterContract(RecoveryContract):
    def test_a_crash_between_a_batch_commit_and_its_report_loses_no_count(
        self, recovery: Recovery
    ) -> None:
        record_workload(recovery.log.app, workflows=3, runs_per_workflow=6, seed=17)
        job = recovery.rebuild(STATS.name, TWO)
        crashing = recovery.worker(
            lease_seconds=LONG_LEASE,
            runner_options=SMALL_BATCHES,
            faults=crash_after_commit(2),
        )
        with pytest.raises(Crash):
            crashing.run()
        assert recovery.applied(STATS, job.build) > 0, "the crash came after a commit"
        assert_counters_agree(recovery, job)

        # No lease to wait out: a worker that fails gives its partition back.
        recovery.worker(runner_options=SMALL_BATCHES).run()
        done = recovery.job(job)
        assert done.state == JobState.COMPLETED, done.error  # the completeness check agrees
        assert_counters_agree(recovery, job)
        handled = handled_count(STATS, recovery.log.envelopes())
        assert recovery.jobs.status(job.job_id).events_applied == handled

    def test_a_worker_sigkilled_right_after_a_commit_loses_no_count(
        self, recovery: Recovery
    ) -> None:
        record_workload(recovery.log.app, workflows=3, runs_per_workflow=6, seed=18)
        job = recovery.rebuild(STATS.name, TWO)
        victim = spawn_worker(
            recovery, batch_size=5, kill_after_commits=3, lease_seconds=LONG_LEASE
        )
        victim.join(120)
        assert victim.exitcode == -signal.SIGKILL, "the worker killed itself after a commit"
        assert recovery.applied(STATS, job.build) > 0
        assert_counters_agree(recovery, job)

        expire_leases(recovery, job, by=2 * LONG_LEASE)
        replacement = spawn_worker(recovery, batch_size=5)
        replacement.join(120)
        assert replacement.exitcode == 0
        done = finished(recovery, job, timeout=60)
        assert done.state == JobState.COMPLETED, done.error
        assert_counters_agree(recovery, job)
        handled = handled_count(STATS, recovery.log.envelopes())
        assert recovery.jobs.status(job.job_id).events_applied == handled


class TestSQLiteJobCounters(OnSQLite, JobCounterContract):
    pass


@pytest.mark.postgres
class TestPostgresJobCounters(OnPostgres, JobCounterContract):
    pass

"""Workers as real OS processes (spawned, each building its own worker from
settings): SIGKILLed at random points of a partitioned rebuild, many times; paused,
resumed and aborted from another process; and the swap and rollback after it.
SQLite and PostgreSQL."""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Iterator
from multiprocessing.process import BaseProcess

import pytest
from projection_fixtures import OnPostgres, OnSQLite, handled_count
from recovery_fixtures import (
    Recovery,
    RecoveryContract,
    expire_leases,
    finished,
    kill,
    spawn_worker,
    wait_until,
    worker_pid,
)

from safereplay.domain.workload import record_workload
from safereplay.projections import WorkflowStatistics
from safereplay.recovery.jobs.builds import rollback
from safereplay.recovery.jobs.model import Job, JobState, PartitionStatus
from safereplay.recovery.jobs.plans import JobRequest

STATS = WorkflowStatistics
KILLS = 8
TWO = JobRequest(principal="ops", reason="statistics fixed", partitions=2)
THREE = JobRequest(principal="ops", reason="statistics fixed", partitions=3)
#: Small batches, slowed down: a job lasts a few seconds and has many kill points.
SLOW = {"batch_size": 5, "event_delay": 0.03, "lease_seconds": 1.0}
#: Seconds: a lease that outlasts any test.
LONG_LEASE = 3600.0


class ProcessContract(RecoveryContract):
    @pytest.fixture
    def processes(self) -> Iterator[list[BaseProcess]]:
        """Worker processes of a test; whatever is left is killed at the end."""
        started: list[BaseProcess] = []
        yield started
        for process in started:
            if process.is_alive():
                kill(process)
            process.join(10)

    def test_sigkilled_workers_are_replaced_and_the_rebuild_ends_as_if_uninterrupted(
        self, recovery: Recovery, processes: list[BaseProcess]
    ) -> None:
        record_workload(recovery.log.app, workflows=5, runs_per_workflow=12, seed=41)
        job = recovery.rebuild(STATS.name, THREE)
        rng = random.Random(41)
        processes += [spawn_worker(recovery, **SLOW) for _ in range(2)]

        def moved() -> int:
            return sum(p.position - p.start_position for p in recovery.partitions(job))

        def a_busy_worker(after: int | None) -> list[int] | None:
            state = recovery.job(job).state
            assert state in (JobState.PLANNED, JobState.RUNNING), f"{state}, {len(kills)} kills"
            if after is not None and moved() <= after:
                return None
            alive = {p.pid for p in processes if p.is_alive()}
            return [pid for p in recovery.partitions(job) if (pid := worker_pid(p)) in alive]

        kills: list[tuple[int, int]] = []
        while len(kills) < KILLS:
            # A random point of the run, counted in progress rather than time: the
            # first kill and most others wait until the job has moved since the last
            # one (however slow the machine), some come at once.
            after = kills[-1][1] if kills else 0
            wait_for_progress = not kills or rng.random() < 0.75
            busy = wait_until(
                lambda after=after, wait=wait_for_progress: a_busy_worker(after if wait else None),
                timeout=30,
                what="a worker holding a partition (and progress since the last kill)",
            )
            # Only varies where inside its next batch the kill lands: nothing relies on it.
            time.sleep(rng.uniform(0, 0.3))
            pid = rng.choice(busy)
            moved_at_kill = moved()
            kill(pid)
            [victim] = [p for p in processes if p.pid == pid]
            victim.join(10)
            processes.remove(victim)
            assert victim.exitcode == -signal.SIGKILL
            kills.append((pid, moved_at_kill))
            processes.append(spawn_worker(recovery, **SLOW))

        done = finished(recovery, job, timeout=60)
        assert done.state == JobState.COMPLETED, done.error
        for process in processes:
            process.join(20)  # idle workers exit on their own
            assert process.exitcode == 0
        takeovers = sum(p.lease_token for p in recovery.partitions(job)) - job.partition_count
        assert takeovers >= 1, "some partitions were taken over from a killed worker"
        assert len({moved for _, moved in kills}) > 1, "kills landed at different points"

        # The same rebuild, uninterrupted, in this process.
        again = recovery.rebuild(STATS.name, THREE)
        recovery.worker().run()
        assert recovery.job(again).state == JobState.COMPLETED
        killed, uninterrupted = (recovery.actual(STATS, build=b) for b in (job.build, again.build))
        assert killed == uninterrupted == recovery.expected(STATS)
        handled = handled_count(STATS, recovery.log.envelopes())
        assert job.build == 1, "a never-built projection's first rebuild is its live build"
        assert recovery.store.live_build(STATS.name) == 1
        assert recovery.applied(STATS, job.build) == handled == recovery.applied(STATS, again.build)

    def test_pause_resume_and_abort_from_another_process_then_swap_and_rollback(
        self, recovery: Recovery, processes: list[BaseProcess]
    ) -> None:
        record_workload(recovery.log.app, workflows=4, runs_per_workflow=10, seed=42)
        recovery.log.runner(STATS(), store=recovery.store).catch_up()  # live build 1
        live_rows = recovery.actual(STATS)
        job = recovery.rebuild(STATS.name, TWO)
        # A long-lived worker (as `safereplay worker`): it idles when there is nothing to do.
        worker = spawn_worker(recovery, **{**SLOW, "event_delay": 0.01, "exit_when_idle": False})
        processes.append(worker)
        self.wait_for_progress(recovery, job)

        # Pause: the worker gives its partitions back within a batch; nothing moves.
        recovery.jobs.transition(job.job_id, JobState.PAUSED)
        self.wait_for_release(recovery, job)
        frozen = self.snapshot(recovery, job)
        time.sleep(0.4)
        assert self.snapshot(recovery, job) == frozen, "a paused job does not move"
        assert recovery.job(job).state == JobState.PAUSED and worker.is_alive()

        # Resume: the same worker goes on to completion.
        recovery.jobs.transition(job.job_id, JobState.RUNNING)
        done = finished(recovery, job)
        assert done.state == JobState.COMPLETED, done.error
        assert recovery.actual(STATS, build=2) == recovery.expected(STATS)

        # Swap makes build 2 live; rollback makes build 1 live again, as it was.
        assert recovery.swap(STATS.name).live == 2
        assert recovery.actual(STATS) == recovery.expected(STATS)
        back = rollback(store=recovery.store, projection=STATS.name)
        assert (back.previous, back.live) == (2, 1)
        assert recovery.store.live_build(STATS.name) == 1
        assert recovery.actual(STATS) == live_rows

        # Abort: the worker lets go within a batch and the job ends aborted.
        aborted = recovery.rebuild(STATS.name, TWO)
        self.wait_for_progress(recovery, aborted)
        recovery.jobs.transition(aborted.job_id, JobState.ABORTING)
        recovery.jobs.finalize(aborted.job_id)  # as the abort operation does
        assert finished(recovery, aborted, timeout=10).state == JobState.ABORTED
        self.wait_for_release(recovery, aborted)
        frozen = self.snapshot(recovery, aborted)
        time.sleep(0.4)
        assert self.snapshot(recovery, aborted) == frozen, "no worker runs an aborted job"

        assert worker.is_alive(), "the worker idles, it did not crash"
        kill(worker, signal.SIGTERM)
        worker.join(20)
        assert worker.exitcode == 0

    def test_aborting_a_job_whose_worker_was_killed(
        self, recovery: Recovery, processes: list[BaseProcess]
    ) -> None:
        record_workload(recovery.log.app, workflows=2, runs_per_workflow=6, seed=43)
        recovery.first_build(STATS)  # the aborted rebuild is one beside the live build 1
        job = recovery.rebuild(STATS.name, TWO)
        # A lease far longer than this test: it cannot expire on its own, however slow
        # the machine; the test moves it into the past instead of waiting for it.
        worker = spawn_worker(recovery, **{**SLOW, "lease_seconds": LONG_LEASE})
        processes.append(worker)
        self.wait_for_progress(recovery, job)
        kill(worker)
        worker.join(10)

        recovery.jobs.transition(job.job_id, JobState.ABORTING)
        held = recovery.jobs.finalize(job.job_id)  # as the abort operation does
        assert held.state == JobState.ABORTING, "the dead worker's lease has not expired yet"
        assert recovery.job(job).state == JobState.ABORTING
        expire_leases(recovery, job, by=2 * LONG_LEASE)  # as if that much time had passed
        recovery.worker().run()  # any worker (or the next abort) settles it
        assert recovery.job(job).state == JobState.ABORTED
        assert all(p.lease_owner is None for p in recovery.partitions(job))
        again = recovery.rebuild(STATS.name, TWO)  # the projection is free again
        assert again.build == 3

    @staticmethod
    def wait_for_progress(recovery: Recovery, job: Job) -> None:
        wait_until(
            lambda: any(p.position > p.start_position for p in recovery.partitions(job)),
            timeout=30,
            what=f"job {job.job_id} to make progress",
        )

    @staticmethod
    def wait_for_release(recovery: Recovery, job: Job) -> None:
        wait_until(
            lambda: all(
                p.status == PartitionStatus.PENDING and p.lease_owner is None
                for p in recovery.partitions(job)
            ),
            timeout=10,
            what=f"the partitions of job {job.job_id} to be given back",
        )

    @staticmethod
    def snapshot(recovery: Recovery, job: Job) -> tuple[object, ...]:
        return (
            [(p.status, p.position, p.events_applied) for p in recovery.partitions(job)],
            recovery.positions(STATS, job.build),
            recovery.applied(STATS, job.build),
        )


class TestSQLiteProcesses(OnSQLite, ProcessContract):
    pass


@pytest.mark.postgres
class TestPostgresProcesses(OnPostgres, ProcessContract):
    pass

"""Fencing and completeness: a worker that lost its lease never commits, and a
job that cannot account for every position never reports success.

Both on SQLite and PostgreSQL.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from projection_fixtures import Crash, OnPostgres, OnSQLite, handled_count
from recovery_fixtures import DroppingSource, Recovery, RecoveryContract, wait_until

from safereplay.domain.workload import record_workload
from safereplay.projections import FencedOff, Partition, RunStatusBoard, partition_of
from safereplay.recovery.errors import InvalidRequest
from safereplay.recovery.jobs.model import JobState, PartitionStatus
from safereplay.recovery.jobs.plans import JobRequest
from safereplay.recovery.jobs.worker import PartitionOutcome

ONE = JobRequest(principal="alice", reason="fencing drill", partitions=1)
TWO = JobRequest(principal="alice", reason="completeness drill", partitions=2)
LEASE = 0.5


class FencingContract(RecoveryContract):
    @pytest.mark.parametrize("b_finishes_first", [False, True], ids=["b-claimed", "b-finished"])
    def test_a_stalled_worker_whose_lease_was_taken_over_writes_nothing(
        self, recovery: Recovery, b_finishes_first: bool
    ) -> None:
        """A stalls before its commit past its lease; B claims the partition (and,
        in the second case, runs it to the end) before A wakes."""
        record_workload(recovery.log.app, workflows=2, runs_per_workflow=6, seed=11)
        recovery.first_build(RunStatusBoard)  # the rebuild goes beside the live build 1
        job = recovery.rebuild("run_status", ONE)
        stalled, wake = threading.Event(), threading.Event()

        def stall_first_commit(point: str) -> None:
            if point == "before_commit" and not stalled.is_set():
                stalled.set()  # A holds a folded batch, about to commit ...
                assert wake.wait(30)  # ... and sleeps past its lease

        a = recovery.worker(lease_seconds=LEASE, faults=stall_first_commit)
        fenced: list[FencedOff] = []
        commit = a.store.commit

        def spy(*args: Any, **kwargs: Any) -> Any:
            try:
                return commit(*args, **kwargs)
            except FencedOff as exc:
                fenced.append(exc)
                raise

        a.store.commit = spy  # type: ignore[method-assign]
        reports = []
        thread = threading.Thread(target=lambda: reports.append(a.run(job_id=job.job_id)))
        thread.start()
        assert stalled.wait(10), "worker A never reached its first commit"

        # A's lease expires (it cannot renew while stalled); B takes the partition over.
        b = recovery.worker(lease_seconds=30)
        claim = wait_until(
            lambda: b.jobs.claim("worker-b", lease_seconds=30, job_id=job.job_id),
            timeout=10,
            what="the expired partition to be claimable",
        )
        assert claim.partition.lease_owner == "worker-b"
        if b_finishes_first:
            assert b.run_claim(claim, threading.Event()) == PartitionOutcome.COMPLETED
        before = (recovery.positions(RunStatusBoard, 2), recovery.actual(RunStatusBoard, 2))

        wake.set()  # A wakes and commits: the fence inside its transaction refuses it
        wait_until(lambda: fenced, timeout=10, what="A's commit to be fenced off")
        assert "no longer holds" in str(fenced[0])
        after = (recovery.positions(RunStatusBoard, 2), recovery.actual(RunStatusBoard, 2))
        assert after == before, "a fenced-off commit wrote nothing"

        # B, the lease holder, runs the partition to the end; A gives up and exits.
        if not b_finishes_first:
            assert b.run_claim(claim, threading.Event()) == PartitionOutcome.COMPLETED
        thread.join(30)
        assert not thread.is_alive()
        assert [outcome for *_, outcome in reports[0].outcomes] == [PartitionOutcome.LOST]
        assert recovery.job(job).state == JobState.COMPLETED
        assert recovery.actual(RunStatusBoard, 2) == recovery.expected(RunStatusBoard)
        handled = handled_count(RunStatusBoard, recovery.log.envelopes())
        assert recovery.applied(RunStatusBoard, 2) == handled, "no event applied twice"

    def test_a_worker_that_loses_an_event_fails_its_partition_and_not_the_job(
        self, recovery: Recovery
    ) -> None:
        record_workload(recovery.log.app, workflows=2, runs_per_workflow=6, seed=12)
        events = [e for e in recovery.log.envelopes() if e.topic in RunStatusBoard.topics]
        lost = events[len(events) // 2]
        assert lost.position is not None
        victim = partition_of(lost.aggregate_id, 2)
        recovery.first_build(RunStatusBoard)
        job = recovery.rebuild("run_status", TWO)

        worker = recovery.worker(
            open_source=lambda: DroppingSource(recovery.log.source(), drop=lost.position)
        )
        report = worker.run(job_id=job.job_id)
        assert report.count(PartitionOutcome.FAILED) == 1
        assert report.count(PartitionOutcome.COMPLETED) == 1

        failed = recovery.job(job)
        assert failed.state == JobState.FAILED, "a job that cannot account for an event fails"
        assert failed.state != JobState.COMPLETED
        parts = {p.partition_index: p for p in recovery.partitions(job)}
        assert parts[victim].status == PartitionStatus.FAILED
        assert parts[1 - victim].status == PartitionStatus.COMPLETED
        error = parts[victim].last_error or ""
        assert f"partition {Partition(victim, 2)}" in error
        assert "were applied or parked" in error, error
        with pytest.raises(InvalidRequest, match="cannot be swapped in"):
            recovery.swap("run_status")

    def test_a_job_whose_last_worker_died_before_settling_it_is_settled_by_the_next(
        self, recovery: Recovery
    ) -> None:
        record_workload(recovery.log.app, workflows=1, runs_per_workflow=4, seed=13)
        recovery.first_build(RunStatusBoard)
        job = recovery.rebuild("run_status", TWO)
        dying = recovery.worker()

        def die(job_id: object) -> None:
            raise Crash("killed after finishing its partition, before settling the job")

        dying.jobs.finalize = die  # type: ignore[assignment, method-assign]
        with pytest.raises(Crash):
            dying.run(job_id=job.job_id)
        with pytest.raises(Crash):
            dying.run(job_id=job.job_id)
        assert {p.status for p in recovery.partitions(job)} == {PartitionStatus.COMPLETED}
        assert recovery.job(job).state == JobState.RUNNING, "nobody settled it"

        report = recovery.worker().run()
        assert report.outcomes == [], "nothing left to run ..."
        assert recovery.job(job).state == JobState.COMPLETED, "... but the job is settled"
        [sealed] = recovery.store.checkpoints("run_status", build=2)
        assert sealed.partition.is_whole and sealed.position == job.target_position
        assert recovery.swap("run_status").live == 2


class TestSQLiteFencing(OnSQLite, FencingContract):
    pass


@pytest.mark.postgres
class TestPostgresFencing(OnPostgres, FencingContract):
    pass

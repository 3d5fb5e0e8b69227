"""Blue/green rebuilds in partitions, swap, rollback and drop, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from projection_fixtures import Backend, OnPostgres, OnSQLite, handled_count
from recovery_fixtures import Recovery, fresh_recovery, wait_until

from safereplay.domain.workload import record_workload
from safereplay.projections import (
    FailedSteps,
    Partition,
    PartitioningMismatch,
    RunStatusBoard,
    WorkflowStatistics,
    wait_for_position,
)
from safereplay.recovery.errors import InvalidRequest, JobConflict
from safereplay.recovery.jobs.builds import drop_version, rollback, swap
from safereplay.recovery.jobs.model import Job, JobState
from safereplay.recovery.jobs.plans import JobRequest, start_catch_up
from safereplay.recovery.registry import ProjectionRegistry

ALICE = JobRequest(principal="alice", reason="projection code fixed", partitions=3)


class RebuildContract:
    @pytest.fixture
    def recovery(self, backend: Backend) -> Iterator[Recovery]:
        with fresh_recovery(backend) as recovery:
            yield recovery

    def rebuild(self, recovery: Recovery, name: str, request: JobRequest = ALICE) -> Job:
        return recovery.rebuild(name, request)

    def test_rebuild_in_partitions_then_swap_then_rollback(self, recovery: Recovery) -> None:
        record_workload(recovery.log.app, workflows=3, runs_per_workflow=8, seed=5)
        live = recovery.log.runner(WorkflowStatistics(), store=recovery.store)
        live.catch_up()
        job = self.rebuild(recovery, "workflow_stats")
        assert (job.build, job.partition_count, job.state) == (2, 3, JobState.PLANNED)
        assert recovery.store.live_build("workflow_stats") == 1
        with pytest.raises(JobConflict, match="already has an active job"):
            self.rebuild(recovery, "workflow_stats")

        report = recovery.worker().run()
        assert report.count("completed") == 3
        done = recovery.jobs.get_job(job.job_id)
        assert done.state == JobState.COMPLETED, done.error
        assert recovery.actual(WorkflowStatistics, build=2) == recovery.expected(WorkflowStatistics)
        [sealed] = recovery.store.checkpoints("workflow_stats", build=2)
        assert sealed.partition.is_whole and sealed.position == job.target_position

        record_workload(recovery.log.app, workflows=1, runs_per_workflow=3, seed=6)
        result = swap(
            store=recovery.store,
            source=recovery.source,
            jobs=recovery.jobs,
            registry=recovery.registry,
            projection="workflow_stats",
        )
        assert (result.previous, result.live) == (1, 2)
        assert result.position == recovery.source.high_water_mark()
        assert recovery.actual(WorkflowStatistics) == recovery.expected(WorkflowStatistics)

        with pytest.raises(InvalidRequest, match="is live"):
            drop_version(
                store=recovery.store, jobs=recovery.jobs, projection="workflow_stats", build=2
            )
        back = rollback(store=recovery.store, projection="workflow_stats")
        assert (back.previous, back.live) == (2, 1)
        drop_version(store=recovery.store, jobs=recovery.jobs, projection="workflow_stats", build=2)
        assert [b.build for b in recovery.store.builds("workflow_stats")] == [1]

    def test_a_rebuild_counts_the_scope_of_every_partition_in_one_scan(
        self, recovery: Recovery
    ) -> None:
        record_workload(recovery.log.app, workflows=3, runs_per_workflow=8, seed=5)
        source = recovery.source
        real_count, one_by_one = source.count, Counter[str]()

        def counting(**kwargs: Any) -> int:
            one_by_one["count"] += 1
            return real_count(**kwargs)

        source.count = counting  # type: ignore[method-assign]
        try:
            job = self.rebuild(recovery, "workflow_stats")
        finally:
            source.count = real_count  # type: ignore[method-assign]
        assert one_by_one["count"] == 0, "planning counted partition by partition"
        topics = list(WorkflowStatistics.topics)
        scopes = [p.events_in_scope for p in recovery.jobs.partitions(job.job_id)]
        assert scopes == [
            real_count(after=0, upto=job.target_position, topics=topics, partition=p)
            for p in Partition.all(job.partition_count)
        ]
        assert sum(s or 0 for s in scopes) > 0

    def test_a_swap_needs_a_completed_rebuild(self, recovery: Recovery) -> None:
        record_workload(recovery.log.app, workflows=1, runs_per_workflow=2, seed=1)
        # Built once (a never-built projection's first rebuild is its live build 1).
        recovery.log.runner(RunStatusBoard(), store=recovery.store).catch_up()
        job = self.rebuild(recovery, "run_status")
        with pytest.raises(InvalidRequest, match=f"rebuild job {job.job_id} is planned"):
            swap(
                store=recovery.store,
                source=recovery.source,
                jobs=recovery.jobs,
                registry=recovery.registry,
                projection="run_status",
            )

    def test_partitioned_catch_up_hands_the_build_back_to_its_follower(
        self, recovery: Recovery
    ) -> None:
        record_workload(recovery.log.app, workflows=2, runs_per_workflow=5, seed=2)
        follower = recovery.log.runner(FailedSteps(), store=recovery.log.store())
        follower.catch_up()
        record_workload(recovery.log.app, workflows=2, runs_per_workflow=10, seed=3)
        plan = start_catch_up(
            ALICE,
            projection="failed_steps",
            store=recovery.store,
            source=recovery.source,
            jobs=recovery.jobs,
            registry=recovery.registry,
        )
        job = plan.job
        assert job is not None and job.build == 1 and plan.safe_head.held_back == 0
        with follower.in_background() as thread:  # waits while the job holds the build
            report = recovery.worker().run()
            assert report.count("completed") == 3
            assert recovery.jobs.get_job(job.job_id).state == JobState.COMPLETED
            record_workload(recovery.log.app, workflows=1, runs_per_workflow=3, seed=4)
            head = recovery.source.high_water_mark()
            wait_for_position(recovery.store, FailedSteps, head, timeout=10)
            assert thread.alive
        assert recovery.actual(FailedSteps) == recovery.expected(FailedSteps)
        [whole] = recovery.store.checkpoints("failed_steps")
        assert whole.partition.is_whole and whole.position == head

    def test_an_unpartitionable_projection_is_refused_more_than_one_partition(
        self, recovery: Recovery
    ) -> None:
        recovery.registry = ProjectionRegistry.of([Sequential])
        with pytest.raises(InvalidRequest, match="partitionable = False"):
            self.rebuild(recovery, "sequential")
        assert [b.build for b in recovery.store.builds("sequential")] == []
        job = self.rebuild(
            recovery, "sequential", JobRequest(principal="alice", reason="r", partitions=1)
        )
        assert job.partition_count == 1

    def test_unknown_projections_are_named(self, recovery: Recovery) -> None:
        with pytest.raises(InvalidRequest, match="unknown projection 'nope'; known projections"):
            self.rebuild(recovery, "nope")

    def test_a_follower_cannot_write_a_first_build_a_rebuild_took_over(
        self, recovery: Recovery
    ) -> None:
        """Found by test_recovery_concurrency under load: a follower read its position
        of the never-written build 1, a first rebuild took build 1 over in place (3
        partitions), and the follower's first commit made its position again in one
        partition, applying the rebuild's events a second time. It is refused now."""
        record_workload(recovery.log.app, workflows=2, runs_per_workflow=4, seed=5)
        jobs: list[Job] = []

        def rebuild_meanwhile(point: str) -> None:
            # The follower has read its position (build 1, at 0) and folded a batch:
            # a first rebuild takes the never-written build over before it commits.
            if point == "before_apply" and not jobs:
                jobs.append(self.rebuild(recovery, "workflow_stats"))

        follower = recovery.log.runner(
            WorkflowStatistics(), store=recovery.log.store(), faults=rebuild_meanwhile
        )
        with pytest.raises(PartitioningMismatch, match="keeps its positions in 3 partition"):
            follower.run_batch()
        assert [job.build for job in jobs] == [1], "the never-written build, rebuilt in place"
        positions = recovery.store.checkpoints("workflow_stats", build=1)
        assert sorted(str(c.partition) for c in positions) == ["0/3", "1/3", "2/3"]
        assert recovery.applied(WorkflowStatistics, 1) == 0, "the follower applied nothing"
        # A follower that meets this while following live waits for the rebuild,
        # then goes on from the position the rebuild leaves: no one has to restart it.
        following = follower.in_background()
        try:
            report = recovery.worker().run()
            assert report.count("completed") == 3
            record_workload(recovery.log.app, workflows=1, runs_per_workflow=3, seed=6)
            head = recovery.source.high_water_mark()
            wait_until(
                lambda: follower.position == head,
                timeout=60,
                what=f"the follower to reach {head} after the rebuild",
            )
        finally:
            following.stop()
        assert recovery.actual(WorkflowStatistics) == recovery.expected(WorkflowStatistics)
        assert recovery.applied(WorkflowStatistics, 1) == handled_count(
            WorkflowStatistics, recovery.log.envelopes()
        ), "every event applied once: by the rebuild, then by the follower"

    def test_a_follower_commit_before_a_first_rebuild_repartitions_is_counted(
        self, recovery: Recovery, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A first rebuild decides that the build was never written, then regroups its
        positions; a follower that commits in between is not rebuilt over: the job
        starts at the follower's position and counts from there."""
        record_workload(recovery.log.app, workflows=2, runs_per_workflow=6, seed=7)
        follower = recovery.log.runner(
            WorkflowStatistics(), store=recovery.log.store(), batch_size=10
        )
        regroup = recovery.store.repartition

        def follower_commits_first(name: str, build: int, count: int) -> Any:
            follower.run_batch()
            return regroup(name, build, count)

        monkeypatch.setattr(recovery.store, "repartition", follower_commits_first)
        job = self.rebuild(recovery, "workflow_stats")
        monkeypatch.undo()
        [followed] = {c.position for c in recovery.store.checkpoints("workflow_stats", build=1)}
        assert 0 < followed < job.target_position, "the follower committed some, not all"
        parts = recovery.partitions(job)
        assert [p.start_position for p in parts] == [followed] * 3
        in_scope = handled_count(
            WorkflowStatistics,
            [e for e in recovery.log.envelopes() if followed < (e.position or 0)],
        )
        assert sum(p.events_in_scope or 0 for p in parts) == in_scope

        assert recovery.worker().run().count("completed") == 3
        done = recovery.partitions(job)
        assert sum(p.events_applied for p in done) == in_scope, "counted from the follower's"
        assert recovery.actual(WorkflowStatistics) == recovery.expected(WorkflowStatistics)
        assert recovery.applied(WorkflowStatistics, 1) == handled_count(
            WorkflowStatistics, recovery.log.envelopes()
        ), "every event applied once: by the follower, then by the rebuild"


class Sequential(RunStatusBoard):
    """Declares that its state depends on the order across aggregates."""

    name = "sequential"
    partitionable = False


class TestSQLiteRebuild(OnSQLite, RebuildContract):
    pass


@pytest.mark.postgres
class TestPostgresRebuild(OnPostgres, RebuildContract):
    pass

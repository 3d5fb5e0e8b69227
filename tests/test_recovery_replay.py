"""Replay of a range: into a sandbox build, or into the live build of a replay-safe projection."""

from __future__ import annotations

from collections.abc import Iterator
from uuid import UUID

import pytest
from projection_fixtures import EXPECTED, Backend, OnPostgres, OnSQLite
from recovery_fixtures import Recovery, fresh_recovery

from safereplay.domain.workload import record_workload
from safereplay.projections import FailedSteps, Partition, RunStatusBoard, partition_of
from safereplay.recovery.errors import InvalidRequest
from safereplay.recovery.jobs.builds import swap
from safereplay.recovery.jobs.model import Job, JobState
from safereplay.recovery.jobs.plans import JobRequest, start_replay

OPERATOR = JobRequest(principal="olga", reason="inspect the range", partitions=2)


class ReplayContract:
    @pytest.fixture
    def recovery(self, backend: Backend) -> Iterator[Recovery]:
        with fresh_recovery(backend) as recovery:
            record_workload(recovery.log.app, workflows=2, runs_per_workflow=12, seed=11)
            yield recovery

    def replay(self, recovery: Recovery, name: str, start: int, end: int, **kw: object) -> Job:
        return start_replay(
            kw.pop("request", OPERATOR),  # type: ignore[arg-type]
            projection=name,
            start=start,
            end=end,
            store=recovery.store,
            source=recovery.source,
            jobs=recovery.jobs,
            registry=recovery.registry,
            **kw,  # type: ignore[arg-type]
        )

    def test_a_sandbox_replay_holds_exactly_the_effect_of_the_range(
        self, recovery: Recovery
    ) -> None:
        envelopes = recovery.log.envelopes()
        start, end = 40, 120
        in_range = [e for e in envelopes if start <= (e.position or 0) <= end]
        job = self.replay(recovery, "failed_steps", start, end)
        assert job.build == 2 and recovery.store.live_build("failed_steps") == 1
        report = recovery.worker().run()
        assert report.count("completed") == 2
        assert recovery.jobs.get_job(job.job_id).state == JobState.COMPLETED
        assert recovery.actual(FailedSteps, build=2) == EXPECTED["failed_steps"](in_range)

        job = self.replay(recovery, "run_status", start, end)
        recovery.worker().run()
        assert recovery.jobs.get_job(job.job_id).state == JobState.COMPLETED
        applied = sum(
            c.events_applied for c in recovery.store.checkpoints("run_status", build=job.build)
        )
        assert applied == sum(1 for e in in_range if e.topic in RunStatusBoard.topics)
        with pytest.raises(InvalidRequest, match="no rebuild job"):
            swap(
                store=recovery.store,
                source=recovery.source,
                jobs=recovery.jobs,
                registry=recovery.registry,
                projection="run_status",
                build=job.build,
            )

    def test_one_partition_of_a_range(self, recovery: Recovery) -> None:
        expected = EXPECTED["failed_steps"](
            [e for e in recovery.log.envelopes() if (e.position or 0) <= 140]
        )["failures"]
        by_partition = [
            {k: v for k, v in expected.items() if partition_of(UUID(k[0]), 3) == i}
            for i in range(3)
        ]
        # Aggregate ids are random: take a partition that holds failed steps.
        chosen = max(range(3), key=lambda i: len(by_partition[i]))
        job = self.replay(recovery, "failed_steps", 1, 140, partition=Partition(chosen, 3))
        recovery.worker().run()
        assert recovery.jobs.get_job(job.job_id).state == JobState.COMPLETED
        rows = recovery.actual(FailedSteps, build=job.build)["failures"]
        assert rows == by_partition[chosen] and rows, f"only partition {chosen}/3 of the range"

    def test_live_replay_is_for_replay_safe_projections_after_confirmation(
        self, recovery: Recovery
    ) -> None:
        recovery.log.runner(FailedSteps(), store=recovery.store).catch_up()
        before = recovery.actual(FailedSteps)
        head = recovery.source.high_water_mark()
        with pytest.raises(InvalidRequest, match="not replay-safe"):
            self.replay(recovery, "run_status", 1, head, into="live", confirmed=True)
        with pytest.raises(InvalidRequest, match="confirm with --yes"):
            self.replay(recovery, "failed_steps", 1, head, into="live")
        positions = recovery.store.checkpoints("failed_steps")
        job = self.replay(recovery, "failed_steps", 1, head, into="live", confirmed=True)
        assert job.build == 1
        recovery.worker().run()
        assert recovery.jobs.get_job(job.job_id).state == JobState.COMPLETED
        assert recovery.actual(FailedSteps) == before, "re-applying changed nothing"
        assert recovery.store.checkpoints("failed_steps") == positions, "no position moved"

    def test_bad_ranges_are_named(self, recovery: Recovery) -> None:
        head = recovery.source.high_water_mark()
        with pytest.raises(InvalidRequest, match="1 <= from <= to"):
            self.replay(recovery, "run_status", 10, 5)
        with pytest.raises(InvalidRequest, match=f"safe head is {head}"):
            self.replay(recovery, "run_status", 1, head + 1)
        with pytest.raises(InvalidRequest, match="'sandbox' or 'live'"):
            self.replay(recovery, "run_status", 1, 2, into="elsewhere")
        assert recovery.store.builds("run_status") == []


class TestSQLiteReplay(OnSQLite, ReplayContract):
    pass


@pytest.mark.postgres
class TestPostgresReplay(OnPostgres, ReplayContract):
    pass

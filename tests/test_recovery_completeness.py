"""The completeness check's every clause, each shown to stop a job or a swap:

- a position of the log that is neither an event nor a recorded hole (an event
  that vanished without the high-water mark recording a hole);
- a recorded hole that was filled later (an event every reader skipped);
- a build whose positions are still split into partitions;

(the count clause, events applied or parked, is shown in test_recovery_fencing.py).
SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from projection_fixtures import OnPostgres, OnSQLite
from recovery_fixtures import DroppingSource, Recovery, RecoveryContract

from safereplay.domain.workload import record_workload
from safereplay.projections import EventSource, Partition, RunStatusBoard
from safereplay.projections.source import WHOLE
from safereplay.projections.watermark import HighWaterMark, SkippedHole
from safereplay.recovery.errors import IncompleteJob
from safereplay.recovery.jobs.completeness import check_build, check_log_accounted
from safereplay.recovery.jobs.model import JobState, PartitionStatus
from safereplay.recovery.jobs.plans import JobRequest

BOARD = RunStatusBoard
TWO = JobRequest(principal="alice", reason="completeness drill", partitions=2)


class FillingMark(HighWaterMark):
    """The log's own mark, except that it says ``filled`` was a recorded hole that
    now holds an event (the mark's assumptions broken)."""

    def __init__(self, inner: HighWaterMark, filled: int) -> None:
        self.inner = inner
        self.filled = filled

    def advance(self) -> int:
        return self.inner.advance()

    def skipped_holes(self, *, after: int = 0, upto: int | None = None) -> list[SkippedHole]:
        return self.inner.skipped_holes(after=after, upto=upto)

    def filled_holes(self, *, after: int = 0, upto: int | None = None) -> list[int]:
        inside = after < self.filled and (upto is None or self.filled <= upto)
        return [self.filled] if inside else []


class Wrapped(DroppingSource):
    """A real source with a different mark, or losing one event from reads *and*
    counts (gone from the log, with no hole recorded for it; DroppingSource's reads
    lose it, its count does not)."""

    def __init__(
        self, inner: EventSource, *, mark: HighWaterMark | None = None, vanished: int = 0
    ) -> None:
        super().__init__(inner, drop=vanished)
        if mark is not None:
            self.watermark = mark
        self.vanished = vanished

    @property
    def description(self) -> str:
        return f"{self.inner.description} (altered)"

    def count(
        self,
        *,
        after: int,
        upto: int,
        topics: Sequence[str] = (),
        partition: Partition = WHOLE,
    ) -> int:
        counted = self.inner.count(after=after, upto=upto, topics=topics, partition=partition)
        if not after < self.vanished <= upto:
            return counted
        gone = self.inner.read(
            after=self.vanished - 1, upto=self.vanished, limit=1, topics=topics, partition=partition
        )
        return counted - len(gone)


class CompletenessContract(RecoveryContract):
    def victim(self, recovery: Recovery) -> int:
        """The position of a run-status event in the middle of the log."""
        events = [e for e in recovery.log.envelopes() if e.topic in BOARD.topics]
        position = events[len(events) // 2].position
        assert position is not None
        return position

    def run_failing(self, recovery: Recovery, source: EventSource) -> list[str]:
        """Run a two-partition rebuild with ``source``: the errors its partitions failed
        with (every partition checks the whole log's positions up to the target)."""
        job = recovery.rebuild(BOARD.name, TWO)
        recovery.worker(open_source=lambda: source).run(job_id=job.job_id)
        assert recovery.job(job).state == JobState.FAILED, "the job does not report success"
        parts = recovery.partitions(job)
        assert [p.status for p in parts] == [PartitionStatus.FAILED] * 2
        return [p.last_error or "" for p in parts]

    def test_a_position_neither_event_nor_recorded_hole_fails_the_partition(
        self, recovery: Recovery
    ) -> None:
        record_workload(recovery.log.app, workflows=2, runs_per_workflow=6, seed=21)
        position = self.victim(recovery)

        errors = self.run_failing(recovery, Wrapped(recovery.log.source(), vanished=position))

        for index, error in enumerate(errors):
            assert f"partition {Partition(index, 2)}" in error
            assert "1 positions are unaccounted for" in error, error
        with pytest.raises(IncompleteJob, match="1 positions are unaccounted for"):
            check_log_accounted(
                Wrapped(recovery.log.source(), vanished=position),
                after=0,
                upto=recovery.log.app.head_position(),
                where="the log",
            )

    def test_a_recorded_hole_filled_later_fails_the_partition(self, recovery: Recovery) -> None:
        record_workload(recovery.log.app, workflows=2, runs_per_workflow=6, seed=22)
        position = self.victim(recovery)
        inner = recovery.log.source()

        errors = self.run_failing(
            recovery, Wrapped(inner, mark=FillingMark(inner.watermark, position))
        )

        for error in errors:
            assert (
                f"recorded holes were filled later (events readers skipped): [{position}]" in error
            )

    def test_a_build_still_split_into_partitions_is_not_complete(self, recovery: Recovery) -> None:
        record_workload(recovery.log.app, workflows=1, runs_per_workflow=4, seed=23)
        job = recovery.rebuild(BOARD.name, TWO)  # the new build, split in two
        source = recovery.log.source()
        with pytest.raises(IncompleteJob, match="still split into partitions"):
            check_build(
                recovery.store,
                source,
                projection=BOARD.name,
                build=job.build,
                topics=list(BOARD.topics),
            )
        recovery.worker().run(job_id=job.job_id)  # completed, then sealed: one partition
        assert recovery.job(job).state == JobState.COMPLETED
        checked = check_build(
            recovery.store,
            source,
            projection=BOARD.name,
            build=job.build,
            topics=list(BOARD.topics),
        )
        assert checked.position == job.target_position and checked.skipped == ()


class TestSQLiteCompleteness(OnSQLite, CompletenessContract):
    pass


@pytest.mark.postgres
class TestPostgresCompleteness(OnPostgres, CompletenessContract):
    pass

"""Poison events: live following parks them (and only their aggregate's later
events), a redrive after the fix restores the full state; a rebuild stops on them
in one partition, which is retried alone after the fix. SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from uuid import UUID

import pytest
from projection_fixtures import OnPostgres, OnSQLite, handled_count
from recovery_fixtures import Recovery, RecoveryContract, RunCounts, fold_run_counts, recovery_of

from safereplay.domain import Envelope
from safereplay.domain.workload import record_workload
from safereplay.projections import partition_of
from safereplay.recovery.errors import InvalidRequest
from safereplay.recovery.jobs.model import JobState, PartitionStatus
from safereplay.recovery.jobs.plans import JobRequest
from safereplay.recovery.jobs.redrive import redrive_parked
from safereplay.recovery.jobs.worker import PartitionOutcome
from safereplay.recovery.resilience.backoff import Backoff
from safereplay.recovery.resilience.policies import ErrorRules, RetryThenPark, RulesPolicy

QUICK = Backoff(initial=0.001, maximum=0.005, jitter=0)
LIVE = RulesPolicy(ErrorRules(default=RetryThenPark(attempts=2, backoff=QUICK)))
REDRIVE = JobRequest(principal="bob", reason="handler fixed")


def run_events(recovery: Recovery) -> list[Envelope]:
    return [e for e in recovery.log.envelopes() if e.topic in RunCounts.topics]


def a_victim(events: list[Envelope]) -> tuple[UUID, list[int]]:
    """A run from the middle of the log, and the positions of its events."""
    victim = events[len(events) // 2].aggregate_id
    return victim, [e.position for e in events if e.aggregate_id == victim and e.position]


class RedriveContract(RecoveryContract):
    @pytest.fixture
    def runs(self, recovery: Recovery) -> Iterator[Recovery]:
        recovery_of(recovery, RunCounts)
        yield recovery
        RunCounts.reset()

    def test_a_poison_event_parks_only_its_aggregate_and_redrive_restores_it(
        self, runs: Recovery
    ) -> None:
        record_workload(runs.log.app, workflows=2, runs_per_workflow=5, seed=21)
        events = run_events(runs)
        victim, positions = a_victim(events)
        RunCounts.reset(poison={victim})

        live = runs.log.runner(RunCounts(), store=runs.store, policy=LIVE)
        live.catch_up()
        parked = runs.store.parked("run_counts")
        assert [p.position for p in parked] == positions, "the poison event and its followers"
        first, *behind = parked
        assert (first.error_type, first.attempts, first.blocked_by) == ("ValueError", 2, None)
        assert all(p.blocked_by == first.position and p.error_type == "Blocked" for p in behind)
        others = [e for e in events if e.aggregate_id != victim]
        assert runs.actual(RunCounts) == fold_run_counts(others), "other runs moved on"
        assert live.checkpoint().position == runs.source.high_water_mark()

        # A redrive while the handler is still broken resolves nothing.
        job = runs.redrive("run_counts", REDRIVE)
        assert runs.worker().run().count(PartitionOutcome.FAILED) == 1
        assert runs.job(job).state == JobState.FAILED
        [progress] = runs.partitions(job)
        assert progress.events_applied == 0 and progress.parked == len(positions)
        again = runs.store.parked("run_counts")
        assert [p.position for p in again] == positions
        assert again[0].attempts == first.attempts + 1
        assert runs.actual(RunCounts) == fold_run_counts(others)

        # Fix the handler: the redrive applies the parked events in order.
        RunCounts.reset()
        job = runs.redrive("run_counts", REDRIVE)
        assert runs.worker().run().count(PartitionOutcome.COMPLETED) == 1
        assert runs.job(job).state == JobState.COMPLETED
        assert runs.partitions(job)[0].events_applied == len(positions)
        assert runs.store.parked("run_counts") == []
        resolved = runs.store.parked("run_counts", include_resolved=True)
        assert [p.position for p in resolved] == positions
        assert runs.actual(RunCounts) == runs.expected(RunCounts)

        # A second redrive has nothing to do, and doing it anyway changes nothing.
        with pytest.raises(InvalidRequest, match="has no parked events"):
            runs.redrive("run_counts", REDRIVE)
        result = redrive_parked(RunCounts(), build=1, store=runs.store, source=runs.source)
        assert (result.resolved, result.still_parked) == (0, 0)
        assert runs.actual(RunCounts) == runs.expected(RunCounts)

        # The live runner is no longer blocked on that run: new events flow in.
        record_workload(runs.log.app, workflows=1, runs_per_workflow=3, seed=22)
        live.catch_up()
        assert runs.actual(RunCounts) == runs.expected(RunCounts)

    def test_a_rebuild_fails_only_the_poisoned_partition_which_is_retried_alone(
        self, runs: Recovery
    ) -> None:
        record_workload(runs.log.app, workflows=2, runs_per_workflow=6, seed=23)
        victim, positions = a_victim(run_events(runs))
        RunCounts.reset(poison={victim})
        poisoned = partition_of(victim, 3)
        job = runs.rebuild("run_counts", JobRequest(principal="bob", reason="r", partitions=3))
        assert job.build == 1, "a never-built projection's first rebuild is its live build"

        report = runs.worker().run()  # the default rebuild policy: retry, then fail
        assert report.count(PartitionOutcome.FAILED) == 1
        assert report.count(PartitionOutcome.COMPLETED) == 2
        failed = runs.job(job)
        assert failed.state == JobState.FAILED
        assert f"partitions failed: [{poisoned}]" in (failed.error or "")
        parts = runs.partitions(job)
        assert "ValueError" in (parts[poisoned].last_error or "")
        assert RunCounts.tries[positions[0]] == 3, "three attempts, then the partition fails"
        checkpoints = {c.partition.index: c for c in runs.store.checkpoints("run_counts", build=1)}
        assert checkpoints[poisoned].position == positions[0] - 1, "stopped before the poison"
        done = {i: checkpoints[i] for i in checkpoints if i != poisoned}
        assert all(c.position == job.target_position for c in done.values())
        assert runs.store.parked("run_counts", build=1) == [], "a rebuild does not park"

        RunCounts.reset()
        runs.jobs.retry_partition(job.job_id, poisoned)
        assert runs.job(job).state == JobState.RUNNING
        report = runs.worker().run()
        assert [(index, outcome) for _, index, outcome in report.outcomes] == [
            (poisoned, PartitionOutcome.COMPLETED)
        ], "only the failed partition runs again"
        assert runs.job(job).state == JobState.COMPLETED
        assert all(p.status == PartitionStatus.COMPLETED for p in runs.partitions(job))
        assert runs.actual(RunCounts, build=1) == runs.expected(RunCounts)
        assert runs.applied(RunCounts, 1) == handled_count(RunCounts, runs.log.envelopes())


class TestSQLiteRedrive(OnSQLite, RedriveContract):
    pass


@pytest.mark.postgres
class TestPostgresRedrive(OnPostgres, RedriveContract):
    pass

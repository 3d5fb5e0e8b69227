"""The runner contract, on SQLite and on PostgreSQL.

- Property: for any event sequence and any batch size, each projection's tables
  equal a plain fold of the events, and with crashes injected anywhere (before
  reading, before applying, after any event, before, inside and after the
  commit) a restarted runner ends in the same state, with ``events_applied``
  equal to the number of handled events: nothing missing, nothing twice.
- Re-delivered events are a no-op; a stale writer is rejected by the position
  check; live following applies new events; partitions applied concurrently add
  up to the same state; handler and decoding failures go through the failure
  policy (fail, retry, park with the aggregate's later events parked behind it);
  a lost connection is retried; status and read-your-writes.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar
from uuid import UUID

import pytest
from eventsourcing.persistence import Notification
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from projection_fixtures import (
    EXPECTED,
    OPS,
    Backend,
    Catalog,
    Crash,
    Log,
    OnPostgres,
    OnSQLite,
    Op,
    handled_count,
    play,
    table_state,
)

from safereplay.domain import Envelope, KeyRing
from safereplay.domain.automation import Run
from safereplay.domain.mapper import EnvelopeMapper
from safereplay.domain.workload import record_workload
from safereplay.projections import (
    FAULT_POINTS,
    BatchState,
    DatabaseUnavailable,
    Decision,
    EventFailure,
    FailedSteps,
    HandlerFailed,
    Partition,
    PositionConflict,
    Projection,
    ProjectionStore,
    RunStatusBoard,
    Table,
    VersionMismatch,
    WaitTimeout,
    WorkflowStatistics,
    handles,
    projection_status,
    status,
    wait_for_position,
)
from safereplay.projections.source import READ_AHEAD_MODES, ReadAheadMode

PROJECTIONS: tuple[type[Projection], ...] = (
    RunStatusBoard,
    WorkflowStatistics,
    FailedSteps,
    Catalog,
)


def assert_folded(
    log: Log, store: ProjectionStore, projection: type[Projection], *, like: str | None = None
) -> None:
    envelopes = log.envelopes()
    assert table_state(store, projection) == EXPECTED[like or projection.name](envelopes)
    applied = sum(c.events_applied for c in store.checkpoints(projection.name))
    assert applied == handled_count(projection, envelopes), "an event applied twice or missed"


def run_with_crashes(
    log: Log,
    projection: Projection,
    *,
    batch_size: int,
    crashes: Sequence[tuple[str, int]],
    read_ahead: ReadAheadMode | None = None,
) -> int:
    """Catch up, crashing at each planned (point, nth occurrence); returns restarts."""
    plan = list(crashes)
    restarts = 0
    while True:
        crash_at = plan.pop(0) if plan else None
        seen: Counter[str] = Counter()

        def faults(
            point: str,
            crash_at: tuple[str, int] | None = crash_at,
            seen: Counter[str] = seen,
        ) -> None:
            seen[point] += 1
            if crash_at is not None and (point, seen[point]) == crash_at:
                raise Crash(point)

        # A new store and source each time: a restarted process shares nothing.
        store, source = log.store(), log.source()
        try:
            log.runner(
                projection,
                store=store,
                source=source,
                batch_size=batch_size,
                faults=faults,
                read_ahead=read_ahead,
            ).catch_up()
        except Crash:
            restarts += 1
            continue
        finally:
            store.close()
            source.close()
        if crash_at is None or not plan:
            return restarts


class Tally(Projection):
    """Counts run events per run; raises for the aggregates in ``poison``."""

    name = "tally"
    tables = (Table("runs", key={"run_id": "text"}, values={"events": "integer"}),)
    poison: ClassVar[set[UUID]] = set()
    failures: ClassVar[Counter[int]] = Counter()
    fail_times: ClassVar[int] = 10**9

    @handles(Run.Started, Run.StepSucceeded, Run.StepFailed, Run.StepRetried, Run.Completed)
    def count(self, envelope: Envelope, state: BatchState) -> None:
        assert envelope.position is not None
        if envelope.aggregate_id in self.poison:
            self.failures[envelope.position] += 1
            if self.failures[envelope.position] <= self.fail_times:
                raise ValueError("the tally machine jammed")
        state.merge("runs", envelope.aggregate_id, add={"events": 1})


@pytest.fixture(autouse=True)
def _reset_tally() -> None:
    Tally.poison = set()
    Tally.failures = Counter()
    Tally.fail_times = 10**9


class RecordingPolicy:
    def __init__(self, decide: Any) -> None:
        self.failures: list[EventFailure] = []
        self._decide = decide

    def decide(self, failure: EventFailure) -> Decision:
        self.failures.append(failure)
        decision: Decision = self._decide(failure)
        return decision


def run_counts(log: Log) -> Counter[str]:
    counts: Counter[str] = Counter()
    for e in log.envelopes():
        if e.topic in Tally.topics:
            counts[str(e.aggregate_id)] += 1
    return counts


def fold_property(max_examples: int) -> Any:
    """The property test, one per backend class (Hypothesis wants one executor each)."""

    @settings(
        max_examples=max_examples,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(
        workload=st.tuples(st.integers(0, 2), st.integers(1, 4), st.integers(0, 10**6)),
        ops=OPS,
        batch_size=st.integers(1, 12),
        crashes=st.lists(st.tuples(st.sampled_from(FAULT_POINTS), st.integers(1, 6)), max_size=3),
        projection=st.sampled_from(PROJECTIONS),
        read_ahead=st.sampled_from(READ_AHEAD_MODES),
    )
    def test_state_is_the_fold_of_the_events_whatever_the_batch_size_and_crashes(
        self: RunnerContract,
        backend: Backend,
        workload: tuple[int, int, int],
        ops: list[Op],
        batch_size: int,
        crashes: list[tuple[str, int]],
        projection: type[Projection],
        read_ahead: ReadAheadMode,
    ) -> None:
        self.check_fold(backend, workload, ops, batch_size, crashes, projection, read_ahead)

    return test_state_is_the_fold_of_the_events_whatever_the_batch_size_and_crashes


class RunnerContract:
    @pytest.fixture
    def backend(self) -> Iterator[Backend]:
        raise NotImplementedError

    @pytest.fixture
    def log(self, backend: Backend) -> Iterator[Log]:
        with backend.fresh() as log:
            yield log

    # -- the property ---------------------------------------------------------------------

    def check_fold(
        self,
        backend: Backend,
        workload: tuple[int, int, int],
        ops: list[Op],
        batch_size: int,
        crashes: list[tuple[str, int]],
        projection: type[Projection],
        read_ahead: ReadAheadMode = "off",
    ) -> None:
        with backend.fresh() as log:
            workflows, runs, seed = workload
            if workflows:
                record_workload(log.app, workflows=workflows, runs_per_workflow=runs, seed=seed)
            play(log.app, ops)
            run_with_crashes(
                log, projection(), batch_size=batch_size, crashes=crashes, read_ahead=read_ahead
            )
            store = log.store()
            assert_folded(log, store, projection)
            # Running again finds nothing to do and changes nothing.
            again = log.runner(projection(), batch_size=batch_size).catch_up()
            assert again.applied == 0
            assert_folded(log, store, projection)

    def test_a_crash_at_each_point_of_the_first_three_batches(self, log: Log) -> None:
        record_workload(log.app, workflows=2, runs_per_workflow=3)
        store = log.store()
        for base in (RunStatusBoard, WorkflowStatistics):
            for n in (1, 2, 3):
                for point in FAULT_POINTS:
                    # A fresh projection (its own tables) for each crash.
                    fresh = type("Fresh", (base,), {"name": f"{base.name[:3]}{n}_{point}"})
                    restarts = run_with_crashes(log, fresh(), batch_size=7, crashes=[(point, n)])
                    assert restarts == 1, (point, n)
                    assert_folded(log, store, fresh, like=base.name)

    # -- idempotency ----------------------------------------------------------------------

    def test_redelivered_events_are_a_no_op(self, log: Log) -> None:
        record_workload(log.app, workflows=2, runs_per_workflow=3)
        source = log.source()
        original = source.read

        def read_with_redelivery(**kwargs: Any) -> list[Notification]:
            kwargs["after"] = max(0, kwargs["after"] - 6)  # hand back what was applied
            return original(**kwargs)

        source.read = read_with_redelivery  # type: ignore[method-assign]
        store = log.store()
        runner = log.runner(RunStatusBoard(), store=store, source=source, batch_size=10)
        skipped = 0
        while not (result := runner.run_batch()).caught_up:
            skipped += result.skipped
        assert skipped > 0
        assert_folded(log, store, RunStatusBoard)

    def test_a_stale_writer_is_rejected_and_changes_nothing(self, log: Log) -> None:
        record_workload(log.app, workflows=2, runs_per_workflow=3)
        first = log.runner(WorkflowStatistics(), batch_size=1000)

        def let_the_other_commit_first(point: str) -> None:
            if point == "before_commit":
                first.catch_up()

        stale = log.runner(WorkflowStatistics(), batch_size=1000, faults=let_the_other_commit_first)
        with pytest.raises(PositionConflict, match="expected position 0") as info:
            stale.run_batch()
        assert info.value.expected == 0 and info.value.found == log.app.head_position()
        assert_folded(log, log.store(), WorkflowStatistics)

    def test_a_projection_version_change_needs_a_new_build(self, log: Log) -> None:
        store = log.store()
        log.runner(RunStatusBoard(), store=store).catch_up()

        class RunStatusBoardV2(RunStatusBoard):
            version = 2

        with pytest.raises(VersionMismatch, match="version 1, this code is version 2"):
            log.runner(RunStatusBoardV2(), store=store)

    # -- live following -------------------------------------------------------------------

    def test_live_following_applies_events_recorded_meanwhile(self, log: Log) -> None:
        record_workload(log.app, workflows=1, runs_per_workflow=2)
        store, source = log.store(), log.source()
        runner = log.runner(RunStatusBoard(), store=store, source=source, batch_size=5)
        with runner.in_background():
            for seed in range(3):
                record_workload(log.app, workflows=1, runs_per_workflow=2, seed=seed)
                head = log.app.head_position()
                assert wait_for_position(store, RunStatusBoard, head, timeout=15) >= head
        assert_folded(log, store, RunStatusBoard)

    def test_partitions_applied_concurrently_add_up_to_the_same_state(self, log: Log) -> None:
        record_workload(log.app, workflows=3, runs_per_workflow=6)
        store = log.store()
        runners = [
            log.runner(WorkflowStatistics(), partition=p, batch_size=4) for p in Partition.all(3)
        ]
        threads = [threading.Thread(target=r.catch_up) for r in runners]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert_folded(log, store, WorkflowStatistics)
        assert [c.partition for c in store.checkpoints("workflow_stats")] == list(Partition.all(3))
        assert sum(r.applied for r in runners) == handled_count(WorkflowStatistics, log.envelopes())

    # -- failures -------------------------------------------------------------------------

    def test_a_failing_handler_stops_with_a_clear_error_after_committing_the_prefix(
        self, log: Log
    ) -> None:
        record_workload(log.app, workflows=1, runs_per_workflow=4, seed=3)
        envelopes = [e for e in log.envelopes() if e.topic in Tally.topics]
        victim = envelopes[len(envelopes) // 2]
        Tally.poison = {victim.aggregate_id}
        first_bad = next(e for e in envelopes if e.aggregate_id == victim.aggregate_id)
        store = log.store()
        runner = log.runner(Tally(), store=store, batch_size=1000)
        with pytest.raises(HandlerFailed) as info:
            runner.catch_up()
        error = info.value
        assert first_bad.position is not None
        assert error.position == first_bad.position
        assert error.aggregate_id == victim.aggregate_id
        assert error.event_type == "Run.Started"
        assert error.error_type == "ValueError"
        assert isinstance(error.__cause__, ValueError)
        text = str(error)
        assert "tally" in text and str(first_bad.position) in text and "jammed" in text
        for secret in ("Lovelace", "trigger_payload", "lead"):
            assert secret not in text, "a payload leaked into the error"
        # Everything before the poison event is committed, exactly once.
        assert runner.checkpoint().position == first_bad.position - 1
        before = Counter(
            str(e.aggregate_id)
            for e in envelopes
            if e.position is not None and e.position < first_bad.position
        )
        assert {r["run_id"]: r["events"] for r in store.rows(Tally, "runs")} == dict(before)

    def test_retry_decisions_retry_the_event_then_go_on(self, log: Log) -> None:
        record_workload(log.app, workflows=1, runs_per_workflow=3)
        envelopes = [e for e in log.envelopes() if e.topic in Tally.topics]
        Tally.poison = {envelopes[4].aggregate_id}
        Tally.fail_times = 2
        policy = RecordingPolicy(lambda f: Decision.retry(0.01, "transient"))
        store = log.store()
        log.runner(Tally(), store=store, policy=policy, batch_size=50).catch_up()
        assert [f.attempt for f in policy.failures][:2] == [1, 2]
        assert all(f.stage == "apply" and f.envelope is not None for f in policy.failures)
        assert {r["run_id"]: r["events"] for r in store.rows(Tally, "runs")} == dict(
            run_counts(log)
        )

    def test_a_parked_event_parks_its_aggregates_later_events_and_others_move_on(
        self, log: Log
    ) -> None:
        record_workload(log.app, workflows=1, runs_per_workflow=4, seed=11)
        envelopes = [e for e in log.envelopes() if e.topic in Tally.topics]
        victim = envelopes[3].aggregate_id
        Tally.poison = {victim}
        Tally.fail_times = 1  # it would succeed on a second try: parking must not retry it
        policy = RecordingPolicy(lambda f: Decision.park("poison"))
        store = log.store()
        log.runner(Tally(), store=store, policy=policy, batch_size=3).catch_up()
        counts = run_counts(log)
        victim_events = counts.pop(str(victim))
        assert {r["run_id"]: r["events"] for r in store.rows(Tally, "runs")} == dict(counts)
        parked = store.parked("tally")
        assert [p.aggregate_id for p in parked] == [victim] * victim_events
        first, *later = parked
        assert (first.error_type, first.error_message, first.attempts) == (
            "ValueError",
            "the tally machine jammed",
            1,
        )
        assert first.reason == "poison" and first.blocked_by is None
        assert all(p.blocked_by == first.position and p.error_type == "Blocked" for p in later)
        assert len(policy.failures) == 1
        assert sum(c.events_parked for c in store.checkpoints("tally")) == victim_events
        # A restarted runner keeps the aggregate blocked.
        record_workload(log.app, workflows=1, runs_per_workflow=1, seed=12)
        log.runner(Tally(), policy=policy).catch_up()
        assert len(store.parked("tally")) == victim_events

    def test_an_event_that_cannot_be_decrypted_goes_to_the_policy(self, log: Log) -> None:
        record_workload(log.app, workflows=1, runs_per_workflow=1)
        wrong_keys = EnvelopeMapper(
            transcoder=log.app.construct_transcoder(), key_ring=KeyRing.generate("other")
        )
        source = log.source()
        source.mapper = wrong_keys
        with pytest.raises(HandlerFailed, match="UnknownKeyId") as info:
            log.runner(RunStatusBoard(), source=source).catch_up()
        assert info.value.position == next(
            e.position for e in log.envelopes() if e.topic in RunStatusBoard.topics
        )

    def test_a_lost_connection_is_retried_and_the_batch_reapplied(self, log: Log) -> None:
        record_workload(log.app, workflows=2, runs_per_workflow=3)
        store = log.store()
        real_commit = store.commit
        calls = Counter[str]()

        def flaky_commit(*args: Any, **kwargs: Any) -> Any:
            calls["commit"] += 1
            if calls["commit"] in (2, 3):
                raise DatabaseUnavailable("connection lost (test)")
            if calls["commit"] == 5:
                real_commit(*args, **kwargs)  # committed, but the answer is lost
                raise DatabaseUnavailable("connection lost after commit (test)")
            return real_commit(*args, **kwargs)

        store.commit = flaky_commit  # type: ignore[method-assign]
        runner = log.runner(WorkflowStatistics(), store=store, batch_size=5)
        runner.catch_up()
        assert runner.connection_retries == 3
        assert_folded(log, store, WorkflowStatistics)

    @pytest.mark.parametrize("mode", ["read", "decode"])
    def test_a_batch_read_ahead_is_taken_once_and_dropped_when_its_commit_is_lost(
        self, log: Log, mode: ReadAheadMode
    ) -> None:
        record_workload(log.app, workflows=2, runs_per_workflow=3)
        source, store = log.source(), log.store()
        reads: list[tuple[str, int]] = []
        real_read, real_commit = source.read, store.commit

        def counting_read(**kwargs: Any) -> list[Notification]:
            reads.append((threading.current_thread().name, kwargs["after"]))
            return real_read(**kwargs)

        commits = Counter[str]()

        def flaky_commit(*args: Any, **kwargs: Any) -> Any:
            commits["commit"] += 1
            if commits["commit"] == 2:
                raise DatabaseUnavailable("connection lost (test)")
            return real_commit(*args, **kwargs)

        source.read = counting_read  # type: ignore[method-assign]
        store.commit = flaky_commit  # type: ignore[method-assign]
        runner = log.runner(
            RunStatusBoard(), store=store, source=source, batch_size=5, read_ahead=mode
        )
        result = runner.catch_up()
        assert_folded(log, store, RunStatusBoard)
        ahead = [after for thread, after in reads if thread == "safereplay-read-ahead"]
        in_runner = [after for thread, after in reads if thread != "safereplay-read-ahead"]
        # The first batch is read by the runner, every later one ahead of it, except
        # the second batch again: its commit was lost, so what was read after it
        # (from a position that was never committed) was dropped.
        assert in_runner == [0, ahead[0]]
        assert len(ahead) >= 3
        assert result.batches == commits["commit"] - 1
        assert runner.connection_retries == 1

    # -- status and read-your-writes --------------------------------------------------------

    def test_status_reports_head_mark_positions_backlog_and_commits(self, log: Log) -> None:
        record_workload(log.app, workflows=1, runs_per_workflow=3)
        store, source = log.store(), log.source()
        head = log.app.head_position()
        runner = log.runner(RunStatusBoard(), store=store, source=source, batch_size=2)
        runner.run_batch()
        report = status(store, source)
        assert (report.head_position, report.high_water_mark) == (head, head)
        [board] = report.projections
        assert board.name == "run_status" and board.build == 1 and board.version == 1
        assert 0 < board.position < head and board.backlog == head - board.position
        assert board.last_commit_at is not None and not board.caught_up
        runner.catch_up()
        partial = log.runner(FailedSteps(), store=store, source=source, partition=Partition(0, 2))
        partial.catch_up()
        failed, board = status(store, source).projections
        assert board.backlog == 0 and board.caught_up
        assert board.events_applied == handled_count(RunStatusBoard, log.envelopes())
        # One of two partitions: no complete partitioning yet, so no position.
        assert failed.position == 0 and failed.backlog == head
        assert [(p.index, p.count, p.position) for p in failed.partitions] == [(0, 2, head)]
        assert status(store, source, ["run_status"]).projections == (board,)

    def test_wait_for_position(self, log: Log) -> None:
        store, source = log.store(), log.source()
        runner = log.runner(RunStatusBoard(), store=store, source=source)
        runner.catch_up()
        record_workload(log.app, workflows=1, runs_per_workflow=1)
        head = log.app.head_position()
        with pytest.raises(WaitTimeout, match=f"did not reach position {head}") as info:
            wait_for_position(store, RunStatusBoard, head, timeout=0.05)
        assert isinstance(info.value, TimeoutError)
        # Events it does not handle, up to the mark, count as applied.
        workflow_only = max(
            e.position or 0 for e in log.envelopes() if e.topic not in RunStatusBoard.topics
        )
        first_run = min(
            e.position or 0 for e in log.envelopes() if e.topic in RunStatusBoard.topics
        )
        assert workflow_only < first_run
        assert (
            wait_for_position(store, RunStatusBoard, workflow_only, timeout=1, source=source)
            == workflow_only
        )
        with pytest.raises(WaitTimeout):
            wait_for_position(store, RunStatusBoard, first_run, timeout=0.05, source=source)
        thread = runner.in_background()
        try:
            # Returns once the follower got there; WaitTimeout after 15 s otherwise.
            assert wait_for_position(store, RunStatusBoard, head, timeout=15) >= head
        finally:
            thread.stop()
        status_ = projection_status(store, "run_status", high_water_mark=head)
        assert status_.position == head


class TestSQLiteRunner(OnSQLite, RunnerContract):
    test_state_is_the_fold_of_the_events_whatever_the_batch_size_and_crashes = fold_property(40)


@pytest.mark.postgres
class TestPostgresRunner(OnPostgres, RunnerContract):
    test_state_is_the_fold_of_the_events_whatever_the_batch_size_and_crashes = fold_property(20)

"""Two operators issuing conflicting commands at once, on both backends.

Each operator has a recovery context of their own (their own connections, as two
shells or two API calls would), and both commands leave a barrier together, each
after a random jitter drawn from the trial's seed. Every conflicting pair has
exactly one winner, the loser gets an error that names what it lost to, and the
database holds what the winner did and nothing of the loser: one job, one build,
one decision, one swap. The live build is then checked against the clean fold of
the stored events, in the database: each event applied exactly once.

- two rebuilds of one projection;
- a swap against an abort of the rebuild it would swap in (the job still running);
- a redrive against a running rebuild;
- an approval against a rejection of one change request (four-eyes approval on);
- ``switch freeze`` racing a swap.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from concurrency_writers import (
    CEILING,
    account,
    builds,
    checkpoints,
    committed_positions,
    live_build,
    query,
)
from projection_fixtures import Backend, Log, OnPostgres, OnSQLite, PostgresBackend
from recovery_fixtures import wait_until
from reliability_trials import Trial

from safereplay.domain.workload import record_workload
from safereplay.projections import (
    ParkedEvent,
    Projection,
    ProjectionRunner,
    RunStatusBoard,
    WorkflowStatistics,
)
from safereplay.projections.source import WHOLE
from safereplay.recovery.errors import (
    ChangeRequestConflict,
    InvalidJobTransition,
    InvalidRequest,
    JobConflict,
    OperationsFrozen,
)
from safereplay.recovery.jobs.model import JobState
from safereplay.recovery.jobs.worker import WorkerOptions
from safereplay.recovery.operations.approvals import AwaitingApproval
from safereplay.recovery.operations.catalog import open_operations
from safereplay.recovery.operations.context import RecoveryContext
from safereplay.recovery.security.access import Principal
from safereplay.recovery.security.audit import AuditKey
from safereplay.recovery.settings import DEFAULT_APPROVAL_REQUIRED, RecoverySettings

STATS = WorkflowStatistics
BOARD = RunStatusBoard


@dataclass
class Outcome:
    who: str
    result: Any = None
    error: BaseException | None = None

    @property
    def won(self) -> bool:
        return self.error is None


#: Whose commands share a context (see :meth:`Operators.context`).
SEATS = {"olga": "A", "abe": "A", "oscar": "B", "ada": "B", "ann": "B"}


@dataclass
class Operators:
    """A recorded log; ada (admin), olga and oscar (operators), abe and ann (approvers)."""

    log: Log
    key: Path
    approvals: bool = False

    def __post_init__(self) -> None:
        self._contexts: dict[str, RecoveryContext] = {}
        self._lock = threading.Lock()
        # Principals and grants only: no token is issued (nobody signs in here), which
        # spares the key derivation of each.
        with self.context() as setup:
            for name, role, scope in (
                ("ada", "admin", "*"),
                ("olga", "operator", "projection:*"),
                ("oscar", "operator", "projection:*"),
                ("abe", "approver", "projection:*"),
                ("ann", "approver", "projection:*"),
            ):
                setup.access.add_principal(name, kind="person", created_by="reliability")
                setup.access.grant(name, role, scope, granted_by="reliability")

    @contextlib.contextmanager
    def context(self, who: str = "olga") -> Iterator[RecoveryContext]:
        """The context of ``who``'s seat (a shell: its own connections), made once.

        Two seats, so that the two sides of every race have a context each (olga,
        abe and the checks on one; oscar, ada and ann on the other): a context holds
        about ten connections, and the PostgreSQL server is shared.
        """
        seat = SEATS[who]
        with self._lock:
            context = self._contexts.get(seat)
            if context is None:
                context = self._contexts[seat] = self._new_context()
        yield context

    def _new_context(self) -> RecoveryContext:
        extra = {"approval_required": DEFAULT_APPROVAL_REQUIRED} if self.approvals else {}
        return RecoveryContext(
            domain=self.log.settings,
            recovery=RecoverySettings(audit_key_file=self.key, **extra),
        )

    def close(self) -> None:
        for context in self._contexts.values():
            context.close()

    def run(self, who: str, operation: str, /, **parameters: Any) -> Any:
        with self.context(who) as context:
            return open_operations(context).run(Principal(who, "person"), operation, **parameters)

    def work(self, job_id: str, *, stop: threading.Event | None = None) -> None:
        """Run a job's partitions to their end (a worker in this process, with its own
        context, closed when it is done)."""
        context = self._new_context()
        try:
            options = WorkerOptions(lease_seconds=30, exit_when_idle=True)
            context.worker(options=options).run(stop, job_id=UUID(job_id))
        finally:
            context.close()

    def rebuilt(self, projection: str, **parameters: Any) -> dict[str, Any]:
        started = self.run("olga", "rebuild", reason="build", projection=projection, **parameters)
        self.work(started["job_id"])
        return dict(started)

    def race(
        self, rng: random.Random, *calls: tuple[str, Callable[[], Any]], jitter: float = 0.03
    ) -> list[Outcome]:
        """Each call in a thread of its own, all released at once, each after a random
        delay of up to ``jitter`` seconds."""
        barrier = threading.Barrier(len(calls), timeout=CEILING)
        outcomes = [Outcome(who) for who, _ in calls]
        jitters = [rng.uniform(0, jitter) for _ in calls]

        def go(index: int, call: Callable[[], Any]) -> None:
            barrier.wait()
            time.sleep(jitters[index])
            try:
                outcomes[index].result = call()
            except Exception as exc:
                outcomes[index].error = exc

        threads = [
            threading.Thread(target=go, args=(i, call), daemon=True)
            for i, (_, call) in enumerate(calls)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(CEILING)
            assert not thread.is_alive(), "an operator's command is stuck"
        return outcomes


def one_winner(outcomes: list[Outcome]) -> tuple[Outcome, Outcome]:
    winners = [o for o in outcomes if o.won]
    losers = [o for o in outcomes if not o.won]
    assert len(winners) == 1 and len(losers) == 1, [(o.who, o.result, o.error) for o in outcomes]
    return winners[0], losers[0]


def at_head(operators: Operators, projection: type[Projection]) -> int:
    """Catch the live build up to the head (a follower's work); its build number."""
    log = operators.log
    head = committed_positions(log)[-1]
    with operators.context() as context:
        runner = ProjectionRunner(
            projection(), source=context.source, store=context.projection_store
        )
        wait_until(
            lambda: runner.catch_up().position >= head,
            timeout=CEILING,
            what="the live build at head",
        )
    build = live_build(log, projection.name)
    assert build is not None
    return build


def checked(trial: Trial, operators: Operators, projection: type[Projection], build: int) -> None:
    with operators.context() as context:
        actual = {
            table.name: {
                tuple(row[k] for k in table.key_names): row
                for row in context.projection_store.rows(projection, table.name, build=build)
            }
            for table in projection.tables
        }
    found = account(operators.log, projection, build, actual)
    if found.detail:  # what differs, before the figures fail the trial
        print(f"[concurrency] {trial.label} build {build}: {found.detail}")
    assert not found.detail or found.losses or found.duplicates, found.detail
    trial.checked(found.events, losses=found.losses, duplicates=found.duplicates)


def jobs_of(log: Log, projection: str, kind: str) -> list[tuple[str, str]]:
    rows = query(
        log,
        "SELECT job_id, state FROM {jobs} WHERE projection = %s AND kind = %s",
        [projection, kind],
        jobs="safereplay_jobs",
    )
    return [(str(a), str(b)) for a, b in rows]


def physical_builds(log: Log, projection: str) -> set[int]:
    """Builds of which a physical table exists, from the database's own catalog."""
    if isinstance(log.backend, PostgresBackend):
        rows = query(
            log,
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
            [log.settings.postgres_schema],
        )
    else:
        rows = query(log, "SELECT name FROM sqlite_master WHERE type = 'table'")
    prefix = f"{projection}__"
    return {int(str(n).rsplit("__b", 1)[1]) for (n,) in rows if str(n).startswith(prefix)}


def audited(log: Log, action: str, outcome: str) -> int:
    [[count]] = query(
        log,
        "SELECT count(*) FROM {audit} WHERE action = %s AND outcome = %s",
        [action, outcome],
        audit="safereplay_audit_entries",
    )
    return int(count)


class OperatorsContract:
    """Each test gets fresh operators over a fresh log of the class's backend."""

    approvals = False

    @pytest.fixture
    def operators(self, backend: Backend, tmp_path: Path) -> Callable[[Trial], Any]:
        """``with operators(trial) as ops:`` a fresh log, dropped after the trial."""

        @contextlib.contextmanager
        def make(trial: Trial) -> Iterator[Operators]:
            with backend.fresh() as log:
                key = tmp_path / f"audit-{trial.index}.key"
                AuditKey.generate().save(key)
                record_workload(
                    log.app,
                    workflows=2,
                    runs_per_workflow=trial.random.randint(3, 6),
                    seed=trial.random.randrange(10**6),
                )
                operators = Operators(log, key, approvals=self.approvals)
                try:
                    yield operators
                finally:
                    operators.close()

        return make


class ConflictingCommandsContract(OperatorsContract):
    def test_two_rebuilds_of_one_projection_at_once(self, trials: Any, operators: Any) -> None:
        """olga and oscar rebuild workflow_stats at once: one job, one new build. The
        loser is refused naming the active job (or, if the winner's job was already
        planned when it looked, told it resumes that same job); no second build is
        left behind. The one build, swapped in, equals the fold."""
        for trial in trials(default=1):
            with operators(trial) as ops:
                self._two_rebuilds_of_one_projection_at_once(trial, ops)

    def _two_rebuilds_of_one_projection_at_once(self, trial: Trial, ops: Operators) -> None:
        rng = trial.random
        ops.rebuilt(STATS.name)  # build 1, live
        partitions = rng.randint(1, 3)

        def rebuild(who: str) -> Callable[[], Any]:
            return lambda: ops.run(
                who, "rebuild", reason="race", projection=STATS.name, partitions=partitions
            )

        outcomes = ops.race(rng, ("olga", rebuild("olga")), ("oscar", rebuild("oscar")))
        trial.fault()
        created = [o for o in outcomes if o.won and not o.result.get("resumed")]
        assert len(created) == 1, [(o.who, o.result, o.error) for o in outcomes]
        [winner] = created
        for other in outcomes:
            if other is winner:
                continue
            if other.error is not None:
                assert isinstance(other.error, JobConflict), other.error
                assert "already has an active job" in str(other.error), other.error
            else:
                assert other.result["job_id"] == winner.result["job_id"], other.result
        assert len(jobs_of(ops.log, STATS.name, "rebuild")) == 2, "one job more"
        # The loser may have made a build before losing the job: it dropped it, so
        # the winner's may be build 3; no build and no table is left of the other.
        build = winner.result["build"]
        assert builds(ops.log, STATS.name) == {1: "live", build: "building"}
        assert physical_builds(ops.log, STATS.name) == {1, build}
        ops.work(winner.result["job_id"])
        ops.run("olga", "swap", reason="rebuilt", projection=STATS.name)
        assert at_head(ops, STATS) == build
        checked(trial, ops, STATS, build)

    def test_swap_against_abort_of_its_running_rebuild(self, trials: Any, operators: Any) -> None:
        """A throttled rebuild runs; at a random moment olga aborts it while oscar swaps
        it in (retrying while it is still running, as an operator waiting for it
        would). Exactly one wins: the abort (the job ends aborted, build 1 stays live,
        the swap is refused naming the aborted job) or the swap (the job had completed,
        the abort is refused as an invalid transition). The live build equals the fold."""
        for trial in trials(default=1):
            with operators(trial) as ops:
                self._swap_against_abort_of_its_running_rebuild(trial, ops)

    def _swap_against_abort_of_its_running_rebuild(self, trial: Trial, ops: Operators) -> None:
        rng = trial.random
        ops.rebuilt(STATS.name)
        started = ops.run(
            "olga",
            "rebuild",
            reason="slow",
            projection=STATS.name,
            partitions=rng.randint(1, 3),
            events_per_second=rng.choice([30, 60, 120]),
        )
        job_id = started["job_id"]
        stop = threading.Event()
        worker = threading.Thread(target=ops.work, args=(job_id,), kwargs={"stop": stop})
        worker.start()
        time.sleep(rng.uniform(0, 1.0))

        def swap() -> Any:
            while True:
                try:
                    return ops.run("oscar", "swap", reason="done?", projection=STATS.name)
                except InvalidRequest as exc:
                    if "is running" not in str(exc) and "is planned" not in str(exc):
                        raise
                time.sleep(0.02)

        def abort() -> Any:
            return ops.run("olga", "abort", reason="changed my mind", job_id=job_id)

        outcomes = ops.race(rng, ("olga", abort), ("oscar", swap))
        trial.fault()
        winner, loser = one_winner(outcomes)
        worker.join(CEILING)
        assert not worker.is_alive()
        state = dict(jobs_of(ops.log, STATS.name, "rebuild"))[job_id]
        if winner.who == "olga":
            assert isinstance(loser.error, InvalidRequest), loser.error
            assert "cannot be swapped in" in str(loser.error), loser.error
            wait_until(
                lambda: dict(jobs_of(ops.log, STATS.name, "rebuild"))[job_id] == "aborted",
                timeout=CEILING,
                what="the aborted job to settle",
            )
            assert live_build(ops.log, STATS.name) == 1
        else:
            assert isinstance(loser.error, InvalidJobTransition), loser.error
            assert state == JobState.COMPLETED
            assert live_build(ops.log, STATS.name) == started["build"]
        print(f"[concurrency] {trial.label}: {winner.who} won; {loser.error}")
        checked(trial, ops, STATS, at_head(ops, STATS))

    def test_redrive_against_a_running_rebuild(self, trials: Any, operators: Any) -> None:
        """run_status's live build has an event parked (a run's last event, so nothing
        waits behind it). A throttled rebuild runs; at a random moment oscar redrives
        the parked event. While the rebuild is active the redrive is refused, naming
        it, and the event stays parked; once it has ended the redrive goes through.
        Both builds then equal the fold: the parked event applied exactly once."""
        for trial in trials(default=1):
            with operators(trial) as ops:
                self._redrive_against_a_running_rebuild(trial, ops)

    def _redrive_against_a_running_rebuild(self, trial: Trial, ops: Operators) -> None:
        rng = trial.random
        parked_at = park_a_last_event(ops, rng)
        started = ops.run(
            "olga",
            "rebuild",
            reason="slow",
            projection=BOARD.name,
            partitions=rng.randint(1, 3),
            events_per_second=rng.choice([60, 120]),
        )
        worker = threading.Thread(target=ops.work, args=(started["job_id"],))
        worker.start()
        time.sleep(rng.uniform(0, 0.6))

        def redrive() -> Any:
            return ops.run("oscar", "parked.redrive", reason="fixed", projection=BOARD.name)

        [outcome] = ops.race(rng, ("oscar", redrive))
        trial.fault()
        if outcome.error is not None:
            assert isinstance(outcome.error, JobConflict), outcome.error
            assert started["job_id"] in str(outcome.error), outcome.error
            assert unresolved(ops.log, BOARD.name, 1) == [parked_at]
        worker.join(CEILING)
        assert not worker.is_alive()
        if outcome.error is not None:
            outcome.result = redrive()
        ops.work(outcome.result["job_id"])
        assert unresolved(ops.log, BOARD.name, 1) == []
        print(f"[concurrency] {trial.label}: redrive refused first: {outcome.error}")
        at_head(ops, BOARD)
        checked(trial, ops, BOARD, 1)
        ops.run("olga", "swap", reason="rebuilt", projection=BOARD.name)
        checked(trial, ops, BOARD, at_head(ops, BOARD))

    def test_freeze_racing_a_swap(self, trials: Any, operators: Any) -> None:
        """ada freezes the operations switch while olga swaps a rebuilt build in. The
        freeze always holds; the swap either got past the gate first (and is whole) or
        is refused naming ada, with build 1 still live, and goes through after the
        unfreeze. Never a half swap; the live build equals the fold."""
        for trial in trials(default=1):
            with operators(trial) as ops:
                self._freeze_racing_a_swap(trial, ops)

    def _freeze_racing_a_swap(self, trial: Trial, ops: Operators) -> None:
        rng = trial.random
        ops.rebuilt(STATS.name)
        build = ops.rebuilt(STATS.name, partitions=rng.randint(1, 3))["build"]
        outcomes = ops.race(
            rng,
            ("ada", lambda: ops.run("ada", "switch.freeze", reason="incident")),
            ("olga", lambda: ops.run("olga", "swap", reason="go", projection=STATS.name)),
            # The freeze commits in a few milliseconds, the swap passes its gate at once:
            # a wider jitter lets either come first.
            jitter=0.2,
        )
        trial.fault()
        freeze, swap = outcomes
        assert freeze.won, freeze.error
        [[held_by]] = query(
            ops.log, "SELECT held_by FROM {switch}", switch="safereplay_operations_switch"
        )
        assert held_by == "ada"
        if swap.won:
            assert live_build(ops.log, STATS.name) == build
        else:
            assert isinstance(swap.error, OperationsFrozen), swap.error
            assert "frozen by 'ada'" in str(swap.error)
            assert live_build(ops.log, STATS.name) == 1
            assert audited(ops.log, "swap", "denied") == 1
        ops.run("ada", "switch.unfreeze", reason="over")
        if not swap.won:
            ops.run("olga", "swap", reason="again", projection=STATS.name)
        assert audited(ops.log, "swap", "succeeded") == 1
        print(f"[concurrency] {trial.label}: swap {'won' if swap.won else 'refused'}")
        assert at_head(ops, STATS) == build
        checked(trial, ops, STATS, build)

    def test_two_swaps_of_one_build_at_once(self, trials: Any, operators: Any) -> None:
        """olga and oscar swap the same rebuilt build in at once: it goes live once
        (one swap moves build 1 to retired), the other is refused naming the build
        already live; the audit holds one successful swap. The live build equals the
        fold."""
        for trial in trials(default=1):
            with operators(trial) as ops:
                self._two_swaps_of_one_build_at_once(trial, ops)

    def _two_swaps_of_one_build_at_once(self, trial: Trial, ops: Operators) -> None:
        rng = trial.random
        ops.rebuilt(STATS.name)
        build = ops.rebuilt(STATS.name, partitions=rng.randint(1, 3))["build"]

        def swap(who: str) -> Callable[[], Any]:
            return lambda: ops.run(who, "swap", reason="go", projection=STATS.name)

        outcomes = ops.race(rng, ("olga", swap("olga")), ("oscar", swap("oscar")))
        trial.fault()
        winner, loser = one_winner(outcomes)
        assert (winner.result["previous"], winner.result["live"]) == (1, build)
        # Refused at the start (build already live) or at the end, where only one
        # transaction can replace build 1 (a JobConflict naming the build now live).
        assert isinstance(loser.error, InvalidRequest | JobConflict), loser.error
        assert f"build {build}" in str(loser.error) and "live" in str(loser.error)
        print(f"[concurrency] {trial.label}: {winner.who} swapped; {loser.error}")
        assert builds(ops.log, STATS.name) == {1: "retired", build: "live"}
        assert audited(ops.log, "swap", "succeeded") == 1
        assert at_head(ops, STATS) == build
        checked(trial, ops, STATS, build)

    def test_swap_against_rollback(self, trials: Any, operators: Any) -> None:
        """Build 2 is live (build 1 retired) and build 3 is rebuilt: olga swaps build 3
        in while oscar rolls back to build 1. Either one wins and the other is refused
        naming the build now live, or both ran one after the other, the second
        replacing what the first made live (as their answers say); never two builds
        live, never a raw database error. The live build equals the fold."""
        for trial in trials(default=1):
            with operators(trial) as ops:
                self._swap_against_rollback(trial, ops)

    def _swap_against_rollback(self, trial: Trial, ops: Operators) -> None:
        rng = trial.random
        ops.rebuilt(STATS.name)
        ops.rebuilt(STATS.name)
        ops.run("olga", "swap", reason="first", projection=STATS.name)
        build = ops.rebuilt(STATS.name, partitions=rng.randint(1, 3))["build"]
        outcomes = ops.race(
            rng,
            ("olga", lambda: ops.run("olga", "swap", reason="go", projection=STATS.name)),
            ("oscar", lambda: ops.run("oscar", "rollback", reason="back", projection=STATS.name)),
        )
        trial.fault()
        swap, back = outcomes
        live = [b for b, status in builds(ops.log, STATS.name).items() if status == "live"]
        assert len(live) == 1, builds(ops.log, STATS.name)
        if swap.won and back.won:
            # Both went through, one after the other: the second replaced what the
            # first made live (a serial order each one's answer tells truthfully).
            first, second = (swap, back) if back.result["previous"] == build else (back, swap)
            assert second.result["previous"] == first.result["live"], outcomes
            assert live == [second.result["live"]]
        else:
            winner, loser = one_winner(outcomes)
            assert isinstance(loser.error, InvalidRequest | JobConflict), loser.error
            assert "live" in str(loser.error), loser.error
            assert live == [winner.result["live"]]
        print(f"[concurrency] {trial.label}: {[(o.who, o.result, o.error) for o in outcomes]}")
        checked(trial, ops, STATS, at_head(ops, STATS))


def unresolved(log: Log, projection: str, build: int) -> list[int]:
    rows = query(
        log,
        "SELECT position FROM {parked} WHERE projection = %s AND build = %s "
        "AND resolved_at IS NULL ORDER BY position",
        [projection, build],
        parked="safereplay_projection_parked",
    )
    return [int(r[0]) for r in rows]


def park_a_last_event(ops: Operators, rng: random.Random) -> int:
    """Build run_status's live build 1 with one event parked, as a failing handler
    would have left it: a run's last event (nothing of that run comes after it)."""
    log = ops.log
    envelopes = log.envelopes()
    last: dict[UUID, Any] = {}
    for envelope in envelopes:
        if envelope.topic in BOARD.topics:
            last[envelope.aggregate_id] = envelope
    target = rng.choice(sorted(last.values(), key=lambda e: e.position))
    with ops.context() as context:
        store = context.projection_store
        runner = ProjectionRunner(BOARD(), source=context.source, store=store)
        runner.catch_up(until=target.position - 1)
        [checkpoint] = store.checkpoints(BOARD.name, build=1)
        now = datetime.now(UTC)
        store.commit(
            BOARD.name,
            1,
            WHOLE,
            expected=checkpoint.position,
            position=checkpoint.position,
            parked=[
                ParkedEvent(
                    projection=BOARD.name,
                    build=1,
                    position=target.position,
                    partition=WHOLE,
                    aggregate_id=target.aggregate_id,
                    aggregate_version=target.aggregate_version,
                    topic=target.topic,
                    event_type=target.topic.rsplit(":", 1)[-1],
                    error_type="ValueError",
                    error_message="the handler failed",
                    attempts=3,
                    first_seen_at=now,
                    last_seen_at=now,
                    reason="retries exhausted",
                )
            ],
        )
        # Then past it, unapplied: the runner goes on after a parked event.
        store.commit(BOARD.name, 1, WHOLE, expected=checkpoint.position, position=target.position)
        runner = ProjectionRunner(BOARD(), source=context.source, store=store)
        runner.catch_up()
    assert [c[3] for c in checkpoints(log, BOARD.name, 1)] == [1]
    return int(target.position)


class ApprovalRaceContract(OperatorsContract):
    approvals = True

    def test_approve_against_reject_of_one_change_request(
        self, trials: Any, operators: Any
    ) -> None:
        """olga asks to swap a rebuilt build in (four-eyes approval on); abe approves
        while ann rejects. Exactly one decision stands, the other is refused as already
        decided; the swap ran once if approved, never if rejected."""
        for trial in trials(default=1):
            with operators(trial) as ops:
                self._approve_against_reject_of_one_change_request(trial, ops)

    def _approve_against_reject_of_one_change_request(self, trial: Trial, ops: Operators) -> None:
        rng = trial.random
        ops.rebuilt(STATS.name)
        build = ops.rebuilt(STATS.name, partitions=rng.randint(1, 3))["build"]
        waiting = ops.run("olga", "swap", reason="verified", projection=STATS.name)
        assert isinstance(waiting, AwaitingApproval), waiting
        request_id = waiting.change_request.request_id
        outcomes = ops.race(
            rng,
            (
                "abe",
                lambda: ops.run("abe", "requests.approve", reason="ok", request_id=request_id),
            ),
            (
                "ann",
                lambda: ops.run("ann", "requests.reject", reason="no", request_id=request_id),
            ),
        )
        trial.fault()
        winner, loser = one_winner(outcomes)
        assert isinstance(loser.error, ChangeRequestConflict), loser.error
        assert "already decided" in str(loser.error), loser.error
        [[state, decided_by]] = query(
            ops.log,
            "SELECT state, decided_by FROM {requests} WHERE request_id = %s",
            [request_id],
            requests="safereplay_change_requests",
        )
        assert decided_by == winner.who
        swaps = audited(ops.log, "swap", "succeeded")
        if winner.who == "abe":
            assert (state, swaps) == ("approved", 1)
            assert live_build(ops.log, STATS.name) == build
        else:
            assert (state, swaps) == ("rejected", 0)
            assert live_build(ops.log, STATS.name) == 1
        print(f"[concurrency] {trial.label}: {winner.who} decided ({state})")
        checked(trial, ops, STATS, at_head(ops, STATS))


class TestSQLiteConflictingCommands(OnSQLite, ConflictingCommandsContract):
    pass


@pytest.mark.postgres
class TestPostgresConflictingCommands(OnPostgres, ConflictingCommandsContract):
    pass


class TestSQLiteApprovalRace(OnSQLite, ApprovalRaceContract):
    pass


@pytest.mark.postgres
class TestPostgresApprovalRace(OnPostgres, ApprovalRaceContract):
    pass

"""Integrity failures pause the work: SQLite and PostgreSQL.

A rebuild that meets a stored event whose AES-GCM tag no longer authenticates stops
at that position with a conflict recorded (``on_integrity_failure`` = pause, the
default): the partition's position and the build's rows stay where they are while
later events exist and workers keep polling; an operator resolves the conflict
(park that event, or retry after the row is fixed) and the rebuild completes. With
``park`` the event is parked without a conflict; with ``fail`` the partition fails
naming the position. The conflict store itself is one contract per backend.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from projection_fixtures import Log, OnPostgres, OnSQLite, stored_state, write_state
from recovery_fixtures import QUICK_RUNNER, Recovery, RecoveryContract

from safereplay.domain.workload import record_workload
from safereplay.projections import RunStatusBoard
from safereplay.recovery.database import Database
from safereplay.recovery.errors import ConflictNotFound, InvalidJobTransition
from safereplay.recovery.jobs.conflicts import Conflict, ConflictStore, NewConflict
from safereplay.recovery.jobs.follow import FollowReport, follow_projections
from safereplay.recovery.jobs.model import Job, JobState, PartitionStatus
from safereplay.recovery.jobs.plans import JobRequest
from safereplay.recovery.jobs.store import SQLJobStore
from safereplay.recovery.jobs.worker import PartitionOutcome
from safereplay.recovery.security.audit import AuditKey, AuditTrail

ONE = JobRequest(principal="alice", reason="projection fixed")


def database_of(recovery: Recovery) -> Database:
    assert isinstance(recovery.jobs, SQLJobStore)
    return recovery.jobs.database


def tamper(log: Log, position: int) -> bytes:
    """Flip one bit of the row's GCM tag; returns the original state."""
    state = stored_state(log, position)
    damaged = bytearray(state)
    damaged[-1] ^= 0x01
    write_state(log, position, bytes(damaged))
    return state


def partition_row(recovery: Recovery, job: Job) -> dict[str, Any]:
    """The partition's row as the database holds it (not through any cache)."""
    with database_of(recovery).transaction(write=False) as tx:
        [row] = tx.rows(
            "SELECT status, position FROM {job_partitions} WHERE job_id = %(job_id)s",
            {"job_id": str(job.job_id)},
        )
    return row


def eventually(check: Callable[[], bool], what: str, *, within: float = 60.0) -> None:
    """Poll ``check`` until it holds (a generous deadline: the machine may be slow)."""
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, f"not within {within}s: {what}"
        time.sleep(0.02)


class ConflictStoreContract(RecoveryContract):
    @pytest.fixture
    def conflicts(self, recovery: Recovery) -> ConflictStore:
        store = ConflictStore(database_of(recovery))
        store.create_tables()
        return store

    def test_one_open_conflict_per_subject_listed_until_resolved(
        self, conflicts: ConflictStore
    ) -> None:
        new = NewConflict(subject="drill:run_status", kind="drill", reason="checksum differs")
        first = conflicts.raise_conflict(new)
        again = conflicts.raise_conflict(new)
        assert again.conflict_id == first.conflict_id and first.open
        other = conflicts.raise_conflict(
            NewConflict(subject="audit", kind="audit", reason="entry 7 does not verify")
        )
        assert [c.conflict_id for c in conflicts.list()] == [first.conflict_id, other.conflict_id]

        done = conflicts.resolve(
            first.conflict_id, resolution="retry", reason="drill re-run", principal="bob"
        )
        assert (done.state, done.resolution, done.resolved_by) == ("resolved", "retry", "bob")
        assert done.resolution_reason == "drill re-run"
        assert [c.conflict_id for c in conflicts.list()] == [other.conflict_id]
        assert {c.conflict_id for c in conflicts.list(open_only=False)} == {
            first.conflict_id,
            other.conflict_id,
        }
        # The subject may raise a new one once its last is resolved.
        assert conflicts.raise_conflict(new).conflict_id != first.conflict_id

    def test_raising_is_audited_once_as_done_by_the_system(self, recovery: Recovery) -> None:
        database = database_of(recovery)
        trail = AuditTrail(database, AuditKey.generate())
        trail.create_tables()
        conflicts = ConflictStore(database, audit=trail)
        conflicts.create_tables()
        new = NewConflict(
            subject="job:j1:0",
            kind="authentication",
            reason="EventDecryptionError: ciphertext failed authentication with key id 'k1'",
            projection="run_status",
            job_id="j1",
            partition_index=0,
            position=7,
        )
        raised = conflicts.raise_conflict(new)
        conflicts.raise_conflict(new)  # still open: the same conflict, not audited again
        [entry] = trail.entries(action="conflict.raised")
        assert (entry.actor, entry.scope, entry.outcome) == (
            "system",
            "projection:run_status",
            "succeeded",
        )
        assert entry.parameters["conflict_id"] == raised.conflict_id
        assert entry.parameters["position"] == 7
        assert "position 7" in entry.reason
        assert trail.verify().ok

    def test_resolving_twice_unknown_or_parking_nothing_is_refused(
        self, conflicts: ConflictStore
    ) -> None:
        drill = conflicts.raise_conflict(
            NewConflict(subject="drill:x", kind="drill", reason="checksum differs")
        )
        with pytest.raises(InvalidJobTransition, match="names no event"):
            conflicts.resolve(drill.conflict_id, resolution="park", reason="r", principal="bob")
        conflicts.resolve(drill.conflict_id, resolution="retry", reason="r", principal="bob")
        with pytest.raises(InvalidJobTransition, match="resolved already"):
            conflicts.resolve(drill.conflict_id, resolution="retry", reason="r", principal="bob")
        with pytest.raises(ConflictNotFound):
            conflicts.resolve("no-such-id", resolution="retry", reason="r", principal="bob")
        with pytest.raises(ConflictNotFound):
            conflicts.get("no-such-id")

    def test_operator_parked_positions_are_those_resolved_by_parking(
        self, conflicts: ConflictStore
    ) -> None:
        def job_conflict(position: int) -> Conflict:
            return conflicts.raise_conflict(
                NewConflict(
                    subject=f"job:j1:0:{position}",
                    kind="authentication",
                    reason="r",
                    job_id="j1",
                    partition_index=0,
                    position=position,
                )
            )

        parked, retried = job_conflict(5), job_conflict(9)
        job_conflict(12)  # still open
        conflicts.resolve(parked.conflict_id, resolution="park", reason="r", principal="bob")
        conflicts.resolve(retried.conflict_id, resolution="retry", reason="r", principal="bob")
        assert conflicts.parked_positions("j1", 0) == frozenset({5})
        assert conflicts.parked_positions("j1", 1) == frozenset()


class PauseContract(RecoveryContract):
    @pytest.fixture
    def conflicts(self, recovery: Recovery) -> ConflictStore:
        store = ConflictStore(database_of(recovery))
        store.create_tables()
        return store

    def _tampered_rebuild(self, recovery: Recovery) -> tuple[Job, int, bytes]:
        """A rebuild of run_status with one tampered row in the middle of the log."""
        record_workload(recovery.log.app, workflows=2, runs_per_workflow=6, seed=41)
        recovery.first_build(RunStatusBoard)
        positions = [
            e.position for e in recovery.log.envelopes() if e.topic in RunStatusBoard.topics
        ]
        victim = positions[len(positions) // 2]
        assert victim is not None
        backup = tamper(recovery.log, victim)
        return recovery.rebuild("run_status", ONE), victim, backup

    def test_a_tampered_row_pauses_the_rebuild_until_an_operator_parks_it(
        self, recovery: Recovery, conflicts: ConflictStore
    ) -> None:
        job, victim, _ = self._tampered_rebuild(recovery)
        report = recovery.worker().run()
        assert report.count(PartitionOutcome.PAUSED) == 1

        [conflict] = conflicts.list()
        assert (conflict.kind, conflict.position, conflict.job_id) == (
            "authentication",
            victim,
            str(job.job_id),
        )
        assert "EventDecryptionError" in conflict.reason and str(victim) in conflict.reason
        assert recovery.jobs.status(job.job_id).paused_by_conflict == [0]
        assert recovery.job(job).state == JobState.RUNNING

        # Nothing past the failing position, in the database itself, while later
        # events exist and workers keep polling.
        assert recovery.source.high_water_mark() > victim
        row = partition_row(recovery, job)
        assert (row["status"], int(row["position"])) == (PartitionStatus.CONFLICT, victim - 1)
        checkpoint_before = recovery.positions(RunStatusBoard, job.build)
        rows_before = recovery.actual(RunStatusBoard, job.build)
        assert checkpoint_before == [victim - 1]
        assert recovery.worker().run().outcomes == []
        assert partition_row(recovery, job) == row
        assert recovery.positions(RunStatusBoard, job.build) == checkpoint_before
        assert recovery.actual(RunStatusBoard, job.build) == rows_before

        resolved = conflicts.resolve(
            conflict.conflict_id, resolution="park", reason="INC-9: row damaged", principal="bob"
        )
        assert resolved.resolution == "park"
        assert recovery.worker().run().count(PartitionOutcome.COMPLETED) == 1
        assert recovery.job(job).state == JobState.COMPLETED
        parked = recovery.store.parked("run_status", build=job.build)
        assert parked[0].position == victim
        assert "operator" in parked[0].reason
        assert conflicts.list() == []

    def test_retry_after_the_row_is_restored_applies_it(
        self, recovery: Recovery, conflicts: ConflictStore
    ) -> None:
        job, victim, backup = self._tampered_rebuild(recovery)
        assert recovery.worker().run().count(PartitionOutcome.PAUSED) == 1
        write_state(recovery.log, victim, backup)
        [conflict] = conflicts.list()
        conflicts.resolve(
            conflict.conflict_id, resolution="retry", reason="row restored", principal="bob"
        )
        assert recovery.worker().run().count(PartitionOutcome.COMPLETED) == 1
        assert recovery.job(job).state == JobState.COMPLETED
        assert recovery.store.parked("run_status", build=job.build) == []

    def test_park_policy_parks_without_a_conflict(
        self, recovery: Recovery, conflicts: ConflictStore
    ) -> None:
        job, victim, _ = self._tampered_rebuild(recovery)
        report = recovery.worker(on_integrity_failure="park").run()
        assert report.count(PartitionOutcome.COMPLETED) == 1
        assert conflicts.list() == []
        parked = recovery.store.parked("run_status", build=job.build)
        assert parked[0].position == victim and "integrity" in parked[0].reason

    def test_fail_policy_fails_the_partition_naming_the_position(
        self, recovery: Recovery, conflicts: ConflictStore
    ) -> None:
        job, victim, _ = self._tampered_rebuild(recovery)
        report = recovery.worker(on_integrity_failure="fail").run()
        assert report.count(PartitionOutcome.FAILED) == 1
        assert conflicts.list() == []
        assert recovery.job(job).state == JobState.FAILED
        [part] = recovery.partitions(job)
        assert part.last_error is not None and f"position {victim}" in part.last_error
        assert part.position == victim - 1

    def test_a_live_follower_pauses_until_the_conflict_is_parked(
        self, recovery: Recovery, conflicts: ConflictStore
    ) -> None:
        record_workload(recovery.log.app, workflows=2, runs_per_workflow=6, seed=43)
        positions = [
            e.position for e in recovery.log.envelopes() if e.topic in RunStatusBoard.topics
        ]
        victim = positions[len(positions) // 2]
        assert victim is not None
        tamper(recovery.log, victim)
        stop = threading.Event()
        reports: list[FollowReport] = []

        def follow() -> None:
            reports.extend(
                follow_projections(
                    [RunStatusBoard],
                    open_store=recovery.log.store,
                    open_source=recovery.log.source,
                    options=QUICK_RUNNER,
                    stop=stop,
                    conflicts=conflicts,
                )
            )

        thread = threading.Thread(target=follow)
        thread.start()
        try:
            eventually(lambda: bool(conflicts.list()), "the follower records a conflict")
            [conflict] = conflicts.list()
            assert (conflict.subject, conflict.position, conflict.job_id) == (
                "follower:run_status:0/1",
                victim,
                None,
            )
            # Paused: the live build's position is just before it, later events wait.
            assert recovery.positions(RunStatusBoard, 1) == [victim - 1]
            rows = recovery.actual(RunStatusBoard, 1)
            record_workload(recovery.log.app, workflows=1, runs_per_workflow=2, seed=44)
            assert recovery.positions(RunStatusBoard, 1) == [victim - 1]
            assert recovery.actual(RunStatusBoard, 1) == rows

            conflicts.resolve(
                conflict.conflict_id, resolution="park", reason="INC-3", principal="bob"
            )
            head = recovery.source.high_water_mark()
            eventually(
                lambda: recovery.positions(RunStatusBoard, 1) == [head],
                "the follower goes on past the parked event",
            )
        finally:
            stop.set()
            thread.join(60)
        assert [r.error for r in reports] == [None]
        assert recovery.store.parked("run_status")[0].position == victim


class TestSQLiteConflictStore(OnSQLite, ConflictStoreContract):
    pass


class TestPostgresConflictStore(OnPostgres, ConflictStoreContract):
    pass


class TestSQLitePause(OnSQLite, PauseContract):
    pass


class TestPostgresPause(OnPostgres, PauseContract):
    pass

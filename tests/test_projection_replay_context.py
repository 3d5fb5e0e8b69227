"""Issue #20 point 3, the replay context projection handlers read, on SQLite and PostgreSQL:

- a live follower's handlers see ``live``; a runner's own catch-up ``catch-up``;
- under a rebuild job they see ``rebuild``, under a catch-up job ``catch-up``, and a
  replay job's ``replay``, each with the job's id;
- outside a handler nobody set one (None); a context is a frozen value with a known
  reason.
"""

from __future__ import annotations

import threading
from typing import ClassVar

import pytest
from projection_fixtures import OnPostgres, OnSQLite
from recovery_fixtures import RUN_TOPICS, Recovery, RecoveryContract, recovery_of, wait_until

from safereplay.domain.envelope import Envelope
from safereplay.domain.workload import record_workload
from safereplay.projections import (
    BatchState,
    Projection,
    ReplayContext,
    Table,
    current_replay_context,
    handles,
    replaying,
)
from safereplay.recovery.jobs.plans import JobRequest, start_catch_up, start_replay

REQUEST = JobRequest(principal="ops", reason="replay context", partitions=2)


class ContextNotes(Projection):
    """Notes the replay context of every event it handles (and counts the events)."""

    name = "context_notes"
    tables = (Table("runs", key={"run_id": "text"}, values={"events": "integer"}),)
    seen: ClassVar[list[ReplayContext | None]] = []
    lock: ClassVar[threading.Lock] = threading.Lock()

    @handles(*RUN_TOPICS)
    def note(self, envelope: Envelope, state: BatchState) -> None:
        with ContextNotes.lock:
            ContextNotes.seen.append(current_replay_context())
        state.merge("runs", envelope.aggregate_id, add={"events": 1})

    @classmethod
    def taken(cls) -> set[ReplayContext | None]:
        with cls.lock:
            seen, cls.seen = set(cls.seen), []
        return seen


def test_a_context_is_a_known_reason_set_for_the_code_inside() -> None:
    assert current_replay_context() is None
    outer = ReplayContext("rebuild", "orders", job_id="j-1")
    with replaying(outer):
        with replaying(ReplayContext("redelivery", "mails", forced=True)) as inner:
            assert current_replay_context() == inner and inner.forced
        assert current_replay_context() == outer
    assert current_replay_context() is None
    with pytest.raises(ValueError, match="unknown replay reason"):
        ReplayContext("again", "orders")  # type: ignore[arg-type]


class ReplayContextContract(RecoveryContract):
    @pytest.fixture
    def notes(self, recovery: Recovery) -> Recovery:
        ContextNotes.taken()
        record_workload(recovery.log.app, workflows=2, runs_per_workflow=3, seed=70)
        recovery_of(recovery, ContextNotes)
        recovery.first_build(ContextNotes)  # a runner's own catch-up
        assert ContextNotes.taken() == {ReplayContext("catch-up", ContextNotes.name)}
        return recovery

    def test_a_follower_sees_live(self, notes: Recovery) -> None:
        runner = notes.log.runner(ContextNotes(), store=notes.store)
        with runner.in_background():
            record_workload(notes.log.app, workflows=1, runs_per_workflow=2, seed=71)
            head = notes.log.app.head_position()
            wait_until(
                lambda: runner.checkpoint().position >= head, timeout=60, what="the follower"
            )
        assert ContextNotes.taken() == {ReplayContext("live", ContextNotes.name)}

    def test_a_rebuild_job_runs_its_handlers_as_a_rebuild(self, notes: Recovery) -> None:
        job = notes.rebuild(ContextNotes.name, REQUEST)
        notes.worker().run()
        assert notes.job(job).state == "completed"
        assert ContextNotes.taken() == {
            ReplayContext("rebuild", ContextNotes.name, job_id=str(job.job_id))
        }

    def test_a_catch_up_job_runs_its_handlers_as_a_catch_up(self, notes: Recovery) -> None:
        record_workload(notes.log.app, workflows=1, runs_per_workflow=2, seed=72)
        plan = start_catch_up(
            REQUEST,
            projection=ContextNotes.name,
            store=notes.store,
            source=notes.source,
            jobs=notes.jobs,
            registry=notes.registry,
        )
        assert plan.job is not None
        notes.worker().run()
        assert ContextNotes.taken() == {
            ReplayContext("catch-up", ContextNotes.name, job_id=str(plan.job.job_id))
        }

    def test_a_replay_job_runs_its_handlers_as_a_replay(self, notes: Recovery) -> None:
        job = start_replay(
            REQUEST,
            projection=ContextNotes.name,
            start=1,
            end=notes.log.app.head_position(),
            store=notes.store,
            source=notes.source,
            jobs=notes.jobs,
            registry=notes.registry,
        )
        notes.worker().run()
        assert ContextNotes.taken() == {
            ReplayContext("replay", ContextNotes.name, job_id=str(job.job_id))
        }


class TestSQLiteReplayContext(OnSQLite, ReplayContextContract):
    pass


@pytest.mark.postgres
class TestPostgresReplayContext(OnPostgres, ReplayContextContract):
    pass

"""The replay stepper: one event at a time in a sandbox, on SQLite and PostgreSQL.

One contract, one subclass per backend (the live stores of the drill tests). The
live store is dumped before and after every step: the stepper never writes it.
Each step's row changes are checked against an independent reference: the same
projection caught up, in a store of its own, to the position before the step and
to the position after it, read through the drills' read-only reader.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar
from uuid import UUID

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_recovery_drill import OLGA, VIC, LiveStore, PostgresLiveStore, SQLiteLiveStore, World

from safereplay.domain.envelope import Envelope
from safereplay.projections import (
    BatchState,
    ProjectionRunner,
    ProjectionStore,
    RunStatusBoard,
    SQLiteProjectionStore,
    WorkflowStatistics,
    open_store,
)
from safereplay.recovery.drills.sandbox import Sandbox
from safereplay.recovery.drills.stepper import RowChange, StepResult, step_projection
from safereplay.recovery.drills.views import SQLiteStoreReader, StoreReader
from safereplay.recovery.errors import InvalidRequest, UnregisteredProjection
from safereplay.recovery.operations.catalog import open_operations
from safereplay.recovery.operations.context import RecoveryContext
from safereplay.recovery.operations.drills import live_reader, new_sandbox
from safereplay.recovery.operations.steps import live_store_description
from safereplay.recovery.security.access import Principal
from safereplay.recovery.settings import RecoverySettings

Rows = dict[tuple[str, tuple[Any, ...]], dict[str, Any]]


def reference_rows(world: World, folder: Path, projection: Any, position: int) -> Rows:
    """Every row of ``projection`` rebuilt from the log up to ``position``, by a plain
    runner into a store of its own, read through the drills' canonical reader."""
    path = folder / f"reference-{projection.name}-{position}.db"
    with SQLiteProjectionStore(path) as store:
        runner = ProjectionRunner(projection, source=world.source, store=store)
        runner.catch_up(until=position)
        assert runner.checkpoint().position == position
        build = runner.build
    rows: Rows = {}
    with SQLiteStoreReader(path).view() as view:
        for table in type(projection).tables:
            names = [c.name for c in table.key]
            for key, values in view.rows(projection.name, build, table):
                rows[(table.name, key)] = {**dict(zip(names, key, strict=True)), **values}
    return rows


def replayed(rows: Rows, changes: list[RowChange]) -> Rows:
    """``rows`` with ``changes`` applied in order, each checked against what it found."""
    current = dict(rows)
    for change in changes:
        where = (change.table, change.key)
        assert current.get(where) == change.before, f"{where}: before is what was there"
        if change.after is None:
            del current[where]
        else:
            current[where] = change.after
    return current


def positions_of(world: World, projection: Any) -> list[int]:
    """Positions of the events ``projection`` handles, in order."""
    head = world.source.high_water_mark()
    events = world.source.read(after=0, upto=head, limit=100_000, topics=list(projection.topics))
    return [int(n.id) for n in events]


class Picky(RunStatusBoard):
    """run_status whose handler refuses the steps of one run (``bad``)."""

    bad: ClassVar[str] = ""

    def step_succeeded(self, envelope: Envelope, state: BatchState) -> None:
        if str(envelope.aggregate_id) == self.bad:
            raise ValueError(f"refused step of {envelope.aggregate_id}")
        super().step_succeeded(envelope, state)


class StepperContract(LiveStore):
    """What the stepper does on every backend."""

    def step(self, world: World, principal: Principal = OLGA, **parameters: Any) -> StepResult:
        parameters.setdefault("projection", "run_status")
        result: StepResult = open_operations(world.context).run(principal, "step", **parameters)
        return result

    @pytest.fixture
    def reference_dir(self, tmp_path: Path) -> Path:
        folder = tmp_path / "reference"
        folder.mkdir()
        return folder

    # -- what a step shows ---------------------------------------------------------------

    def test_each_event_shows_its_envelope_and_the_rows_a_fold_of_it_changes(
        self, world: World, reference_dir: Path
    ) -> None:
        positions = positions_of(world, RunStatusBoard)
        start, end = positions[5], positions[20]
        before = self.dump(world)

        result = self.step(world, **{"from": start, "to": end})

        assert [s.envelope.position for s in result.steps] == [
            p for p in positions if start <= p <= end
        ]
        assert (result.start, result.to, result.projection) == (start, end, "run_status")
        assert result.folded == 5, "the events before --from are folded in batches"
        first = result.steps[0].envelope
        assert first.event_type is not None and first.aggregate_version >= 1
        assert first.occurred_at is not None and first.correlation_id is not None
        assert first.key_id is not None, "the id of the key that sealed it, not the key"
        assert all(s.payload is None for s in result.steps)
        assert "--payloads" in result.payloads_note
        assert all(s.outcome == "applied" for s in result.steps)
        inserts = [c for s in result.steps for c in s.changes if c.kind == "insert"]
        assert inserts and all(c.before is None for c in inserts)

        start_rows = reference_rows(world, reference_dir, RunStatusBoard(), start - 1)
        end_rows = reference_rows(world, reference_dir, RunStatusBoard(), end)
        changes = [c for s in result.steps for c in s.changes]
        assert replayed(start_rows, changes) == end_rows, "the diffs are exactly the fold"
        assert self.dump(world) == before, "the live build is untouched"
        assert self.leftover_sandboxes(world) == []

    def test_an_event_that_changes_nothing_says_so(self, world: World) -> None:
        # workflow_stats counts some events only: a step over all its events meets some
        # that write rows; every step either lists changes or says it changed nothing.
        positions = positions_of(world, WorkflowStatistics)
        result = self.step(world, projection="workflow_stats", **{"from": positions[0]}, count=30)
        assert len(result.steps) == 30
        for step in result.steps:
            assert (step.summary() == "changed nothing") == (not step.changes)
        assert any(s.changes for s in result.steps)

    def test_count_steps_that_many_events_of_the_projection(self, world: World) -> None:
        positions = positions_of(world, RunStatusBoard)
        result = self.step(world, **{"from": positions[3]}, count=4)
        assert [s.envelope.position for s in result.steps] == positions[3:7]
        assert result.to == positions[6]

    def test_one_aggregate_is_stepped_with_the_others_folded_between(
        self, world: World, reference_dir: Path
    ) -> None:
        run = world.a_run(4)
        head = world.source.high_water_mark()
        mine = [
            int(n.id)
            for n in world.source.read(
                after=0, upto=head, limit=100_000, topics=list(RunStatusBoard.topics)
            )
            if str(n.originator_id) == run
        ]
        result = self.step(world, **{"from": 1, "to": head}, aggregate=run)
        assert [s.envelope.position for s in result.steps] == mine
        assert result.aggregate == run
        assert all(s.envelope.aggregate_id == run for s in result.steps)
        assert result.folded == len(positions_of(world, RunStatusBoard)) - len(mine)
        changes = [c for s in result.steps for c in s.changes]
        assert {c.key for c in changes} == {(run,)}
        assert changes[0].kind == "insert"
        end_rows = reference_rows(world, reference_dir, RunStatusBoard(), mine[-1])
        assert changes[-1].after == end_rows[("runs", (run,))]
        with pytest.raises(InvalidRequest, match="aggregate must be a UUID, not 'x'"):
            self.step(world, **{"from": 1}, aggregate="x")

    def test_a_failing_event_is_parked_and_its_aggregate_blocked_as_in_a_rebuild(
        self, world: World
    ) -> None:
        head = world.source.high_water_mark()
        events = world.source.read(
            after=0, upto=head, limit=100_000, topics=list(RunStatusBoard.topics)
        )
        # The workload is random: a run is taken that has a succeeded step (the one
        # Picky refuses), and that step is not always its second event, a failed or
        # retried step may come first.
        succeeded = {str(n.originator_id) for n in events if n.topic.endswith("Run.StepSucceeded")}
        run = min(succeeded)
        Picky.bad = run
        own = [n for n in events if str(n.originator_id) == run]
        mine = [int(n.id) for n in own]
        first_refused = next(i for i, n in enumerate(own) if n.topic.endswith("Run.StepSucceeded"))

        def step(payloads: bool) -> StepResult:
            return step_projection(
                Picky(),
                source=world.source,
                sandbox=new_sandbox(world.context),
                start=mine[0],
                end=mine[-1],
                aggregate=UUID(run),
                payloads=payloads,
            )

        hidden = step(payloads=False)
        outcomes = [s.outcome for s in hidden.steps]
        assert outcomes == (
            ["applied"] * first_refused + ["parked"] + ["blocked"] * (len(mine) - first_refused - 1)
        )
        parked = hidden.steps[first_refused]
        assert parked.error == "ValueError", "the message may quote the payload: type only"
        assert parked.changes == () and parked.summary().startswith("parked")
        assert {s.blocked_by for s in hidden.steps[first_refused + 1 :]} == {mine[first_refused]}
        shown = step(payloads=True)
        assert shown.steps[first_refused].error == f"ValueError: refused step of {run}"
        assert self.leftover_sandboxes(world) == []

    def test_a_sandbox_that_is_the_live_store_is_refused(self, world: World) -> None:
        described = live_store_description(world.context)
        assert described == world.store.description

        class LiveAsSandbox(Sandbox):
            description = "the live store itself"

            def _open(self) -> tuple[ProjectionStore, StoreReader]:
                return open_store(world.settings), live_reader(world.context)

            def remove(self) -> None:
                pass

            def exists(self) -> bool:
                return True

        before = self.dump(world)
        with pytest.raises(InvalidRequest, match="never writes the live store"):
            step_projection(
                RunStatusBoard(),
                source=world.source,
                sandbox=LiveAsSandbox(),
                start=1,
                live_store=described,
            )
        assert self.dump(world) == before

    # -- payloads ------------------------------------------------------------------------

    def test_payloads_only_for_an_operator_who_asks_and_audited(self, world: World) -> None:
        start = positions_of(world, RunStatusBoard)[0]

        hidden = self.step(world, VIC, **{"from": start}, count=3, payloads=True)
        assert not hidden.payloads_shown
        assert all(s.payload is None for s in hidden.steps)
        assert "operate permission on 'projection:run_status'" in hidden.payloads_note
        assert world.context.audit.entries(action="step.payloads") == []

        shown = self.step(world, OLGA, **{"from": start}, count=3, payloads=True)
        assert shown.payloads_shown and shown.payloads_note == ""
        assert all(isinstance(s.payload, dict) and s.payload for s in shown.steps)
        (read,) = world.context.audit.entries(action="step.payloads")
        assert (read.actor, read.scope) == ("olga", "projection:run_status")
        assert read.parameters["positions"] == [s.envelope.position for s in shown.steps]
        steps = world.context.audit.entries(action="step")
        assert [(e.actor, e.outcome) for e in steps] == [
            ("vic", "succeeded"),
            ("olga", "succeeded"),
        ]

    # -- the command line ----------------------------------------------------------------

    def test_the_cli_shows_each_event_and_its_row_changes(self, world: World) -> None:
        olga = world.context.access.issue_token("olga")
        vic = world.context.access.issue_token("vic")
        start = positions_of(world, RunStatusBoard)[0]

        code, out = self.cli(world, vic, "step", "run_status", "--from", str(start), "--count", "2")
        assert code == 0, out
        assert f"#{start} " in out and "runs " in out and "insert: before none" in out
        assert "payloads not shown: payloads are shown only when asked" in out

        code, out = self.cli(
            world,
            olga,
            "step",
            "run_status",
            "--from",
            str(start),
            "--count",
            "2",
            "--payloads",
            "--json",
        )
        assert code == 0, out
        report = json.loads(out)
        assert report["payloads_shown"] is True
        first = report["steps"][0]
        assert first["envelope"]["position"] == start and first["payload"]
        (change,) = first["changes"]
        assert (change["table"], change["before"]) == ("runs", None)
        assert change["after"]["status"] == "running"

        code, out = self.cli(world, olga, "step", "run_status", "--from", "9", "--to", "3")
        assert code == 2, out
        assert "--from 9 is after --to 3" in out

    # -- bad input -----------------------------------------------------------------------

    def test_bad_ranges_are_refused_naming_what_is_wrong(self, world: World) -> None:
        head = world.source.high_water_mark()
        with pytest.raises(UnregisteredProjection, match="unknown projection 'nope'"):
            self.step(world, projection="nope", **{"from": 1})
        with pytest.raises(InvalidRequest, match="--from 9 is after --to 3"):
            self.step(world, **{"from": 9, "to": 3})
        with pytest.raises(InvalidRequest, match=f"--to {head + 5} is past the head.*{head}"):
            self.step(world, **{"from": 1, "to": head + 5})
        with pytest.raises(InvalidRequest, match=f"--from {head + 1} is past the head"):
            self.step(world, **{"from": head + 1})
        with pytest.raises(InvalidRequest, match="--count 201 is over the cap of 200.*STEP_MAX"):
            self.step(world, **{"from": 1}, count=201)
        with pytest.raises(InvalidRequest, match="needs --from"):
            self.step(world)
        failed = world.context.audit.entries(action="step")
        assert [e.outcome for e in failed] == ["failed"] * 6

    def test_a_range_over_the_cap_is_refused(self, world: World) -> None:
        capped = RecoveryContext(
            domain=world.settings,
            recovery=RecoverySettings.from_env(audit_key=world.audit_key, step_max_events=10),
        )
        try:
            operations = open_operations(capped)
            head = world.source.high_water_mark()
            with pytest.raises(InvalidRequest, match="1 to .* more than 10 events.*narrow"):
                operations.run(OLGA, "step", projection="run_status", **{"from": 1, "to": head})
            with pytest.raises(InvalidRequest, match="--count 11 is over the cap of 10"):
                operations.run(OLGA, "step", projection="run_status", **{"from": 1}, count=11)
            done = operations.run(OLGA, "step", projection="run_status", **{"from": 1})
            assert len(done.steps) == 10, "the default count, capped"
        finally:
            capped.close()

    # -- a property: N single steps end where a rebuild to that position does ------------

    @settings(
        max_examples=4,
        deadline=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.differing_executors,
        ],
    )
    @given(data=st.data())
    def test_stepping_ends_in_the_rows_of_a_rebuild_to_that_position(
        self, world: World, reference_dir: Path, data: st.DataObject
    ) -> None:
        positions = positions_of(world, RunStatusBoard)
        first = data.draw(st.integers(0, len(positions) - 2), label="first event")
        count = data.draw(st.integers(1, min(25, len(positions) - first)), label="events")
        start = positions[first]
        result = self.step(world, **{"from": start}, count=count)
        assert len(result.steps) == count
        start_rows = reference_rows(world, reference_dir, RunStatusBoard(), start - 1)
        end_rows = reference_rows(world, reference_dir, RunStatusBoard(), result.to)
        changes = [c for s in result.steps for c in s.changes]
        assert replayed(start_rows, changes) == end_rows


class TestSQLiteStepper(SQLiteLiveStore, StepperContract):
    pass


class TestPostgresStepper(PostgresLiveStore, StepperContract):
    pass

"""Failure policies as values, plugged into the projection runner on both backends:
live following retries then parks a poison event; a rebuild stops on it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar
from uuid import UUID

import pytest
from projection_fixtures import Backend, OnPostgres, OnSQLite

from safereplay.domain import Envelope, Run
from safereplay.domain.workload import record_workload
from safereplay.projections import BatchState, HandlerFailed, Projection, Table, handles
from safereplay.recovery.resilience.backoff import Backoff
from safereplay.recovery.resilience.policies import (
    ErrorRules,
    RetryThenFail,
    RetryThenPark,
    RulesPolicy,
)

QUICK = Backoff(initial=0.001, maximum=0.005, jitter=0)


class Runs(Projection):
    """Counts run events per run; one run is poison."""

    name = "policy_runs"
    tables = (Table("runs", key={"run_id": "text"}, values={"events": "integer"}),)
    poison: ClassVar[set[UUID]] = set()
    calls: ClassVar[int] = 0

    @handles(Run.Started, Run.StepSucceeded, Run.StepFailed, Run.StepRetried, Run.Completed)
    def count(self, envelope: Envelope, state: BatchState) -> None:
        if envelope.aggregate_id in self.poison:
            Runs.calls += 1
            raise ValueError("cannot project this run")
        state.merge("runs", envelope.aggregate_id, add={"events": 1})


class PolicyContract:
    @pytest.fixture
    def backend(self) -> Iterator[Backend]:
        raise NotImplementedError

    def test_live_policy_retries_then_parks_and_others_move_on(self, backend: Backend) -> None:
        with backend.fresh() as log:
            record_workload(log.app, workflows=1, runs_per_workflow=4, seed=3)
            run_events = [e for e in log.envelopes() if e.topic in Runs.topics]
            victim = run_events[0].aggregate_id
            Runs.poison, Runs.calls = {victim}, 0
            policy = RulesPolicy(ErrorRules(default=RetryThenPark(attempts=3, backoff=QUICK)))
            store = log.store()
            log.runner(Runs(), store=store, policy=policy, batch_size=7).catch_up()
            assert Runs.calls == 3, "three attempts, then parked; later events not tried"
            parked = store.parked("policy_runs")
            victim_events = sum(1 for e in run_events if e.aggregate_id == victim)
            assert [p.aggregate_id for p in parked] == [victim] * victim_events
            assert parked[0].attempts == 3
            rows = {r["run_id"]: r["events"] for r in store.rows(Runs, "runs")}
            assert str(victim) not in rows
            assert sum(rows.values()) == len(run_events) - victim_events

    def test_rebuild_policy_stops_on_what_live_would_park(self, backend: Backend) -> None:
        with backend.fresh() as log:
            record_workload(log.app, workflows=1, runs_per_workflow=2, seed=4)
            victim = next(e for e in log.envelopes() if e.topic in Runs.topics).aggregate_id
            Runs.poison, Runs.calls = {victim}, 0
            policy = RulesPolicy(ErrorRules(default=RetryThenFail(attempts=2, backoff=QUICK)))
            with pytest.raises(HandlerFailed, match="ValueError"):
                log.runner(Runs(), policy=policy).catch_up()
            assert Runs.calls == 2


class TestSQLitePolicies(OnSQLite, PolicyContract):
    pass


class TestPostgresPolicies(OnPostgres, PolicyContract):
    pass

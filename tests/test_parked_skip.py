"""Skipping a parked event that can never apply: resolved without being applied, no
longer "parked now", counted apart from re-driven events in `status`, reported by the
completeness check as accounted for; through the CLI it is an operator's action,
permission-checked and audited with its reason. SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from uuid import uuid4

import pytest
from projection_fixtures import OnPostgres, OnSQLite, parked_event
from recovery_fixtures import Recovery, RecoveryContract, RunCounts, operator_cli_env, recovery_of
from typer.testing import CliRunner

from safereplay.domain import DomainSettings
from safereplay.domain.workload import record_workload
from safereplay.projections import ProjectionSettings, open_store
from safereplay.projections.source import WHOLE
from safereplay.projections.status import projection_status
from safereplay.recovery.cli.app import app
from safereplay.recovery.jobs.completeness import check_build
from safereplay.recovery.jobs.model import JobState
from safereplay.recovery.jobs.plans import JobRequest
from safereplay.recovery.jobs.worker import PartitionOutcome
from safereplay.recovery.resilience.backoff import Backoff
from safereplay.recovery.resilience.policies import ErrorRules, RetryThenPark, RulesPolicy

LIVE = RulesPolicy(
    ErrorRules(default=RetryThenPark(attempts=2, backoff=Backoff(initial=0.001, jitter=0)))
)


class SkipContract(RecoveryContract):
    @pytest.fixture
    def runs(self, recovery: Recovery) -> Iterator[Recovery]:
        recovery_of(recovery, RunCounts)
        yield recovery
        RunCounts.reset()

    def test_a_skipped_poison_event_is_accounted_for_and_its_aggregate_moves_on(
        self, runs: Recovery
    ) -> None:
        record_workload(runs.log.app, workflows=2, runs_per_workflow=5, seed=31)
        events = [e for e in runs.log.envelopes() if e.topic in RunCounts.topics]
        victim = events[len(events) // 2].aggregate_id
        RunCounts.reset(poison={victim})
        live = runs.log.runner(RunCounts(), store=runs.store, policy=LIVE)
        live.catch_up()
        poison, *behind = runs.store.parked("run_counts")
        assert behind, "the run's later events wait behind the poison one"

        # The first can never apply: skip it. Those behind it are fixed by a redrive.
        runs.store.skip_parked("run_counts", 1, poison.position, reason="INC-4: corrupt")
        RunCounts.reset()
        job = runs.redrive("run_counts", JobRequest(principal="bob", reason="handler fixed"))
        assert runs.worker().run().count(PartitionOutcome.COMPLETED) == 1
        assert runs.job(job).state == JobState.COMPLETED
        assert runs.store.parked("run_counts") == []

        mark = runs.source.high_water_mark()
        status = projection_status(runs.store, "run_counts", high_water_mark=mark)
        assert (status.parked_now, status.redriven, status.skipped) == (0, len(behind), 1)
        assert sum(p.skipped for p in status.partitions) == 1

        checked = check_build(
            runs.store, runs.source, projection="run_counts", build=1, topics=RunCounts.topics
        )
        assert checked.position == live.checkpoint().position
        assert checked.skipped == (poison.position,)


class TestSQLiteSkip(OnSQLite, SkipContract):
    pass


@pytest.mark.postgres
class TestPostgresSkip(OnPostgres, SkipContract):
    pass


# -- the command line ------------------------------------------------------------------------


@pytest.fixture
def env(sqlite_cli_env: dict[str, str]) -> dict[str, str]:
    return operator_cli_env(sqlite_cli_env, workflows=2, runs_per_workflow=3, seed=5)


def run(env: dict[str, str], *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), env=env)
    return result.exit_code, result.output


def park_one(env: dict[str, str]) -> int:
    """Park an event of run_status's live build, as a failing handler would have."""
    settings = DomainSettings.from_env(
        backend="sqlite",
        sqlite_path=env["SAFEREPLAY_SQLITE_PATH"],
        key_file=env["SAFEREPLAY_KEY_FILE"],
    )
    store = open_store(settings, ProjectionSettings())
    try:
        [checkpoint] = store.checkpoints("run_status", build=1)
        event = parked_event(
            projection="run_status",
            position=checkpoint.position,
            partition=WHOLE,
            aggregate_id=uuid4(),
            error_message="cannot decode",
            attempts=3,
            reason="retries exhausted",
        )
        position = checkpoint.position
        store.commit("run_status", 1, WHOLE, expected=position, position=position, parked=[event])
        return position
    finally:
        store.close()


def test_parked_skip_from_the_command_line_is_audited_and_shown_apart(
    env: dict[str, str],
) -> None:
    code, out = run(env, "catch-up", "run_status", "-n", "1", "-r", "first build", "-w", "1")
    assert code == 0, out
    position = park_one(env)
    code, out = run(env, "parked", "list", "run_status")
    assert code == 0 and f"run_status:{position}" in out, out

    code, out = run(env, "parked", "skip", f"run_status:{position}", "-r", "INC-5: poison")
    assert code == 0, out
    assert f"skipped the event parked at position {position} of run_status" in out
    code, out = run(env, "parked", "list", "run_status", "--json")
    assert json.loads(out) == []
    code, out = run(env, "parked", "list", "run_status", "--include-resolved", "--json")
    [kept] = json.loads(out)
    assert (kept["position"], kept["skipped_reason"]) == (position, "INC-5: poison")
    code, out = run(env, "status", "-p", "run_status", "--json")
    [projection] = json.loads(out)["projections"]
    assert (projection["parked_now"], projection["redriven"], projection["skipped"]) == (0, 0, 1)
    code, out = run(env, "status", "-p", "run_status")
    assert "skipped" in out, out

    code, out = run(env, "audit", "list", "--json")
    entries = [e for e in json.loads(out) if e["action"] == "parked.skip"]
    assert [e["outcome"] for e in entries] == ["started", "succeeded"], entries
    assert {e["reason"] for e in entries} == {"INC-5: poison"}

    # Skipped already, or not an id: one clear message, exit 2.
    code, out = run(env, "parked", "skip", f"run_status:{position}", "-r", "again")
    assert code == 2 and f"parked now at position {position}" in out, out
    code, out = run(env, "parked", "skip", "run_status", "-r", "x")
    assert code == 2 and "PROJECTION:POSITION" in out and "Traceback" not in out, out

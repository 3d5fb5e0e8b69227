"""The collector policy of safereplay's own replay processes (projections/collector.py):
what it sets, that its own processes set it, and that the library alone never does."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from projection_fixtures import SQLiteBackend
from recovery_fixtures import operator_cli_env
from typer.testing import CliRunner

from safereplay.domain.workload import record_workload
from safereplay.projections import RunStatusBoard
from safereplay.projections.collector import (
    REPLAY_PROCESS_POLICY,
    CollectorPolicy,
    apply_collector_policy,
)
from safereplay.recovery.cli import rebuilds
from safereplay.recovery.cli.app import app


def test_the_policy_freezes_start_up_and_raises_the_thresholds() -> None:
    # In a process of its own: the policy is process-wide, and pytest's must not change.
    script = textwrap.dedent(
        """
        import gc
        from safereplay.projections.collector import apply_collector_policy
        import json
        before = gc.get_threshold()
        apply_collector_policy()
        print(json.dumps([before, gc.get_threshold(), gc.get_freeze_count()]))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    before, after, frozen = json.loads(done.stdout)
    assert before == [700, 10, 10], "CPython's defaults, before"
    policy = REPLAY_PROCESS_POLICY
    assert after == [policy.young, policy.middle, policy.old]
    assert frozen > 1000, "what was alive after start-up (modules, classes) is frozen"


def test_a_policy_is_checked() -> None:
    with pytest.raises(ValueError, match="young must be a positive integer"):
        CollectorPolicy(young=0)
    with pytest.raises(ValueError, match="old must be a positive integer"):
        CollectorPolicy(old=2.5)  # type: ignore[arg-type]


def test_a_runner_in_an_application_process_leaves_the_collector_alone(
    tmp_path: Path, key_file: Path
) -> None:
    with SQLiteBackend(tmp_path, key_file).fresh() as log:
        record_workload(log.app, workflows=1, runs_per_workflow=3)
        thresholds, frozen = gc.get_threshold(), gc.get_freeze_count()
        result = log.runner(RunStatusBoard()).catch_up()
        assert result.applied > 0
        assert (gc.get_threshold(), gc.get_freeze_count()) == (thresholds, frozen)


def test_safereplay_worker_sets_the_policy(
    sqlite_cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    env = operator_cli_env(sqlite_cli_env, workflows=1, runs_per_workflow=2, seed=3)
    applied: list[CollectorPolicy] = []
    monkeypatch.setattr(
        rebuilds,
        "apply_collector_policy",
        lambda policy=REPLAY_PROCESS_POLICY: applied.append(policy),
    )
    result = CliRunner().invoke(app, ["worker", "--exit-when-idle"], env=env)
    assert result.exit_code == 0, result.output
    assert applied == [REPLAY_PROCESS_POLICY]
    assert apply_collector_policy is not rebuilds.apply_collector_policy  # patched, not run here

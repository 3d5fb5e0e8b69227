"""The recovery commands end to end through the CLI, on SQLite, with real worker processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from recovery_fixtures import operator_cli_env, wait_until
from typer.testing import CliRunner

from safereplay.recovery.cli.app import app
from safereplay.recovery.cli.support import recovery_context
from safereplay.recovery.jobs.plans import JobRequest, start_rebuild
from safereplay.recovery.templates.apply import rollout_state


@pytest.fixture
def env(sqlite_cli_env: dict[str, str]) -> dict[str, str]:
    return operator_cli_env(sqlite_cli_env, workflows=3, runs_per_workflow=20, seed=9)


def run(env: dict[str, str], *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), env=env)
    return result.exit_code, result.output


def test_rebuild_with_worker_processes_swap_rollback_and_drop(env: dict[str, str]) -> None:
    # The first build is built live, in place (nothing to swap); the next goes beside it.
    code, out = run(env, "rebuild", "workflow_stats", "-w", "1", "-r", "first")
    said = " ".join(out.split())
    assert code == 0, out
    assert "workflow_stats was never built: building build 1, live when complete" in said
    assert "build 1 of workflow_stats is complete and live (nothing to swap)" in said
    code, out = run(env, "swap", "workflow_stats", "-r", "nothing to swap")
    assert code == 2 and "build 1 is live already" in " ".join(out.split()), out
    code, out = run(env, "rebuild", "workflow_stats", "-n", "3", "-w", "2", "-r", "fixed", "--json")
    assert code == 0, out
    status = json.loads(out)
    assert status["job"]["state"] == "completed"
    assert [p["status"] for p in status["partitions"]] == ["completed"] * 3
    assert {p["position"] for p in status["partitions"]} == {status["job"]["target_position"]}

    code, out = run(env, "swap", "workflow_stats", "-r", "verified", "--json")
    assert code == 0, out
    assert json.loads(out)["live"] == 2
    code, out = run(env, "drop-version", "workflow_stats", "--build", "2", "-r", "x")
    assert code == 2 and "is live" in out
    code, out = run(env, "rollback", "workflow_stats", "-r", "bad numbers", "--json")
    assert code == 0 and json.loads(out)["live"] == 1
    code, out = run(env, "drop-version", "workflow_stats", "--build", "2", "-r", "not needed")
    assert code == 0, out

    code, out = run(env, "audit", "list", "--json")
    actions = [(e["action"], e["outcome"]) for e in json.loads(out)]
    assert ("rebuild", "succeeded") in actions and ("swap", "succeeded") in actions
    assert actions.count(("worker", "succeeded")) == 3  # one for the first build, two after
    assert ("job.state", "succeeded") in actions
    code, out = run(env, "audit", "verify")
    assert code == 0, out


def test_clear_errors_and_exit_codes(env: dict[str, str]) -> None:
    code, out = run(env, "rebuild", "nope", "-r", "x", "-w", "0")
    assert code == 2 and "unknown projection 'nope'" in out
    code, out = run(env, "rebuild", "run_status", "-r", "x", "-w", "0", "--json")
    assert code == 0, out
    job_id = json.loads(out)["job_id"]
    code, out = run(env, "catch-up", "run_status", "-r", "x", "-w", "0")
    assert code == 5 and f"already has an active job: {job_id}" in out
    code, out = run(env, "rebuild", "run_status", "-w", "0")
    assert code == 2 and "--reason" in out
    code, out = run(env, "parked", "redrive", "failed_steps", "-r", "x")
    assert code == 2 and "'failed_steps' has no live build" in out
    code, out = run(env, "abort", job_id, "-r", "changed my mind")
    assert code == 0, out
    code, out = run(env, "parked", "redrive", "run_status", "-r", "x", "--json")
    assert code == 0 and "build 1 of run_status has no parked events" in out, "nothing to do"
    code, out = run(env, "swap", "run_status", "-r", "x")
    assert code == 2 and "has no rebuilt build to swap in" in out


def test_a_swap_can_require_a_matching_drill_first(env: dict[str, str]) -> None:
    gated = env | {"SAFEREPLAY_RECOVERY_REQUIRE_DRILL": "workflow_stats"}
    code, out = run(gated, "catch-up", "workflow_stats", "-w", "1", "-r", "first build")
    assert code == 0, out
    code, out = run(gated, "rebuild", "workflow_stats", "-n", "2", "-w", "1", "-r", "fix")
    assert code == 0, out
    code, out = run(gated, "swap", "workflow_stats", "-r", "looks fine")
    assert code == 2 and "needs a matching drill before build 2 goes live" in out
    code, out = run(gated, "drill", "workflow_stats", "--build", "2", "-r", "before swap")
    assert code == 0, out
    code, out = run(gated, "swap", "workflow_stats", "-r", "drill matched", "--json")
    assert code == 0 and json.loads(out)["live"] == 2, out


def test_apply_a_shipped_runbook_with_worker_processes(env: dict[str, str]) -> None:
    code, out = run(env, "plan", "bad-projection-code", "--json")
    assert code == 0, out
    code, out = run(env, "apply", "bad-projection-code", "-w", "2", "-r", "INC-9", "--json")
    assert code == 0, out
    [step] = json.loads(out)
    assert (step["projection"], step["operation"], step["outcome"]) == (
        "workflow_stats",
        "rebuild",
        "completed",
    )
    code, out = run(env, "audit", "list", "--action", "rollout.continue", "--json")
    assert code == 0, out
    assert [e["outcome"] for e in json.loads(out)] == ["started", "succeeded"], out
    code, out = run(env, "apply", "behind-after-outage", "-w", "2", "-r", "INC-10", "--json")
    assert code == 0, out
    assert json.loads(out)[0]["outcome"] == "completed"


def test_continue_releases_a_staged_rollout_once_its_canary_verified(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A staged rollout as a template plans one: partition 0 is the canary, 1 and 2
    # are held until the canary verified and an operator releases them.
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with recovery_context() as context:
        job = start_rebuild(
            JobRequest(
                principal="root",
                reason="canary first",
                partitions=3,
                held_partitions=(1, 2),
                parameters={"rollout": {"canary_partitions": [0]}},
            ),
            projection="workflow_stats",
            store=context.projection_store,
            source=context.source,
            jobs=context.jobs,
            registry=context.registry,
        )
    job_id = str(job.job_id)

    # Before its canary ran, the rest is not released, whoever asks.
    code, out = run(env, "continue", job_id[:8], "-r", "in a hurry")
    assert code == 5 and "keeps its partitions [1, 2] held" in " ".join(out.split()), out
    code, out = run(env, "continue", job_id, "--json")
    assert code == 2 and "--reason" in out, "a reason is required"

    # A worker process runs the canary, then waits for the held partitions (it does
    # not exit while the job has work that may still be released).
    args = ["worker", "--job", job_id, "--exit-when-idle"]
    worker = subprocess.Popen(
        [sys.executable, "-m", "safereplay.recovery.cli", *args],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        with recovery_context() as context:
            wait_until(
                lambda: rollout_state(context.jobs.status(job.job_id)).verified,
                timeout=120,
                what="the canary partition to verify",
            )
        assert worker.poll() is None, "the worker waits for the held partitions"
        code, out = run(env, "continue", job_id[:8], "-r", "canary verified")
        said = " ".join(out.split())
        assert code == 0 and f"job {job_id}: 2 held partition(s) released" in said, out
        output, _ = worker.communicate(timeout=120)
        assert worker.returncode == 0, output
    finally:
        worker.kill()
    code, out = run(env, "jobs", "--json")
    [listed] = [j for j in json.loads(out) if j["job_id"] == job_id]
    assert listed["state"] == "completed", listed
    code, out = run(env, "continue", job_id, "-r", "again", "--json")
    assert code == 0 and json.loads(out)["released_partitions"] == 0, out

    code, out = run(env, "audit", "list", "--action", "rollout.continue", "--json")
    outcomes = [(e["reason"], e["outcome"]) for e in json.loads(out) if e["outcome"] != "started"]
    assert outcomes == [
        ("in a hurry", "failed"),
        ("canary verified", "succeeded"),
        ("again", "succeeded"),
    ], outcomes

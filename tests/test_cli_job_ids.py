"""Job ids as `safereplay jobs` shows them (8 characters) work in every job command;
acting on an ended job is a conflict (exit 5), not bad input."""

from __future__ import annotations

import json

import pytest
from recovery_fixtures import operator_cli_env
from typer.testing import CliRunner

from safereplay.recovery.cli.app import app


@pytest.fixture
def env(sqlite_cli_env: dict[str, str]) -> dict[str, str]:
    return operator_cli_env(sqlite_cli_env, workflows=2, runs_per_workflow=4, seed=3)


def run(env: dict[str, str], *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), env=env)
    return result.exit_code, result.output


def audit_count(env: dict[str, str]) -> int:
    code, out = run(env, "audit", "list", "--json")
    assert code == 0, out
    return len(json.loads(out))


def test_short_job_ids_work_like_git_prefixes(env: dict[str, str]) -> None:
    code, out = run(env, "rebuild", "run_status", "-r", "x", "-w", "0", "--json")
    assert code == 0, out
    job_id = json.loads(out)["job_id"]
    code, out = run(env, "jobs")
    assert code == 0 and job_id[:8] in out
    code, out = run(env, "pause", job_id[:8], "-r", "peak")
    assert code == 0 and "paused" in out and "Traceback" not in out, out
    code, out = run(env, "resume", job_id[:8].upper(), "-r", "calm")
    assert code == 0 and "running" in out, out
    code, out = run(env, "audit", "list", "--json")
    entries = [
        e
        for e in json.loads(out)
        if e["action"] in ("pause", "resume") and e["outcome"] != "started"  # not the intents
    ]
    assert [e["job_id"] for e in entries] == [job_id, job_id]  # recorded whole
    code, out = run(env, "worker", "--job", job_id[:8], "--exit-when-idle", "--json")
    assert code == 0, out
    code, out = run(env, "watch", job_id[:8], "--json")
    assert code == 0 and json.loads(out)["job"]["state"] == "completed", out


def test_unknown_short_and_malformed_job_ids_are_one_clear_message(env: dict[str, str]) -> None:
    before = audit_count(env)
    for command in (["pause", "0000abcd", "-r", "x"], ["watch", "0000abcd"]):
        code, out = run(env, *command)
        assert code == 2 and "no job id starts with '0000abcd'" in out, out
        assert "Traceback" not in out
    code, out = run(env, "abort", "ab", "-r", "x")
    assert code == 2 and "too short" in out, out
    code, out = run(env, "resume", "not-a-job", "-r", "x")
    assert code == 2 and "is not a job id" in out, out
    code, out = run(env, "retry-partition", "zz%zz", "--partition", "0", "-r", "x")
    assert code == 2 and "is not a job id" in out, out
    assert audit_count(env) == before + 1  # only the first `audit list`: nothing attempted


def test_an_ambiguous_prefix_lists_the_candidates(env: dict[str, str]) -> None:
    ids = []
    for projection in ("run_status", "workflow_stats", "failed_steps"):
        code, out = run(env, "rebuild", projection, "-r", "x", "-w", "0", "--json")
        assert code == 0, out
        ids.append(json.loads(out)["job_id"])
    _force_prefix(env, ids)  # random ids rarely share 4 characters: made to
    shared = _longest_common_prefix(ids)
    code, out = run(env, "pause", shared, "-r", "x")
    assert code == 2 and "ambiguous" in out, out
    for job_id in ids:
        assert job_id in out


def _longest_common_prefix(values: list[str]) -> str:
    first = values[0]
    for i, char in enumerate(first):
        if any(v[i] != char for v in values):
            return first[:i]
    return first


def _force_prefix(env: dict[str, str], ids: list[str]) -> None:
    """Give the jobs ids that share a prefix (the ids are otherwise random)."""
    import sqlite3

    with sqlite3.connect(env["SAFEREPLAY_SQLITE_PATH"]) as conn:
        for n, job_id in enumerate(list(ids)):
            new = "abcdef01-0000-4000-8000-00000000000" + str(n)
            conn.execute("UPDATE safereplay_jobs SET job_id = ? WHERE job_id = ?", (new, job_id))
            conn.execute(
                "UPDATE safereplay_job_partitions SET job_id = ? WHERE job_id = ?", (new, job_id)
            )
            ids[n] = new


def test_acting_on_an_ended_job_is_a_conflict(env: dict[str, str]) -> None:
    code, out = run(env, "rebuild", "run_status", "-n", "2", "-w", "1", "-r", "x", "--json")
    assert code == 0, out
    job_id = json.loads(out)["job"]["job_id"]
    for command in (
        ["pause", job_id[:8], "-r", "x"],
        ["resume", job_id[:8], "-r", "x"],
        ["abort", job_id[:8], "-r", "x"],
        ["retry-partition", job_id[:8], "--partition", "0", "-r", "x"],
    ):
        code, out = run(env, *command)
        assert code == 5, (command, code, out)
        assert "completed" in out and "Traceback" not in out, out
    code, out = run(env, "jobs", "--json")
    assert json.loads(out)[0]["state"] == "completed"

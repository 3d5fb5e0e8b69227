"""The security commands end to end through the CLI, on SQLite."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from recovery_fixtures import bootstrap_args, bootstrapped_token
from typer.testing import CliRunner

from safereplay.domain import AutomationApp, DomainSettings
from safereplay.domain.workload import record_workload
from safereplay.recovery.cli.app import app


@pytest.fixture
def env(sqlite_cli_env: dict[str, str]) -> dict[str, str]:
    return sqlite_cli_env


def run(env: dict[str, str], *args: str, token: str | None = None) -> tuple[int, str]:
    full_env = dict(env)
    if token is not None:
        full_env["SAFEREPLAY_TOKEN"] = token
    result = CliRunner().invoke(app, list(args), env=full_env)
    return result.exit_code, result.output


def last_line(output: str) -> str:
    return output.strip().splitlines()[-1].strip()


def test_least_privilege_grants_denials_and_audit(env: dict[str, str]) -> None:
    code, out = run(env, *bootstrap_args("root"))
    assert code == 0, out
    admin = bootstrapped_token(out)
    assert admin.startswith("sr_") and admin not in out, "the token is never printed"

    code, out = run(env, *bootstrap_args("again"))
    assert code == 2
    assert "principals already exist" in out

    assert (
        run(env, "principals", "add", "ops-bot", "--kind", "service", "-r", "ci", token=admin)[0]
        == 0
    )
    code, out = run(env, "token", "issue", "ops-bot", "-r", "ci pipeline", token=admin)
    assert code == 0
    bot = last_line(out)

    code, out = run(env, "keys", "usage", token=bot)
    assert code == 3, "nothing is allowed until granted"
    assert "'ops-bot' may not keys.usage" in out

    run(env, "grant", "ops-bot", "key-custodian", "keys", "-r", "rotation duty", token=admin)
    code, out = run(env, "keys", "usage", "--json", token=bot)
    assert code == 0, out

    code, out = run(env, "keys", "usage", token="sr_0123456789abcdef.nottherightsecretatall")
    assert code == 4
    code, out = run(env, "keys", "usage")
    assert code == 4
    assert "SAFEREPLAY_TOKEN" in out

    code, out = run(env, "audit", "list", "--json", token=admin)
    assert code == 0
    entries = json.loads(out)
    assert [(e["actor"], e["action"], e["outcome"]) for e in entries] == [
        ("root", "principals.bootstrap", "succeeded"),
        ("root", "principals.add", "started"),
        ("root", "principals.add", "succeeded"),
        ("root", "token.issue", "started"),
        ("root", "token.issue", "succeeded"),
        ("ops-bot", "keys.usage", "denied"),
        ("root", "grant", "started"),
        ("root", "grant", "succeeded"),
        ("ops-bot", "keys.usage", "succeeded"),
        # The two failed sign-ins (an unknown token, then none at all).
        ("(unknown)", "authenticate", "failed"),
        ("(unknown)", "authenticate", "failed"),
    ]
    assert bot.split(".", 1)[1] not in out, "tokens never enter the audit trail"

    code, out = run(env, "audit", "verify", token=admin)
    assert code == 0, out
    assert "intact" in out


def test_key_rotation_through_the_cli(env: dict[str, str], tmp_path: Path, key_file: Path) -> None:
    settings = DomainSettings.from_env(
        backend="sqlite", sqlite_path=tmp_path / "events.db", key_file=key_file
    )
    record_workload(AutomationApp(settings), workflows=1, runs_per_workflow=3)
    admin = bootstrapped_token(run(env, *bootstrap_args("root"))[1])

    assert run(env, "keys", "rotate", "k2", "-r", "quarterly rotation", token=admin)[0] == 0
    code, out = run(env, "keys", "retire", "k1", "-r", "too early", token=admin)
    assert code == 2
    assert "still seals" in out
    assert run(env, "keys", "reencrypt", "-r", "quarterly rotation", token=admin)[0] == 0
    code, out = run(env, "keys", "usage", "--json", token=admin)
    assert json.loads(out)["by_key"] == {"k2": json.loads(out)["rows"]}
    assert run(env, "keys", "retire", "k1", "-r", "rotation done", token=admin)[0] == 0
    code, out = run(env, "audit", "list", "--json", "--action", "keys.retire", token=admin)
    assert [e["outcome"] for e in json.loads(out)] == ["started", "failed", "started", "succeeded"]


def test_parked_events_are_listed_through_the_audited_layer(
    env: dict[str, str], tmp_path: Path, key_file: Path
) -> None:
    from test_recovery_policy_runner import Runs

    from safereplay.projections import ProjectionRunner, SQLiteEventSource, SQLiteProjectionStore
    from safereplay.recovery.resilience.policies import ErrorRules, Park, RulesPolicy

    settings = DomainSettings.from_env(
        backend="sqlite", sqlite_path=tmp_path / "events.db", key_file=key_file
    )
    events_app = AutomationApp(settings)
    record_workload(events_app, workflows=1, runs_per_workflow=2)
    victim = next(e for e in events_app.read(after=0, limit=100) if e.event_type == "Run.Started")
    Runs.poison = {victim.aggregate_id}
    try:
        with (
            SQLiteProjectionStore(tmp_path / "events.db") as store,
            SQLiteEventSource(tmp_path / "events.db", mapper=events_app.envelope_mapper) as source,
        ):
            ProjectionRunner(
                Runs(), source=source, store=store, policy=RulesPolicy(ErrorRules(default=Park()))
            ).catch_up()
    finally:
        Runs.poison = set()

    admin = bootstrapped_token(run(env, *bootstrap_args("root"))[1])
    code, out = run(env, "parked", "list", "policy_runs", "--json", token=admin)
    assert code == 0, out
    parked = json.loads(out)
    assert parked
    assert {p["aggregate_id"] for p in parked} == {str(victim.aggregate_id)}
    assert parked[0]["error_type"] == "ValueError"
    assert "payload" not in out
    code, out = run(env, "parked", "list", "policy_runs")
    assert code == 4, "no token, no listing"


def test_jobs_are_listed_and_steered_by_operators_only(env: dict[str, str], tmp_path: Path) -> None:
    from safereplay.recovery.jobs.model import JobKind
    from safereplay.recovery.jobs.sqlite import SQLiteJobStore
    from safereplay.recovery.jobs.store import NewJob

    admin = bootstrapped_token(run(env, *bootstrap_args("root"))[1])
    for name, role in (("olga", "operator"), ("vic", "viewer")):
        run(env, "principals", "add", name, "-r", "team", token=admin)
        run(env, "grant", name, role, "projection:run_status", "-r", "team", token=admin)
    olga = last_line(run(env, "token", "issue", "olga", "-r", "team", token=admin)[1])
    vic = last_line(run(env, "token", "issue", "vic", "-r", "team", token=admin)[1])

    store = SQLiteJobStore(tmp_path / "events.db")
    store.create_tables()
    job = store.create_job(
        NewJob(
            kind=JobKind.CATCH_UP,
            projection="run_status",
            build=1,
            partition_count=2,
            principal="olga",
            reason="behind after outage",
            target_position=50,
        )
    )
    assert store.claim("w1", lease_seconds=60) is not None

    code, out = run(env, "jobs", "--json", "-p", "run_status", token=vic)
    assert code == 0, out
    (listed,) = json.loads(out)
    assert (listed["state"], listed["reason"]) == ("running", "behind after outage")
    assert len(listed["partitions"]) == 2

    assert run(env, "pause", str(job.job_id), "-r", "db maintenance", token=vic)[0] == 3
    assert run(env, "pause", str(job.job_id), "-r", "db maintenance", token=olga)[0] == 0
    assert store.get_job(job.job_id).state == "paused", "seen by another process at once"
    assert run(env, "pause", str(job.job_id), "-r", "again", token=olga)[0] == 0, "idempotent"
    assert run(env, "resume", str(job.job_id), "-r", "maintenance over", token=olga)[0] == 0
    assert run(env, "abort", str(job.job_id), "-r", "superseded", token=olga)[0] == 0
    assert store.get_job(job.job_id).state == "aborting", "a worker still holds a lease"
    code, out = run(env, "resume", str(job.job_id), "-r", "changed my mind", token=olga)
    assert code == 5  # its state does not allow it: a conflict, not bad input
    assert "aborting: cannot become running" in " ".join(out.split())
    store.close()
    code, out = run(env, "audit", "list", "--json", "--job", str(job.job_id), token=admin)
    assert [(e["actor"], e["action"], e["outcome"]) for e in json.loads(out)] == [
        ("vic", "pause", "denied"),
        ("olga", "pause", "started"),
        ("olga", "pause", "succeeded"),
        ("olga", "pause", "started"),
        ("olga", "pause", "succeeded"),
        ("olga", "resume", "started"),
        ("olga", "resume", "succeeded"),
        ("olga", "abort", "started"),
        ("olga", "abort", "succeeded"),
        ("olga", "resume", "started"),
        ("olga", "resume", "failed"),
    ]


def test_a_token_file_others_can_read_is_refused_like_the_key_files(
    env: dict[str, str], tmp_path: Path
) -> None:
    code, out = run(env, *bootstrap_args("root"))
    assert code == 0, out
    token_file = tmp_path / "token"
    token_file.write_text(bootstrapped_token(out) + "\n", encoding="ascii")
    token_file.chmod(0o644)
    with_file = {**env, "SAFEREPLAY_TOKEN_FILE": str(token_file)}

    code, out = run(with_file, "keys", "usage")

    assert code == 4, out
    assert f"is readable by group or others (mode 644); run: chmod 600 {token_file}" in out
    token_file.chmod(0o600)
    code, out = run(with_file, "keys", "usage")
    assert code == 0, out

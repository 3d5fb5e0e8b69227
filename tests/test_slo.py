"""Issue #21 point 3, replay SLOs over a real store, on SQLite and PostgreSQL:

- a target set in SAFEREPLAY_SLO_TARGETS is sampled; a projection behind the
  head more than its ``lag_events`` target opens a breach (audited
  ``slo.breached``, actor system), sampling again within the interval adds
  nothing, catching up closes it (``slo.recovered``); ``slo.history`` shows its
  start and end and the error budget counts the bad samples;
- lag in seconds counts from the first sample that saw the head above the
  projection's position; a rebuild running longer than its target breaches;
- two samplers at once open one breach; the background sampler samples with no
  reader at all;
- ``safereplay slo --json`` / ``slo history``, ``GET /api/slos`` (viewer only) and
  ``/metrics`` show the same figures;
- a bad target is refused naming the field.

Time is never waited for: "an hour later" moves the samples (or the job's
creation) an hour back in the database, as a slow clock would have left them.
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Any

import pytest
from api_build_fixtures import as_admin, built, run_workers
from api_fixtures import ApiContract, ApiWorld, postgres_settings, sqlite_settings
from test_metrics import check_documented, families
from typer.testing import CliRunner

from safereplay.domain import AutomationApp
from safereplay.domain.errors import ConfigurationError
from safereplay.domain.workload import record_workload
from safereplay.recovery.alerts.slo import Measurement, Target, budget_of
from safereplay.recovery.alerts.slo_store import SLOStore
from safereplay.recovery.cli.app import app as cli
from safereplay.recovery.database import Database, PostgresDatabase, SQLiteDatabase
from safereplay.recovery.operations.catalog import open_operations
from safereplay.recovery.operations.context import RecoveryContext
from safereplay.recovery.operations.slos import SLOSampler
from safereplay.recovery.security.audit import AuditKey, AuditTrail
from safereplay.recovery.settings import RecoverySettings, SLOSettings

pytestmark = pytest.mark.usefixtures("clean_safereplay_environment")

HOUR = 3_600.0
ROOT = Path(__file__).resolve().parent.parent
LAG_EVENTS = '{"projections": {"run_status": {"lag_events": 0}}}'


def run_as(world: ApiWorld, who: str, name: str, **params: Any) -> Any:
    principal = world.context.access.authenticate(world.envs[who]["SAFEREPLAY_TOKEN"])
    return open_operations(world.context).run(principal, name, reason="test", **params)


def more_events(world: ApiWorld) -> None:
    """Events the live build has not applied yet: the head moves past it."""
    with AutomationApp(world.settings) as application:
        record_workload(application, workflows=1, runs_per_workflow=2, seed=9)


def as_if_an_hour_later(world: ApiWorld) -> None:
    """Every SLO sample an hour older, as if that long had passed since."""
    with world.context.database.transaction(write=True) as tx:
        assert tx.execute("UPDATE {slo_samples} SET at = at - %(by)s", {"by": HOUR}) > 0


def slo_entries(world: ApiWorld) -> list[tuple[str, str, str]]:
    return [
        (e.actor, e.action, str(e.parameters["slo"]))
        for e in world.context.audit.entries()
        if e.action.startswith("slo.")
    ]


def only(status: dict[str, Any], slo: str) -> dict[str, Any]:
    [found] = [s for s in status["slos"] if s["slo"] == slo]
    return found


def second_database(world: ApiWorld) -> Database:
    settings = world.settings
    if settings.backend == "sqlite":
        return SQLiteDatabase(settings.sqlite_path)
    assert settings.postgres_dsn is not None
    return PostgresDatabase(
        settings.postgres_dsn.get_secret_value(), schema=settings.postgres_schema
    )


def rule_metric_names() -> set[str]:
    """The metric names the sample alert rules of docs/slo.md use (``expr:`` lines of
    its yaml block; promtool is not needed to see they exist)."""
    text = (ROOT / "docs" / "slo.md").read_text(encoding="utf-8")
    [rules] = re.findall(r"^```yaml\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)
    exprs = [line.split("expr:", 1)[1] for line in rules.splitlines() if "expr:" in line]
    assert len(exprs) == 6, "a rule per figure and two on the budget"
    return {name for expr in exprs for name in re.findall(r"safereplay_[a-z0-9_]+", expr)}


class SLOContract(ApiContract):
    def test_a_lagging_projection_breaches_and_recovers_audited(
        self, world: ApiWorld, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("SAFEREPLAY_SLO_TARGETS", LAG_EVENTS)
        built(world)
        slo = "projection:run_status/lag_events"

        met = only(run_as(world, "viewer", "slo.status"), slo)
        assert (met["value"], met["target"], met["in_breach"]) == (0.0, 0.0, False)
        assert met["budget"]["samples"] == 1 and met["budget"]["good_share"] == 1.0

        more_events(world)
        as_if_an_hour_later(world)
        behind = only(run_as(world, "viewer", "slo.status"), slo)
        assert behind["value"] > 0 and behind["in_breach"] and behind["breach_since"]
        assert behind["budget"]["samples"] == 2 and behind["budget"]["good"] == 1
        assert behind["budget"]["budget_remaining"] < 0, "half the samples bad: spent"
        assert slo_entries(world) == [("system", "slo.breached", slo)]
        [entry] = [e for e in world.context.audit.entries() if e.action == "slo.breached"]
        assert entry.scope == "projection:run_status" and entry.parameters["sampled_by"] == "vic"

        again = only(run_as(world, "viewer", "slo.status"), slo)
        assert again["budget"]["samples"] == 2, "sampled within the interval: nothing added"
        assert len(slo_entries(world)) == 1

        as_admin(world, "catch-up", projection="run_status")
        run_workers(world)
        as_if_an_hour_later(world)
        recovered = only(run_as(world, "viewer", "slo.status"), slo)
        assert (recovered["value"], recovered["in_breach"]) == (0.0, False)
        assert slo_entries(world) == [
            ("system", "slo.breached", slo),
            ("system", "slo.recovered", slo),
        ]
        [breach] = run_as(world, "viewer", "slo.history")["breaches"]
        assert breach["slo"] == slo and breach["opened_at"] and breach["closed_at"]
        assert breach["worst"] == behind["value"] and breach["duration_seconds"] > 0

    def test_lag_in_seconds_counts_from_the_first_sample_behind(
        self, world: ApiWorld, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        targets = {"projections": {"*": {"lag_seconds": 600, "objective": 0.9}}}
        monkeypatch.setenv("SAFEREPLAY_SLO_TARGETS", json.dumps(targets))
        built(world)
        more_events(world)
        slo = "projection:run_status/lag_seconds"

        first = only(run_as(world, "viewer", "slo.status"), slo)
        assert (first["value"], first["in_breach"], first["objective"]) == (0.0, False, 0.9)

        as_if_an_hour_later(world)
        late = only(run_as(world, "viewer", "slo.status"), slo)
        assert HOUR - 5 < late["value"] < HOUR + 600 and late["in_breach"]

    def test_a_rebuild_running_longer_than_its_target_breaches(
        self, world: ApiWorld, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        targets = {"projections": {"run_status": {"rebuild_seconds": 1800}}}
        monkeypatch.setenv("SAFEREPLAY_SLO_TARGETS", json.dumps(targets))
        built(world)
        slo = "projection:run_status/rebuild_seconds"
        assert only(run_as(world, "viewer", "slo.status"), slo)["value"] == 0.0

        as_admin(world, "rebuild", projection="run_status", partitions=1)  # planned, not run
        with world.context.database.transaction(write=True) as tx:
            tx.execute("UPDATE {jobs} SET created_at = created_at - %(by)s", {"by": HOUR})
        as_if_an_hour_later(world)
        long = only(run_as(world, "viewer", "slo.status"), slo)
        assert long["value"] >= HOUR and long["in_breach"]
        assert slo_entries(world) == [("system", "slo.breached", slo)]

    def test_a_reaction_is_measured_from_its_ledger_for_reaction_viewers_only(
        self, world: ApiWorld, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        targets = {
            "reactions": {"*": {"lag_events": 0, "undelivered_age_seconds": 600}},
            "projections": {},
        }
        monkeypatch.setenv("SAFEREPLAY_SLO_TARGETS", json.dumps(targets))
        reaction = "run_completions"  # a reference reaction: registered, nothing recorded

        status = run_as(world, "admin", "slo.status", subject=f"reaction:{reaction}")
        behind = only(status, f"reaction:{reaction}/lag_events")
        owed = only(status, f"reaction:{reaction}/undelivered_age_seconds")
        assert behind["value"] > 0 and behind["in_breach"], "the workload is not recorded yet"
        assert (owed["value"], owed["in_breach"]) == (0.0, False), "nothing owed yet"
        [entry] = [e for e in world.context.audit.entries() if e.action == "slo.breached"]
        assert entry.scope == f"reaction:{reaction}" and entry.actor == "system"

        assert run_as(world, "viewer", "slo.status")["slos"] == [], "vic: projection:* only"
        assert run_as(world, "viewer", "slo.history")["breaches"] == []
        assert len(run_as(world, "admin", "slo.history")["breaches"]) == 1

    def test_two_samplers_at_once_open_one_breach(self, world: ApiWorld) -> None:
        target = Target("projection", "run_status", "lag_events", 0.0, 0.99)
        bad = Measurement(target, 7.0, head=10, position=3)
        key = AuditKey.from_settings(world.context.recovery)  # as another process loads it
        databases = [second_database(world) for _ in range(4)]
        stores = [SLOStore(d, AuditTrail(d, key)) for d in databases]
        start = threading.Barrier(len(stores))
        opened: list[int] = []

        def sample(store: SLOStore) -> None:
            start.wait(timeout=60)
            opened.append(len(store.record([bad], every=60, keep=HOUR, sampled_by="t").opened))

        threads = [threading.Thread(target=sample, args=(s,)) for s in stores]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        for database in databases:
            database.close()

        assert sorted(opened) == [0, 0, 0, 1]
        assert slo_entries(world) == [("system", "slo.breached", target.slo)]
        [breach] = SLOStore(world.context.database, world.context.audit).breaches(since=0)
        assert (breach.value, breach.closed_at) == (7.0, None)

    def test_the_background_sampler_samples_with_no_reader(
        self, world: ApiWorld, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("SAFEREPLAY_SLO_TARGETS", LAG_EVENTS)
        built(world)
        more_events(world)
        key = world.envs["admin"]["SAFEREPLAY_AUDIT_KEY_FILE"]

        def open_context() -> RecoveryContext:
            return RecoveryContext(
                domain=world.settings, recovery=RecoverySettings(audit_key_file=key)
            )

        failures: list[Exception] = []
        sampler = SLOSampler(open_context, sampled_by="serve", on_error=failures.append)
        sampler.run(turns=1)
        idle = SLOSettings(targets="{}")
        nothing = SLOSampler(open_context, sampled_by="t", on_error=failures.append, settings=idle)
        nothing.run(turns=1)  # no targets: the turn does nothing, and the loop still ends
        assert nothing.turns == 1

        assert failures == []
        latest = SLOStore(world.context.database, world.context.audit).latest()
        assert latest["projection:run_status/lag_events"].good is False
        [entry] = [e for e in world.context.audit.entries() if e.action == "slo.breached"]
        assert entry.actor == "system" and entry.parameters["sampled_by"] == "serve"

    def test_cli_api_and_metrics_show_the_breach(
        self, world: ApiWorld, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("SAFEREPLAY_SLO_TARGETS", LAG_EVENTS)
        built(world)
        more_events(world)
        runner = CliRunner()
        env = world.envs["viewer"] | {"SAFEREPLAY_SLO_TARGETS": LAG_EVENTS}

        listed = runner.invoke(cli, ["slo", "--json"], env=env)
        assert listed.exit_code == 0, listed.output
        [shown] = json.loads(listed.output)["slos"]
        assert shown["slo"] == "projection:run_status/lag_events" and shown["in_breach"]
        table = runner.invoke(cli, ["slo"], env=env)
        assert table.exit_code == 0 and "BREACH" in table.output, table.output
        history = runner.invoke(cli, ["slo", "history"], env=env)
        assert history.exit_code == 0 and "open" in history.output, history.output
        status = runner.invoke(cli, ["status"], env=env)
        assert status.exit_code == 0 and "SLO projection:run_status/lag_events breached" in (
            status.output
        ), status.output
        watched = runner.invoke(cli, ["slo", "watch", "--turns", "1"], env=env)
        assert watched.exit_code == 0 and "sampling the replay SLOs" in watched.output
        as_json = runner.invoke(cli, ["slo", "watch", "--turns", "1", "--json"], env=env)
        assert as_json.exit_code == 0, as_json.output
        assert json.loads(as_json.output) == {"sampled": [], "opened": [], "closed": []}
        denied = runner.invoke(cli, ["slo", "--json"], env=world.envs["stranger"])
        assert denied.exit_code != 0

        response = world.get("viewer", "/api/slos")
        assert response.status_code == 200, response.text
        assert [s["in_breach"] for s in response.json()["slos"]] == [True]
        one = world.get("viewer", "/api/slos/projection/run_status")
        assert [s["metric"] for s in one.json()["slos"]] == ["lag_events"]
        assert world.get("viewer", "/api/slos/reaction/run_status").json()["slos"] == []
        assert len(world.get("viewer", "/api/slos/history").json()["breaches"]) == 1
        assert world.client.get("/api/slos").status_code == 401
        assert world.get("stranger", "/api/slos").status_code == 403

        text = world.get("viewer", "/metrics").text
        labels = 'kind="projection",measure="lag_events",subject="run_status"'
        assert f"safereplay_slo_in_breach{{{labels}}} 1.0" in text
        assert f"safereplay_slo_target{{{labels}}} 0.0" in text
        assert f"safereplay_slo_breaches_total{{{labels}}} 1.0" in text
        exported = {line.split("{")[0].split()[0] for line in text.splitlines() if line[:1] != "#"}
        used = rule_metric_names()
        assert {"safereplay_slo_value", "safereplay_slo_error_budget_remaining"} <= used
        assert used <= exported, used - exported
        exposed = {k: v for k, v in families(text).items() if k.startswith("safereplay_slo_")}
        check_documented("slo", exposed)


class TestSLOOnSQLite(SLOContract):
    settings = staticmethod(sqlite_settings)


@pytest.mark.postgres
class TestSLOOnPostgres(SLOContract):
    settings = staticmethod(postgres_settings)


def test_a_bad_target_is_refused_naming_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAFEREPLAY_SLO_TARGETS", '{"projections": {"orders": {"lag_secs": 5}}}')
    with pytest.raises(ConfigurationError, match=r"SAFEREPLAY_SLO_TARGETS.*orders\.lag_secs"):
        SLOSettings.from_env()
    monkeypatch.setenv("SAFEREPLAY_SLO_TARGETS", '{"reactions": {"m": {"rebuild_seconds": 5}}}')
    with pytest.raises(ConfigurationError, match=r"reactions\.m\.rebuild_seconds"):
        SLOSettings.from_env()
    monkeypatch.setenv("SAFEREPLAY_SLO_TARGETS", "{not json")
    with pytest.raises(ConfigurationError, match="SAFEREPLAY_SLO_TARGETS: .*not JSON"):
        SLOSettings.from_env()


def test_the_window_takes_units_and_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    assert SLOSettings().window == 7 * 86_400
    monkeypatch.setenv("SAFEREPLAY_SLO_WINDOW", "28d")
    assert SLOSettings.from_env().window == 28 * 86_400
    monkeypatch.setenv("SAFEREPLAY_SLO_WINDOW", "90s")
    with pytest.raises(ConfigurationError, match="SAFEREPLAY_SLO_WINDOW: .*between 1h"):
        SLOSettings.from_env()


def test_the_error_budget_of_a_window() -> None:
    untouched = budget_of(samples=0, good=0, recent=0, recent_good=0, objective=0.99)
    assert (untouched.good_share, untouched.budget_remaining, untouched.burn_rate) == (1, 1, 0)
    half_spent = budget_of(samples=1000, good=995, recent=60, recent_good=54, objective=0.99)
    assert half_spent.budget_remaining == pytest.approx(0.5)
    assert half_spent.burn_rate == pytest.approx(0.5)
    assert half_spent.burn_rate_1h == pytest.approx(10.0)

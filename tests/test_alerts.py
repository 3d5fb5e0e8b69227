"""Issue #19 point 2, stall and anomaly detection over a real store, on SQLite and
PostgreSQL:

- a worker partition whose lease is renewed but whose position does not move
  raises ``stalled`` (audited "alert raised", actor safereplay, evaluated_by the
  principal); evaluating again changes nothing; advancing clears it (audited
  "alert cleared");
- two evaluators reconciling the same findings at once raise the alert once;
- a follower heartbeats into the database (position, beat, last advance), stalls
  and is seen; ``follow`` writes those beats and marks its rows stopped;
- ``safereplay alerts --json`` and ``status`` show the alert; ``GET /api/alerts``
  is 200 for a viewer, 401 without a token, 403 without the grant; ``/metrics``
  exposes the open alert and the runner's figures.

Time is never waited for: a partition or follower that "has not advanced for an
hour" has its ``advanced_at`` moved an hour back in the database, as a slow clock
would have left it.
"""

from __future__ import annotations

import json
import threading
from typing import Any
from uuid import UUID

import pytest
from api_fixtures import ApiContract, ApiWorld, postgres_settings, sqlite_settings
from recovery_fixtures import wait_until
from typer.testing import CliRunner

from safereplay.projections import open_source, open_store
from safereplay.recovery.alerts.facts import Finding, ProjectionFacts, Sample, Snapshot
from safereplay.recovery.alerts.rules import LagGrowingWhileHeadIdle
from safereplay.recovery.alerts.store import AlertStore
from safereplay.recovery.cli.app import app as cli
from safereplay.recovery.database import Database, PostgresDatabase, SQLiteDatabase
from safereplay.recovery.jobs.follow import follow_projections
from safereplay.recovery.jobs.heartbeats import FollowerHeartbeats
from safereplay.recovery.jobs.model import Claim
from safereplay.recovery.operations.catalog import open_operations
from safereplay.recovery.security.audit import AuditKey, AuditTrail

pytestmark = pytest.mark.usefixtures("clean_safereplay_environment")

HOUR = 3_600.0


def run_as(world: ApiWorld, who: str, name: str, **params: Any) -> Any:
    principal = world.context.access.authenticate(world.envs[who]["SAFEREPLAY_TOKEN"])
    return open_operations(world.context).run(principal, name, reason="test", **params)


def claimed_rebuild(world: ApiWorld) -> Claim:
    """A rebuild of run_status planned by the admin, partition 0 claimed by a worker
    that holds its lease for an hour (no worker process runs: the test is the worker)."""
    job_id = UUID(
        run_as(world, "admin", "rebuild", projection="run_status", partitions=2)["job_id"]
    )
    claim = world.context.jobs.claim("test-worker", lease_seconds=HOUR, job_id=job_id)
    assert claim is not None and claim.partition.partition_index == 0
    return claim


def as_if_idle_for(world: ApiWorld, table: str, seconds: float) -> None:
    """Move every row's last advance ``seconds`` back, as if that long had passed."""
    with world.context.database.transaction(write=True) as tx:
        changed = tx.execute(
            f"UPDATE {{{table}}} SET advanced_at = advanced_at - %(by)s "
            "WHERE advanced_at IS NOT NULL",
            {"by": seconds},
        )
    assert changed > 0


def stalled_rebuild(world: ApiWorld) -> Claim:
    """:func:`claimed_rebuild`, its partition idle for an hour while its lease is renewed."""
    claim = claimed_rebuild(world)
    as_if_idle_for(world, "job_partitions", HOUR)
    return world.context.jobs.renew(claim, lease_seconds=HOUR)


def alert_entries(world: ApiWorld) -> list[tuple[str, str, str]]:
    return [
        (e.actor, e.action, str(e.parameters["subject"]))
        for e in world.context.audit.entries()
        if e.action.startswith("alert.")
    ]


def second_database(world: ApiWorld) -> Database:
    """Another connection to the store's database, as another process would open."""
    settings = world.settings
    if settings.backend == "sqlite":
        return SQLiteDatabase(settings.sqlite_path)
    assert settings.postgres_dsn is not None
    return PostgresDatabase(
        settings.postgres_dsn.get_secret_value(), schema=settings.postgres_schema
    )


class AlertsContract(ApiContract):
    def test_a_renewed_lease_that_does_not_advance_is_stalled_until_it_moves(
        self, world: ApiWorld
    ) -> None:
        claim = claimed_rebuild(world)
        subject = f"job:{claim.job.job_id}/partition:0/2"
        assert run_as(world, "viewer", "alerts")["alerts"] == []

        as_if_idle_for(world, "job_partitions", HOUR)
        claim = world.context.jobs.renew(claim, lease_seconds=HOUR)  # its heartbeat
        raised = run_as(world, "viewer", "alerts")

        [alert] = raised["alerts"]
        assert (alert["rule"], alert["subject"], alert["severity"]) == (
            "stalled",
            subject,
            "critical",
        )
        assert alert["projection"] == "run_status" and alert["job_id"] == str(claim.job.job_id)
        assert alert["value"] > alert["threshold"] == 300.0
        assert alert["cleared_at"] is None and raised["evaluated_at"]
        assert alert_entries(world) == [("safereplay", "alert.raised", subject)]
        [entry] = [e for e in world.context.audit.entries() if e.action == "alert.raised"]
        assert entry.reason.startswith("alert raised: worker of run_status")
        assert entry.parameters["evaluated_by"] == "vic"

        again = run_as(world, "viewer", "alerts")
        assert [a["alert_id"] for a in again["alerts"]] == [alert["alert_id"]]
        assert len(alert_entries(world)) == 1, "the same facts change nothing"

        world.context.jobs.report(claim, position=claim.partition.position + 1)
        cleared = run_as(world, "viewer", "alerts", include_cleared=True)

        [gone] = cleared["alerts"]
        assert gone["alert_id"] == alert["alert_id"] and gone["cleared_at"] is not None
        assert run_as(world, "viewer", "alerts")["alerts"] == []
        assert alert_entries(world) == [
            ("safereplay", "alert.raised", subject),
            ("safereplay", "alert.cleared", subject),
        ]
        assert world.context.audit.verify().ok

    def test_two_evaluators_at_once_raise_one_alert(self, world: ApiWorld) -> None:
        finding = Finding(
            rule="stalled",
            subject="follower:run_status/0/1",
            severity="critical",
            message="stalled",
            value=900.0,
            threshold=300.0,
            projection="run_status",
        )
        key = AuditKey.from_settings(world.context.recovery)  # as another process loads it
        databases = [second_database(world) for _ in range(4)]
        stores = [AlertStore(d, AuditTrail(d, key)) for d in databases]
        start = threading.Barrier(len(stores))
        raised: list[int] = []

        def evaluate(store: AlertStore) -> None:
            start.wait()
            raised.append(len(store.reconcile([finding], evaluated_by="p").raised))

        threads = [threading.Thread(target=evaluate, args=(s,)) for s in stores]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        for database in databases:
            database.close()

        assert sorted(raised) == [0, 0, 0, 1]
        assert len(alert_entries(world)) == 1
        assert len(AlertStore(world.context.database, world.context.audit).alerts()) == 1

    def test_samples_are_recorded_when_due_pruned_when_old_and_feed_the_rules(
        self, world: ApiWorld
    ) -> None:
        world.context.ensure_schema()
        store = AlertStore(world.context.database, world.context.audit)

        def sample(at: float, position: int) -> dict[str, Sample]:
            return {"run_status": Sample(at=at, head=900, position=position, parked=0, retries=0)}

        def recorded() -> list[float]:
            with world.context.database.transaction(write=False) as tx:
                rows = tx.rows("SELECT at FROM {alert_samples} ORDER BY at")
            return [float(r["at"]) for r in rows]

        first = store.add_samples(sample(1_000, 900), every=30, keep=600)["run_status"]
        assert [s.at for s in first] == [1_000]
        too_soon = store.add_samples(sample(1_010, 900), every=30, keep=600)
        assert [s.at for s in too_soon["run_status"]] == [1_000, 1_010]
        assert recorded() == [1_000], "a sample under `every` after the last is not kept"
        rolled_back = store.add_samples(sample(1_200, 400), every=30, keep=600)["run_status"]
        assert recorded() == [1_000, 1_200]

        [finding] = LagGrowingWhileHeadIdle(window_seconds=120).findings(
            Snapshot(now=1_200, projections=[ProjectionFacts("run_status", rolled_back)])
        )
        assert finding.value == 500

        store.add_samples(sample(5_000, 900), every=30, keep=600)
        assert recorded() == [5_000], "samples older than the rules look back are pruned"

    def test_a_follower_heartbeats_and_a_stalled_one_is_seen(self, world: ApiWorld) -> None:
        beats = FollowerHeartbeats(world.context.database)
        world.context.ensure_schema()
        mark = world.context.log.high_water_mark()
        assert mark > 0

        beats.beat(projection="run_status", partition="0/1", build=1, owner="a", position=0)
        [first] = beats.beats()
        beats.beat(projection="run_status", partition="0/1", build=1, owner="a", position=0)
        [same] = beats.beats()
        assert same.advanced_at == first.advanced_at, "standing still is no advance"
        assert same.heartbeat_at >= first.heartbeat_at

        as_if_idle_for(world, "followers", HOUR)
        beats.beat(projection="run_status", partition="0/1", build=1, owner="a", position=0)
        [alert] = run_as(world, "viewer", "alerts")["alerts"]
        assert (alert["rule"], alert["subject"]) == ("stalled", "follower:run_status/0/1")
        assert f"with {mark} to go" in alert["message"]

        beats.stopped(projection="run_status", partition="0/1", owner="a")
        assert run_as(world, "viewer", "alerts")["alerts"] == [], "a stopped follower is gone"

    def test_follow_writes_its_followers_beats_and_marks_them_stopped(
        self, world: ApiWorld
    ) -> None:
        context = world.context
        context.ensure_schema()
        beats = FollowerHeartbeats(context.database)
        mark = context.log.high_water_mark()
        stop = threading.Event()
        reports: list[Any] = []
        follower = threading.Thread(
            target=lambda: reports.extend(
                follow_projections(
                    [context.registry["run_status"]],
                    open_store=lambda: open_store(context.domain, context.projection_settings),
                    open_source=lambda: open_source(
                        context.app, settings=context.projection_settings
                    ),
                    options=context.runner_options(),
                    stop=stop,
                    heartbeats=beats,
                    heartbeat_interval=0.05,
                )
            )
        )
        follower.start()
        try:
            [beat] = wait_until(
                lambda: [b for b in beats.beats() if b.position >= mark] or None,
                timeout=120,
                what="the follower's beat at the safe head",
            )
        finally:
            stop.set()
            follower.join(120)
        assert (beat.projection, beat.partition, beat.stopped_at) == ("run_status", "0/1", None)
        assert [r.error for r in reports] == [None]
        [after] = beats.beats()
        assert after.stopped_at is not None

    def test_the_cli_lists_alerts_and_status_shows_them(self, world: ApiWorld) -> None:
        stalled_rebuild(world)
        runner = CliRunner()

        listed = runner.invoke(cli, ["alerts", "--json"], env=world.envs["viewer"])
        assert listed.exit_code == 0, listed.output
        shown = json.loads(listed.output)
        assert [a["rule"] for a in shown["alerts"]] == ["stalled"]
        assert set(shown["alerts"][0]) == {
            "alert_id",
            "rule",
            "subject",
            "projection",
            "job_id",
            "severity",
            "message",
            "value",
            "threshold",
            "raised_at",
            "cleared_at",
        }

        table = runner.invoke(cli, ["alerts", "--all"], env=world.envs["viewer"])
        assert table.exit_code == 0, table.output
        assert "stalled" in table.output and "has not advanced" in table.output

        status = runner.invoke(cli, ["status"], env=world.envs["viewer"])
        assert status.exit_code == 0, status.output
        assert "alert stalled" in status.output and "has not advanced" in status.output

        denied = runner.invoke(cli, ["alerts", "--json"], env=world.envs["stranger"])
        assert denied.exit_code != 0

    def test_the_api_serves_alerts_to_a_viewer_only(self, world: ApiWorld) -> None:
        stalled_rebuild(world)

        response = world.get("viewer", "/api/alerts")
        assert response.status_code == 200, response.text
        body = response.json()
        assert [a["rule"] for a in body["alerts"]] == ["stalled"] and body["evaluated_at"]
        with_cleared = world.get("viewer", "/api/alerts", params={"include_cleared": "true"})
        assert with_cleared.status_code == 200
        assert world.client.get("/api/alerts").status_code == 401
        assert world.get("stranger", "/api/alerts").status_code == 403
        assert world.get("viewer", "/api/alerts", params={"limit": 0}).status_code == 422

    def test_metrics_show_the_open_alert_and_the_runners_figures(self, world: ApiWorld) -> None:
        claim = stalled_rebuild(world)

        response = world.get("viewer", "/metrics")
        assert response.status_code == 200, response.text
        text = response.text
        labels = 'kind="worker",partition="0/2",projection="run_status"'
        assert 'safereplay_alerts_open{projection="run_status",rule="stalled"} 1.0' in text
        assert f"safereplay_runner_stalled_position{{{labels}}} 0.0" in text
        assert f"safereplay_runner_heartbeat_age_seconds{{{labels}}}" in text
        since = [
            line
            for line in text.splitlines()
            if line.startswith(f"safereplay_runner_seconds_since_progress{{{labels}}}")
        ]
        assert len(since) == 1 and float(since[0].split()[-1]) > HOUR - 1
        assert str(claim.job.job_id) not in text, "no job ids in labels"
        [entry] = [e for e in world.context.audit.entries() if e.action == "alert.raised"]
        assert entry.parameters["evaluated_by"] == "metrics scrape"


class TestAlertsOnSQLite(AlertsContract):
    settings = staticmethod(sqlite_settings)


@pytest.mark.postgres
class TestAlertsOnPostgres(AlertsContract):
    settings = staticmethod(postgres_settings)

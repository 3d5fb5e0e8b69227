"""Issue #19 point 1, the first increment: ``safereplay metrics`` exposes Prometheus
metrics computed from the database on each scrape, and they say what the store says.

- after a first build (catch-up, nothing parked): the projection's position is the
  log's head, its lag and backlog 0, nothing parked, re-driven or skipped;
- after more events are recorded: its lag is the new events' positions;
- a planned job shows its events in scope, by kind and projection (never job id);
- ``--json`` lists the same samples as {name, labels, value};
- a scrape needs a viewer grant.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
from projection_fixtures import parked_event
from prometheus_client.parser import text_string_to_metric_families
from recovery_fixtures import principals_world
from typer.testing import CliRunner

from safereplay.domain import AutomationApp, DomainSettings
from safereplay.domain.workload import record_workload
from safereplay.projections.reference import RunStatusBoard
from safereplay.projections.source import WHOLE
from safereplay.projections.status import projection_status
from safereplay.recovery.cli.app import app
from safereplay.recovery.operations.metrics import render_metrics
from safereplay.recovery.operations.metrics_projections import MAX_ERROR_TYPES, OTHER_ERRORS
from safereplay.recovery.security.audit import AuditKey

#: No SAFEREPLAY_* variable of the shell reaches these commands (conftest).
pytestmark = pytest.mark.usefixtures("clean_safereplay_environment")

Labels = tuple[tuple[str, str], ...]


def cli(env: dict[str, str], *args: str) -> Any:
    return CliRunner().invoke(app, list(args), env=env)


def cli_json(env: dict[str, str], *args: str) -> Any:
    result = cli(env, *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def scrape(text: str) -> dict[tuple[str, Labels], float]:
    """Every sample of an exposition text, by name and labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def occurred_at(context: Any, notification: Any) -> datetime:
    moment: datetime = context.source.decode(notification).occurred_at
    return moment


def board(build: int = 1) -> Labels:
    return (("build", str(build)), ("projection", "run_status"))


class MetricsContract:
    """The same scrape against each backend's store."""

    def settings(self, request: pytest.FixtureRequest, tmp_path: Path) -> DomainSettings:
        raise NotImplementedError

    @pytest.fixture
    def world(
        self, request: pytest.FixtureRequest, tmp_path: Path, key_file: Path
    ) -> Iterator[dict[str, Any]]:
        """A recorded workload; run_status built once (catch-up), nothing parked."""
        AuditKey.generate().save(tmp_path / "audit.key")
        settings = self.settings(request, tmp_path)
        with AutomationApp(settings) as application:
            record_workload(application, workflows=2, runs_per_workflow=3, seed=5)
        context, envs = principals_world(settings, tmp_path / "audit.key")
        admin_env = envs["admin"]
        planned = cli_json(admin_env, "catch-up", "run_status", "-r", "first build", "-w", "0")
        done = cli(admin_env, "worker", "--job", planned["job_id"], "--exit-when-idle")
        assert done.exit_code == 0, done.output
        yield {
            "settings": settings,
            "context": context,
            **envs,
        }
        context.close()

    def test_after_a_first_build_the_figures_are_the_stores(self, world: dict[str, Any]) -> None:
        context = world["context"]
        result = cli(world["viewer"], "metrics")
        assert result.exit_code == 0, result.output
        found = scrape(result.stdout)

        head, mark = context.log.head(), context.log.high_water_mark()
        assert head > 0
        assert found[("safereplay_log_head_position", ())] == head
        assert found[("safereplay_high_water_mark_position", ())] == mark
        report = projection_status(
            context.projection_store, "run_status", high_water_mark=mark, head=head
        )
        assert report.position == head, "the catch-up read the whole log"
        assert found[("safereplay_projection_position", board())] == report.position
        assert found[("safereplay_projection_lag_positions", board())] == 0
        assert found[("safereplay_projection_backlog_events", board())] == 0
        assert found[("safereplay_projection_parked_events", board())] == 0
        assert found[("safereplay_projection_redriven_events_total", board())] == 0
        assert found[("safereplay_projection_skipped_events_total", board())] == 0
        # Never-built projections have no position to report.
        assert not any(dict(labels).get("projection") == "workflow_stats" for _, labels in found), (
            "workflow_stats was never built"
        )
        # The catch-up job completed; no job is active, so no job progress series.
        assert found[("safereplay_jobs", (("state", "completed"),))] == 1
        assert found[("safereplay_jobs", (("state", "running"),))] == 0
        assert not any(name.startswith("safereplay_job_events") for name, _ in found)

    def test_lag_is_the_new_events_positions(self, world: dict[str, Any]) -> None:
        context = world["context"]
        before = context.log.head()
        with AutomationApp(world["settings"]) as application:
            record_workload(application, workflows=1, runs_per_workflow=2, seed=9)
        after = context.log.head()
        assert after > before

        found = scrape(render_metrics(context).decode())
        assert found[("safereplay_log_head_position", ())] == after
        assert found[("safereplay_projection_position", board())] == before
        assert found[("safereplay_projection_lag_positions", board())] == after - before
        # The backlog counts the events run_status handles, not positions: the new
        # workload's other event types are in the positions' lag only.
        topics = RunStatusBoard.topics
        pending = context.source.read(after=before, upto=after, limit=10_000, topics=topics)
        assert 0 < len(pending) < after - before
        assert found[("safereplay_projection_backlog_events", board())] == len(pending)
        # Lag in seconds: the newest event's time less the oldest pending one's.
        (newest,) = context.source.read(after=after - 1, upto=after, limit=1)
        behind = (occurred_at(context, newest) - occurred_at(context, pending[0])).total_seconds()
        assert found[("safereplay_projection_lag_seconds", board())] == pytest.approx(behind)
        assert behind > 0

    def test_parked_events_are_counted_by_error_class_top_five_and_other(
        self, world: dict[str, Any]
    ) -> None:
        context = world["context"]
        store = context.projection_store
        types = ["KeyError"] * 3 + ["ValueError"] * 2 + ["E1", "E2", "E3", "E4", "E5"]
        [checkpoint] = store.checkpoints("run_status", build=1)
        at = checkpoint.position
        events = [
            parked_event(
                projection="run_status",
                position=position,
                partition=WHOLE,
                aggregate_id=uuid4(),
                error_type=error_type,
            )
            for position, error_type in enumerate(types, start=1)
        ]
        store.commit("run_status", 1, WHOLE, expected=at, position=at, parked=events)

        found = scrape(render_metrics(context).decode())
        by_type = {
            dict(labels)["error_type"]: value
            for (name, labels), value in found.items()
            if name == "safereplay_projection_parked_errors"
        }
        rows = Counter(p.error_type for p in store.parked("run_status"))
        assert sum(by_type.values()) == sum(rows.values()) == len(types)
        assert found[("safereplay_projection_parked_events", board())] == len(types)
        assert len(by_type) == MAX_ERROR_TYPES + 1, "five classes and the rest"
        assert by_type["KeyError"] == rows["KeyError"] == 3
        assert by_type["ValueError"] == rows["ValueError"] == 2
        named = {t: n for t, n in by_type.items() if t != OTHER_ERRORS}
        assert all(rows[t] == n for t, n in named.items())
        assert by_type[OTHER_ERRORS] == sum(n for t, n in rows.items() if t not in named) == 2

    def test_an_active_job_is_counted_by_kind_projection_and_partition(
        self, world: dict[str, Any]
    ) -> None:
        context = world["context"]
        planned = cli_json(
            world["admin"], "rebuild", "run_status", "-r", "later", "-w", "0", "-n", "2",
            "--max-rate", "50",
        )  # fmt: skip
        job_id = UUID(planned["job_id"])
        found = scrape(cli(world["viewer"], "metrics").stdout)
        job = (("kind", "rebuild"), ("projection", "run_status"))
        status = context.jobs.status(job_id)
        assert found[("safereplay_job_events_in_scope", job)] == status.events_in_scope > 0
        assert found[("safereplay_job_events_applied", job)] == 0
        assert found[("safereplay_job_throttle_events_per_second", job)] == 50
        assert ("safereplay_job_success_ratio", job) not in found, "nothing done yet"
        assert found[("safereplay_jobs", (("state", "planned"),))] == 1

        # A worker claims partition 0 and reports (as its commits and batches would).
        claim = context.jobs.claim("w1", lease_seconds=300, job_id=job_id)
        assert claim is not None
        context.jobs.report(
            claim, position=claim.partition.start_position + 3, events_applied=3, parked=1,
            retries=2, conflicts=1, recent_rate=12.5,
        )  # fmt: skip
        context.jobs.set_breaker(job_id, {"state": "half-open", "opened_count": 1})

        found = scrape(cli(world["viewer"], "metrics").stdout)
        status = context.jobs.status(job_id)
        assert found[("safereplay_job_events_applied", job)] == status.events_applied == 3
        assert found[("safereplay_job_events_parked", job)] == status.parked == 1
        assert found[("safereplay_job_success_ratio", job)] == 3 / 4
        assert found[("safereplay_job_retries_total", job)] == status.retries == 2
        assert found[("safereplay_job_conflicts_total", job)] == status.conflicts == 1
        assert found[("safereplay_job_events_per_second", job)] == 12.5
        assert found[("safereplay_job_seconds_since_progress", job)] >= 0
        assert [
            state
            for state in ("closed", "half-open", "open")
            if found[("safereplay_job_breaker_state", (*job, ("state", state)))] == 1
        ] == ["half-open"]
        for p in status.partitions:
            labels = tuple(sorted((*job, ("partition", str(p.partition_index)))))
            assert found[("safereplay_job_partition_events_done", labels)] == p.done
            assert found[("safereplay_job_partition_events_in_scope", labels)] == p.scope
            assert found[("safereplay_job_partition_position", labels)] == p.position
        assert [p.done for p in status.partitions] == [4, 0]
        assert not any(str(job_id) in value for _, labels in found for _, value in labels)

    def test_json_lists_the_same_samples(self, world: dict[str, Any]) -> None:
        text = cli(world["viewer"], "metrics").stdout
        listed = cli_json(world["viewer"], "metrics")
        assert {
            (s["name"], tuple(sorted(s["labels"].items()))): s["value"] for s in listed
        } == scrape(text)
        assert set(listed[0]) == {"name", "labels", "value"}

    def test_a_scrape_needs_a_viewer_grant(self, world: dict[str, Any]) -> None:
        result = cli(world["stranger"], "metrics")
        assert result.exit_code == 3, result.output
        assert "'mallory' may not metrics" in result.output


class TestSQLiteMetrics(MetricsContract):
    def settings(self, request: pytest.FixtureRequest, tmp_path: Path) -> DomainSettings:
        key_file = request.getfixturevalue("key_file")
        return DomainSettings.from_env(
            backend="sqlite", sqlite_path=tmp_path / "events.db", key_file=key_file
        )


@pytest.mark.postgres
class TestPostgresMetrics(MetricsContract):
    def settings(self, request: pytest.FixtureRequest, tmp_path: Path) -> DomainSettings:
        settings: DomainSettings = request.getfixturevalue("postgres_settings")()
        return settings

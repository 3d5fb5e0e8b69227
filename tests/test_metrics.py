"""Issue #19 point 1: ``safereplay metrics`` exposes Prometheus metrics computed from
the database on each scrape, and they say what the store says; ``worker`` and
``follow`` serve their own process's counters with ``--metrics-port``.

- after a first build (catch-up, nothing parked): the projection's position is the
  log's head, its lag and backlog 0, nothing parked, re-driven or skipped;
- after more events are recorded: its lag in positions is the new positions, its
  backlog the new events of its types, its lag in seconds the time between the
  newest event and the oldest one it has still to apply;
- parked events are counted by error class: the five most frequent, then "other";
- an active job shows its progress by kind, projection and partition (never job id),
  with its rate, throttle, retries, conflicts, success ratio and breaker state;
- ``--json`` lists the same samples as {name, labels, value};
- a scrape needs a viewer grant;
- ``safereplay worker --metrics-port`` serves the events it applied, as the job counts
  them; a follower's counters agree with the rows it wrote and the events it parked;
- every family is named by the conventions (prefix, ``_total`` counters, no id label);
- issue #20 point 5: a reaction's position, events behind, deliveries per destination
  and state, oldest undelivered age and breaker are the ledger's (after a receiver on
  127.0.0.1 refused every completion); a scraper without a grant on ``reaction:*``
  gets none of them.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
from projection_fixtures import parked_event
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from recovery_fixtures import RunCounts, principals_world, wait_until
from typer.testing import CliRunner
from webhook_receiver import Receiver

from safereplay.domain import AutomationApp, DomainSettings
from safereplay.domain.workload import record_workload
from safereplay.projections import open_source, open_store
from safereplay.projections.reference import RunStatusBoard
from safereplay.projections.source import WHOLE, Partition
from safereplay.projections.status import projection_status
from safereplay.reactions import ReactionRunner, WebhookDestination, WebhookSecret
from safereplay.reactions.reference import RunCompletions
from safereplay.recovery.cli.app import app
from safereplay.recovery.jobs.follow import follow_projections
from safereplay.recovery.jobs.model import JobState
from safereplay.recovery.operations.metrics import render_metrics
from safereplay.recovery.operations.metrics_process import ProcessMetrics, serving_metrics
from safereplay.recovery.operations.metrics_projections import MAX_ERROR_TYPES, OTHER_ERRORS
from safereplay.recovery.resilience.backoff import Backoff
from safereplay.recovery.resilience.policies import ErrorRules, Fail, PolicySet, RetryThenPark
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


CLI = (sys.executable, "-m", "safereplay.recovery.cli")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def scrape_port(port: int) -> dict[tuple[str, Labels], float] | None:
    """The samples served at the port's /metrics (None while nothing answers)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            return scrape(answer.read().decode())
    except OSError:
        return None


def check_names(text: str, *, own: bool = True) -> set[str]:
    """The exposition's family names, checked against the conventions (``own``: only
    the ``safereplay_`` ones, the client's process metrics aside)."""
    names = set()
    for family in text_string_to_metric_families(text):
        if not own and not family.name.startswith("safereplay_"):
            assert family.name.split("_")[0] in ("process", "python"), family.name
            continue
        assert family.name.startswith("safereplay_"), family.name
        assert not any(unit in family.name for unit in ("_ms", "millis", "_minutes")), family.name
        for sample in family.samples:
            assert sample.name.endswith("_total") == (family.type == "counter"), sample.name
            assert not {"job", "job_id", "aggregate", "aggregate_id", "id"} & set(sample.labels)
        names.add(family.name)
    return names


DOC = Path(__file__).resolve().parent.parent / "docs" / "metrics.md"


def documented(section: str) -> dict[str, tuple[str, str]]:
    """docs/metrics.md's table between ``<!-- metrics:SECTION -->`` and its end:
    each metric's name -> (type, labels as written)."""
    text = DOC.read_text(encoding="utf-8")
    start = text.index(f"<!-- metrics:{section} -->")
    table = text[start : text.index(f"<!-- /metrics:{section} -->")]
    rows = re.findall(r"^\| `(safereplay_\w+)` \| (\w+) \|([^|]*)\|", table, re.MULTILINE)
    return {name: (kind, labels) for name, kind, labels in rows}


def families(text: str) -> dict[str, tuple[str, set[str]]]:
    """An exposition's own families: name (as sampled) -> (type, label names)."""
    found: dict[str, tuple[str, set[str]]] = {}
    for family in text_string_to_metric_families(text):
        if family.name.startswith("safereplay_"):
            name = family.name + ("_total" if family.type == "counter" else "")
            labels = {label for sample in family.samples for label in sample.labels}
            found[name] = (family.type, labels)
    return found


def check_documented(sections: str, exposed: dict[str, tuple[str, set[str]]]) -> None:
    """``exposed`` is what the tables of ``sections`` (separated by spaces) list."""
    listed = {k: v for section in sections.split() for k, v in documented(section).items()}
    assert set(listed) == set(exposed), "docs/metrics.md lists every metric, and only those"
    for name, (kind, labels) in exposed.items():
        assert listed[name][0] == kind, name
        assert labels <= set(re.findall(r"`(\w+)`", listed[name][1])), name


def test_the_process_metrics_are_the_documented_ones() -> None:
    metrics = ProcessMetrics("worker")
    runner = metrics.runner("rebuild")
    runner.committed("run_status", 3, [])
    runner.failed("run_status", ValueError("x"), retrying=True)
    metrics.breaker_changed("run_status", "open")
    metrics.heartbeat()
    check_documented("process", families(generate_latest(metrics.registry).decode()))


def test_the_alert_rules_use_documented_metrics() -> None:
    text = DOC.read_text(encoding="utf-8")
    rules = text[text.index("## Sample alert rules") :]
    used = set(re.findall(r"expr: .*?(safereplay_\w+)", rules))
    assert {"safereplay_projection_lag_seconds", "safereplay_projection_backlog_events"} <= used
    assert "safereplay_reaction_oldest_owed_age_seconds" in used
    assert used <= set(documented("database")) | set(documented("process")) | set(
        documented("alerts")
    ) | set(documented("reactions"))


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
        start = claim.partition.start_position
        context.jobs.report(
            claim, position=start + 3, events_applied=3, parked=1, retries=2, conflicts=1,
            recent_rate=12.5,
        )  # fmt: skip
        context.jobs.set_breaker(job_id, {"state": "half-open", "opened_count": 1})
        # Its first batch commits to the new build: progress, measured from that commit
        # (reports and lease renewals are no progress: a worker waiting reports too).
        store, build = context.projection_store, claim.job.build
        store.commit("run_status", build, Partition(0, 2), expected=start, position=start + 3)

        found = scrape(cli(world["viewer"], "metrics").stdout)
        status = context.jobs.status(job_id)
        assert found[("safereplay_job_events_applied", job)] == status.events_applied == 3
        assert found[("safereplay_job_events_parked", job)] == status.parked == 1
        assert found[("safereplay_job_success_ratio", job)] == 3 / 4
        assert found[("safereplay_job_retries_total", job)] == status.retries == 2
        assert found[("safereplay_job_conflicts_total", job)] == status.conflicts == 1
        assert found[("safereplay_job_events_per_second", job)] == 12.5
        [committed] = [
            c.committed_at
            for c in store.checkpoints("run_status", build=build)
            if c.partition == Partition(0, 2)
        ]
        assert committed is not None
        since = found[("safereplay_job_seconds_since_progress", job)]
        assert 0 <= since <= context.jobs.clock() - committed.timestamp()
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

    def test_every_family_is_named_by_the_conventions(self, world: dict[str, Any]) -> None:
        context = world["context"]
        cli_json(world["admin"], "rebuild", "run_status", "-r", "names", "-w", "0", "-n", "2")
        names = check_names(render_metrics(context).decode())
        assert {"safereplay_projection_lag_seconds", "safereplay_job_breaker_state"} <= names

    def test_the_database_metrics_are_the_documented_ones(self, world: dict[str, Any]) -> None:
        context = world["context"]
        cli_json(world["admin"], "rebuild", "run_status", "-r", "doc", "-w", "0", "--max-rate", "9")
        claim = context.jobs.claim("w1", lease_seconds=300)
        assert claim is not None
        context.jobs.report(claim, position=claim.partition.position, events_applied=1)
        [checkpoint] = context.projection_store.checkpoints("run_status", build=1)
        at = checkpoint.position
        event = parked_event(
            projection="run_status", position=1, partition=WHOLE, aggregate_id=uuid4()
        )
        context.projection_store.commit(
            "run_status", 1, WHOLE, expected=at, position=at, parked=[event]
        )
        with AutomationApp(world["settings"]) as application:
            record_workload(application, workflows=1, runs_per_workflow=1, seed=3)
        check_documented("database alerts reactions", families(render_metrics(context).decode()))

    def test_a_reactions_deliveries_are_counted_per_destination_and_state(
        self, world: dict[str, Any]
    ) -> None:
        context = world["context"]
        reaction = (("reaction", "run_completions"),)
        to = (("destination", "completions"), ("reaction", "run_completions"))
        # A viewer of the projections only (vic) gets no reaction series; ada (*) does.
        by_viewer = scrape(cli(world["viewer"], "metrics").stdout)
        assert by_viewer and not [n for n, _ in by_viewer if n.startswith("safereplay_reaction")]
        found = scrape(cli(world["admin"], "metrics").stdout)
        log = context.log
        owed = log.count(after=0, upto=log.head(), topics=RunCompletions.topics)
        assert found[("safereplay_reaction_position", reaction)] == 0
        assert found[("safereplay_reaction_behind_events", reaction)] == owed > 0

        # The receiver is down: every completion is recorded, sent once, and failed.
        with Receiver(
            WebhookSecret(b"metrics-test-webhook-secret-of-32-bytes"), mode=503
        ).start() as receiver:
            destination = WebhookDestination(
                "completions",
                receiver.url,
                secret=WebhookSecret(b"metrics-test-webhook-secret-of-32-bytes"),
            )
            with ReactionRunner(
                RunCompletions(destinations=("completions",)),
                source=context.source,
                ledger=context.ledger,
                destinations=[destination],
                policy=Fail(),
            ) as runner:
                runner.run_once()
        found = scrape(render_metrics(context).decode())
        [summary] = context.ledger.summary("run_completions")
        assert found[("safereplay_reaction_position", reaction)] == log.high_water_mark()
        assert found[("safereplay_reaction_behind_events", reaction)] == 0
        for state in ("pending", "failed", "parked", "delivered"):
            labels = (*to, ("state", state))
            assert found[("safereplay_reaction_deliveries", labels)] == getattr(summary, state)
        assert summary.failed == owed
        assert summary.oldest_owed_at is not None
        assert found[("safereplay_reaction_oldest_owed_age_seconds", to)] > 0
        breaker = {
            dict(labels)["state"]: value
            for (name, labels), value in found.items()
            if name == "safereplay_reaction_breaker_state"
        }
        assert sum(breaker.values()) == 1 and set(breaker) == {"closed", "half-open", "open"}

    def test_a_worker_serves_the_events_it_applied(self, world: dict[str, Any]) -> None:
        context = world["context"]
        planned = cli_json(world["admin"], "rebuild", "run_status", "-r", "scraped", "-w", "0")
        job_id = UUID(planned["job_id"])
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("SAFEREPLAY_")} | {
            "SAFEREPLAY_APPROVAL_REQUIRED": ""
        }
        worker = subprocess.Popen(
            [*CLI, "worker", "--job", str(job_id), "--metrics-port", str(port)],
            env=env | world["admin"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        applied = (("kind", "rebuild"), ("projection", "run_status"))
        try:
            # The worker keeps running (and serving) after its job ends: poll until the
            # job has completed and the served count has caught up with it.
            def served() -> dict[tuple[str, Labels], float] | None:
                if context.jobs.get_job(job_id).state != JobState.COMPLETED:
                    return None
                found = scrape_port(port)
                if found is None or ("safereplay_events_applied_total", applied) not in found:
                    return None
                return found

            found = wait_until(served, timeout=180, what="the worker's metrics", interval=0.2)
            status = context.jobs.status(job_id)
            assert found[("safereplay_events_applied_total", applied)] == status.events_applied
            assert status.events_applied > 0
            batches = found[("safereplay_batches_committed_total", applied)]
            assert batches >= 1
            board = (("projection", "run_status"), ("state", "closed"))
            assert found[("safereplay_breaker_state", board)] == 1
            beat = found[("safereplay_worker_heartbeat_timestamp_seconds", (("kind", "worker"),))]
            assert beat > status.job.created_at - 60
            assert any(name.startswith("process_") for name, _ in found)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
                check_names(answer.read().decode(), own=False)
        finally:
            worker.send_signal(signal.SIGTERM)
            out, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err + out

    def test_a_followers_counters_agree_with_its_rows_and_parked_events(
        self, world: dict[str, Any]
    ) -> None:
        context = world["context"]
        source = context.source
        head = source.head()
        topics = RunCounts.topics
        runs = [n.originator_id for n in source.read(after=0, upto=head, limit=1, topics=topics)]
        RunCounts.reset(poison={runs[0]})
        quick = RetryThenPark(attempts=2, backoff=Backoff(initial=0.01, jitter=0.0))
        stop = threading.Event()
        reports: list[Any] = []
        port = free_port()

        def follow() -> None:
            with serving_metrics("follow", port) as observer:
                assert isinstance(observer, ProcessMetrics)
                metrics.append(observer)
                reports.extend(
                    follow_projections(
                        [RunCounts],
                        open_store=lambda: open_store(context.domain, context.projection_settings),
                        open_source=lambda: open_source(
                            context.app, settings=context.projection_settings
                        ),
                        options=context.runner_options(),
                        stop=stop,
                        policies=PolicySet(live=ErrorRules(default=quick)),
                        observer=observer,
                    )
                )

        metrics: list[ProcessMetrics] = []
        thread = threading.Thread(target=follow, daemon=True)
        thread.start()
        store = context.projection_store
        try:
            wait_until(
                lambda: (
                    store.live_build("run_counts")
                    and min((c.position for c in store.checkpoints("run_counts")), default=0)
                    >= head
                ),
                timeout=120,
                what="the follower at the head",
                interval=0.1,
            )
            found = wait_until(lambda: scrape_port(port), timeout=60, what="/metrics")
        finally:
            stop.set()
            thread.join(timeout=120)
        assert [r.error for r in reports] == [None]
        live = (("kind", "live"), ("projection", "run_counts"))
        rows = sum(r["events"] for r in store.rows(RunCounts, "runs"))
        assert found[("safereplay_events_applied_total", live)] == rows > 0
        parked = Counter(p.error_type for p in store.parked("run_counts"))
        assert parked["ValueError"] == 1 and parked["Blocked"] > 0
        assert {
            dict(labels)["error_type"]: value
            for (name, labels), value in found.items()
            if name == "safereplay_events_parked_total"
        } == parked
        # The poison failed twice (one retry, then parked); the events behind it wait.
        errors = (("error_type", "ValueError"), ("projection", "run_counts"))
        assert found[("safereplay_handler_errors_total", errors)] == 2
        assert found[("safereplay_event_retries_total", live)] == 1
        beat = (("kind", "follow"),)
        assert found[("safereplay_worker_heartbeat_timestamp_seconds", beat)] > 0


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

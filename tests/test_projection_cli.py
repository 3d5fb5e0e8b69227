"""``safereplay status`` (human and ``--json``), the demo's projections, and the
projection settings (``SAFEREPLAY_PROJECTIONS_*``)."""

from __future__ import annotations

import io
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from projection_fixtures import Backend, Log, OnPostgres, OnSQLite
from rich.console import Console
from typer.testing import CliRunner

from safereplay.domain import ConfigurationError, DomainSettings
from safereplay.domain.workload import record_workload
from safereplay.projections import (
    REFERENCE_PROJECTIONS,
    PostgresProjectionStore,
    ProjectionSettings,
    SQLiteProjectionStore,
    open_store,
)
from safereplay.recovery.cli.app import app
from safereplay.recovery.cli.demo import run_demo
from safereplay.recovery.operations.catalog import open_operations
from safereplay.recovery.operations.context import RecoveryContext
from safereplay.recovery.operations.security import bootstrap_admin
from safereplay.recovery.security.audit import AuditKey
from safereplay.recovery.settings import RecoverySettings

#: No SAFEREPLAY_* variable of the shell reaches these commands (conftest).
pytestmark = pytest.mark.usefixtures("clean_safereplay_environment")


_VIEWERS: dict[int, dict[str, str]] = {}


def viewer_credentials(log: Log) -> dict[str, str]:
    """An audit key and a viewer's token for this log's recovery database (made once)."""
    if id(log) not in _VIEWERS:
        directory = Path(tempfile.mkdtemp(prefix="srviewer-"))
        AuditKey.generate().save(directory / "audit.key")
        context = RecoveryContext(
            domain=log.settings,
            recovery=RecoverySettings(audit_key_file=directory / "audit.key"),
        )
        try:
            admin = context.access.authenticate(bootstrap_admin(context, "ada"))
            run = open_operations(context).run
            run(admin, "principals.add", reason="test", name="vic", kind="person")
            run(admin, "grant", reason="t", name="vic", role="viewer", grant_scope="projection:*")
            token = run(admin, "token.issue", reason="test", name="vic")
        finally:
            context.close()
        _VIEWERS[id(log)] = {
            "SAFEREPLAY_AUDIT_KEY_FILE": str(directory / "audit.key"),
            "SAFEREPLAY_TOKEN": token,
        }
    return _VIEWERS[id(log)]


def cli_env(log: Log) -> dict[str, str]:
    settings = log.settings
    env = {"SAFEREPLAY_BACKEND": settings.backend, "SAFEREPLAY_KEY_FILE": str(settings.key_file)}
    env |= viewer_credentials(log)
    if settings.backend == "sqlite":
        env["SAFEREPLAY_SQLITE_PATH"] = str(settings.sqlite_path)
    else:
        assert settings.postgres_dsn is not None
        env["SAFEREPLAY_POSTGRES_DSN"] = settings.postgres_dsn.get_secret_value()
        env["SAFEREPLAY_POSTGRES_SCHEMA"] = settings.postgres_schema
    return env


class StatusCommandContract:
    @pytest.fixture
    def backend(self) -> Iterator[Backend]:
        raise NotImplementedError

    @pytest.fixture
    def log(self, backend: Backend) -> Iterator[Log]:
        with backend.fresh() as log:
            yield log

    def test_status_json_and_table(self, log: Log) -> None:
        record_workload(log.app, workflows=1, runs_per_workflow=3)
        head = log.app.head_position()
        for projection in REFERENCE_PROJECTIONS[:2]:
            log.runner(projection()).catch_up()
        result = CliRunner().invoke(app, ["status", "--json"], env=cli_env(log))
        assert result.exit_code == 0, result.output
        report = json.loads(result.output)
        assert (report["head_position"], report["high_water_mark"]) == (head, head)
        assert [p["name"] for p in report["projections"]] == ["run_status", "workflow_stats"]
        for projection in report["projections"]:
            assert (projection["position"], projection["backlog"], projection["build"]) == (
                head,
                0,
                1,
            )
            [partition] = projection["partitions"]
            assert (partition["index"], partition["count"], partition["position"]) == (0, 1, head)
            assert projection["last_commit_at"] and projection["events_applied"] > 0

        record_workload(log.app, workflows=1, runs_per_workflow=1, seed=2)
        result = CliRunner().invoke(app, ["status", "--json", "-p", "run_status"], env=cli_env(log))
        [board] = json.loads(result.output)["projections"]
        assert board["backlog"] == log.app.head_position() - head > 0

        table = CliRunner().invoke(app, ["status"], env=cli_env(log))
        assert table.exit_code == 0
        assert "run_status" in table.output and "workflow_stats" in table.output
        assert f"log head {log.app.head_position()}" in table.output

    def test_status_errors_are_messages_with_exit_code_2(self, log: Log) -> None:
        result = CliRunner().invoke(app, ["status", "-p", "nope"], env=cli_env(log))
        assert result.exit_code == 2
        assert "no projection 'nope'" in result.output
        env = cli_env(log) | {"SAFEREPLAY_PROJECTIONS_BATCH_SIZE": "0"}
        result = CliRunner().invoke(app, ["status"], env=env)
        assert result.exit_code == 2
        assert "SAFEREPLAY_PROJECTIONS_BATCH_SIZE" in result.output


class TestSQLiteStatusCommand(OnSQLite, StatusCommandContract):
    pass


@pytest.mark.postgres
class TestPostgresStatusCommand(OnPostgres, StatusCommandContract):
    pass


def test_the_demo_tells_the_whole_recovery_story(tmp_path: Path) -> None:
    output = io.StringIO()
    result = run_demo(
        tmp_path / "demo", console=Console(file=output, width=100), workflows=2, runs=3
    )
    assert result.status is not None and result.story is not None
    assert [p.name for p in result.status.projections] == sorted(
        p.name for p in REFERENCE_PROJECTIONS
    )
    assert all(
        p.position == result.head_position and p.backlog == 0 for p in result.status.projections
    )
    story = result.story
    assert story.parked >= 2 and story.redriven == story.parked, "poison parked, then re-driven"
    assert story.rebuild.job.state == "completed" and story.live_build == 2
    # A tampered row paused a rebuild; parked by the operator, the rebuild completed.
    assert story.integrity is not None
    assert (story.integrity.kind, story.integrity.resolution) == ("authentication", "park")
    assert story.integrity.job_state == "completed"
    # A downstream outage: what it missed re-delivered, each completion processed once.
    missed = story.reactions
    assert missed is not None and missed.parked > 0
    assert missed.redelivered == missed.processed == missed.parked
    assert missed.processed_twice == 0
    text = output.getvalue()
    steps = (
        "denied (and audited)",
        "parked events",
        "crash:",
        "stalled",
        "taken over",
        "paused by conflict",
    )
    for step in steps:
        assert step in text, step
    flat = " ".join(text.split())  # the lines as the console wrapped them, joined
    for step in ("the CRM went down (503)", "plan (dry run)", "re-delivered by demo-operator"):
        assert step in flat, step
    assert "row for row equal" in text and "chain and signatures intact" in text
    assert "waits for a second person" in flat and "demo-approver approves it" in flat
    with SQLiteProjectionStore(tmp_path / "demo" / "events.db") as store:
        assert store.live_build("workflow_stats") == 2
        assert store.parked("run_status") == []


def test_the_demo_runs_again_in_its_own_directory_and_nowhere_else(tmp_path: Path) -> None:
    runner = CliRunner()
    demo = ["demo", "--directory", str(tmp_path / "demo"), "--workflows", "1", "--runs", "2"]
    for attempt in (1, 2):
        result = runner.invoke(app, demo)
        assert result.exit_code == 0, f"run {attempt}: {result.output}"
        assert "audit entries that" in result.output

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    result = runner.invoke(app, ["demo", "--directory", str(mine)])
    assert result.exit_code == 2
    assert "holds files the demo did not make" in result.output
    assert [p.name for p in mine.iterdir()] == ["notes.txt"], "nothing touched"


# -- settings ------------------------------------------------------------------------------------


def test_the_projection_store_defaults_to_the_event_store(tmp_path: Path) -> None:
    sqlite = DomainSettings.from_env(sqlite_path=tmp_path / "e.db", encryption=False)
    store = open_store(sqlite, ProjectionSettings.from_env())
    assert isinstance(store, SQLiteProjectionStore) and store.path == tmp_path / "e.db"
    elsewhere = ProjectionSettings.from_env(sqlite_path=tmp_path / "views.db")
    assert open_store(sqlite, elsewhere).path == tmp_path / "views.db"  # type: ignore[attr-defined]
    postgres = DomainSettings.from_env(
        backend="postgres",
        postgres_dsn="postgresql://u:p@h:1/d",
        postgres_schema="events",
        encryption=False,
    )
    # With the TLS settings' parameters (SAFEREPLAY_POSTGRES_SSLMODE: prefer by default).
    assert ProjectionSettings().postgres_store(postgres) == (
        "user=u password=p dbname=d host=h port=1 sslmode=prefer",
        "events",
    )
    views = ProjectionSettings.from_env(
        postgres_dsn="postgresql://v@w:2/views", postgres_schema="read"
    )
    assert views.postgres_store(postgres) == (
        "user=v dbname=views host=w port=2 sslmode=prefer",
        "read",
    )
    pg_store = open_store(postgres, ProjectionSettings(postgres_schema="read"))
    assert isinstance(pg_store, PostgresProjectionStore) and pg_store.schema == "read"
    with pytest.raises(ConfigurationError, match="same kind"):
        ProjectionSettings(sqlite_path=tmp_path / "x.db").postgres_store(postgres)
    with pytest.raises(ConfigurationError, match="same kind"):
        ProjectionSettings(postgres_schema="read").sqlite_store_path(sqlite)


def test_projection_settings_come_from_their_own_prefix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SAFEREPLAY_PROJECTIONS_BATCH_SIZE", "250")
    monkeypatch.setenv("SAFEREPLAY_PROJECTIONS_REPOLL_INTERVAL", "0.5")
    monkeypatch.setenv("SAFEREPLAY_BATCH_SIZE", "7")  # not ours
    settings = ProjectionSettings.from_env()
    assert (settings.batch_size, settings.repoll_interval) == (250, 0.5)
    from safereplay.projections import RunnerOptions

    assert RunnerOptions.from_settings(settings).batch_size == 250
    monkeypatch.setenv("SAFEREPLAY_PROJECTIONS_POSTGRES_DSN", "postgresql://u:secret@h/d")
    monkeypatch.setenv("SAFEREPLAY_PROJECTIONS_POSTGRES_SCHEMA", "Not An Identifier")
    monkeypatch.setenv("SAFEREPLAY_PROJECTIONS_POLL_INTERVAL", "-1")
    with pytest.raises(ConfigurationError) as info:
        ProjectionSettings.from_env()
    message = str(info.value)
    assert "SAFEREPLAY_PROJECTIONS_POLL_INTERVAL" in message
    assert "secret" not in message
    monkeypatch.delenv("SAFEREPLAY_PROJECTIONS_POLL_INTERVAL")
    with pytest.raises(ConfigurationError, match="SAFEREPLAY_PROJECTIONS_POSTGRES_SCHEMA"):
        ProjectionSettings.from_env()

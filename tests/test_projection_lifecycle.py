"""Issue #18, the first hour: a projection's lifecycle is visible and its rows readable.

- ``safereplay projections`` lists every registered projection (never-built ones too)
  with its version, live build, state and backlog;
- the first ``catch-up`` of a never-built projection leaves a live build 1 with its
  rows, and a new version's rebuild is not refused by the live build's version;
- ``safereplay rows`` reads a projection's rows, with its table and columns checked
  against the projection's declarations (viewer grant needed);
- ``safereplay status`` shows the events parked *now*, the re-driven ones apart.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from recovery_fixtures import principals_world
from typer.testing import CliRunner

from safereplay.domain import AutomationApp, DomainSettings
from safereplay.domain.workload import record_workload
from safereplay.projections import (
    FailFast,
    ProjectionRunner,
    RunStatusBoard,
    open_source,
    open_store,
)
from safereplay.recovery.cli.app import app
from safereplay.recovery.operations.catalog import open_operations
from safereplay.recovery.operations.context import RecoveryContext
from safereplay.recovery.security.access import AccessDenied
from safereplay.recovery.security.audit import AuditKey

#: No SAFEREPLAY_* variable of the shell reaches these commands (conftest).
pytestmark = pytest.mark.usefixtures("clean_safereplay_environment")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def world(
    request: pytest.FixtureRequest, tmp_path: Path, key_file: Path
) -> Iterator[dict[str, Any]]:
    """A recorded workload, no projection built; an admin's, a viewer's and a
    stranger's environments."""
    AuditKey.generate().save(tmp_path / "audit.key")
    if request.param == "sqlite":
        settings = DomainSettings.from_env(
            backend="sqlite", sqlite_path=tmp_path / "events.db", key_file=key_file
        )
    else:
        settings = request.getfixturevalue("postgres_settings")()
    with AutomationApp(settings) as application:
        record_workload(application, workflows=2, runs_per_workflow=3, seed=5)
        head = application.head_position()
    context, envs = principals_world(settings, tmp_path / "audit.key")
    yield {
        "settings": settings,
        "context": context,
        "head": head,
        **envs,
    }
    context.close()


def cli(env: dict[str, str], *args: str) -> Any:
    return CliRunner().invoke(app, list(args), env=env)


def cli_json(env: dict[str, str], *args: str) -> Any:
    result = cli(env, *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def rebuild_in_process(
    env: dict[str, str], projection: str, *extra: str, command: str = "rebuild"
) -> dict[str, Any]:
    """Plan a rebuild or catch-up (no local worker processes) and run it with an
    in-process worker."""
    planned = cli_json(env, command, projection, "-r", "t", "-w", "0", *extra)
    done = cli(env, "worker", "--job", planned["job_id"], "--exit-when-idle")
    assert done.exit_code == 0, done.output
    return planned


def build_first(env: dict[str, str], projection: str, *extra: str) -> dict[str, Any]:
    return rebuild_in_process(env, projection, *extra, command="catch-up")


def test_projections_lists_never_built_ones_and_the_first_build_is_live(
    world: dict[str, Any],
) -> None:
    listed = {p["name"]: p for p in cli_json(world["viewer"], "projections")}
    assert set(listed) == {"run_status", "workflow_stats", "failed_steps"}
    board = listed["run_status"]
    assert (board["state"], board["live_build"], board["version"]) == ("not built", None, 1)
    assert board["backlog"] == world["head"] and board["builds"] == []

    # Its dry run says what the first rebuild does: build 1, live when complete.
    dry = cli_json(world["admin"], "rebuild", "run_status", "-r", "t", "-n", "2", "--dry-run")
    [plan] = dry["projections"]
    assert (plan["live_build"], plan["writes_build"]) == (None, 1)
    assert "run_status was never built: build 1 is built live" in plan["notes"][0]
    again = {p["name"]: p for p in cli_json(world["viewer"], "projections")}
    assert again["run_status"]["builds"] == [], "a dry run makes no build"

    planned = rebuild_in_process(world["admin"], "run_status", "-n", "2")
    assert (planned["build"], planned["live"]) == (1, True), "the first rebuild is built live"

    with open_store(world["settings"]) as store:
        assert [(b.build, b.status) for b in store.builds("run_status")] == [(1, "live")]
        rows = store.rows(RunStatusBoard, "runs")
        assert len(rows) == 6, "the first build is live with its rows"
        assert [c.partition.count for c in store.checkpoints("run_status")] == [1], "sealed"
    listed = {p["name"]: p for p in cli_json(world["viewer"], "projections")}
    board = listed["run_status"]
    assert (board["state"], board["live_build"], board["backlog"]) == ("caught up", 1, 0)
    assert board["builds"] == [{"build": 1, "version": 1, "status": "live"}]
    assert listed["failed_steps"]["state"] == "not built"

    # A second rebuild goes beside the live one, and a swap makes it live.
    second = rebuild_in_process(world["admin"], "run_status")
    assert (second["build"], second["live"]) == (2, False)
    assert cli_json(world["admin"], "swap", "run_status", "-r", "t")["live"] == 2
    table = cli(world["viewer"], "projections")
    assert table.exit_code == 0, table.output
    assert "not built" in table.output and "caught up" in table.output


def test_the_first_build_fills_an_empty_live_build_a_follower_made(
    world: dict[str, Any],
) -> None:
    with open_store(world["settings"]) as store:
        assert store.prepare(RunStatusBoard) == 1  # what a follower or runner start does
    listed = {p["name"]: p for p in cli_json(world["viewer"], "projections")}
    assert (listed["run_status"]["state"], listed["run_status"]["live_build"]) == ("not built", 1)
    planned = build_first(world["admin"], "run_status")
    assert planned["build"] == 1
    with open_store(world["settings"]) as store:
        assert [b.build for b in store.builds("run_status")] == [1]
        assert len(store.rows(RunStatusBoard, "runs")) == 6


def test_the_first_catch_up_is_live_with_its_rows(world: dict[str, Any]) -> None:
    planned = cli_json(world["admin"], "catch-up", "run_status", "-r", "t", "-w", "0")
    done = cli(world["admin"], "worker", "--job", planned["job_id"], "--exit-when-idle")
    assert done.exit_code == 0, done.output
    rows = cli_json(world["viewer"], "rows", "run_status", "runs")
    assert rows["build"] == 1 and len(rows["rows"]) == 6


def test_rows_reads_filters_and_limits(world: dict[str, Any]) -> None:
    never = cli(world["viewer"], "rows", "run_status", "runs")
    assert never.exit_code == 2 and "no build yet" in never.output
    build_first(world["admin"], "run_status")
    with open_store(world["settings"]) as store:
        everything = store.rows(RunStatusBoard, "runs")

    result = cli_json(world["viewer"], "rows", "run_status", "runs")
    assert [r["run_id"] for r in result["rows"]] == [r["run_id"] for r in everything]
    assert result["columns"][0] == "run_id" and result["truncated"] is False

    failed = [r for r in everything if r["failures"] > 0]
    assert failed and len(failed) < len(everything)
    result = cli_json(world["viewer"], "rows", "run_status", "runs", "--where", "failures=0")
    assert {r["run_id"] for r in result["rows"]} == {
        r["run_id"] for r in everything if r["failures"] == 0
    }
    first = everything[0]
    result = cli_json(
        world["viewer"],
        "rows",
        "run_status",
        "runs",
        "--where",
        f"run_id={first['run_id']}",
        "--where",
        f"status={first['status']}",
    )
    assert [r["run_id"] for r in result["rows"]] == [first["run_id"]]
    limited = cli_json(world["viewer"], "rows", "run_status", "runs", "--limit", "2")
    assert len(limited["rows"]) == 2 and limited["truncated"] is True
    built = cli_json(world["viewer"], "rows", "run_status", "runs", "--build", "1")
    assert built["build"] == 1

    human = cli(world["viewer"], "rows", "run_status", "runs", "--limit", "1")
    assert human.exit_code == 0 and "1 row(s)" in human.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope", "runs"], "unknown projection 'nope'"),
        (["run_status", "nope"], "has no table 'nope' (it has runs)"),
        (["run_status", "runs", "--where", "x=1"], "has no column 'x' (it has run_id"),
        (
            ["run_status", "runs", "--where", "failures=0; DROP TABLE x"],
            "failures holds integer values",
        ),
        (["run_status", "runs", "--where", "status"], "is not COLUMN=VALUE"),
        (["run_status", "runs", "--build", "7"], "has no build 7"),
    ],
)
def test_rows_refuses_unknown_identifiers_naming_them(
    world: dict[str, Any], args: list[str], message: str
) -> None:
    build_first(world["admin"], "run_status")
    result = cli(world["viewer"], "rows", *args)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())


def test_rows_and_projections_need_a_viewer_grant(world: dict[str, Any]) -> None:
    build_first(world["admin"], "run_status")
    for command in (["rows", "run_status", "runs"], ["projections"]):
        result = cli(world["stranger"], *command)
        assert result.exit_code == 3, result.output
        assert "'mallory' may not" in result.output
    context: RecoveryContext = world["context"]
    mallory = context.access.authenticate(world["stranger"]["SAFEREPLAY_TOKEN"])
    with pytest.raises(AccessDenied, match="may not rows on 'projection:run_status'"):
        open_operations(context).run(mallory, "rows", projection="run_status", table="runs")
    entries = context.audit.entries(limit=1000)
    assert [e.action for e in entries if e.actor == "mallory" and e.outcome == "denied"] == [
        "rows",
        "projections",
        "rows",
    ]


def test_status_shows_events_parked_now_and_re_driven_apart(world: dict[str, Any]) -> None:
    """A poison event parked, then re-driven: status says 0 parked now, 1 re-driven."""
    from safereplay.domain import Envelope
    from safereplay.domain.automation import Run
    from safereplay.projections import (
        BatchState,
        Decision,
        EventFailure,
        Projection,
        Table,
        handles,
    )

    class ParkIt:
        def decide(self, failure: EventFailure) -> Decision:
            return Decision.park("poison")

    class Picky(Projection):
        name = "picky"
        tables = (Table("runs", key={"run_id": "text"}, values={"events": "integer"}),)
        poisoned = True

        @handles(Run.Started)
        def started(self, envelope: Envelope, state: BatchState) -> None:
            if Picky.poisoned:
                raise ValueError("poison")
            state.merge("runs", envelope.aggregate_id, add={"events": 1})

    settings = world["settings"]
    with (
        AutomationApp(settings) as application,
        open_store(settings) as store,
        open_source(application) as source,
    ):
        ProjectionRunner(Picky(), source=source, store=store, policy=ParkIt()).catch_up()
        parked = store.parked("picky")
        assert parked, "something was parked"
        report = cli_json(world["viewer"], "status", "-p", "picky")
        [board] = report["projections"]
        assert (board["parked_now"], board["redriven"]) == (len(parked), 0)
        assert board["partitions"][0]["parked_now"] == len(parked)

        from safereplay.recovery.jobs.redrive import redrive_parked

        Picky.poisoned = False
        result = redrive_parked(Picky(), build=1, store=store, source=source)
        assert result.resolved == len(parked) and result.still_parked == 0
        ProjectionRunner(Picky(), source=source, store=store, policy=FailFast()).catch_up()
    report = cli_json(world["viewer"], "status", "-p", "picky")
    [board] = report["projections"]
    assert (board["parked_now"], board["redriven"]) == (0, len(parked))
    assert board["events_parked"] == len(parked), "the running total stays"
    table = cli(world["viewer"], "status", "-p", "picky")
    assert "re-driven" in table.output
    row = next(line for line in table.output.splitlines() if line.strip().startswith("picky"))
    cells = row.split()
    # projection build part position backlog applied parked re-driven committed
    assert (cells[6], cells[7]) == ("0", str(len(parked))), row


def test_a_new_version_is_rebuilt_beside_the_live_build(
    world: dict[str, Any],
) -> None:
    """The live build made by version 1 does not stop the rebuild of version 2 (the
    swap of it runs in docs/quickstart.md, whose projection module workers import)."""
    from safereplay.recovery.jobs.plans import JobRequest, start_rebuild
    from safereplay.recovery.registry import ProjectionRegistry

    class BoardV2(RunStatusBoard):
        version = 2

    build_first(world["admin"], "run_status")
    context: RecoveryContext = world["context"]
    registry = ProjectionRegistry.of([BoardV2])
    job = start_rebuild(
        JobRequest(principal="ada", reason="v2"),
        projection="run_status",
        store=context.projection_store,
        source=context.source,
        jobs=context.jobs,
        registry=registry,
    )
    assert job.build == 2, "beside the live build, not in it"
    builds = {b.build: (b.version, b.status) for b in context.projection_store.builds("run_status")}
    assert builds == {1: (1, "live"), 2: (2, "building")}

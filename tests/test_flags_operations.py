"""Flags and the operations switch through the dispatch layer and the CLI, on both backends."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from recovery_fixtures import RunCounts, principals_world, wait_until
from typer.testing import CliRunner

from safereplay.domain import AutomationApp, DomainSettings
from safereplay.domain.workload import record_workload
from safereplay.projections import REFERENCE_PROJECTIONS, open_source, open_store
from safereplay.recovery.cli.app import app
from safereplay.recovery.errors import InvalidRequest, OperationsFrozen
from safereplay.recovery.jobs.follow import follow_projections
from safereplay.recovery.jobs.heartbeats import FollowerHeartbeats
from safereplay.recovery.operations import auto_rebuild as auto_rebuild_module
from safereplay.recovery.operations.auto_rebuild import auto_rebuild
from safereplay.recovery.operations.automation import (
    RESTART_ACTION,
    StallRestarts,
    auto_catch_up,
    auto_redrive,
    backlog_of,
)
from safereplay.recovery.operations.catalog import open_operations
from safereplay.recovery.operations.flags import run_automatic
from safereplay.recovery.registry import ProjectionRegistry
from safereplay.recovery.security.audit import AuditKey
from safereplay.recovery.security.flags import Flag, FlagName, FlagStore

TARGET = "projection:run_status"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def world(
    request: pytest.FixtureRequest, tmp_path: Path, key_file: Path
) -> Iterator[dict[str, Any]]:
    """ada (admin), vic (viewer), olga and oscar (operators on *), otto (operator of
    run_status only), each with a CLI environment."""
    AuditKey.generate().save(tmp_path / "audit.key")
    if request.param == "sqlite":
        settings = DomainSettings.from_env(
            backend="sqlite", sqlite_path=tmp_path / "events.db", key_file=key_file
        )
    else:
        settings = request.getfixturevalue("postgres_settings")()
    with AutomationApp(settings) as application:
        record_workload(application, workflows=1, runs_per_workflow=3, seed=2)
    context, envs = principals_world(settings, tmp_path / "audit.key")
    operations = open_operations(context)
    ada = context.access.authenticate(envs["admin"]["SAFEREPLAY_TOKEN"])
    people: dict[str, Any] = {"ada": ada}
    for name, scope in (("olga", "*"), ("oscar", "*"), ("otto", TARGET)):
        operations.run(ada, "principals.add", reason="t", name=name, kind="person")
        operations.run(ada, "grant", reason="t", name=name, role="operator", grant_scope=scope)
        token = operations.run(ada, "token.issue", reason="t", name=name)
        people[name] = context.access.authenticate(token)
        envs[name] = envs["admin"] | {"SAFEREPLAY_TOKEN": token}
    people["vic"] = context.access.authenticate(envs["viewer"]["SAFEREPLAY_TOKEN"])
    yield {"context": context, "run": operations.run, "envs": envs, **people}
    context.close()


def cli(env: dict[str, str], *args: str) -> Any:
    return CliRunner().invoke(app, list(args), env=env)


def test_flags_set_list_history_unset_from_the_cli(world: dict[str, Any]) -> None:
    otto = world["envs"]["otto"]
    result = cli(
        otto, "flags", "set", "auto_catch_up", TARGET, "--on", "--share", "25",
        "--backlog-threshold", "500", "-r", "let it catch up alone",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "auto_catch_up on projection:run_status: on, 25% of partitions" in result.output
    # Only the threshold changes: the rest is kept.
    result = cli(
        otto, "flags", "set", "auto_catch_up", TARGET, "--backlog-threshold", "900",
        "-r", "fewer catch-ups", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    change = json.loads(result.output)
    assert change["old_value"]["backlog_threshold"] == 500
    assert change["new_value"] == {
        **change["old_value"],
        "backlog_threshold": 900,
    }
    listed = json.loads(cli(world["envs"]["viewer"], "flags", "list", "--json").output)
    assert [(f["name"], f["enabled"]) for f in listed["flags"]] == [("auto_catch_up", True)]
    assert listed["switch"]["frozen"] is False
    result = cli(otto, "flags", "unset", "auto_catch_up", TARGET, "-r", "done")
    assert result.exit_code == 0, result.output
    history = json.loads(cli(world["envs"]["viewer"], "flags", "history", "--json").output)[
        "history"
    ]
    assert [(h["actor"], h["reason"]) for h in history] == [
        ("otto", "done"),
        ("otto", "fewer catch-ups"),
        ("otto", "let it catch up alone"),
    ]
    # The audit entries carry the old and the new value too.
    entries = [
        e
        for e in world["context"].audit.entries(limit=10_000)
        if e.action == "flags.set" and e.outcome == "succeeded"
    ]
    assert entries[-1].parameters["old_value"]["backlog_threshold"] == 500
    assert entries[-1].parameters["new_value"]["backlog_threshold"] == 900


def test_flags_are_refused_outside_the_grant_and_with_bad_values(world: dict[str, Any]) -> None:
    otto = world["envs"]["otto"]
    result = cli(otto, "flags", "set", "auto_redrive", "projection:other", "--on", "-r", "x")
    assert result.exit_code == 3, result.output
    result = cli(otto, "flags", "set", "auto_everything", TARGET, "--on", "-r", "x")
    assert result.exit_code == 2 and "unknown flag 'auto_everything'" in result.output
    result = cli(
        otto, "flags", "set", "auto_redrive", TARGET, "--backlog-threshold", "5", "-r", "x"
    )
    assert result.exit_code == 2 and "auto_catch_up only" in result.output
    result = cli(otto, "flags", "set", "auto_redrive", TARGET, "--on")
    assert result.exit_code == 2 and "--reason" in result.output
    assert (
        json.loads(cli(world["envs"]["viewer"], "flags", "history", "--json").output)["history"]
        == []
    )


def test_a_frozen_switch_refuses_every_change_but_the_holders(world: dict[str, Any]) -> None:
    run, olga, oscar, ada = world["run"], world["olga"], world["oscar"], world["ada"]
    frozen = run(olga, "switch.freeze", reason="incident 42")
    assert frozen["frozen"] and frozen["held_by"] == "olga"
    # An admin's change is refused, audited as denied, naming the holder and reason.
    with pytest.raises(OperationsFrozen, match="frozen by 'olga' \\(incident 42\\)"):
        run(ada, "rebuild", reason="fix", projection="run_status")
    last = world["context"].audit.entries(limit=10_000)[-1]
    assert (last.actor, last.action, last.outcome) == ("ada", "rebuild", "denied")
    assert "OperationsFrozen" in last.parameters["error"]
    # From the CLI: a clear message and exit code 7.
    result = cli(world["envs"]["admin"], "rebuild", "run_status", "-r", "fix", "--json")
    assert result.exit_code == 7, result.output
    error = json.loads(result.output)["error"]
    assert error["code"] == "frozen" and "olga" in error["message"]
    # Reads run; the holder's changes run.
    assert run(ada, "switch.status")["held_by"] == "olga"
    assert run(ada, "flags.list")["switch"]["reason"] == "incident 42"
    run(olga, "flags.set", reason="during the freeze", flag="auto_redrive", target=TARGET)
    # Another operator may not unfreeze, nor freeze over it; an admin may unfreeze.
    with pytest.raises(InvalidRequest, match="only they or an admin"):
        run(oscar, "switch.unfreeze", reason="mine now")
    with pytest.raises(OperationsFrozen):
        run(oscar, "switch.freeze", reason="me too")
    run(ada, "switch.unfreeze", reason="olga is off shift")
    assert not run(ada, "switch.status")["frozen"]
    run(ada, "flags.unset", reason="after the freeze", flag="auto_redrive", target=TARGET)
    history = run(ada, "flags.history", switch_only=True)["history"]
    assert [(h["actor"], h["new_value"]["frozen"]) for h in history] == [
        ("ada", False),
        ("olga", True),
    ]


def test_the_switch_from_the_cli(world: dict[str, Any]) -> None:
    olga = world["envs"]["olga"]
    result = cli(olga, "switch", "freeze", "-r", "release freeze")
    assert result.exit_code == 0 and "operations frozen by olga" in result.output
    result = cli(world["envs"]["viewer"], "switch", "status")
    assert result.exit_code == 0 and "FROZEN by olga" in result.output
    result = cli(world["envs"]["otto"], "flags", "set", "auto_redrive", TARGET, "--on", "-r", "x")
    assert result.exit_code == 7
    assert "operations are frozen by 'olga' (release freeze)" in result.output
    result = cli(olga, "switch", "unfreeze", "-r", "release done")
    assert result.exit_code == 0 and "operations unfrozen" in result.output


def test_automatic_actions_are_the_systems_and_stop_while_frozen(world: dict[str, Any]) -> None:
    context, run = world["context"], world["run"]
    flag = Flag(FlagName.AUTO_REDRIVE, TARGET, enabled=True)
    done = run_automatic(
        context, flag=flag, action="auto.redrive", parameters={"n": 1}, work=lambda: "ran"
    )
    assert done == "ran"
    entries = context.audit.entries(limit=10_000)
    assert [(e.actor, e.outcome) for e in entries[-2:]] == [
        ("system", "started"),
        ("system", "succeeded"),
    ]
    assert entries[-1].parameters["flag"]["name"] == "auto_redrive"
    run(world["olga"], "switch.freeze", reason="incident")
    ran: list[int] = []
    refused = run_automatic(
        context, flag=flag, action="auto.redrive", parameters={}, work=lambda: ran.append(1)
    )
    assert refused is None and ran == []
    last = context.audit.entries(limit=10_000)[-1]
    assert (last.actor, last.outcome) == ("system", "denied")
    assert "frozen by 'olga'" in last.parameters["error"]


def test_auto_catch_up_starts_a_job_for_the_rollout_when_follow_starts(
    world: dict[str, Any],
) -> None:
    context, run, ada = world["context"], world["run"], world["ada"]
    # Off (the default), or on but under its threshold: nothing starts.
    assert auto_catch_up(context, ["run_status"]) == []
    run(
        ada, "flags.set", reason="t", flag="auto_catch_up", target=TARGET, enabled=True,
        backlog_threshold=1_000_000,
    )  # fmt: skip
    assert auto_catch_up(context, ["run_status"]) == []
    assert backlog_of(context, "run_status") > 3
    # Over it, rolled out to partitions 0 and 2: `follow` starts a catch-up job whose
    # other partitions are held, as the system, audited with the flag.
    run(
        ada, "flags.set", reason="t", flag="auto_catch_up", target=TARGET,
        backlog_threshold=3, partitions="0,2",
    )  # fmt: skip
    run(ada, "follow", reason="live", projections=["run_status"], stop_after=0.5)
    (job,) = context.jobs.list_jobs(projection="run_status")
    assert (job.kind, job.principal) == ("catch-up", "system")
    held = [p.partition_index for p in context.jobs.partitions(job.job_id) if p.status == "held"]
    assert held == [1, 3]
    (entry,) = [
        e
        for e in context.audit.entries(limit=10_000)
        if e.action == "auto.catch_up" and e.outcome == "succeeded"
    ]
    assert entry.actor == "system" and entry.parameters["flag"]["name"] == "auto_catch_up"
    assert entry.parameters["held_partitions"] == [1, 3]
    # A projection with an active job is left alone.
    assert auto_catch_up(context, ["run_status"]) == []


def test_auto_restart_stalled_restarts_up_to_its_cap_then_leaves_it(
    world: dict[str, Any],
) -> None:
    context, run, ada = world["context"], world["run"], world["ada"]
    # A follower that beats but has not moved for 1000 s with events to go: stalled.
    FollowerHeartbeats(context.database).beat(
        projection="run_status", partition="0/1", build=1, owner="host:1", position=1, retries=0
    )
    with context.database.transaction(write=True) as tx:
        tx.execute("UPDATE {followers} SET advanced_at = advanced_at - 1000")
    restarts: list[str] = []

    def check() -> list[str]:
        # A new follow process each time: the cap is counted in the audit trail.
        return StallRestarts(context, ["run_status"], after_seconds=60)(restarts.append)

    assert check() == [] and restarts == [], "the flag is off by default"
    run(
        ada, "flags.set", reason="t", flag="auto_restart_stalled", target=TARGET, enabled=True,
        max_restarts=2, window_seconds=3600,
    )  # fmt: skip
    decider = StallRestarts(context, ["run_status"], after_seconds=60)
    assert decider(restarts.append) == ["run_status"]
    assert decider(restarts.append) == [], "a restarted follower gets time to move"
    assert check() == ["run_status"]
    assert check() == [] and check() == []
    assert restarts == ["run_status", "run_status"]
    entries = [e for e in context.audit.entries(limit=10_000) if e.action == RESTART_ACTION]
    assert [(e.actor, e.outcome) for e in entries] == [
        ("system", "started"),
        ("system", "succeeded"),
        ("system", "started"),
        ("system", "succeeded"),
        ("system", "denied"),
        ("system", "denied"),
    ]
    assert "left for a human" in entries[-1].parameters["error"]
    assert entries[1].parameters["flag"]["max_restarts"] == 2


def test_auto_redrive_redrives_parked_events_after_a_code_version_change(
    world: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    context, run, ada = world["context"], world["run"], world["ada"]
    context.registry = ProjectionRegistry.of([*REFERENCE_PROJECTIONS, RunCounts])
    target = "projection:run_counts"
    run(ada, "flags.set", reason="t", flag="auto_redrive", target=target, enabled=True)
    (first_run,) = context.log.read(
        after=0, upto=context.log.head(), limit=1, topics=list(RunCounts.topics)
    )
    poison = first_run.originator_id
    RunCounts.reset(poison={poison})
    store = context.projection_store
    followed: list[Any] = []
    follower = threading.Thread(
        target=lambda: followed.append(
            run(ada, "follow", reason="live", projections=["run_counts"], stop_after=3)
        ),
        daemon=True,
    )
    follower.start()
    wait_until(
        lambda: store.live_build("run_counts") is not None and bool(store.parked("run_counts")),
        timeout=60,
        what="the poison parked",
    )
    follower.join(timeout=120)
    assert followed, "follow ended"
    # Parked events seen under version 1 (recorded): nothing to re-drive yet.
    assert auto_redrive(context, ["run_counts"]) == []
    assert FlagStore(context.database).mark("auto_redrive", target) == "1"
    # The fix is deployed as version 2: the next start re-drives them, as the system.
    RunCounts.reset()
    monkeypatch.setattr(RunCounts, "version", 2)
    (started,) = auto_redrive(context, ["run_counts"])
    job = context.jobs.get_job(UUID(started["job_id"]))
    assert (job.kind, job.principal) == ("redrive", "system")
    entry = context.audit.entries(limit=10_000)[-1]
    assert (entry.actor, entry.action, entry.outcome) == ("system", "auto.redrive", "succeeded")
    assert entry.parameters["parked_under_version"] == "1" and entry.parameters["version"] == "2"
    assert FlagStore(context.database).mark("auto_redrive", target) == "2"


def test_auto_rebuild_rebuilds_a_new_version_and_swaps_after_a_matching_drill(
    world: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    context, run, ada = world["context"], world["run"], world["ada"]
    first = run(ada, "rebuild", reason="first build", projection="run_status")
    run(ada, "worker", reason="t", job_id=first["job_id"], exit_when_idle=True)
    store = context.projection_store
    live = store.live_build("run_status")
    # A new code version is deployed; with the flag off (the default) nothing happens.
    monkeypatch.setattr(context.registry["run_status"], "version", 2)
    assert auto_rebuild(context, ["run_status"]) == []
    run(ada, "flags.set", reason="CHG-90", flag="auto_rebuild", target=TARGET, enabled=True)
    (started,) = auto_rebuild(context, ["run_status"])
    assert started["action"] == "auto.rebuild"
    job = context.jobs.get_job(UUID(started["result"]["job_id"]))
    assert (job.kind, job.principal) == ("rebuild", "system")
    assert store.live_build("run_status") == live, "nothing is swapped before its drill"
    run(ada, "worker", reason="t", job_id=str(job.job_id), exit_when_idle=True)
    (swapped,) = auto_rebuild(context, ["run_status"])
    assert swapped["action"] == "auto.rebuild.swap" and swapped["result"]["swapped"] is True
    assert store.live_build("run_status") == job.build
    assert auto_rebuild(context, ["run_status"]) == [], "the live build is the new version"
    actions = [
        (e.actor, e.action, e.outcome)
        for e in context.audit.entries(limit=10_000)
        if e.action.startswith("auto.rebuild")
    ]
    assert actions == [
        ("system", "auto.rebuild", "started"),
        ("system", "auto.rebuild", "succeeded"),
        ("system", "auto.rebuild.swap", "started"),
        ("system", "auto.rebuild.swap", "succeeded"),
    ]


def test_auto_rebuild_never_swaps_a_build_whose_drill_does_not_match(
    world: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    context, run, ada = world["context"], world["run"], world["ada"]
    first = run(ada, "rebuild", reason="first build", projection="run_status")
    run(ada, "worker", reason="t", job_id=first["job_id"], exit_when_idle=True)
    store = context.projection_store
    live = store.live_build("run_status")
    monkeypatch.setattr(context.registry["run_status"], "version", 2)
    run(ada, "flags.set", reason="CHG-91", flag="auto_rebuild", target=TARGET, enabled=True)
    (started,) = auto_rebuild(context, ["run_status"])
    job = context.jobs.get_job(UUID(started["result"]["job_id"]))
    run(ada, "worker", reason="t", job_id=str(job.job_id), exit_when_idle=True)
    # The drill of the new build diverges (as if its rows differed from a clean fold).
    real_drill = auto_rebuild_module.run_drill
    monkeypatch.setattr(
        auto_rebuild_module,
        "run_drill",
        lambda *args, **kwargs: replace(real_drill(*args, **kwargs), match=False),
    )
    (drilled,) = auto_rebuild(context, ["run_status"])
    assert drilled["action"] == "auto.rebuild.swap"
    assert drilled["result"]["swapped"] is False
    assert store.live_build("run_status") == live, "a build whose drill diverged stays out"
    # ... and shown as a conflict (on_integrity_failure = pause, the default).
    [conflict] = context.conflicts.list()
    assert (conflict.kind, conflict.projection, conflict.build) == (
        "drill",
        "run_status",
        job.build,
    )
    # Left for a human: not drilled again, never swapped by a later step.
    assert auto_rebuild(context, ["run_status"]) == []
    assert store.live_build("run_status") == live
    assert [
        (e.actor, e.action, e.outcome)
        for e in context.audit.entries(limit=10_000)
        if e.action == "auto.rebuild.swap"
    ] == [("system", "auto.rebuild.swap", "started"), ("system", "auto.rebuild.swap", "succeeded")]


def test_the_follow_loop_restarts_a_follower_it_is_asked_to(
    world: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    context = world["context"]
    stop = threading.Event()
    runners: list[Any] = []
    calls: list[int] = []

    def after_beat(restart: Any) -> None:
        calls.append(1)
        if len(calls) == 1:
            restart("run_status")  # as StallRestarts does for a stalled follower
        else:
            stop.set()

    reports = follow_projections(
        [context.registry["run_status"]],
        open_store=lambda: open_store(context.domain, context.projection_settings),
        open_source=lambda: runners.append(1) or open_source(context.app),
        options=context.runner_options(),
        stop=stop,
        heartbeats=FollowerHeartbeats(context.database),
        heartbeat_interval=0.05,
        after_beat=after_beat,
    )
    assert len(runners) == 2, "a second runner, with its own source, replaced the first"
    assert [r.error for r in reports] == [None]
    assert "after the heartbeat failed" not in caplog.text

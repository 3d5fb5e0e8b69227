"""``auto_redrive`` for a reaction: parked deliveries re-delivered once the
destination's breaker, seen open, is closed again. SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from test_reactions_operations import REACTION, World, make_world

from safereplay.domain import AutomationApp
from safereplay.domain.workload import record_workload


class AutoRedriveCases:
    @pytest.fixture
    def world(self, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
        raise NotImplementedError

    def test_parked_deliveries_go_once_the_breaker_closed(self, world: World) -> None:
        world.run(
            "flags.set",
            reason="CHG-91",
            flag="auto_redrive",
            target=f"reaction:{REACTION}",
            enabled=True,
        )
        receiver = world.receiver
        events = world.completions()
        receiver.mode = 503  # the destination is down: retried, parked, its breaker opens
        world.run("reactions.run", reaction=REACTION, once=True, reason="live")
        (dest,) = world.run("reactions.status", reaction=REACTION)["reactions"][0]["destinations"]
        assert dest["parked"] == len(events) and dest["breaker_state"] in ("open", "half-open")
        assert receiver.acknowledged == []

        # It is back: the next live delivery closes the breaker, and the parked ones
        # follow by themselves, as the system, allowed by the flag.
        receiver.mode = "ok"
        with AutomationApp(world.context.domain) as application:
            record_workload(application, workflows=1, runs_per_workflow=2, seed=9)
        world.run("reactions.run", reaction=REACTION, once=True, reason="live")
        (dest,) = world.run("reactions.status", reaction=REACTION)["reactions"][0]["destinations"]
        assert dest["parked"] == 0 and dest["owed"] == 0
        assert len(set(receiver.acknowledged)) == len(world.completions())
        (entry,) = [
            e
            for e in world.context.audit.entries()
            if e.action == "auto.redrive" and e.outcome == "succeeded"
        ]
        assert entry.actor == "system" and entry.parameters["parked"] == len(events)
        assert entry.parameters["flag"]["target"] == f"reaction:{REACTION}"


class TestSQLiteAutoRedrive(AutoRedriveCases):
    @pytest.fixture
    def world(
        self, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> Iterator[World]:
        yield from make_world(request.getfixturevalue("sqlite_settings")(), tmp_path, monkeypatch)


@pytest.mark.postgres
class TestPostgresAutoRedrive(AutoRedriveCases):
    @pytest.fixture
    def world(
        self, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> Iterator[World]:
        yield from make_world(request.getfixturevalue("postgres_settings")(), tmp_path, monkeypatch)

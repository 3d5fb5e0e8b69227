"""The dashboard's Conflicts view in a real browser (Chromium, driven by Playwright)
against ``safereplay serve`` over the demo's store.

- the demo's integrity chapter left a resolved conflict: the view shows it, parked
  by demo-operator with its reason;
- an open conflict (a drill that did not match) shows as *paused*; an admin resolves
  it from the page (Retry, with a reason in the dialog) and the database agrees;
- a viewer sees the conflicts without a button to resolve them;
- a rebuild paused by a tampered row shows as *paused by conflict* in the Jobs view;
  an operator parks the event from the Conflicts view and the rebuild completes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser_fixtures import (
    DashboardWorld,
    browser_page,
    copy_screenshot,
    dashboard_world,
    served,
    sign_in,
)

from safereplay.recovery.cli.demo_integrity import corrupt_one_event, restore_event
from safereplay.recovery.jobs.conflicts import Conflict, NewConflict
from safereplay.recovery.jobs.model import JobState
from safereplay.recovery.jobs.worker import PartitionOutcome, WorkerOptions


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DashboardWorld]:
    yield from dashboard_world(tmp_path_factory.mktemp("conflicts"))


@pytest.fixture(scope="module")
def url(world: DashboardWorld) -> str:
    return served(world)


@pytest.fixture
def page() -> Iterator[Any]:
    with browser_page() as opened:
        yield opened


def drill_conflict(world: DashboardWorld, build: int) -> Conflict:
    return world.context.conflicts.raise_conflict(
        NewConflict(
            subject=f"drill:workflow_stats:{build}",
            kind="drill",
            reason=f"drill of 'workflow_stats' build {build}: DIVERGENCE in workflows",
            projection="workflow_stats",
            build=build,
        )
    )


def row(page: Any, conflict_id: str) -> Any:
    return page.locator(f'#conflicts-table tr[data-conflict-id="{conflict_id}"]')


def test_an_admin_resolves_a_conflict_from_the_conflicts_view(
    world: DashboardWorld, url: str, page: Any, tmp_path: Path
) -> None:
    [demo] = world.context.conflicts.list(open_only=False)
    assert (demo.resolution, demo.resolved_by) == ("park", "demo-operator")
    conflict = drill_conflict(world, 2)
    sign_in(page, url, world.tokens["admin"])
    page.get_by_role("link", name="Conflicts").click()

    opened = row(page, conflict.conflict_id)
    opened.get_by_text("paused").wait_for()
    assert "DIVERGENCE" in opened.inner_text()
    assert "park by demo-operator" in row(page, demo.conflict_id).inner_text()
    assert opened.get_by_role("button", name="Park and go on").count() == 0, "no event to park"
    shot = tmp_path / "conflicts.png"
    page.screenshot(path=str(shot), full_page=True)
    copy_screenshot(shot, "conflicts.png")

    opened.get_by_role("button", name="Retry").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_label("Reason (kept in the audit trail)").fill("INC-8: drill re-run, matches")
    dialog.get_by_role("button", name="Retry").click()
    dialog.wait_for(state="detached")
    opened.get_by_text("retry by demo-admin").wait_for()
    stored = world.context.conflicts.get(conflict.conflict_id)
    assert (stored.state, stored.resolution_reason) == ("resolved", "INC-8: drill re-run, matches")


def test_a_viewer_sees_conflicts_but_no_button_to_resolve_them(
    world: DashboardWorld, url: str, page: Any
) -> None:
    conflict = drill_conflict(world, 3)
    sign_in(page, url, world.tokens["viewer"])
    page.get_by_role("link", name="Conflicts").click()
    opened = row(page, conflict.conflict_id)
    opened.get_by_text("paused").wait_for()
    assert opened.get_by_role("button").count() == 0
    assert world.context.conflicts.get(conflict.conflict_id).open


def test_a_paused_rebuild_shows_in_jobs_and_an_operator_parks_its_event(
    world: DashboardWorld, url: str, page: Any
) -> None:
    context = world.context
    position, backup = corrupt_one_event(context.domain, context.app, 0)
    try:
        started = world.run("admin", "rebuild", projection="run_status", partitions=1)
        options = WorkerOptions(lease_seconds=5, idle_interval=0.05, exit_when_idle=True)
        worker = context.worker(options=options)
        job_id = started["job_id"]
        report = worker.run(job_id=world.job(job_id).job_id)
        assert report.count(PartitionOutcome.PAUSED) == 1
        [conflict] = [c for c in context.conflicts.list() if c.job_id == job_id]
        assert conflict.position == position and conflict.job_id == job_id

        sign_in(page, url, world.tokens["operator"])
        page.get_by_role("link", name="Jobs").click()
        card = page.get_by_role("article", name=f"job {job_id[:8]}")
        card.get_by_text("paused by conflict").wait_for()
        page.get_by_role("link", name="Conflicts").click()
        opened = row(page, conflict.conflict_id)
        opened.get_by_role("button", name="Park and go on").click()
        dialog = page.get_by_role("dialog")
        dialog.get_by_label("Reason (kept in the audit trail)").fill("INC-9: restore pending")
        dialog.get_by_role("button", name="Park").click()
        dialog.wait_for(state="detached")
        opened.get_by_text("park by demo-operator").wait_for()

        assert worker.run(job_id=world.job(job_id).job_id).count(PartitionOutcome.COMPLETED) == 1
        assert world.job(job_id).state == JobState.COMPLETED
        parked = context.projection_store.parked("run_status", build=world.job(job_id).build)
        # That event, and its run's later events behind it (per-aggregate order holds).
        assert parked[0].position == position
        assert all(p.blocked_by == position for p in parked[1:])
    finally:
        restore_event(context.domain, context.app, position, backup)

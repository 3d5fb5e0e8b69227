"""Issue #19 point 5, the console's browser scenario: apply a template from the
dashboard (form, plan, canary, continue) and check the result in the database.

The demo's store is served by ``safereplay serve``, and a ``safereplay worker``
process runs the jobs. The admin signs in, opens the Console, picks the shipped
runbook ``bad-projection-code`` (a blue/green rebuild of ``workflow_stats``,
canary partition 0 first), types a partition count below the runbook's bound and
sees the server's refusal (nothing is planned: no job), fixes it, sees the plan,
rehearses it as a drill, applies it with a reason, watches the canary verify while
the rest stays held, releases the rest, and the test reads the database: the job
completed, and the new build beside the live one holds the live build's rows.
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
    poll,
    served,
    sign_in,
    worker,
)

from safereplay.projections import WorkflowStatistics
from safereplay.recovery.jobs.model import JobState, PartitionStatus

RUNBOOK = "bad-projection-code"


@pytest.fixture
def world(tmp_path: Path) -> Iterator[DashboardWorld]:
    yield from dashboard_world(tmp_path)


def confirm(page: Any, reason: str, button: str) -> None:
    """Say why in the reason dialog and confirm (as a person would, by keyboard)."""
    dialog = page.get_by_role("dialog")
    dialog.get_by_label("Reason (kept in the audit trail)").fill(reason)
    dialog.get_by_role("button", name=button, exact=True).click()
    dialog.wait_for(state="detached")


def job_ids(world: DashboardWorld) -> set[str]:
    return {str(job.job_id) for job in world.context.jobs.list_jobs(limit=1000)}


def test_apply_a_runbook_from_the_console_canary_first(
    world: DashboardWorld, tmp_path: Path
) -> None:
    url = served(world)
    worker(world)
    live = world.context.projection_store.live_build("workflow_stats")
    before = job_ids(world)
    with browser_page() as page:
        sign_in(page, url, world.tokens["admin"])
        page.get_by_role("link", name="Console").click()
        page.get_by_label("Recovery procedure").select_option(RUNBOOK)
        partitions = page.get_by_label("partitions", exact=True)
        partitions.wait_for()
        assert partitions.get_attribute("min") == "2"

        # Below the runbook's bound: the server refuses, naming the parameter and bound.
        partitions.fill("1")
        page.get_by_role("button", name="Plan", exact=True).click()
        refusal = page.get_by_role("alert").filter(has_text="'partitions'")
        refusal.wait_for()
        assert "between 2 and 64" in refusal.inner_text()
        assert page.locator(".console-plan").count() == 0
        assert job_ids(world) == before, "a refused value plans nothing"

        partitions.fill("3")
        page.get_by_role("button", name="Plan", exact=True).click()
        page.get_by_role("heading", name=f"Plan: {RUNBOOK}").wait_for()
        stages = [
            [cell.text_content() for cell in row.locator("th, td").all()]
            for row in page.locator(".console-stages tbody tr").all()
        ]
        assert stages == [
            ["canary", "0", "first"],
            ["rest", "1, 2", "only if the canary verified"],
        ]
        plan = page.locator(".console-plan").inner_text()
        assert "workflow_stats" in plan and "Tables touched" in plan and "Estimate" in plan
        shot = tmp_path / "console-plan.png"
        page.screenshot(path=str(shot), full_page=True)
        copy_screenshot(shot, "console-plan.png")
        assert job_ids(world) == before, "a plan changes nothing"

        page.get_by_role("button", name="Rehearse as a drill").click()
        confirm(page, "rehearse INC-42 before applying", "Rehearse")
        drill = page.locator(".console-drill")
        drill.wait_for(timeout=180_000)
        assert drill.get_attribute("data-match") == "true", drill.inner_text()
        assert job_ids(world) == before, "a rehearsal runs in a sandbox, not as a job"

        page.get_by_role("button", name="Apply…").click()
        confirm(page, "INC-42 bad projection deployed", "Apply")
        panel = page.locator("article.console-job")
        panel.wait_for()
        job_id = panel.get_attribute("data-job-id")
        assert job_id is not None and job_id not in before

        # The worker runs the canary; the rest waits for the operator.
        page.locator("article.console-job[data-verified='true']").wait_for(timeout=180_000)
        held = world.context.jobs.status(world.job(job_id).job_id).partitions
        assert [p.status for p in held] == [
            PartitionStatus.COMPLETED,
            PartitionStatus.HELD,
            PartitionStatus.HELD,
        ]
        page.screenshot(path=str(tmp_path / "console-canary.png"), full_page=True)
        release = panel.get_by_role("button", name="Release the rest")
        assert release.is_enabled()
        release.click()
        confirm(page, "canary verified on partition 0", "Release the rest")
        page.locator("article.console-job[data-state='completed']").wait_for(timeout=180_000)
        assert not release.is_enabled()

        # A reload keeps watching the jobs started from this tab.
        page.reload()
        page.locator(
            f"article.console-job[data-job-id='{job_id}'][data-state='completed']"
        ).wait_for()

    job = poll(
        lambda: (j := world.job(job_id)).state in (JobState.COMPLETED, JobState.FAILED) and j,
        what="the job to end in the database",
    )
    assert job.state == JobState.COMPLETED, job.error
    assert (job.kind, job.projection, job.partition_count) == ("rebuild", "workflow_stats", 3)
    assert job.reason == f"INC-42 bad projection deployed (template {RUNBOOK})"
    # What the runbook promises: a new build beside the live one, complete, not live.
    store = world.context.projection_store
    assert store.live_build("workflow_stats") == live
    assert job.build != live
    rebuilt = store.rows(WorkflowStatistics, "workflows", build=job.build)
    assert rebuilt and rebuilt == store.rows(WorkflowStatistics, "workflows", build=live)
    audit = [
        (e.actor, e.action, e.outcome, e.reason)
        for e in world.context.audit.entries(limit=10_000)
        if e.actor == "demo-admin"
    ]
    assert (
        "demo-admin",
        "drill",
        "succeeded",
        f"rehearse INC-42 before applying (rehearsal of template {RUNBOOK})",
    ) in audit
    assert (
        "demo-admin",
        "rollout.continue",
        "succeeded",
        "canary verified on partition 0",
    ) in audit


def test_a_viewer_plans_from_the_keyboard_but_may_not_apply(world: DashboardWorld) -> None:
    url = served(world)
    before = job_ids(world)
    with browser_page() as page:
        sign_in(page, url, world.tokens["viewer"])
        page.get_by_role("link", name="Console").click()
        picker = page.get_by_label("Recovery procedure")
        picker.select_option(RUNBOOK)
        partitions = page.get_by_label("partitions", exact=True)
        partitions.focus()
        page.keyboard.type("5")
        page.keyboard.press("Enter")  # submits the form: the plan
        heading = page.get_by_role("heading", name=f"Plan: {RUNBOOK}")
        heading.wait_for()
        assert heading.evaluate("h => document.activeElement === h"), "focus moves to the plan"
        assert "with partitions=5" in page.locator(".console-plan").inner_text()
        actions = page.locator(".console-actions")
        assert "may plan this procedure but not apply it" in actions.inner_text()
        assert actions.get_by_role("button").count() == 0
        page.get_by_label("Projection", exact=True).select_option("run_status")
        page.locator(".console-parked-list[data-projection='run_status']").wait_for()
        assert page.get_by_role("button", name="Redrive parked events").is_hidden()
    assert job_ids(world) == before

"""The dashboard's Requests tab in a real browser (Chromium, driven by Playwright)
against ``safereplay serve`` over the demo's store.

demo-operator asks for a rollback of workflow_stats, which waits for a second
person (four-eyes approval). On the Requests tab the operator sees it pending,
with no button to decide it (nobody approves their own request); demo-approver
sees Approve and Reject, approves it with a reason, and the rollback runs as the
operator: the old build is live again and the audit trail names both.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from browser_fixtures import DashboardWorld, browser_page, dashboard_world, poll, served, sign_in

from safereplay.recovery.operations.approvals import AwaitingApproval
from safereplay.recovery.operations.catalog import open_operations
from safereplay.recovery.operations.context import RecoveryContext
from safereplay.recovery.settings import DEFAULT_APPROVAL_REQUIRED, RecoverySettings


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DashboardWorld]:
    yield from dashboard_world(tmp_path_factory.mktemp("requests"))


@pytest.fixture
def page() -> Iterator[Any]:
    with browser_page() as opened:
        yield opened


def ask_for_a_rollback(world: DashboardWorld) -> str:
    """demo-operator asks to roll workflow_stats back, under the default rules."""
    recovery = RecoverySettings(
        audit_key_file=world.directory / "audit.key", approval_required=DEFAULT_APPROVAL_REQUIRED
    )
    context = RecoveryContext(domain=world.context.domain, recovery=recovery)
    try:
        operator = context.access.authenticate(world.tokens["operator"])
        waiting = open_operations(context).run(
            operator, "rollback", reason="INC-7: new build disagrees", projection="workflow_stats"
        )
    finally:
        context.close()
    assert isinstance(waiting, AwaitingApproval)
    return waiting.change_request.request_id


def test_an_approver_approves_a_rollback_from_the_requests_tab(
    world: DashboardWorld, page: Any
) -> None:
    url = served(world)
    store = world.context.projection_store
    live = store.live_build("workflow_stats")
    request_id = ask_for_a_rollback(world)
    assert store.live_build("workflow_stats") == live

    # The requester sees it pending, and no button to decide it.
    sign_in(page, url, world.tokens["operator"])
    page.get_by_role("link", name="Requests").click()
    row = page.locator(f'#requests-table tr[data-request-id="{request_id}"]')
    row.wait_for()
    assert "pending" in row.inner_text() and "rollback" in row.inner_text()
    assert row.get_by_role("button").count() == 0
    page.get_by_role("button", name="Sign out").click()

    # The approver approves it, with a reason.
    approver = world.context.access.issue_token("demo-approver")
    sign_in(page, url, approver)
    page.get_by_role("link", name="Requests").click()
    row.wait_for()
    row.get_by_role("button", name="Approve").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_label("Reason (kept in the audit trail)").fill("INC-7: billing confirms")
    dialog.get_by_role("button", name="Approve").click()
    dialog.wait_for(state="detached")
    poll(lambda: "approved" in row.inner_text(), what="the request to show approved")
    assert "demo-approver" in row.inner_text()
    assert row.get_by_role("button").count() == 0

    # The rollback ran, as the operator; its audit entry names the approver.
    assert store.live_build("workflow_stats") != live
    (ran,) = [
        e
        for e in world.context.audit.entries()
        if e.action == "rollback" and e.outcome == "succeeded"
    ]
    assert ran.actor == "demo-operator"
    assert ran.parameters["approval"]["approved_by"] == "demo-approver"
    assert ran.parameters["approval"]["request"] == request_id

"""The dashboard's Reactions view in a real browser (Chromium, driven by Playwright)
against ``safereplay serve`` over the demo's store, and a real webhook receiver on
127.0.0.1 (tests/webhook_receiver.py) as the ``completions`` destination:

- while the receiver is down, the reference reaction's completions fail; the view
  shows them per destination (failed, oldest undelivered age, breaker);
- an admin plans their re-delivery from the page: the plan shows how many would be
  sent and the first one's idempotency key, and nothing is sent;
- confirmed with a reason, the re-delivery sends them: the receiver acknowledges each
  key once, the ledger says delivered, the view's failed count goes down to 0, and
  the audit trail has the plan and the re-delivery with its reason;
- a viewer of the reactions sees the table without the re-delivery form, and the API
  refuses (403) a re-delivery sent from the page with the viewer's own token.

A screenshot of the view with its plan goes to the test's temporary directory, and
to docs/operations/reactions.png with SAFEREPLAY_UPDATE_SCREENSHOTS=1.
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
)
from webhook_receiver import Receiver

from safereplay.reactions import ReactionRunner, WebhookDestination, WebhookSecret
from safereplay.reactions.backends import open_ledger
from safereplay.reactions.ledger import LedgerEntry
from safereplay.reactions.reference import RunCompletions
from safereplay.recovery.resilience.policies import Fail

REACTION = "run_completions"
DESTINATION = "completions"
SECRET = b"browser-test-webhook-secret-of-32-bytes-or-more"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DashboardWorld]:
    yield from dashboard_world(tmp_path_factory.mktemp("reactions"))


@pytest.fixture(scope="module")
def receiver(world: DashboardWorld) -> Iterator[Receiver]:
    """The ``completions`` webhook's receiver, configured for the server."""
    secret_file = world.directory / "completions.secret"
    secret_file.write_bytes(SECRET)
    secret_file.chmod(0o600)
    with Receiver(WebhookSecret(SECRET)).start() as started:
        world.env = world.env | {
            "SAFEREPLAY_WEBHOOK_COMPLETIONS_URL": started.url,
            "SAFEREPLAY_WEBHOOK_COMPLETIONS_SECRET_FILE": str(secret_file),
        }
        yield started


@pytest.fixture(scope="module")
def url(world: DashboardWorld, receiver: Receiver) -> str:
    return served(world)


def ledger_entries(world: DashboardWorld) -> list[LedgerEntry]:
    with open_ledger(world.context.domain) as ledger:
        return ledger.entries(REACTION)


def fail_deliveries(world: DashboardWorld, receiver: Receiver) -> list[LedgerEntry]:
    """The reaction records the demo's completions and sends what it owes while the
    receiver answers 503; the policy gives up at once: they stay owed, failed."""
    receiver.mode = 503
    destination = WebhookDestination(DESTINATION, receiver.url, secret=WebhookSecret(SECRET))
    with (
        open_ledger(world.context.domain) as ledger,
        ReactionRunner(
            RunCompletions(destinations=(DESTINATION,)),
            source=world.context.source,
            ledger=ledger,
            destinations=[destination],
            policy=Fail(),
        ) as runner,
    ):
        runner.run_once()
    receiver.mode = "ok"
    failed = [e for e in ledger_entries(world) if e.state == "failed"]
    assert failed, "the demo's completions failed while the receiver was down"
    return failed


@pytest.fixture
def page() -> Iterator[Any]:
    with browser_page() as opened:
        yield opened


def cell(page: Any, state: str) -> Any:
    row = page.locator(
        f'table.reaction-destinations[data-reaction="{REACTION}"] '
        f'tr[data-destination="{DESTINATION}"]'
    )
    return row.locator(f'td[data-state="{state}"]')


def test_an_admin_plans_and_redelivers_a_failed_delivery_from_the_reactions_view(
    world: DashboardWorld, url: str, receiver: Receiver, page: Any, tmp_path: Path
) -> None:
    failed = fail_deliveries(world, receiver)
    sent_before = len(receiver.keys())
    sign_in(page, url, world.tokens["admin"])
    page.get_by_role("link", name="Reactions").click()

    # The view shows the failed deliveries, how old the oldest is, and the breaker.
    poll(
        lambda: cell(page, "failed").inner_text().strip() == f"{len(failed):,}",
        what="the view to show the failed deliveries",
    )
    assert cell(page, "oldest").inner_text().strip() not in ("", "\u2013")
    assert cell(page, "breaker").inner_text().strip() in ("closed", "half-open", "open")

    # Plan the re-delivery of what the destination missed: the plan shows them, with
    # the first one's idempotency key; nothing is sent.
    form = page.locator(f'details.redeliver[data-reaction="{REACTION}"]')
    form.locator("summary").click()
    form.get_by_label("From position").fill(str(failed[0].position))
    form.get_by_label("Destination").select_option(DESTINATION)
    form.get_by_role("button", name="Plan re-delivery").click()
    plan = form.locator(f".plan[data-would-send='{len(failed)}']")
    plan.wait_for()
    assert plan.locator("table.plan-sample", has_text=failed[0].idempotency_key).count() == 1
    assert len(receiver.keys()) == sent_before, "a plan sends nothing"
    shot = tmp_path / "reactions.png"
    page.screenshot(path=str(shot), full_page=True)
    copy_screenshot(shot, "reactions.png")

    # Re-deliver, with a reason: the receiver acknowledges each key once, the ledger agrees.
    form.get_by_role("button", name=f"Re-deliver {len(failed)}").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_label("Reason (kept in the audit trail)").fill("INC-7: receiver is back")
    dialog.get_by_role("button", name="Re-deliver").click()
    dialog.wait_for(state="detached")
    form.locator(".redelivered", has_text=f"{len(failed):,} delivered").wait_for()
    keys = sorted(e.idempotency_key for e in failed)
    assert sorted(receiver.acknowledged) == keys
    settled = {e.idempotency_key: e for e in ledger_entries(world)}
    assert {(settled[k].state, settled[k].acknowledgements) for k in keys} == {("delivered", 1)}
    poll(
        lambda: cell(page, "failed").inner_text().strip() == "0",
        what="the view's failed count to go down to 0",
    )
    audited = [
        (e.actor, e.action, e.outcome, e.reason)
        for e in world.context.audit.entries()
        if e.action.startswith("reactions.") and e.outcome != "started"
    ]
    assert ("demo-admin", "reactions.plan", "succeeded", "") in audited
    assert ("demo-admin", "reactions.redeliver", "succeeded", "INC-7: receiver is back") in audited


def test_a_viewer_of_the_reactions_sees_them_but_may_not_redeliver(
    world: DashboardWorld, url: str, receiver: Receiver, page: Any
) -> None:
    world.run("admin", "grant", name="demo-viewer", role="viewer", grant_scope="reaction:*")
    sent_before = len(receiver.keys())
    sign_in(page, url, world.tokens["viewer"])
    page.get_by_role("link", name="Reactions").click()
    cell(page, "delivered").wait_for()
    assert page.locator("details.redeliver").count() == 0, "no form without operate"

    # The page's own token, sent by the page: the API refuses it, whatever is shown.
    status = page.evaluate(
        """async (path) => {
            const answer = await fetch(path, {
                method: "POST",
                headers: {
                    "Content-Type": "application/json",
                    Authorization: `Bearer ${sessionStorage.getItem("safereplay.token")}`,
                },
                body: JSON.stringify({reason: "a viewer tries", force: true}),
            });
            return answer.status;
        }""",
        f"/api/reactions/{REACTION}/redeliveries",
    )
    assert status == 403
    assert len(receiver.keys()) == sent_before

"""The dashboard in a real browser (Chromium, driven by Playwright) against
``safereplay serve`` and ``safereplay worker`` processes over the demo's store.

- an admin watches a throttled rebuild's progress bar move, pauses it and resumes it
  from the page (each with a reason, confirmed in a dialog that Esc dismisses), and
  finds both, with their reasons, in the Audit view; the job store agrees;
- a viewer sees the same job without a button to steer it, and the API refuses
  (403) a pause sent from the page with the viewer's own token;
- the token is typed into a password field, kept in the tab's sessionStorage, sent
  in the Authorization header only: never in the page's URL nor any request's URL.

Screenshots of the Overview and Jobs views during the rebuild go to the test's
temporary directory, and to docs/operations/ with SAFEREPLAY_UPDATE_SCREENSHOTS=1.
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

from safereplay.recovery.jobs.model import JobState

#: The rebuild's cap on events/s for the whole job (shared by its partitions): slow
#: enough that it is still running while the page pauses and resumes it.
THROTTLE = 90


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DashboardWorld]:
    yield from dashboard_world(tmp_path_factory.mktemp("dashboard"))


@pytest.fixture(scope="module")
def url(world: DashboardWorld) -> str:
    """The dashboard's address, with two workers running beside the server (two of a
    job's partitions move at once)."""
    address = served(world)
    worker(world)
    worker(world)
    return address


@pytest.fixture
def page() -> Iterator[Any]:
    with browser_page() as opened:
        yield opened


@pytest.fixture
def requested(page: Any) -> list[Any]:
    """Every request the page makes, as it makes it."""
    made: list[Any] = []
    page.on("request", lambda request: made.append(request))
    return made


@pytest.fixture
def rebuild(world: DashboardWorld) -> Iterator[str]:
    """A throttled rebuild of run_status (3 partitions) for the worker; aborted after."""
    started = world.run(
        "admin",
        "rebuild",
        reason="dashboard test",
        projection="run_status",
        partitions=3,
        events_per_second=THROTTLE,
    )
    job_id: str = started["job_id"]
    yield job_id
    if world.job(job_id).active:
        world.run("admin", "abort", reason="test over", job_id=job_id)
    poll(lambda: not world.job(job_id).active, what=f"job {job_id} to end")


def job_card(page: Any, job_id: str) -> Any:
    return page.locator(f'article.job[data-job-id="{job_id}"]')


def overall_progress(page: Any, job_id: str) -> int:
    value = job_card(page, job_id).locator(".overall progress").get_attribute("value")
    return int(value or 0)


def done(where: Any) -> float:
    """The fraction its (first) progress bar shows."""
    bar = where.locator("progress").first
    return float(bar.get_attribute("value") or 0) / float(bar.get_attribute("max") or 1)


def confirm_with_reason(page: Any, button: str, reason: str) -> None:
    dialog = page.get_by_role("dialog")
    dialog.get_by_label("Reason (kept in the audit trail)").fill(reason)
    dialog.get_by_role("button", name=button).click()
    dialog.wait_for(state="detached")


def assert_token_never_in_urls(page: Any, requests: list[Any], token: str) -> None:
    secret = token.split(".", 1)[1]
    assert requests, "the page made no request"
    for url in [page.url, *(r.url for r in requests)]:
        assert token not in url and secret not in url, url
    api_calls = [r for r in requests if "/api/" in r.url]
    assert api_calls
    for call in api_calls:
        assert call.all_headers().get("authorization") == f"Bearer {token}", call.url


def screenshot(page: Any, tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    page.screenshot(path=str(path))
    copy_screenshot(path, name)


def test_an_admin_watches_a_rebuild_pauses_and_resumes_it_and_finds_both_in_the_audit(
    world: DashboardWorld, url: str, rebuild: str, page: Any, requested: list[Any], tmp_path: Path
) -> None:
    token = world.tokens["admin"]
    audited_before = len(world.context.audit.entries())
    sign_in(page, url, token)
    assert page.evaluate("sessionStorage.getItem('safereplay.token')") == token

    # The overview shows the rebuild among the running jobs.
    running = page.locator(f'#running-jobs tr[data-job-id="{rebuild}"]')
    running.wait_for()
    # A tenth done before the screenshot, so that it shows a rebuild well under way.
    poll(lambda: done(running) >= 0.1, what="the overview's progress bar to pass 10%")
    screenshot(page, tmp_path, "dashboard-overview.png")

    # The Jobs view: the job's bar advances as the worker applies events.
    page.get_by_role("link", name="Jobs").click()
    card = job_card(page, rebuild)
    card.wait_for()
    first = poll(lambda: overall_progress(page, rebuild), what="the job's first progress")
    poll(lambda: overall_progress(page, rebuild) > first, what="the job's progress bar to grow")
    partitions = card.locator("table.partitions tbody tr")
    assert partitions.count() == 3
    assert card.locator("table.partitions progress").count() == 3
    screenshot(page, tmp_path, "dashboard-jobs.png")

    # Esc dismisses the confirmation: nothing is sent, the job keeps running.
    pause = card.get_by_role("button", name="Pause")
    pause.focus()
    page.keyboard.press("Enter")
    dialog = page.get_by_role("dialog")
    dialog.wait_for()
    assert dialog.get_by_label("Reason (kept in the audit trail)").evaluate(
        "e => e === document.activeElement"
    )
    page.keyboard.press("Escape")
    dialog.wait_for(state="detached")
    assert not [r for r in requested if r.method == "POST"]
    assert world.job(rebuild).state == JobState.RUNNING

    # Pause, with a reason: the job store says paused.
    pause.click()
    confirm_with_reason(page, "Pause", "dashboard test: pausing for the canary check")
    poll(lambda: world.job(rebuild).state == JobState.PAUSED, what="the job to be paused")
    card.get_by_role("button", name="Resume").wait_for()
    assert card.get_by_role("button", name="Pause").count() == 0

    # Resume: running again, and moving.
    card.get_by_role("button", name="Resume").click()
    confirm_with_reason(page, "Resume", "dashboard test: canary verified")
    poll(lambda: world.job(rebuild).state == JobState.RUNNING, what="the job to run again")
    resumed_at = overall_progress(page, rebuild)
    poll(lambda: overall_progress(page, rebuild) > resumed_at, what="progress after the resume")

    # Watching the overview and the jobs (polled every 2 s) wrote nothing to the audit
    # trail: only the pause and the resume (each an intent and its outcome), beside
    # the worker processes' own entries.
    def watched() -> list[tuple[str, str]]:
        entries = world.context.audit.entries()[audited_before:]
        return [(e.action, e.outcome) for e in entries if e.action != "worker"]

    # (The resume's outcome entry follows its change: wait for it.)
    poll(lambda: ("resume", "succeeded") in watched(), what="the resume's outcome entry")
    assert watched() == [
        ("pause", "started"),
        ("pause", "succeeded"),
        ("resume", "started"),
        ("resume", "succeeded"),
    ]

    # The audit trail has both, by the admin, with their reasons.
    page.get_by_role("link", name="Audit").click()
    table = page.locator("#audit-table")
    for action, reason in (
        ("pause", "dashboard test: pausing for the canary check"),
        ("resume", "dashboard test: canary verified"),
    ):
        row = table.locator("tbody tr", has_text=reason).filter(has_text="succeeded")
        row.first.wait_for()
        cells = row.first.locator("td").all_inner_texts()
        assert cells[2:4] == ["demo-admin", action], cells
    page.locator("#audit-verification", has_text="intact").wait_for()

    assert_token_never_in_urls(page, requested, token)


def test_a_viewer_sees_the_job_but_cannot_steer_it(
    world: DashboardWorld, url: str, rebuild: str, page: Any, requested: list[Any]
) -> None:
    token = world.tokens["viewer"]
    sign_in(page, url, token)
    page.get_by_role("link", name="Jobs").click()
    card = job_card(page, rebuild)
    card.wait_for()
    poll(lambda: overall_progress(page, rebuild) > 0, what="the viewer's progress bar to move")
    assert card.get_by_role("button").count() == 0

    # The page's own token, sent by the page: the API refuses it, whatever is shown.
    status = page.evaluate(
        """async (job) => {
            const answer = await fetch(`/api/jobs/${job}/pause`, {
                method: "POST",
                headers: {
                    "Content-Type": "application/json",
                    Authorization: `Bearer ${sessionStorage.getItem("safereplay.token")}`,
                },
                body: JSON.stringify({reason: "a viewer tries"}),
            });
            return answer.status;
        }""",
        rebuild,
    )
    assert status == 403
    assert world.job(rebuild).state == JobState.RUNNING

    # Audit verification is an admin's: the viewer is told so.
    page.get_by_role("link", name="Audit").click()
    page.locator("#audit-verification", has_text="needs an admin").wait_for()
    assert_token_never_in_urls(page, requested, token)


def test_the_token_stays_out_of_urls_and_signing_out_forgets_it(
    world: DashboardWorld, url: str, page: Any, requested: list[Any]
) -> None:
    page.goto(url + "/")
    token_field = page.get_by_label("API token")
    assert token_field.get_attribute("type") == "password"
    token_field.fill("sr_0123456789abcdef.not-a-valid-secret-at-all")
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("alert").filter(has_text="not valid").wait_for()
    assert page.evaluate("sessionStorage.getItem('safereplay.token')") is None

    token = world.tokens["operator"]
    sign_in(page, url, token)

    # From the keyboard: Tab reaches the sections' links, with a visible focus ring,
    # and Enter opens one.
    for _ in range(10):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.textContent") == "Jobs":
            break
    focused = page.evaluate(
        "(() => { const s = getComputedStyle(document.activeElement);"
        " return [document.activeElement.textContent, s.outlineStyle, s.outlineWidth]; })()"
    )
    assert focused[0] == "Jobs" and focused[1] == "solid" and focused[2] != "0px", focused
    page.keyboard.press("Enter")
    page.locator("section#jobs").wait_for(state="visible")

    for section in ("Overview", "Jobs", "Parked", "Alerts", "Audit"):
        page.get_by_role("link", name=section).click()
        page.locator(f"section#{section.lower()}").wait_for(state="visible")
    page.get_by_role("button", name="Sign out").click()
    page.get_by_label("API token").wait_for(state="visible")
    assert page.evaluate("sessionStorage.getItem('safereplay.token')") is None
    for request in requested:
        assert token not in request.url and "not-a-valid-secret" not in request.url
    assert token not in page.url

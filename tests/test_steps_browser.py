"""The dashboard's Step view in a real browser (Chromium, driven by Playwright)
against ``safereplay serve`` over the demo's store.

- an operator chooses a projection and a range, asks for payloads, and sees each
  event with its envelope, its payload and the rows it changed (an insert's
  *before* is none); the live build is the same afterwards;
- a viewer asking for payloads sees the same steps without any, and is told why;
- a range that runs backwards is refused with the API's message on the page.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser_fixtures import DashboardWorld, browser_page, dashboard_world, served, sign_in

from safereplay.projections import RunStatusBoard


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DashboardWorld]:
    yield from dashboard_world(tmp_path_factory.mktemp("steps"))


@pytest.fixture(scope="module")
def url(world: DashboardWorld) -> str:
    return served(world)


@pytest.fixture
def page() -> Iterator[Any]:
    with browser_page() as opened:
        yield opened


def view(page: Any) -> Any:
    """The Step view, once its link is followed."""
    page.get_by_role("link", name="Step").click()
    return page.get_by_role("region", name="Step through events")


def step(page: Any, *, projection: str, start: int, count: int, payloads: bool) -> None:
    section = view(page)
    section.get_by_label("Projection to step").select_option(projection)
    section.get_by_label("First position").fill(str(start))
    section.get_by_label("Events to show").fill(str(count))
    if payloads:
        section.get_by_label("Show payloads (operators)").check()
    section.get_by_role("button", name="Step", exact=True).click()


def live_rows(world: DashboardWorld) -> list[dict[str, Any]]:
    store = world.context.projection_store
    return sorted(store.rows(RunStatusBoard, "runs"), key=lambda r: str(r["run_id"]))


def test_an_operator_sees_each_event_its_payload_and_its_row_changes(
    world: DashboardWorld, url: str, page: Any, tmp_path: Path
) -> None:
    before = live_rows(world)
    sign_in(page, url, world.tokens["operator"])
    step(page, projection="run_status", start=1, count=5, payloads=True)

    steps = page.locator("#step-results article.step")
    steps.first.wait_for(timeout=60_000)
    assert steps.count() == 5
    first = steps.first
    assert first.locator("pre.payload").count() == 1, "an operator who asks sees the payload"
    insert = first.locator("tr[data-kind=insert]")
    assert insert.count() == 1 and "none" in insert.locator("td").nth(3).inner_text()
    assert "running" in insert.locator("td").nth(4).inner_text()
    page.screenshot(path=str(tmp_path / "step.png"), full_page=True)
    assert live_rows(world) == before, "the live build is untouched"


def test_a_viewer_sees_the_steps_without_payloads_and_why(
    world: DashboardWorld, url: str, page: Any
) -> None:
    sign_in(page, url, world.tokens["viewer"])
    step(page, projection="run_status", start=1, count=3, payloads=True)
    page.locator("#step-results article.step").first.wait_for(timeout=60_000)
    assert page.locator("#step-results pre.payload").count() == 0
    status = page.locator("#step [role=status]").inner_text()
    assert "Payloads not shown" in status and "operate permission" in status


def test_a_backwards_range_is_refused_on_the_page(
    world: DashboardWorld, url: str, page: Any
) -> None:
    sign_in(page, url, world.tokens["operator"])
    section = view(page)
    section.get_by_label("Projection to step").select_option("run_status")
    section.get_by_label("First position").fill("9")
    section.get_by_label("Last position (or)").fill("3")
    section.get_by_role("button", name="Step", exact=True).click()
    alert = page.locator("#step [role=alert]")
    alert.wait_for(timeout=60_000)
    assert "from 9 is after to 3" in alert.inner_text()

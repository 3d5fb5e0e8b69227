"""The dashboard's Flags view in a real browser (Chromium, Playwright) against
``safereplay serve`` over the demo's store: a viewer sees the flags that are set,
their history, and, on every view, a banner while operations are frozen; the
banner goes when they are unfrozen."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from browser_fixtures import DashboardWorld, browser_page, dashboard_world, poll, served, sign_in


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DashboardWorld]:
    yield from dashboard_world(tmp_path_factory.mktemp("flags-dashboard"))


@pytest.fixture
def page() -> Iterator[Any]:
    with browser_page() as opened:
        yield opened


def test_a_viewer_sees_flags_history_and_the_frozen_banner(
    world: DashboardWorld, page: Any
) -> None:
    url = served(world)
    world.run(
        "admin",
        "flags.set",
        reason="CHG-88 canary",
        flag="auto_catch_up",
        target="projection:run_status",
        enabled=True,
        share=25,
    )
    world.run("admin", "switch.freeze", reason="INC-130 investigating")
    sign_in(page, url, world.tokens["viewer"])
    # The banner shows on the first view already, naming who froze and why.
    banner = page.locator("#frozen-banner")
    banner.wait_for(state="visible")
    assert "frozen by demo-admin (INC-130 investigating)" in banner.inner_text()

    page.get_by_role("link", name="Flags").click()
    row = page.locator('#flags-table tr[data-flag="auto_catch_up projection:run_status"]')
    row.wait_for()
    assert "25% of partitions" in row.inner_text() and "on" in row.inner_text()
    history = page.locator("#flags-history")
    history.wait_for()
    text = history.inner_text()
    assert "CHG-88 canary" in text and "INC-130 investigating" in text
    assert "frozen" in page.locator("#switch-state").inner_text()

    world.run("admin", "switch.unfreeze", reason="INC-130 resolved")
    poll(lambda: not banner.is_visible(), what="the banner to go once unfrozen")
    page.locator("#switch-state", has_text="not frozen").wait_for()

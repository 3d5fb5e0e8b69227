"""The dashboard's SLOs view in a real browser (Chromium, driven by Playwright)
against ``safereplay serve`` over the demo's store, with a lag target on
run_status that the events seeded after its build put it over:

- the server samples the SLOs by itself (no page, no request): the breach is in
  the audit trail, actor system, sampled by "safereplay serve";
- a viewer opens the SLOs view: the target's row says it is breached, with its
  value, target and error budget, and the breach is listed as open.

A screenshot of the view goes to the test's temporary directory, and to
docs/operations/slos.png with SAFEREPLAY_UPDATE_SCREENSHOTS=1.
"""

from __future__ import annotations

import json
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

SLO = "projection:run_status/lag_events"
TARGETS = {"projections": {"run_status": {"lag_events": 0}}}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DashboardWorld]:
    yield from dashboard_world(tmp_path_factory.mktemp("slos"))


@pytest.fixture(scope="module")
def url(world: DashboardWorld) -> str:
    """The server, with the lag target set and run_status behind the head."""
    world.run("admin", "seed", reason="events run_status has not applied", events=50)
    world.env = world.env | {
        "SAFEREPLAY_SLO_TARGETS": json.dumps(TARGETS),
        "SAFEREPLAY_SLO_SAMPLE_SECONDS": "1",
    }
    return served(world)


@pytest.fixture
def page() -> Iterator[Any]:
    with browser_page() as opened:
        yield opened


def test_the_server_samples_and_the_view_shows_the_breach(
    world: DashboardWorld, url: str, page: Any, tmp_path: Path
) -> None:
    entry = poll(
        lambda: next(
            (e for e in world.context.audit.entries() if e.action == "slo.breached"), None
        ),
        what="the server's sampler to open the breach",
    )
    assert entry.actor == "system" and entry.parameters["slo"] == SLO
    assert entry.parameters["sampled_by"] == "safereplay serve", "no reader sampled it"

    sign_in(page, url, world.tokens["viewer"])
    page.get_by_role("link", name="SLOs").click()
    section = page.locator("section#slos")
    section.wait_for(state="visible")
    row = section.locator(f'#slos-table tr[data-slo="{SLO}"]')
    row.wait_for()
    assert "breach" in row.inner_text()
    cells = row.locator("td").all_inner_texts()
    assert float(cells[1].replace(",", "")) > 0 and cells[2] == "0"
    breach = section.locator("#slo-breaches-table tbody tr").first
    breach.wait_for()
    assert SLO in breach.inner_text() and "open" in breach.inner_text()

    shot = tmp_path / "slos.png"
    page.screenshot(path=str(shot), full_page=True)
    copy_screenshot(shot, "slos.png")

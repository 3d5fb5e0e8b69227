"""``docs/reliability.md`` publishes the long mode's figures as measured: its table is
the one the runs it names wrote (their reports merged into
``docs/reliability-figures.json``), every scenario in it is a test of this suite, and
no scenario found a loss or a duplicate."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from reliability_trials import TRIALS_VARIABLE, markdown_table

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "reliability.md"
FIGURES = ROOT / "docs" / "reliability-figures.json"
SUITE = ROOT / "tests" / "reliability"


def published() -> dict[str, Any]:
    payload: dict[str, Any] = json.loads(FIGURES.read_text(encoding="utf-8"))
    return payload


def test_the_published_table_is_the_written_one() -> None:
    payload = published()
    assert markdown_table(payload) in DOC.read_text(encoding="utf-8")


def test_every_published_run_is_a_long_mode_run_named_with_its_command() -> None:
    runs = published()["runs"]
    doc = DOC.read_text(encoding="utf-8")
    assert runs, "the figures name the runs that made them"
    for run in runs:
        assert run["trials_per_scenario"] > 1, f"{run['area']}: the figures are the long mode's"
        assert f"{TRIALS_VARIABLE}={run['trials_per_scenario']}" in run["command"]
        assert run["command"] in doc, f"{run['area']}: its command is published"


def test_every_published_scenario_is_a_test_of_the_suite() -> None:
    for figures in published()["scenarios"]:
        module, *_, function = figures["scenario"].split("::")
        path = SUITE / module
        assert path.is_file(), f"{figures['scenario']}: no {path.name} in tests/reliability"
        name = re.sub(r"\[.*\]$", "", function)
        assert f"def {name}(" in path.read_text(encoding="utf-8"), figures["scenario"]


def test_no_published_scenario_lost_or_duplicated_an_event() -> None:
    payload = published()
    for figures in [*payload["scenarios"], payload["total"]]:
        assert (figures["losses"], figures["duplicates"]) == (0, 0), figures["scenario"]
        assert figures["trials"] >= 1 and figures["events_checked"] >= 0

"""The reliability suite's fixtures: randomised trials with printed seeds, and the
session's figures (printed at the end, written as JSON for docs/reliability.md)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from trials import LEDGER, REPORT_VARIABLE, Trial, run_trials

TrialsFactory = Callable[..., Iterator[Trial]]


@pytest.fixture
def trials(request: pytest.FixtureRequest) -> TrialsFactory:
    """``for trial in trials(default=3): ...``: the test's trials, named after its id."""
    scenario = request.node.nodeid.split("tests/reliability/", 1)[-1]

    def make(*, default: int) -> Iterator[Trial]:
        return run_trials(scenario, default=default)

    return make


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not LEDGER.scenarios:
        return
    terminalreporter.section("reliability figures")
    for line in LEDGER.table():
        terminalreporter.write_line(line)
    report = os.environ.get(REPORT_VARIABLE, "").strip()
    if report:
        LEDGER.write(Path(report))
        terminalreporter.write_line(f"written to {report}")

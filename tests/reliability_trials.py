"""Trials of the reliability suite (``tests/reliability/``): how many, with which seed,
and what each found.

A scenario runs a number of randomised *trials*. The default mode runs the few each
scenario names (the whole suite within a few minutes, the README's test command);
the long mode runs ``SAFEREPLAY_RELIABILITY_TRIALS`` of each (hundreds). Every trial
draws its own seed, prints it, and names it again in the failure if it fails, so
that one failing trial can be replayed alone::

    SAFEREPLAY_RELIABILITY_SEED=<seed> .venv/bin/python -m pytest tests/reliability -k <scenario>

(with ``SAFEREPLAY_RELIABILITY_SEED`` set, every scenario runs exactly one trial,
with that seed).

Each trial counts its *figures*: faults injected, events checked, losses and
duplicates found (which must stay 0: a trial that finds one fails). The session
adds them up per scenario, prints them at the end of the run, and writes them as
JSON to ``SAFEREPLAY_RELIABILITY_REPORT`` when that is set: ``docs/reliability.md``
publishes the long mode's table from that file.
"""

from __future__ import annotations

import json
import os
import random
import secrets
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

TRIALS_VARIABLE = "SAFEREPLAY_RELIABILITY_TRIALS"
SEED_VARIABLE = "SAFEREPLAY_RELIABILITY_SEED"
REPORT_VARIABLE = "SAFEREPLAY_RELIABILITY_REPORT"


def long_mode_trials() -> int | None:
    """The long mode's trial count per scenario, or None in the default mode."""
    raw = os.environ.get(TRIALS_VARIABLE, "").strip()
    if not raw:
        return None
    try:
        count = int(raw)
    except ValueError:
        raise ValueError(
            f"{TRIALS_VARIABLE} must be a whole number of trials, not {raw!r}"
        ) from None
    if count < 1:
        raise ValueError(f"{TRIALS_VARIABLE} must be at least 1, not {count}")
    return count


#: In the long mode, how much each trial adds to a scenario's per-test timeout: a
#: trial of the slowest scenarios (a private cluster restarted under a rebuild, CLI
#: processes killed) takes 10-30 s on a loaded 2-core machine, so this leaves room
#: for a slow one while still ending a hung run.
LONG_MODE_SECONDS_PER_TRIAL = 120


def long_mode_timeout(default_seconds: int) -> int | None:
    """The per-test timeout of a scenario in the long mode (None in the default
    mode, where the suite's own timeout applies)."""
    count = long_mode_trials()
    if count is None:
        return None
    return default_seconds + LONG_MODE_SECONDS_PER_TRIAL * count


def replay_seed() -> int | None:
    raw = os.environ.get(SEED_VARIABLE, "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise ValueError(
            f"{SEED_VARIABLE} must be a trial's printed seed (an integer), not {raw!r}"
        ) from None


@dataclass
class Figures:
    """What the trials of one scenario did and found."""

    scenario: str
    trials: int = 0
    faults: int = 0
    events_checked: int = 0
    losses: int = 0
    duplicates: int = 0
    seeds: list[int] = field(default_factory=list)

    def add(self, other: Figures) -> None:
        self.trials += other.trials
        self.faults += other.faults
        self.events_checked += other.events_checked
        self.losses += other.losses
        self.duplicates += other.duplicates


@dataclass
class Trial:
    """One randomised run of a scenario: its seed, its random source, its figures."""

    scenario: str
    index: int
    seed: int
    random: random.Random
    faults: int = 0
    events_checked: int = 0
    losses: int = 0
    duplicates: int = 0

    def fault(self, count: int = 1) -> None:
        self.faults += count

    def checked(self, events: int, *, losses: int = 0, duplicates: int = 0) -> None:
        """Record a check of ``events`` events, with the losses and duplicates it
        found; a loss or a duplicate fails the trial (the figures keep it first)."""
        self.events_checked += events
        self.losses += losses
        self.duplicates += duplicates
        assert losses == 0 and duplicates == 0, (
            f"{self.scenario} trial {self.index} (seed {self.seed}): "
            f"{losses} event(s) lost and {duplicates} applied twice of {events}"
        )

    @property
    def label(self) -> str:
        return f"{self.scenario} trial {self.index} seed={self.seed}"


class Ledger:
    """The session's figures, per scenario (one per test id)."""

    def __init__(self) -> None:
        self.scenarios: dict[str, Figures] = {}

    def record(self, trial: Trial) -> None:
        figures = self.scenarios.setdefault(trial.scenario, Figures(trial.scenario))
        figures.trials += 1
        figures.faults += trial.faults
        figures.events_checked += trial.events_checked
        figures.losses += trial.losses
        figures.duplicates += trial.duplicates
        figures.seeds.append(trial.seed)

    def total(self) -> Figures:
        total = Figures("all scenarios")
        for figures in self.scenarios.values():
            total.add(figures)
        return total

    def table(self) -> list[str]:
        every = [*sorted(self.scenarios.values(), key=lambda f: f.scenario), self.total()]
        width = max(len(f.scenario) for f in every)
        lines = [
            f"{'scenario':<{width}} {'trials':>6} {'faults':>7} {'events':>9} "
            f"{'lost':>5} {'twice':>5}"
        ]
        for figures in every:
            lines.append(
                f"{figures.scenario:<{width}} {figures.trials:>6} {figures.faults:>7} "
                f"{figures.events_checked:>9} {figures.losses:>5} {figures.duplicates:>5}"
            )
        return lines

    def write(self, path: Path) -> None:
        payload = {
            "trials_per_scenario": long_mode_trials(),
            "scenarios": [
                asdict(f) for f in sorted(self.scenarios.values(), key=lambda f: f.scenario)
            ],
            "total": asdict(self.total()),
        }
        path.write_text(json.dumps(payload, indent=2) + "\n")


LEDGER = Ledger()


def run_trials(scenario: str, *, default: int) -> Iterator[Trial]:
    """The trials of ``scenario``: ``default`` of them in the default mode, the long
    mode's count with ``SAFEREPLAY_RELIABILITY_TRIALS``, one with a replayed seed.

    Each trial's seed is printed before it runs (pytest shows it with a failure) and
    named in the failure's message; its figures reach the session's ledger once it
    has run to its end."""
    replay = replay_seed()
    if replay is not None:
        seeds = [replay]
    else:
        count = long_mode_trials() or default
        seeds = [secrets.randbits(48) for _ in range(count)]
    for index, seed in enumerate(seeds, start=1):
        print(f"[reliability] {scenario} trial {index}/{len(seeds)} seed={seed}", flush=True)
        trial = Trial(scenario, index, seed, random.Random(seed))
        try:
            yield trial
        except BaseException as exc:
            exc.add_note(f"replay it alone with {SEED_VARIABLE}={seed} ({trial.label})")
            raise
        LEDGER.record(trial)


def markdown_table(payload: dict[str, Any]) -> str:
    """The figures of a written report as the Markdown table ``docs/reliability.md``
    publishes (its test checks that the published table is this one)."""
    rows = [
        "| scenario | trials | faults injected | events checked | lost | applied twice |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for figures in [*payload["scenarios"], payload["total"]]:
        name = figures["scenario"]
        shown = f"**{name}**" if figures is payload["total"] else f"`{name}`"
        rows.append(
            f"| {shown} | {figures['trials']} | {figures['faults']} | "
            f"{figures['events_checked']} | {figures['losses']} | {figures['duplicates']} |"
        )
    return "\n".join(rows)

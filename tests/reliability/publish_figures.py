"""Publish the long mode's figures: merge the per-file reports of
``tests/reliability/long_mode.sh`` into ``docs/reliability-figures.json`` and write
their table into ``docs/reliability.md`` (``test_reliability_figures`` checks both)::

    .venv/bin/python tests/reliability/publish_figures.py RUNS.json REPORTS...

REPORTS are report files or folders of them (``long_mode.sh``'s, whose
``*-load.json`` side files of the load scenario are not trial reports).

``RUNS.json`` lists the runs that made the reports, as the document names them:
``[{"area": ..., "command": ..., "trials_per_scenario": N, "seconds": S}, ...]``.
A scenario reported twice is refused: each figure comes from one run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for the module below

from reliability_trials import markdown_table

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "reliability.md"
FIGURES = ROOT / "docs" / "reliability-figures.json"
COUNTED = ("trials", "faults", "events_checked", "losses", "duplicates")


def report_files(arguments: list[str]) -> list[Path]:
    found: list[Path] = []
    for argument in map(Path, arguments):
        if argument.is_dir():
            found += [
                p
                for p in sorted(argument.glob("test_reliability_*.json"))
                if not p.name.endswith("-load.json")
            ]
        else:
            found.append(argument)
    return found


def merged(reports: list[Path]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    scenarios: dict[str, dict[str, Any]] = {}
    for report in reports:
        payload = json.loads(report.read_text(encoding="utf-8"))
        if not isinstance(payload, dict) or "scenarios" not in payload:
            raise SystemExit(f"{report} is not a report of the suite's trials")
        for figures in payload["scenarios"]:
            if figures["scenario"] in scenarios:
                raise SystemExit(f"{figures['scenario']} is in two reports ({report})")
            scenarios[figures["scenario"]] = figures
    every = [scenarios[name] for name in sorted(scenarios)]
    total: dict[str, Any] = {"scenario": "all scenarios"}
    total |= {key: sum(f[key] for f in every) for key in COUNTED}
    total["seeds"] = []
    return every, total


def replace_table(doc: str, table: str) -> str:
    """The document with its figures table (header to the total row) replaced."""
    lines = doc.split("\n")
    start = next(i for i, line in enumerate(lines) if line.startswith("| scenario | trials |"))
    end = next(i for i in range(start, len(lines)) if lines[i].startswith("| **all scenarios**"))
    return "\n".join([*lines[:start], table, *lines[end + 1 :]])


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        raise SystemExit(__doc__)
    runs = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    scenarios, total = merged(report_files(argv[1:]))
    payload = {"runs": runs, "scenarios": scenarios, "total": total}
    FIGURES.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    DOC.write_text(replace_table(DOC.read_text(encoding="utf-8"), markdown_table(payload)))
    print(
        f"{len(scenarios)} scenarios, {total['trials']} trials, {total['faults']} faults, "
        f"{total['events_checked']} events checked, {total['losses']} lost, "
        f"{total['duplicates']} applied twice"
    )


if __name__ == "__main__":
    main(sys.argv[1:])

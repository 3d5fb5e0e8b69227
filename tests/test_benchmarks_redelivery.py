"""Smoke run of the re-delivery benchmark: tiny N, concurrency 1 and 4, both backends.

It checks that the one command runs end to end against its receiver process, and
that every measurement delivered each owed event: the receiver acknowledged exactly
N distinct idempotency keys and the ledger holds N delivered rows (no timing
assertions: the benchmark itself fails when a count is off; this checks its JSON).
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
redelivery = importlib.import_module("benchmarks.redelivery")

DELIVERIES = 40
ONE_AGGREGATE = 6


def run(tmp_path: Path, *extra: str) -> dict[str, object]:
    out = tmp_path / "result.json"
    code = redelivery.main(
        [
            "--deliveries",
            str(DELIVERIES),
            "--one-aggregate",
            str(ONE_AGGREGATE),
            "--concurrency",
            "1,4",
            "--data-dir",
            str(tmp_path / "data"),
            "--json",
            str(out),
            "--no-docs",
            *extra,
        ]
    )
    assert code == 0
    report: dict[str, object] = json.loads(out.read_text())
    return report


def check(report: dict[str, object]) -> None:
    runs = report["runs"]
    assert isinstance(runs, list)
    measured = {(r["case"], r["concurrency"]) for r in runs}
    assert measured == {("many", 1), ("many", 4), ("one", 1), ("one", 4)}
    for r in runs:
        expected = DELIVERIES if r["case"] == "many" else ONE_AGGREGATE
        assert r["deliveries"] == expected
        assert r["distinct_keys"] == expected, r
        assert r["ledger_delivered"] == r["ledger_rows"] == expected, r
        assert r["duplicates"] == 0, r
        # The outage left every row owed, and its first attempts were refused.
        assert r["refused_during_outage"] >= 1 and r["outage_failed_attempts"] >= 1, r
        assert r["deliveries_per_s"] > 0
    meta = report["meta"]
    assert isinstance(meta, dict)
    assert meta["aggregates"] > 10, "many aggregates: ordering does not serialise them"
    summary = report["summary"]
    assert isinstance(summary, list)
    assert all(s["outage_minutes_for_40000"] > 0 for s in summary)
    assert "| many aggregates | 4 |" in redelivery.markdown(report)


def test_the_benchmark_runs_on_sqlite(tmp_path: Path) -> None:
    check(run(tmp_path))


@pytest.mark.postgres
def test_the_benchmark_runs_on_postgres(tmp_path: Path, postgres_dsn: str, pg_schema: str) -> None:
    check(
        run(
            tmp_path, "--backend", "postgres", "--postgres-dsn", postgres_dsn, "--schema", pg_schema
        )
    )

"""Pieces of the catch-up benchmark harness that need no benchmark run.

- The raw floor's partition filter is safereplay's partition function (in Python, as
  SQLite's registered function, and as PostgreSQL's SQL expression), so the floor's k
  processes do the same work as safereplay's k workers.
- Issue 23's targets say met / missed in words and by how much.
- The plots are drawn when matplotlib is installed, and skipped with a message when it
  is not (the test extra does not install it: the plotting test runs where the
  ``benchmarks`` extra is installed, the skip path everywhere).
"""

from __future__ import annotations

import importlib
import sys
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from safereplay.projections.source import partition_of

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
catchup = importlib.import_module("benchmarks.catchup")
plots = importlib.import_module("benchmarks.plots")
raw = importlib.import_module("benchmarks.raw")
targets = importlib.import_module("benchmarks.targets")

IDS = [uuid.UUID(int=0), uuid.UUID(int=2**128 - 1)] + [uuid.uuid4() for _ in range(300)]


@pytest.mark.parametrize("count", [1, 2, 3, 4, 7])
def test_floor_partition_function_is_safereplays(count: int) -> None:
    for aggregate_id in IDS:
        expected = partition_of(aggregate_id, count)
        assert raw.partition_of_hex(aggregate_id.hex, count) == expected
        assert raw.partition_of_hex(str(aggregate_id), count) == expected


@pytest.mark.postgres
def test_floor_partition_expression_in_postgres_is_safereplays(postgres_dsn: str) -> None:
    # The floor's SQL filter, evaluated by the server for every id and count.
    expression = raw.PG_PARTITION_FILTER.replace("%%", "%")
    assert expression.startswith(" AND ") and expression.endswith(" % %s = %s")
    hashed = expression[len(" AND ") : -len(" % %s = %s")]
    query = sql.SQL("SELECT {} %% %s FROM unnest(%s::uuid[]) AS t(originator_id)").format(
        sql.SQL(hashed.replace("%", "%%"))
    )
    with psycopg.connect(postgres_dsn) as conn:
        for count in (2, 3, 4):
            rows = conn.execute(query, (count, [str(i) for i in IDS])).fetchall()
            assert [r[0] for r in rows] == [partition_of(i, count) for i in IDS]


def test_target_verdicts_say_met_or_missed_and_by_how_much() -> None:
    share = targets.TARGETS["vs_floor"]
    assert targets.verdict(share, 0.92, pending="x") == (
        True,
        "met: 92 % against ≥ 90 % (2 points to spare)",
    )
    assert targets.verdict(share, 0.78, pending="x") == (
        False,
        "missed by 12 points: 78 % against ≥ 90 %",
    )
    factor = targets.TARGETS["workers"]
    met, words = targets.verdict(factor, 1.45, pending="x")
    assert met is False
    assert words == "missed by 0.15\u00d7: 1.45\u00d7 against ≥ 1.60\u00d7"
    ceiling = targets.TARGETS["growth_rss"]
    assert targets.verdict(ceiling, 1.02, pending="x")[0] is True
    assert targets.verdict(ceiling, 1.25, pending="x") == (
        False,
        "missed by 0.15: 1.25 against ≤ 1.10",
    )
    assert targets.verdict(share, None, pending="run it") == (None, "pending: run it")
    assert targets.verdict(targets.TARGETS["vs_es"], 25.0, pending="x") == (
        None,
        "25\u00d7: reported, not a target",
    )


def test_main_targets_without_a_sizes_run_leave_the_growth_rows_pending() -> None:
    ratios = {
        "sqlite": {"safereplay_vs_raw_floor": 0.95, "safereplay_encryption_cost": 0.12},
        "postgres": {"safereplay_vs_raw_floor": 0.5, "two_workers_vs_one": 1.7},
    }
    rows = targets.main_targets(ratios, None)
    by = {(r["key"], r["backend"]): r for r in rows}
    assert by[("vs_floor", "sqlite")]["met"] is True
    assert by[("vs_floor", "postgres")]["met"] is False
    assert by[("workers", "postgres")]["met"] is True
    assert by[("encryption", "sqlite")]["verdict"].startswith("missed by 2 points")
    assert by[("growth_rate", "sqlite")]["verdict"].startswith("pending: run `python -m")
    assert by[("growth_rss", "postgres")]["met"] is None


def test_without_matplotlib_the_benchmark_says_so_and_draws_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(plots, "unavailable", lambda: "matplotlib is not installed")
    said: list[str] = []
    embed = catchup._plot(
        plots.draw_sizes,
        {},
        docs_png=tmp_path / "docs.png",
        out_json=tmp_path / "out.json",
        docs=True,
        log=said.append,
    )
    assert embed == ""
    assert said == ["matplotlib is not installed"]
    assert not list(tmp_path.iterdir())


def test_plots_are_drawn_with_matplotlib(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    assert plots.unavailable() is None
    sizes = {
        "loops": [
            {"backend": b, "loop": lp, "size": n, "events_per_s": rate * n / 1000}
            for b in ("sqlite", "postgres")
            for lp, rate in (("raw", 90.0), ("safereplay", 60.0))
            for n in (100_000, 1_000_000)
        ]
    }
    scaling = {
        "scaling": [
            {"backend": "postgres", "loop": lp, "workers": k, "events_per_s": rate * k}
            for lp, rate in (("raw", 90_000.0), ("safereplay", 50_000.0))
            for k in (1, 2, 3, 4)
        ]
    }
    embed = catchup._plot(
        plots.draw_sizes,
        sizes,
        docs_png=tmp_path / "sizes.png",
        out_json=tmp_path / "out.json",
        docs=True,
        log=lambda _: None,
    )
    assert embed == "![events/s against N](sizes.png)"
    plots.draw_scaling(scaling, tmp_path / "scaling.png")
    for name in ("sizes.png", "scaling.png"):
        data = (tmp_path / name).read_bytes()
        assert data.startswith(b"\x89PNG")
        assert len(data) > 5_000

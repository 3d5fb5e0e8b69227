"""Smoke runs of the catch-up benchmark harness: tiny N, both backends, no timing assertions.

They check that each mode (the main run, the cost growth ``--sizes``, the scaling
curve ``--scaling``) runs end to end, that its JSON has the documented shape (load
averages, issue 23's target rows, the sizes and scaling entries, the collector of
every measuring process), and that every measured loop ended with the same projection
state as the reference fold of the same events (a loop that is not available yet is
reported as such, never as a number).
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from safereplay.projections.collector import REPLAY_PROCESS_POLICY

# benchmarks/ is a directory of scripts, not an installed package: import it from the
# repository root whichever way pytest was started.
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
catchup = importlib.import_module("benchmarks.catchup")

EVENTS = 2_000
REPLAY_THRESHOLD = [
    REPLAY_PROCESS_POLICY.young,
    REPLAY_PROCESS_POLICY.middle,
    REPLAY_PROCESS_POLICY.old,
]
TARGET_KEYS = {"vs_floor", "workers", "growth_rate", "growth_rss", "encryption", "vs_es"}


@pytest.fixture
def bench_schema(postgres_dsn: str, pg_schema: str) -> Iterator[str]:
    """``pg_schema``, and afterwards the per-N schemas the cost growth made beside it."""
    yield pg_schema
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        names = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE starts_with(nspname, %s)",
            (f"{pg_schema}_",),
        ).fetchall()
        for (name,) in names:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


def _args(tmp_path: Path, postgres_dsn: str, schema: str, out: Path, *mode: str) -> list[str]:
    """The mode's own options, then the ones every smoke run shares."""
    return [
        *mode,
        "--runs",
        "1",
        "--batch-size",
        "500",
        "--data-dir",
        str(tmp_path / "data"),
        "--postgres-dsn",
        postgres_dsn,
        "--schema",
        schema,
        "--json",
        str(out),
        "--no-docs",
    ]


def _check_measured(loop: dict[str, Any], events: int) -> None:
    """A measured loop: its figures, its load averages, its collector, its state."""
    assert loop["events"] == events, loop["key"]
    assert loop["events_per_s"] > 0
    assert loop["peak_rss_mb"] > 0
    assert len(loop["runs"]) == 1
    # Same final state as the reference fold of the same events.
    assert loop["state_ok"] is True, (loop["key"], loop["state"], loop["expected_state"])
    assert loop["state"]["rows"] > 0
    # Issue 23: the load average before every measurement, and its summary per row.
    for run in loop["runs"]:
        assert len(run["loadavg"]) == 3
        assert all(value >= 0 for value in run["loadavg"])
    load = loop["load_1min"]
    assert load["min"] <= load["median"] <= load["max"]
    # Collector parity: every measuring process, partition processes too, ran under the
    # replay policy, the default of --gc.
    for run in loop["runs"]:
        assert run["gc_choice"] == "replay"
        processes = run.get("partitions") or [run]
        assert all(p["gc"]["threshold"] == REPLAY_THRESHOLD for p in processes), loop["key"]


@pytest.mark.postgres
def test_cost_growth_then_main_run_on_both_backends_and_every_loop_agrees(
    tmp_path: Path, postgres_dsn: str, bench_schema: str
) -> None:
    # The cost growth first: the main run's targets table takes its growth rows from it.
    sizes_out = tmp_path / "sizes.json"
    code = catchup.main(
        _args(tmp_path, postgres_dsn, bench_schema, sizes_out, "--sizes", f"{EVENTS},{2 * EVENTS}")
    )
    assert code == 0
    sizes = json.loads(sizes_out.read_text())
    assert sizes["meta"]["sizes"] == [EVENTS, 2 * EVENTS]
    assert sizes["meta"]["gc"] == "replay"
    loops = {(lp["backend"], lp["loop"], lp["size"]): lp for lp in sizes["loops"]}
    assert set(loops) == {
        (backend, loop, size)
        for backend in ("sqlite", "postgres")
        for loop in ("raw", "safereplay")
        for size in (EVENTS, 2 * EVENTS)
    }
    for (_, _, size), loop in loops.items():
        if not loop["unavailable"]:
            _check_measured(loop, size)
    # Every N has its own data dir and schema.
    assert (tmp_path / "data" / f"n{EVENTS}").is_dir()
    assert (tmp_path / "data" / f"n{2 * EVENTS}").is_dir()
    growth = {(g["backend"], g["loop"]): g for g in sizes["growth"]}
    assert set(growth) == {(b, lp) for b in ("sqlite", "postgres") for lp in ("raw", "safereplay")}
    assert growth[("sqlite", "raw")]["events_per_s_ratio"] > 0
    assert growth[("postgres", "raw")]["peak_rss_ratio"] > 0
    assert {t["key"] for t in sizes["targets"]} == {"growth_rate", "growth_rss"}

    out = tmp_path / "result.json"
    code = catchup.main(
        _args(
            tmp_path,
            postgres_dsn,
            bench_schema,
            out,
            *("--events", str(EVENTS), "--es-events", str(EVENTS)),
            *("--sizes-json", str(sizes_out)),
        )
    )
    assert code == 0
    report = json.loads(out.read_text())

    assert set(report) >= {"meta", "loops", "ratios", "targets", "seeding_seconds"}
    assert report["meta"]["events"] == EVENTS
    assert report["meta"]["gc"] == "replay"
    assert set(report["ratios"]) == {"sqlite", "postgres"}

    loops = {loop["key"]: loop for loop in report["loops"]}
    for backend in ("sqlite", "postgres"):
        for key in ("raw/cipher", "raw/plain", "es/cipher"):
            assert f"{backend}/{key}" in loops
        for workers in (1, 2):
            for cipher in ("cipher", "plain"):
                assert f"{backend}/safereplay/{workers}w/{cipher}" in loops

    measured = [loop for loop in report["loops"] if not loop["unavailable"]]
    assert {loop["loop"] for loop in measured} >= {"raw", "es"}
    states = set()
    for loop in measured:
        _check_measured(loop, EVENTS)
        states.add(json.dumps(loop["state"], sort_keys=True))
    # ...and the same state across loops, ciphers and backends (identical payloads).
    assert len(states) == 1

    for loop in report["loops"]:
        if loop["unavailable"]:
            assert loop["loop"] == "safereplay"
            assert "not available" in loop["unavailable"]
        if loop["loop"] == "raw":
            split = loop["split_ms_per_batch"]
            assert set(split) >= {"fetch", "decrypt_decode", "apply", "commit", "batches"}
            assert split["batches"] >= 1

    for ratio in report["ratios"].values():
        assert ratio["raw_floor_vs_eventsourcing"] > 0
        assert ratio["raw_floor_encryption_cost"] is not None

    # Issue 23's rows, every one with a verdict in words; the growth rows from --sizes.
    targets = report["targets"]
    assert {t["key"] for t in targets} >= TARGET_KEYS
    for t in targets:
        assert {"target", "wanted", "measured", "met", "verdict"} <= set(t)
        if t["measured"] is None:
            assert t["verdict"].startswith("pending")
        elif t["met"] is True:
            assert t["verdict"].startswith("met")
        elif t["met"] is False:
            assert t["verdict"].startswith("missed by")
        else:
            assert "reported" in t["verdict"]
    growth_rows = [t for t in targets if t["key"] in ("growth_rate", "growth_rss")]
    assert len(growth_rows) == 4
    assert all(t["measured"] is not None for t in growth_rows)
    assert all(f"N = {2 * EVENTS:,}" in t["target"] for t in growth_rows)
    text = catchup.render(report)
    assert "Targets of issue 23" in text
    assert "load (1 min)" in text


@pytest.mark.postgres
def test_scaling_curve_on_both_backends(
    tmp_path: Path, postgres_dsn: str, bench_schema: str
) -> None:
    out = tmp_path / "scaling.json"
    code = catchup.main(
        _args(
            tmp_path,
            postgres_dsn,
            bench_schema,
            out,
            *("--scaling", "1,2,3", "--events", str(EVENTS), "--backends", "sqlite,postgres"),
        )
    )
    assert code == 0
    report = json.loads(out.read_text())
    assert report["meta"]["workers"] == [1, 2, 3]
    assert report["meta"]["gc"] == "replay"
    curve = {(e["backend"], e["loop"], e["workers"]): e for e in report["scaling"]}
    assert set(curve) == {
        (backend, loop, k)
        for backend in ("sqlite", "postgres")
        for loop in ("raw", "safereplay")
        for k in (1, 2, 3)
    }
    states = set()
    for loop in report["loops"]:
        if loop["unavailable"]:
            continue
        _check_measured(loop, EVENTS)
        states.add(json.dumps(loop["state"], sort_keys=True))
        # k partition processes, each with its own result (the floor's too).
        if loop["workers"] > 1:
            assert all(len(run["partitions"]) == loop["workers"] for run in loop["runs"])
    assert len(states) == 1
    for (_, loop, k), entry in curve.items():
        if entry["unavailable"]:
            continue
        assert entry["events_per_s"] > 0
        assert entry["state_ok"] is True
        assert entry["efficiency"] == pytest.approx(entry["speed_up"] / k)
        if k == 1:
            assert entry["efficiency"] == pytest.approx(1.0)
        if loop == "safereplay":
            assert entry["vs_raw_floor"] > 0
    text = catchup.render_scaling(report, plot="")
    assert "efficiency per worker" in text


def test_scaling_defaults_to_postgres_and_needs_one_worker() -> None:
    with pytest.raises(SystemExit):
        catchup.main(["--scaling", "2,3", "--no-docs"])

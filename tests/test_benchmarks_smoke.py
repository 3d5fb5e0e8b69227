"""Smoke run of the catch-up benchmark harness: tiny N, both backends, no timing assertions.

It checks that the one command runs end to end, that its JSON has the documented
shape, and that every measured loop ended with the same projection state as the
reference fold of the same events (a loop that is not available yet is reported
as such, never as a number).
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

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


@pytest.mark.postgres
def test_harness_runs_on_both_backends_and_every_loop_agrees(
    tmp_path: Path, postgres_dsn: str, pg_schema: str
) -> None:
    out = tmp_path / "result.json"
    code = catchup.main(
        [
            "--events",
            str(EVENTS),
            "--runs",
            "1",
            "--es-events",
            str(EVENTS),
            "--batch-size",
            "500",
            "--backends",
            "sqlite,postgres",
            "--data-dir",
            str(tmp_path / "data"),
            "--postgres-dsn",
            postgres_dsn,
            "--schema",
            pg_schema,
            "--json",
            str(out),
            "--no-docs",
        ]
    )
    assert code == 0
    report = json.loads(out.read_text())

    assert set(report) >= {"meta", "loops", "ratios", "targets", "seeding_seconds"}
    assert report["meta"]["events"] == EVENTS
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
        assert loop["events"] == EVENTS, loop["key"]
        assert loop["events_per_s"] > 0
        assert loop["peak_rss_mb"] > 0
        assert len(loop["runs"]) == 1
        # Same final state as the reference fold of the same events...
        assert loop["state_ok"] is True, (loop["key"], loop["state"], loop["expected_state"])
        assert loop["state"]["rows"] > 0
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

    # Collector parity (issue 23): every measuring process, partition processes too, ran
    # under the replay policy, the default of --gc.
    assert report["meta"]["gc"] == "replay"
    replay = REPLAY_THRESHOLD
    for loop in measured:
        for run in loop["runs"]:
            assert run["gc_choice"] == "replay"
            processes = run.get("partitions") or [run]
            assert all(p["gc"]["threshold"] == replay for p in processes), loop["key"]

    for ratio in report["ratios"].values():
        assert ratio["raw_floor_vs_eventsourcing"] > 0
        assert ratio["raw_floor_encryption_cost"] is not None
    assert all({"target", "wanted", "measured", "met"} <= set(t) for t in report["targets"])

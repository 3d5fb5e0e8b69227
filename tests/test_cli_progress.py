"""Job progress a person can read and a script can follow: events done of the events
in scope (not log positions), a recent rate that agrees with `--max-rate`, an ETA
once there is a rate, `watch` into a pipe, failures with their next command, and a
job list that keeps whole ids in a narrow terminal.

Real processes for the running job (every wait polls the database or the output,
never a sleep-and-assert); the renderers are also driven with a rich Console of a
fixed width.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from recovery_fixtures import cli_process, operator_cli_env, seeded_store_env
from rich.console import Console
from typer.testing import CliRunner

from safereplay.recovery.cli.app import app
from safereplay.recovery.cli.progress import jobs_renderable
from safereplay.recovery.jobs.sqlite import SQLiteJobStore

RATE = 100


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return seeded_store_env(tmp_path / "store")


def jobs_json(env: dict[str, str], *args: str) -> list[dict[str, Any]]:
    return json.loads(cli_process(env, "jobs", "--json", *args).stdout)  # type: ignore[no-any-return]


def wait_for(what: str, predicate: Callable[[], bool], *, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_a_throttled_job_counts_events_shows_its_cap_and_an_eta_and_watch_writes_lines(
    env: dict[str, str],
) -> None:
    # Planned without workers, so that `watch` is up before the job moves: on a busy
    # machine a process takes seconds to start, longer than the whole job may last.
    planned = json.loads(
        cli_process(
            env,
            *("rebuild", "run_status", "-n", "2", "-w", "0", "--max-rate", str(RATE)),
            *("-r", "INC-7", "--json"),
        ).stdout
    )
    job_id = planned["job_id"]
    [job] = jobs_json(env)
    assert job["job_id"] == job_id
    # Events in scope are the events the projection reads, fewer than the positions.
    assert 0 < job["events_in_scope"] <= job["target_position"]
    # Into a pipe, `watch` writes plain lines as it goes.
    watch = subprocess.Popen(
        [
            *(sys.executable, "-m", "safereplay.recovery.cli", "watch", job_id[:8]),
            *("--interval", "0.5"),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert watch.stdout is not None
    first_line = watch.stdout.readline()  # blocks until watch has read the job once
    assert first_line.startswith(f"job {job_id} "), first_line
    workers = [
        subprocess.Popen(
            [
                *(sys.executable, "-m", "safereplay.recovery.cli", "worker"),
                *("--job", job_id, "--exit-when-idle"),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        seen: list[dict[str, Any]] = []

        def an_eta() -> bool:
            # In this process (no interpreter to start): polls fast enough on a slow
            # machine to see the job while it runs.
            listed = json.loads(run(env, "jobs", "--json", "--active"))
            seen.extend(listed)
            return bool(listed) and listed[0]["eta_seconds"] is not None

        wait_for("an ETA in jobs --active", an_eta)
        rates = [row["events_per_second"] for row in seen]
        assert max(rates) <= RATE * 1.25, rates  # the rate shown agrees with the cap
        rest, err = watch.communicate(timeout=300)
        assert watch.returncode == 0, err
    finally:
        for worker in workers:
            _, worker_err = worker.communicate(timeout=300)
            assert worker.returncode == 0, worker_err
    lines = [first_line.rstrip("\n"), *rest.splitlines()]
    assert len(lines) >= 2, lines
    assert all(line.startswith(f"job {job_id} ") for line in lines), lines
    assert any(" running: " in line and " ev/s, ETA " in line for line in lines[:-1]), lines
    assert lines[-1].startswith(f"job {job_id} completed: "), lines
    [done] = jobs_json(env)
    parts = done["partitions"]
    assert done["events_done"] == done["events_in_scope"] > 0
    assert done["events_in_scope"] == sum(p["events_applied"] + p["parked"] for p in parts)
    assert f"{done['events_in_scope']:,}/{done['events_in_scope']:,} events" in lines[-1]
    # A completed job shows its average rate, not 0, and no more than the cap.
    assert 0 < done["events_per_second"] <= RATE * 1.25


@pytest.fixture
def operator_env(sqlite_cli_env: dict[str, str]) -> dict[str, str]:
    return operator_cli_env(sqlite_cli_env, workflows=2, runs_per_workflow=4, seed=3)


def run(env: dict[str, str], *args: str) -> str:
    result = CliRunner().invoke(app, list(args), env=env)
    assert result.exit_code in (0, 1), result.output
    return result.output


def words(text: str) -> str:
    """Output with wrapping undone (rich breaks long lines at spaces)."""
    return " ".join(text.split())


def test_a_failed_partition_shows_its_error_and_the_next_commands(
    operator_env: dict[str, str],
) -> None:
    planned = json.loads(
        run(operator_env, "rebuild", "run_status", "-n", "1", "-r", "x", "-w", "0", "--json")
    )
    job_id = planned["job_id"]
    jobs = SQLiteJobStore(operator_env["SAFEREPLAY_SQLITE_PATH"])
    try:
        claim = jobs.claim("w1", lease_seconds=60)
        assert claim is not None
        jobs.finish_partition(claim, succeeded=False, error="position 7: ValueError: bad data")
        assert jobs.finalize(claim.job.job_id).state == "failed"
    finally:
        jobs.close()
    expected = (
        "partition 0 failed (committed up to position 0): position 7: ValueError: bad data. "
        f"Next: `safereplay retry-partition {job_id} --partition 0 --reason ...`, then "
        f"`safereplay worker --job {job_id} --exit-when-idle`"
    )
    for columns in ("60", "200"):
        assert expected in words(run({**operator_env, "COLUMNS": columns}, "jobs")), columns
    assert expected in words(run(operator_env, "watch", job_id))


def test_the_job_list_keeps_whole_ids_at_any_width(operator_env: dict[str, str]) -> None:
    for projection in ("run_status", "workflow_stats"):
        run(operator_env, "rebuild", projection, "-r", "a reason long enough to wrap", "-w", "0")
    rows = json.loads(run(operator_env, "jobs", "--json"))
    assert len(rows) == 2
    for width in (60, 80, 200):
        console = Console(file=io.StringIO(), width=width, force_terminal=False)
        console.print(jobs_renderable(rows, console))
        text = console.file.getvalue()  # type: ignore[attr-defined]
        assert all(len(line) <= width for line in text.splitlines()), text
        for row in rows:
            assert row["job_id"] in text, (width, text)  # whole, on one line
            assert row["state"] in text

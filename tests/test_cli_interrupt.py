"""Interrupted work resumes the way the runbook says: Ctrl-C (SIGINT) or SIGTERM/SIGHUP
on `rebuild`/`catch-up` stops the local workers cleanly; a job whose workers were all
killed (SIGKILL) is shown as stalled once their leases expire; the same command, run
again, resumes the job instead of being refused.

Real processes; every wait is on the job's state in the database, never a sleep.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from recovery_fixtures import cli_process, seeded_store_env


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    # Small batches, each paying the job's rate cap at once: a worker renews its lease
    # (every third of it) far more often than the lease could expire.
    return seeded_store_env(tmp_path / "store")


def rows(env: dict[str, str], query: str) -> list[dict[str, Any]]:
    with sqlite3.connect(env["SAFEREPLAY_SQLITE_PATH"], timeout=30) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute(query)]


def wait_for(what: str, predicate: Callable[[], bool], *, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def the_job(env: dict[str, str]) -> dict[str, Any]:
    [job] = rows(env, "SELECT * FROM safereplay_jobs")
    return job


def partitions(env: dict[str, str]) -> list[dict[str, Any]]:
    return rows(env, "SELECT * FROM safereplay_job_partitions ORDER BY partition_index")


def some_progress(env: dict[str, str]) -> bool:
    jobs = rows(env, "SELECT state FROM safereplay_jobs")
    return bool(jobs) and any(p["events_applied"] > 0 for p in partitions(env))


def start_rebuild(env: dict[str, str], *extra: str) -> subprocess.Popen[str]:
    # --max-rate keeps the job running long enough to be interrupted mid-way; the
    # test waits on its progress in the database, not on time.
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "safereplay.recovery.cli", "rebuild", "run_status"),
            *("-n", "2", "-w", "2", "--max-rate", "100", "-r", "INC-1", *extra),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def jobs_json(env: dict[str, str]) -> list[dict[str, Any]]:
    return json.loads(cli_process(env, "jobs", "--json").stdout)  # type: ignore[no-any-return]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_stops_the_workers_cleanly_and_the_same_command_resumes(
    env: dict[str, str], sig: signal.Signals
) -> None:
    command = start_rebuild(env)
    wait_for("the rebuild to make progress", lambda: some_progress(env))
    command.send_signal(sig)  # the command only: it must stop its workers itself
    _, err = command.communicate(timeout=120)
    assert command.returncode == 128 + sig, err
    job = the_job(env)
    short = job["job_id"][:8]
    assert "Traceback" not in err
    assert "run the same command again" in err and short in err, err
    assert job["state"] == "running"
    parts = partitions(env)
    assert {p["status"] for p in parts} <= {"pending", "completed"}, parts  # leases given back
    assert all(p["lease_owner"] is None for p in parts if p["status"] == "pending")
    stopped_at = [p["position"] for p in parts]

    [listed] = jobs_json(env)
    assert listed["stalled"] is True and listed["eta_seconds"] is None
    assert "stalled" in cli_process(env, "jobs").stdout
    assert "is stalled" in cli_process(env, "status").stdout

    again = cli_process(env, "rebuild", "run_status", "-n", "2", "-w", "2", "-r", "INC-1", "--json")
    status = json.loads(again.stdout)
    assert status["job"]["job_id"] == job["job_id"], "resumed, not a new job"
    assert status["job"]["state"] == "completed"
    starts = [p["start_position"] for p in partitions(env)]
    assert all(p >= s for p, s in zip(stopped_at, starts, strict=True))
    assert [j["stalled"] for j in jobs_json(env)] == [False]


def test_killed_workers_leave_a_stalled_job_that_the_same_command_resumes(
    env: dict[str, str],
) -> None:
    env = {**env, "SAFEREPLAY_LEASE_SECONDS": "4"}  # the killed workers' leases expire soon
    command = start_rebuild(env)
    wait_for("the rebuild to make progress", lambda: some_progress(env))
    os.killpg(command.pid, signal.SIGKILL)  # the command and its workers: no clean-up
    command.communicate(timeout=60)
    assert command.returncode == -signal.SIGKILL
    assert the_job(env)["state"] == "running"
    # Until the leases expire the job looks held; then it is stalled, with no ETA.
    wait_for("the leases to expire", lambda: jobs_json(env)[0]["stalled"], timeout=120)
    [listed] = jobs_json(env)
    assert listed["eta_seconds"] is None and listed["live_workers"] == 0
    assert "is stalled" in cli_process(env, "status").stdout

    again = cli_process(env, "rebuild", "run_status", "-r", "INC-1")
    said = " ".join(again.stdout.split())
    assert "was interrupted: resuming it" in said, said
    # A resumed first build is still the live build: nothing to swap (it used to say
    # "make it live with safereplay swap", which then refused: live already).
    assert "build 1 of run_status is complete and live (nothing to swap)" in said, said
    [listed] = jobs_json(env)
    assert (listed["job_id"], listed["state"]) == (the_job(env)["job_id"], "completed")
    assert cli_process(env, "audit", "verify").returncode == 0

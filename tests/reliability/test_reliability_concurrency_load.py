"""Load on PostgreSQL: a throttled rebuild while live writers run at a set rate.

Writers commit at a set rate (events per second, drawn per trial), some of their
transactions held open for a moment so that positions commit out of order; the live
follower keeps ``run_status``'s build 1 current, and a rebuild of it (build 2, in
partitions, two workers) runs beside it, throttled to a cap. A sampler reads, every
50 ms and directly in the database, how far the live build's position is behind
the head of the committed log: its **lag in positions**.

The bound: the live build is never more than ``LAG_SECONDS`` seconds of the writers'
output behind the head, plus one batch: ``LAG_SECONDS * rate + batch``. Expressed in
positions relative to the rate, generous (the follower polls every 50 ms at most and
applies batches of 100; a loaded 2-core machine stalls it for a second or two at
worst), so that only a follower starved by the rebuild, or stuck, exceeds it. The
rebuild must finish; then both builds are checked against the clean fold, each event
applied once.

The figures (maximum and median lag, the writers' rate, the rebuild's duration and
rate) are printed, and written beside ``SAFEREPLAY_RELIABILITY_REPORT``'s file as
``<name>-load.json`` when that is set.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from concurrency_writers import (
    CEILING,
    LagSampler,
    OutOfOrderCommitters,
    account,
    checkpoints,
    committed_positions,
)
from projection_fixtures import Backend, PostgresBackend
from recovery_fixtures import QUICK_RUNNER, Recovery, fresh_recovery, wait_until
from reliability_trials import REPORT_VARIABLE, Trial

from safereplay.domain.workload import record_workload
from safereplay.projections import Projection, RunStatusBoard
from safereplay.recovery.jobs.model import JobState
from safereplay.recovery.jobs.plans import JobRequest

pytestmark = pytest.mark.postgres

BOARD = RunStatusBoard
#: The live build may be this many seconds of the writers' output behind the head.
LAG_SECONDS = 15.0
#: The follower's batch (the fixtures' runner reads 100 events at a time).
FOLLOWER_BATCH = 100
LOAD_FIGURES: list[dict[str, Any]] = []


@pytest.fixture
def backend(postgres_dsn: str, key_file: Any) -> Iterator[Backend]:
    backend = PostgresBackend(postgres_dsn, key_file)
    yield backend
    backend.close()


@pytest.fixture(scope="module", autouse=True)
def load_figures() -> Iterator[None]:
    yield
    report = os.environ.get(REPORT_VARIABLE, "").strip()
    if report and LOAD_FIGURES:
        path = Path(report)
        path.with_name(f"{path.stem}-load.json").write_text(
            json.dumps(LOAD_FIGURES, indent=2) + "\n"
        )


def test_throttled_rebuild_while_writers_run_at_a_set_rate(trials: Any, backend: Backend) -> None:
    """The live build's lag stays under ``LAG_SECONDS * rate + batch`` positions while
    a throttled rebuild runs beside it; the rebuild finishes; both builds equal the
    fold with each event applied once."""
    for trial in trials(default=1):
        with fresh_recovery(backend) as recovery:
            load_trial(trial, recovery)


def load_trial(trial: Trial, recovery: Recovery) -> None:
    rng = trial.random
    log = recovery.log
    record_workload(log.app, workflows=3, runs_per_workflow=10, seed=rng.randrange(10**6))
    recovery.first_build(BOARD)
    rate = rng.choice([100.0, 200.0, 300.0])
    cap = rng.choice([100.0, 150.0])
    bound = int(LAG_SECONDS * rate) + FOLLOWER_BATCH
    follower = log.runner(BOARD(), store=log.store())
    with follower.in_background() as live, LagSampler(log, BOARD.name) as lag:
        with OutOfOrderCommitters(
            log, rng, threads=2, max_hold=0.2, held_share=0.3, rollback=0.05, rate=rate
        ) as writers:
            # A backlog for the rebuild: a few seconds of writing before it starts.
            writers.wait_for(rng.randint(8, 16))
            job = recovery.rebuild(
                BOARD.name,
                JobRequest(
                    principal="reliability",
                    reason="throttled rebuild under load",
                    partitions=rng.randint(2, 3),
                    events_per_second=cap,
                ),
            )
            started = time.monotonic()
            workers = [
                recovery.worker(runner_options=replace(QUICK_RUNNER, batch_size=50))
                for _ in range(2)
            ]
            threads = [threading.Thread(target=w.run, daemon=True) for w in workers]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(CEILING * 3)
                assert not thread.is_alive(), "a rebuild worker is stuck"
            duration = time.monotonic() - started
            assert recovery.job(job).state == JobState.COMPLETED, recovery.job(job)
            writers.wait_for(len(writers.figures.committed) + 2)
        head = committed_positions(log)[-1]
        wait_until(
            lambda: {p for _, p, _, _ in checkpoints(log, BOARD.name, 1)} == {head},
            timeout=CEILING,
            what="the live build at the head",
        )
        assert live.alive, "the follower died"
    assert not lag.errors, lag.errors
    rebuilt = sum(c.events_applied for c in recovery.store.checkpoints(BOARD.name, build=job.build))
    figures = {
        "seed": trial.seed,
        "writer_rate_set": rate,
        "writer_rate_achieved": round(writers.events_per_second, 1),
        "rebuild_cap_events_per_second": cap,
        "rebuild_events": rebuilt,
        "rebuild_seconds": round(duration, 2),
        "rebuild_events_per_second": round(rebuilt / duration, 1) if duration else None,
        "lag_samples": len(lag.samples),
        "lag_max_positions": lag.maximum,
        "lag_median_positions": lag.median,
        "lag_bound_positions": bound,
    }
    LOAD_FIGURES.append(figures)
    print(f"[concurrency] {trial.label} load figures: {json.dumps(figures)}")
    assert lag.samples, "the lag was never sampled"
    assert lag.maximum <= bound, f"the live build fell {lag.maximum} positions behind: {figures}"
    trial.fault(len(writers.figures.rolled_back) + writers.figures.overtaken)
    for build in (1, job.build):
        checked(trial, recovery, BOARD, build)


def checked(trial: Trial, recovery: Recovery, projection: type[Projection], build: int) -> None:
    found = account(recovery.log, projection, build, recovery.actual(projection, build=build))
    if found.detail:  # what differs, before the figures fail the trial
        print(f"[concurrency] {trial.label} build {build}: {found.detail}")
    assert not found.detail or found.losses or found.duplicates, found.detail
    trial.checked(found.events, losses=found.losses, duplicates=found.duplicates)

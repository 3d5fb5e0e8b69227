"""Concurrency on PostgreSQL: jobs while out-of-order committers hold and roll back.

Writers insert whole pieces of the workload in transactions held open for random
times (:class:`concurrency_writers.OutOfOrderCommitters`): later positions commit
first, and about one transaction in five is rolled back, leaving a hole for good.
While they write, each scenario runs one kind of job (a partitioned rebuild then its
swap, with the live follower running; a partitioned catch-up; a partition fought
over by two workers; a worker SIGKILLed mid-rebuild), at a moment drawn from the
trial's seed. When the writers have stopped and the work has reached the head, every
build is checked in the database against the clean fold of the stored events: each
event applied exactly once (``events_applied`` against the stored events it handles,
every counter column against the fold's, every row), nothing parked, no job left
running, no lease held.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from concurrency_writers import (
    CEILING,
    OutOfOrderCommitters,
    account,
    checkpoints,
    committed_positions,
    connect,
    live_build,
)
from projection_fixtures import Backend, PostgresBackend
from psycopg import sql
from recovery_fixtures import (
    QUICK_RUNNER,
    Recovery,
    expire_leases,
    fresh_recovery,
    spawn_worker,
    wait_until,
    worker_pid,
)
from reliability_trials import Trial

from safereplay.domain.workload import record_workload
from safereplay.projections import Projection, RunStatusBoard, WorkflowStatistics
from safereplay.recovery.jobs.model import Job, JobState
from safereplay.recovery.jobs.plans import JobRequest, start_catch_up

pytestmark = pytest.mark.postgres

STATS = WorkflowStatistics
BOARD = RunStatusBoard
SMALL_BATCHES = replace(QUICK_RUNNER, batch_size=10)


@pytest.fixture
def backend(postgres_dsn: str, key_file: Any) -> Iterator[Backend]:
    backend = PostgresBackend(postgres_dsn, key_file)
    yield backend
    backend.close()


def request(rng: random.Random, why: str, *, partitions: int | None = None) -> JobRequest:
    return JobRequest(
        principal="reliability",
        reason=why,
        partitions=partitions if partitions is not None else rng.randint(2, 4),
    )


def run_workers(recovery: Recovery, count: int, **options: Any) -> None:
    """``count`` workers (threads, each with its own connections) until nothing is left."""
    workers = [recovery.worker(runner_options=SMALL_BATCHES, **options) for _ in range(count)]
    threads = [threading.Thread(target=w.run, daemon=True) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(CEILING)
        assert not thread.is_alive(), "a worker is stuck"


def settled(recovery: Recovery, job: Job) -> Job:
    """The job once it has ended; it must have completed."""
    return wait_until(
        lambda: now if (now := recovery.job(job)).state == JobState.COMPLETED else None,
        timeout=CEILING,
        what=f"job {job.job_id} to complete",
    )


def no_job_running_no_lease(recovery: Recovery) -> None:
    """In the job tables: no job planned, running or aborting; no partition leased."""
    log = recovery.log
    schema = log.settings.postgres_schema
    with connect(log) as conn:
        active = conn.execute(
            sql.SQL(
                "SELECT job_id, state FROM {} WHERE state IN ('planned', 'running', 'aborting')"
            ).format(sql.Identifier(schema, "safereplay_jobs"))
        ).fetchall()
        leased = conn.execute(
            sql.SQL(
                "SELECT job_id, partition_index, lease_owner FROM {} "
                "WHERE status = 'running' OR lease_owner IS NOT NULL"
            ).format(sql.Identifier(schema, "safereplay_job_partitions"))
        ).fetchall()
    assert not active, f"jobs left active: {active}"
    assert not leased, f"leases left held: {leased}"


def follow_to_head(recovery: Recovery, projection: type[Projection], build: int) -> int:
    """Once the writers have stopped: wait until the build's position is the head of
    the committed log (its follower, or a catch-up here, gets it there)."""
    head = committed_positions(recovery.log)[-1]

    def there() -> bool:
        return {p for _, p, _, _ in checkpoints(recovery.log, projection.name, build)} == {head}

    wait_until(there, timeout=CEILING, what=f"build {build} of {projection.name} at {head}")
    return head


def checked(trial: Trial, recovery: Recovery, projection: type[Projection], build: int) -> None:
    found = account(recovery.log, projection, build, recovery.actual(projection, build=build))
    if found.detail:  # what differs, before the figures fail the trial
        print(f"[concurrency] {trial.label} build {build}: {found.detail}")
    assert not found.detail or found.losses or found.duplicates, found.detail
    trial.checked(found.events, losses=found.losses, duplicates=found.duplicates)


def writer_faults(trial: Trial, writers: OutOfOrderCommitters) -> None:
    """Each rolled-back transaction and each overtaken commit counts as a fault."""
    figures = writers.figures
    trial.fault(len(figures.rolled_back) + figures.overtaken)
    print(
        f"[concurrency] {trial.label}: {len(figures.committed)} transactions committed "
        f"({figures.events} events), {len(figures.rolled_back)} rolled back, "
        f"{figures.overtaken} overtaken by later positions"
    )
    assert figures.rolled_back, "no transaction was rolled back: the trial proves less"


def test_partitioned_rebuild_and_swap_while_committers_hold_and_roll_back(
    trials: Any, backend: Backend
) -> None:
    """A rebuild of ``workflow_stats`` (merges that span partitions) in 2-4 partitions by
    two workers, then its swap, while the live follower keeps build 1 current and the
    writers commit out of order and roll back. Both builds equal the clean fold at their
    positions, each event applied once; build 2 is live and at the head."""
    for trial in trials(default=1):
        _rebuild_and_swap_trial(trial, backend)


def _rebuild_and_swap_trial(trial: Trial, backend: Backend) -> None:
    rng = trial.random
    with fresh_recovery(backend) as recovery:
        log = recovery.log
        record_workload(log.app, workflows=2, runs_per_workflow=3, seed=rng.randrange(10**6))
        recovery.first_build(STATS)
        follower = log.runner(STATS(), store=log.store())
        with follower.in_background() as live:
            with OutOfOrderCommitters(log, rng) as writers:
                writers.wait_for(rng.randint(2, 8))
                job = recovery.rebuild(STATS.name, request(rng, "rebuild under writers"))
                run_workers(recovery, 2)
                settled(recovery, job)
                writers.wait_for(len(writers.figures.committed) + rng.randint(1, 5))
                swapped = recovery.swap(STATS.name)
                assert (swapped.previous, swapped.live) == (1, job.build)
                writers.wait_for(len(writers.figures.committed) + rng.randint(2, 6))
            follow_to_head(recovery, STATS, job.build)
            assert live.alive, "the follower died"
        writer_faults(trial, writers)
        assert live_build(log, STATS.name) == job.build
        no_job_running_no_lease(recovery)
        checked(trial, recovery, STATS, 1)
        checked(trial, recovery, STATS, job.build)


def test_partitioned_catch_up_while_committers_hold_and_roll_back(
    trials: Any, backend: Backend
) -> None:
    """Catch-ups of ``run_status`` in 2-4 partitions, planned to the safe head while
    transactions are held open below it, one after the other while the writers go on;
    then a last one once they stopped. Every event up to the head applied once."""
    for trial in trials(default=1):
        _catch_up_trial(trial, backend)


def _catch_up_trial(trial: Trial, backend: Backend) -> None:
    rng = trial.random
    with fresh_recovery(backend) as recovery:
        log = recovery.log
        record_workload(log.app, workflows=2, runs_per_workflow=3, seed=rng.randrange(10**6))
        recovery.first_build(BOARD)
        partitions = rng.randint(2, 4)
        jobs: list[Job] = []
        with OutOfOrderCommitters(log, rng) as writers:
            for _ in range(rng.randint(2, 3)):
                writers.wait_for(len(writers.figures.committed) + rng.randint(2, 6))
                plan = start_catch_up(
                    request(rng, "catch up under writers", partitions=partitions),
                    projection=BOARD.name,
                    store=recovery.store,
                    source=recovery.source,
                    jobs=recovery.jobs,
                    registry=recovery.registry,
                    wait=rng.uniform(0, 0.5),
                )
                if plan.job is not None:
                    jobs.append(plan.job)
                    run_workers(recovery, 2)
                    settled(recovery, plan.job)
        assert jobs, "no catch-up had anything to do"
        plan = start_catch_up(
            request(rng, "the last catch-up", partitions=partitions),
            projection=BOARD.name,
            store=recovery.store,
            source=recovery.source,
            jobs=recovery.jobs,
            registry=recovery.registry,
            wait=CEILING,
        )
        assert plan.safe_head.held_back == 0, "nothing is in doubt once writers stopped"
        if plan.job is not None:
            run_workers(recovery, 2)
            settled(recovery, plan.job)
        follow_to_head(recovery, BOARD, 1)
        writer_faults(trial, writers)
        no_job_running_no_lease(recovery)
        checked(trial, recovery, BOARD, 1)


def test_two_workers_fight_over_one_partition(trials: Any, backend: Backend) -> None:
    """A one-partition rebuild while the writers run: its worker stalls at a random
    point of a random batch (before reading, applying or committing, or inside the
    commit), its lease is expired, and a second worker takes the partition over while
    the first still holds its batch. The stale worker's commit is fenced off (or goes
    through before the takeover, which then resumes after it): the build equals the
    fold, each event applied once."""
    for trial in trials(default=1):
        _two_workers_fight_over_one_partition(trial, backend)


def _two_workers_fight_over_one_partition(trial: Trial, backend: Backend) -> None:
    rng = trial.random
    with fresh_recovery(backend) as recovery:
        log = recovery.log
        record_workload(log.app, workflows=3, runs_per_workflow=4, seed=rng.randrange(10**6))
        recovery.first_build(STATS)
        point = rng.choice(["before_read", "before_apply", "before_commit", "in_commit"])
        stall_at = rng.randint(1, 6)
        seen = {"n": 0}
        stalled = threading.Event()
        go_on = threading.Event()

        def stall(hook_point: str) -> None:
            if hook_point != point:
                return
            seen["n"] += 1
            if seen["n"] == stall_at:
                stalled.set()
                assert go_on.wait(CEILING), "never let go on"

        with OutOfOrderCommitters(log, rng, max_hold=0.3) as writers:
            writers.wait_for(rng.randint(1, 4))
            job = recovery.rebuild(STATS.name, request(rng, "one partition", partitions=1))
            first = recovery.worker(runner_options=SMALL_BATCHES, faults=stall)
            first_thread = threading.Thread(target=first.run, daemon=True)
            first_thread.start()
            wait_until(
                lambda: stalled.is_set() or not first_thread.is_alive(),
                timeout=CEILING,
                what="the first worker to stall",
            )
            if stalled.is_set():
                [part] = recovery.partitions(job)
                owner = part.lease_owner
                if point == "in_commit":
                    # Inside its commit the stale worker holds its lease row (FOR SHARE):
                    # expiring the lease waits for that commit, which goes on after a
                    # random moment; the takeover then fences its next commit off.
                    threading.Timer(rng.uniform(0, 0.5), go_on.set).start()
                expire_leases(recovery, job, by=3600)
                second = recovery.worker(runner_options=SMALL_BATCHES)
                second_thread = threading.Thread(target=second.run, daemon=True)
                second_thread.start()
                wait_until(
                    lambda: recovery.partitions(job)[0].lease_owner != owner,
                    timeout=CEILING,
                    what="the second worker to take the partition over",
                )
                go_on.set()
                second_thread.join(CEILING)
                trial.fault()
            first_thread.join(CEILING)
            assert not first_thread.is_alive()
            settled(recovery, job)
        writer_faults(trial, writers)
        [part] = recovery.partitions(job)
        # Token 2: the second worker took the partition over (else the first finished it
        # inside its stalled commit, before the takeover could claim it).
        print(
            f"[concurrency] {trial.label}: stalled at {point} #{stall_at}, token {part.lease_token}"
        )
        no_job_running_no_lease(recovery)
        checked(trial, recovery, STATS, job.build)


def test_a_worker_sigkilled_while_transactions_are_held(trials: Any, backend: Backend) -> None:
    """A partitioned rebuild run by a worker process that SIGKILLs itself after a random
    number of batch commits, while writers hold transactions open (and roll some back)
    below and above the rebuild's target. Its leases expire (moved into the past here),
    workers in this process finish the job: no job stuck, no lease held by the dead
    process, the build equal to the fold with each event applied once, then swapped in
    and followed to the head."""
    for trial in trials(default=1):
        _a_worker_sigkilled_while_transactions_are_held(trial, backend)


def _a_worker_sigkilled_while_transactions_are_held(trial: Trial, backend: Backend) -> None:
    rng = trial.random
    with fresh_recovery(backend) as recovery:
        log = recovery.log
        record_workload(log.app, workflows=3, runs_per_workflow=5, seed=rng.randrange(10**6))
        recovery.first_build(STATS)
        with OutOfOrderCommitters(log, rng) as writers:
            writers.wait_for(rng.randint(2, 6))
            job = recovery.rebuild(STATS.name, request(rng, "rebuild to be killed"))
            doomed = spawn_worker(
                recovery, batch_size=5, kill_after_commits=rng.randint(1, 6), lease_seconds=30
            )
            doomed.join(CEILING)
            assert doomed.exitcode == -9, f"the worker was not killed: {doomed.exitcode}"
            trial.fault()
            dead = [p for p in recovery.partitions(job) if worker_pid(p) == doomed.pid]
            if dead:
                expire_leases(recovery, job, by=3600)
            run_workers(recovery, 2)
            settled(recovery, job)
            writers.wait_for(len(writers.figures.committed) + rng.randint(1, 4))
        checked(trial, recovery, STATS, job.build)
        recovery.swap(STATS.name)
        catch_up = log.runner(STATS(), store=log.store())
        wait_until(
            lambda: catch_up.catch_up().position >= committed_positions(log)[-1],
            timeout=CEILING,
            what="the swapped-in build to reach the head",
        )
        writer_faults(trial, writers)
        no_job_running_no_lease(recovery)
        checked(trial, recovery, STATS, job.build)

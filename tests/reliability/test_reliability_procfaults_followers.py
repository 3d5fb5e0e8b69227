"""Live followers (``safereplay follow``) and redrives (``safereplay parked redrive``)
SIGKILLed at random moments, on both backends.

- **Catch-up, then redrive**: one stored event is damaged (its GCM tag no longer
  authenticates) and the follower runs with ``SAFEREPLAY_ON_INTEGRITY_FAILURE=park``.
  The follower is SIGKILLed at random positions of its catch-up while writers add
  events, and restarted until it has caught up: each handled position is then
  counted once as applied or parked in the live build's checkpoint, and the rows
  equal a clean fold of the stored events less the parked ones. The row is restored
  and ``parked redrive`` is SIGKILLed (with its local worker) at a random moment, then
  run again: nothing is left parked, the rows equal the fold of every event, no job
  is left running and no dead worker holds a lease past its expiry.
- **Integrity pause across a kill**: with the default ``pause``, the follower stops
  just before the damaged event and records a conflict; SIGKILLed while paused and
  restarted (more events written meanwhile), it resumes *paused*: the checkpoint stays
  just before the damaged position, the rows stay the fold of the events before it,
  one conflict stays open and nothing is parked. Once an operator resolves it by
  parking, the follower goes on to the head and the rows equal the fold of every
  event but the parked one.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from procfaults_checks import (
    account,
    checkpoints,
    dead_leases,
    open_conflicts,
    parked_rows,
    projection_mismatches,
    query,
    stored_rows,
    unsettled_jobs,
    wait_for,
)
from procfaults_world import Command, TrialsFactory, cli_env, run_here, start_cli
from projection_fixtures import Backend, Log, OnPostgres, OnSQLite, stored_state, write_state
from recovery_fixtures import Recovery, fresh_recovery
from reliability_trials import Trial
from test_integrity_pause import tamper

from safereplay.domain import Envelope
from safereplay.domain.workload import record_workload
from safereplay.projections import Projection, RunStatusBoard, WorkflowStatistics
from safereplay.recovery.jobs.conflicts import ConflictStore
from safereplay.recovery.jobs.store import SQLJobStore

FOLLOWED: tuple[type[Projection], ...] = (RunStatusBoard, WorkflowStatistics)
#: Small batches: a catch-up has many commits to be killed between.
QUICK = {"SAFEREPLAY_PROJECTIONS_BATCH_SIZE": "5", "SAFEREPLAY_LEASE_SECONDS": "2"}


def head(log: Log) -> int:
    return max(int(r["position"]) for r in stored_rows(log))


def live_position(log: Log, projection: type[Projection]) -> int:
    """The live build 1's lowest checkpoint (0 before its first commit)."""
    marks = checkpoints(log, projection.name, 1)
    return min((int(m["position"]) for m in marks), default=0)


def follow(env: dict[str, str], tmp_path: Path, *projections: type[Projection]) -> Command:
    names = [arg for p in projections for arg in ("-p", p.name)]
    return start_cli(env, tmp_path, "follow", *names)


def stop(command: Command) -> None:
    """SIGTERM: the follower stops cleanly (its last batch committed or rolled back)."""
    command.process.send_signal(signal.SIGTERM)
    command.wait(120)


def caught_up(log: Log, projections: tuple[type[Projection], ...]) -> bool:
    top = head(log)
    return all(live_position(log, p) >= top for p in projections)


def victim_of(recovery: Recovery, trial: Trial) -> int:
    """A random stored event, in the middle half of the log, that run_status handles."""
    positions = [
        e.position
        for e in recovery.log.envelopes()
        if e.topic in RunStatusBoard.topics and e.position is not None
    ]
    quarter = len(positions) // 4
    return trial.random.choice(positions[quarter : len(positions) - quarter])


def readable(log: Log, victim: int, original: bytes) -> list[Envelope]:
    """Every stored event, read with the damaged row restored for the read."""
    damaged = stored_state(log, victim)
    write_state(log, victim, original)
    try:
        return log.envelopes()
    finally:
        write_state(log, victim, damaged)


def check_live(
    trial: Trial,
    recovery: Recovery,
    projections: tuple[type[Projection], ...],
    envelopes: list[Envelope],
) -> set[int]:
    """Accounting and rows of each live build 1; returns the unresolved parked positions."""
    log = recovery.log
    unresolved: set[int] = set()
    for projection in projections:
        accounting = account(log, projection, 1, envelopes)
        assert not accounting.problems, accounting.problems
        kept = [e for e in envelopes if e.position not in accounting.unresolved]
        mismatches = projection_mismatches(log, recovery.store, projection, 1, kept)
        assert not mismatches, mismatches
        trial.checked(
            accounting.checked, losses=accounting.losses, duplicates=accounting.duplicates
        )
        unresolved |= accounting.unresolved
    return unresolved


class FollowerContract:
    #: Default-mode trials on this backend; the long mode runs its N on both. (Each
    #: scenario runs by default on one backend at least, within the time budget.)
    default_trials = 1

    def test_follower_killed_during_catch_up_then_redrive_killed(
        self, backend: Backend, tmp_path: Path, trials: TrialsFactory
    ) -> None:
        for trial in trials(default=self.default_trials):
            self.catch_up_then_redrive(backend, tmp_path, trial)

    def catch_up_then_redrive(self, backend: Backend, tmp_path: Path, trial: Trial) -> None:
        rng = trial.random
        with fresh_recovery(backend) as recovery:
            log = recovery.log
            record_workload(log.app, workflows=3, runs_per_workflow=8, seed=rng.randrange(10**6))
            victim = victim_of(recovery, trial)
            original = tamper(log, victim)
            env = cli_env(log, tmp_path, SAFEREPLAY_ON_INTEGRITY_FAILURE="park", **QUICK)

            for _ in range(rng.randint(1, 2)):
                command = follow(env, tmp_path, *FOLLOWED)
                now = live_position(log, RunStatusBoard)
                top = head(log)
                if now >= top - 1:
                    stop(command)
                    break
                at = rng.randint(now + 1, top - 1)  # a random position of the catch-up
                wait_for(
                    lambda at=at, command=command: (
                        command.process.poll() is not None
                        or live_position(log, RunStatusBoard) >= at
                    ),
                    what=f"the follower at {at}",
                )
                assert command.process.poll() is None, command.text[-3000:]
                command.killed()
                trial.fault()
                # Writers go on while the follower is down.
                record_workload(
                    log.app, workflows=1, runs_per_workflow=3, seed=rng.randrange(10**6)
                )

            command = follow(env, tmp_path, *FOLLOWED)
            wait_for(lambda: caught_up(log, FOLLOWED), what="the follower caught up")
            stop(command)
            envelopes = readable(log, victim, original)
            unresolved = check_live(trial, recovery, FOLLOWED, envelopes)
            assert victim in unresolved, "the damaged event was parked"

            # The row restored, the redrive is killed at a random moment, then run again.
            write_state(log, victim, original)
            redrive = ("parked", "redrive", RunStatusBoard.name, "-r", "row restored")
            command = start_cli(env, tmp_path, *redrive)
            if self.kill_once_redriving(command, recovery, rng.random()):
                trial.fault()
            # The operator's restart: the same command again, for each projection. It
            # resumes the job the killed one left (planned or running), or redrives what
            # is still parked, or finds nothing to do. Run here (only the killed run needs
            # a process of its own) without local workers; a worker here (as `safereplay
            # worker --exit-when-idle`) runs the job, claiming a dead worker's partition
            # once its lease expires.
            for projection in FOLLOWED:
                run_here(env, "parked", "redrive", projection.name, "-r", "again", "--workers", "0")
                recovery.worker(lease_seconds=1.0).run()
            assert not check_live(trial, recovery, FOLLOWED, log.envelopes())
            assert not unsettled_jobs(log), unsettled_jobs(log)
            assert not dead_leases(log), dead_leases(log)

    @staticmethod
    def kill_once_redriving(command: Command, recovery: Recovery, fraction: float) -> bool:
        """SIGKILL the redrive command (and its worker): at its start, or once its job
        is running, or once it has resolved something, as ``fraction`` picks; whether
        it was still running (it may have ended first)."""
        log = recovery.log

        def reached() -> bool:
            if command.process.poll() is not None:
                return True
            jobs = query(log, "SELECT state FROM {s}safereplay_jobs WHERE kind = 'redrive'")
            if fraction < 1 / 3:
                return True
            if fraction < 2 / 3:
                return bool(jobs)
            return any(
                p["resolved_at"] is not None for p in parked_rows(log, RunStatusBoard.name, 1)
            )

        wait_for(reached, what="the redrive's moment to be killed")
        alive = command.process.poll() is None
        command.killed()
        return alive


class PauseContract:
    #: Default-mode trials on this backend; the long mode runs its N on both. (Each
    #: scenario runs by default on one backend at least, within the time budget.)
    default_trials = 1

    def test_follower_killed_while_paused_resumes_paused(
        self, backend: Backend, tmp_path: Path, trials: TrialsFactory
    ) -> None:
        for trial in trials(default=self.default_trials):
            self.paused_across_a_kill(backend, tmp_path, trial)

    def paused_across_a_kill(self, backend: Backend, tmp_path: Path, trial: Trial) -> None:
        rng = trial.random
        with fresh_recovery(backend) as recovery:
            log = recovery.log
            record_workload(log.app, workflows=2, runs_per_workflow=6, seed=rng.randrange(10**6))
            victim = victim_of(recovery, trial)
            before = [e for e in log.envelopes() if e.position is not None and e.position < victim]
            original = tamper(log, victim)
            env = cli_env(log, tmp_path, **QUICK)
            command = follow(env, tmp_path, RunStatusBoard)
            [conflict] = wait_for(lambda: open_conflicts(log), what="the follower's conflict")
            assert int(conflict["position"]) == victim
            # Killed at a random moment of the pause (the sleep only varies it).
            time.sleep(rng.uniform(0, 0.5))
            assert live_position(log, RunStatusBoard) == victim - 1
            command.killed()
            trial.fault()
            record_workload(log.app, workflows=1, runs_per_workflow=3, seed=rng.randrange(10**6))

            command = follow(env, tmp_path, RunStatusBoard)
            owner = f":{command.process.pid}"
            # Its first heartbeat says the new process holds the follower (its
            # runner has loaded its checkpoint and read on from it).
            wait_for(
                lambda: any(
                    str(r["owner"]).endswith(owner)
                    for r in query(log, "SELECT owner FROM {s}safereplay_followers")
                ),
                what="the restarted follower's heartbeat",
            )
            assert command.process.poll() is None, command.text[-3000:]
            assert live_position(log, RunStatusBoard) == victim - 1, "nothing past it"
            assert not projection_mismatches(log, recovery.store, RunStatusBoard, 1, before)
            [still] = open_conflicts(log)
            assert still["conflict_id"] == conflict["conflict_id"]
            assert parked_rows(log, RunStatusBoard.name, 1) == []

            assert isinstance(recovery.jobs, SQLJobStore)
            ConflictStore(recovery.jobs.database).resolve(
                str(conflict["conflict_id"]), resolution="park", reason="INC-7", principal="ops"
            )
            wait_for(lambda: caught_up(log, (RunStatusBoard,)), what="the follower past it")
            stop(command)
            unresolved = check_live(
                trial, recovery, (RunStatusBoard,), readable(log, victim, original)
            )
            assert victim in unresolved
            assert open_conflicts(log) == []


class TestSQLiteFollowers(OnSQLite, FollowerContract):
    default_trials = 0


@pytest.mark.postgres
class TestPostgresFollowers(OnPostgres, FollowerContract):
    pass


class TestSQLitePause(OnSQLite, PauseContract):
    pass


@pytest.mark.postgres
class TestPostgresPause(OnPostgres, PauseContract):
    default_trials = 0

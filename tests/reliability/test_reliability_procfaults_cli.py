"""The command line SIGKILLed at random moments of a rebuild, a swap and a rollback,
on both backends.

``safereplay rebuild -n 2 -w 2`` is killed with its local workers (the whole
session, no clean-up) once the job has moved a random number of positions, and the
same command is run again: it resumes the job once the dead workers' leases expire.
``swap`` and ``rollback`` are killed after a random delay (before, during or after
their one transaction) and run again only if they had not taken effect. After each
step exactly one build is live; at the end both builds' rows equal a clean fold of
the stored events, each handled position is counted once in each build's
checkpoint, no job is left running and no dead worker holds a lease past its expiry.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from procfaults_checks import live_build, query, wait_for
from procfaults_world import (
    TrialsFactory,
    check_build,
    cli_env,
    kill_at_random,
    run_here,
    start_cli,
)
from projection_fixtures import Backend, Log, OnPostgres, OnSQLite, handled_count
from recovery_fixtures import fresh_recovery
from reliability_trials import Trial

from safereplay.domain.workload import record_workload
from safereplay.projections import RunStatusBoard

BOARD = RunStatusBoard
QUICK = {"SAFEREPLAY_PROJECTIONS_BATCH_SIZE": "5", "SAFEREPLAY_LEASE_SECONDS": "1"}


def applied(log: Log, job_kind: str = "rebuild") -> int:
    """Events the job's partitions applied so far (read raw)."""
    rows = query(
        log,
        "SELECT p.events_applied AS n FROM {s}safereplay_job_partitions p "
        "JOIN {s}safereplay_jobs j ON j.job_id = p.job_id WHERE j.kind = ?",
        (job_kind,),
    )
    return sum(int(r["n"]) for r in rows)


class CommandLineContract:
    #: Default-mode trials on this backend; the long mode runs its N on both. (Each
    #: scenario runs by default on one backend at least, within the time budget.)
    default_trials = 1

    def test_rebuild_swap_and_rollback_commands_killed(
        self, backend: Backend, tmp_path: Path, trials: TrialsFactory
    ) -> None:
        for trial in trials(default=self.default_trials):
            self.one_trial(backend, tmp_path, trial)

    def one_trial(self, backend: Backend, tmp_path: Path, trial: Trial) -> None:
        rng = trial.random
        with fresh_recovery(backend) as recovery:
            log = recovery.log
            record_workload(log.app, workflows=2, runs_per_workflow=10, seed=rng.randrange(10**6))
            recovery.first_build(BOARD)
            handled = handled_count(BOARD, log.envelopes())
            env = cli_env(log, tmp_path, **QUICK)
            rebuild = ("rebuild", BOARD.name, "-n", "2", "-w", "2", "-r", "board fixed")

            command = start_cli(env, tmp_path, *rebuild, "--max-rate", "150")
            at = rng.randint(1, handled - 1)  # a random point of the job's progress
            wait_for(
                lambda: command.process.poll() is not None or applied(log) >= at,
                what=f"the rebuild past {at} events",
            )
            if command.process.poll() is None:
                command.killed()
                trial.fault()
            # The same command again resumes the job (or finds it done); run here,
            # without local workers, and a worker here finishes the job, claiming the
            # dead workers' partitions once their leases expire.
            run_here(env, *rebuild[:-4], "-w", "0", *rebuild[-2:])
            recovery.worker(lease_seconds=1.0).run()
            [job] = query(log, "SELECT build, state FROM {s}safereplay_jobs")
            assert (job["build"], job["state"]) == (2, "completed"), job
            check_build(trial, log, recovery, BOARD, 2)

            for name, before, after in (("swap", 1, 2), ("rollback", 2, 1)):
                command = start_cli(env, tmp_path, name, BOARD.name, "-r", f"{name} drill")
                if kill_at_random(command, rng, within=4.0):
                    trial.fault()
                else:
                    assert command.wait() == 0, command.text[-3000:]
                live = live_build(log, BOARD.name)  # exactly one (it asserts so)
                assert live in (before, after), live
                if live == before:
                    run_here(env, name, BOARD.name, "-r", f"{name} again")
                assert live_build(log, BOARD.name) == after
            for build in (1, 2):
                check_build(trial, log, recovery, BOARD, build)


class TestSQLiteCommandLine(OnSQLite, CommandLineContract):
    pass


@pytest.mark.postgres
class TestPostgresCommandLine(OnPostgres, CommandLineContract):
    default_trials = 0

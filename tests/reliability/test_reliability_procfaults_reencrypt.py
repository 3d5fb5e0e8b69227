"""``safereplay keys reencrypt`` interrupted at random moments, on both backends.

The key ring is rotated (a new active key), then the command re-seals the stored
events in batches and is interrupted, once or twice, at a random number of rows
re-sealed: by SIGKILL of the command (both backends), or by terminating its
database connections (``pg_terminate_backend``, PostgreSQL). After each
interruption every stored row still opens under the ring, with the content it had
(no half-re-encrypted row); the command, run again, completes; then every row is
sealed under the new key, with the same content and topic, and no row is lost or
stored twice. Every check reads the events table itself and opens each blob here.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import psycopg
import pytest
from procfaults_checks import reencryption_problems, sealed_rows, stored_rows, wait_for
from procfaults_world import (
    Command,
    TrialsFactory,
    cli_env,
    run_here,
    start_cli,
)
from projection_fixtures import Backend, Log, OnPostgres, OnSQLite, PostgresBackend
from reliability_trials import Trial

from safereplay.domain import KeyRing
from safereplay.domain.keyring import is_sealed, sealed_key_id
from safereplay.domain.workload import record_workload
from safereplay.recovery.security.keys import add_key

BATCH = "10"
#: Rows per second: the command lasts a few seconds, with many batches to be hit in.
RATE = "150"


def resealed(log: Log, key_id: str) -> int:
    """Stored rows sealed under ``key_id`` now (read raw)."""
    return sum(
        1
        for r in stored_rows(log)
        if is_sealed(bytes(r["state"])) and sealed_key_id(bytes(r["state"])) == key_id
    )


def terminate_backends(log: Log, application_name: str) -> int:
    """Terminate every backend of the command (its connections carry
    ``application_name``, from libpq's PGAPPNAME); returns how many."""
    assert isinstance(log.backend, PostgresBackend)
    with psycopg.connect(log.backend.dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE pid <> pg_backend_pid() AND application_name = %s",
            (application_name,),
        ).fetchall()
    return sum(1 for (done,) in rows if done)


class ReencryptContract:
    #: Default-mode trials on this backend; the long mode runs its N on both. (Each
    #: scenario runs by default on one backend at least, within the time budget.)
    default_trials = 1

    def interrupted_reencryption(
        self,
        backend: Backend,
        key_file: Path,
        tmp_path: Path,
        trial: Trial,
        *,
        interrupt: str,
    ) -> None:
        rng = trial.random
        with backend.fresh() as log:
            record_workload(
                log.app,
                workflows=2,
                runs_per_workflow=rng.randint(12, 20),
                seed=rng.randrange(10**6),
            )
            # The command's connections are named, so that only they are terminated.
            app_name = f"procfaults-{uuid.uuid4().hex[:10]}"
            env = cli_env(log, tmp_path, PGAPPNAME=app_name)
            before = sealed_rows(log, KeyRing.load(key_file))
            new_key = f"r{trial.index}x{rng.randrange(10**6)}"
            ring = add_key(key_file, new_key, activate=True)
            rows = len(before)
            args = ("keys", "reencrypt", "-r", "rotation drill", "--batch-size", BATCH)
            for _ in range(rng.randint(1, 2)):
                so_far = resealed(log, new_key)
                if so_far >= rows - 1:
                    break
                at = rng.randint(so_far + 1, rows - 1)  # a random number of rows re-sealed
                command = start_cli(env, tmp_path, *args, "--rate", RATE)
                reached = wait_for(
                    lambda at=at, command=command: (
                        command.process.poll() is not None or resealed(log, new_key) >= at
                    ),
                    what=f"{at} rows re-sealed",
                    timeout=180,
                )
                assert reached
                if command.process.poll() is None and self.interrupt(
                    log, command, interrupt, app_name
                ):
                    trial.fault()
                # Between runs: every row opens under the ring, unchanged.
                lost, added, problems = reencryption_problems(
                    before, sealed_rows(log, ring), new_key
                )
                assert (lost, added) == (0, 0), f"{lost} lost, {added} added mid-way"
                assert not [p for p in problems if "changed" in p], problems
            run_here(env, *args)  # the same command again, run here: it completes
            after = sealed_rows(log, ring)
            lost, added, problems = reencryption_problems(before, after, new_key)
            assert not problems, problems[:5]
            trial.checked(rows, losses=lost, duplicates=added)

    @staticmethod
    def interrupt(log: Log, command: Command, how: str, app_name: str) -> bool:
        """Interrupt the running command; whether anything was hit."""
        if how == "sigkill":
            command.killed()
            return True
        # Connections killed: the command either goes on by itself or stops loudly
        # (a non-zero exit with an error naming what happened, no traceback).
        terminated = terminate_backends(log, app_name)
        code = command.wait(300)
        if code != 0:
            assert "Traceback" not in command.text, command.text[-3000:]
            assert command.text.strip(), "a failed command says why"
        last = command.text.strip().splitlines()[-1:] if code else []
        print(f"[procfaults] {terminated} connection(s) terminated; exit {code} {last}")
        return terminated > 0

    def test_reencrypt_sigkilled_resumes_without_a_half_sealed_row(
        self, backend: Backend, key_file: Path, tmp_path: Path, trials: TrialsFactory
    ) -> None:
        for trial in trials(default=self.default_trials):
            self.interrupted_reencryption(backend, key_file, tmp_path, trial, interrupt="sigkill")


class TestSQLiteReencryptKills(OnSQLite, ReencryptContract):
    pass


@pytest.mark.postgres
class TestPostgresReencryptKills(OnPostgres, ReencryptContract):
    default_trials = 0

    def test_reencrypt_connections_terminated_resumes_without_a_half_sealed_row(
        self, backend: Backend, key_file: Path, tmp_path: Path, trials: TrialsFactory
    ) -> None:
        for trial in trials(default=1):  # PostgreSQL only: its own default
            self.interrupted_reencryption(backend, key_file, tmp_path, trial, interrupt="terminate")

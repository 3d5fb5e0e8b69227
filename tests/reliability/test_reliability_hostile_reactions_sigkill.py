"""Reactions SIGKILLed between the external call and the ledger commit, at random
moments, with the webhook receiver's own count as the oracle (SQLite, PostgreSQL).

Each trial records a random workload, then runs the ``run_events`` reaction in a
child process that sends every run event to a real receiver (which holds each call
a random few milliseconds, so that calls are in flight); the child is SIGKILLed
1-3 times, each time after a random number of calls reached the receiver (0: before
any, after a random delay). After each kill the next child waits out the dead one's
lease; finally a runner in this process finishes. Then, read from the receiver and
from the ledger table itself:

- every event reached the receiver (its distinct idempotency keys are exactly the
  events' keys): at least once, nothing lost;
- the ledger's ``delivered`` rows are exactly the receiver's distinct keys, one row
  per event and destination, none left owed or parked;
- nothing is recorded delivered that the receiver never acknowledged;
- a key sent more than once was in flight at a kill: extra calls are bounded by
  kills x concurrency (more would be an event applied twice without a cause);
- the webhook secret shows nowhere: not in the ledger's details, not in any output.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from projection_fixtures import Log, OnPostgres, OnSQLite, PostgresBackend
from psycopg import sql
from reaction_fixtures import QUICK, RunEvents
from recovery_fixtures import backend_env, wait_until
from webhook_receiver import Receiver

from safereplay.domain.workload import record_workload
from safereplay.projections import open_source
from safereplay.reactions import (
    ReactionOptions,
    ReactionRunner,
    WebhookDestination,
    WebhookSecret,
    idempotency_key,
    open_ledger,
)
from safereplay.recovery.resilience.policies import RetryThenPark

#: The delivering process the trials kill (shared with ``test_reactions_sigkill``).
DELIVER = Path(__file__).parent.parent / "deliver_run_events.py"


def ledger_rows(log: Log) -> list[tuple[str, str, int]]:
    """(idempotency key, state, attempts) of every ledger row, read from the table."""
    query = (
        "SELECT idempotency_key, state, attempts FROM {} WHERE reaction = 'run_events' "
        "ORDER BY position"
    )
    if isinstance(log.backend, PostgresBackend):
        table = sql.Identifier(log.settings.postgres_schema, "safereplay_reaction_deliveries")
        with log.backend.connect() as conn:
            return [tuple(r) for r in conn.execute(sql.SQL(query).format(table)).fetchall()]
    with closing(sqlite3.connect(log.settings.sqlite_path)) as conn:
        return [
            tuple(r)
            for r in conn.execute(query.format("safereplay_reaction_deliveries")).fetchall()
        ]


def ledger_details(log: Log) -> list[str]:
    """Every ledger row's last detail (what a failed attempt recorded)."""
    query = "SELECT last_detail FROM {} WHERE last_detail IS NOT NULL"
    if isinstance(log.backend, PostgresBackend):
        table = sql.Identifier(log.settings.postgres_schema, "safereplay_reaction_deliveries")
        with log.backend.connect() as conn:
            return [r[0] for r in conn.execute(sql.SQL(query).format(table)).fetchall()]
    with closing(sqlite3.connect(log.settings.sqlite_path)) as conn:
        rows = conn.execute(query.format("safereplay_reaction_deliveries")).fetchall()
        return [r[0] for r in rows]


class ReactionKillContract:
    @pytest.fixture
    def secret_file(self, tmp_path: Path) -> Path:
        path = tmp_path / "webhook.secret"
        path.write_text("w" * 48 + "\n")
        path.chmod(0o600)
        return path

    def test_kill_between_call_and_commit(
        self, backend: Any, trials: Any, secret_file: Path
    ) -> None:
        secret = WebhookSecret.from_file(secret_file)
        for trial in trials(default=1):
            rng = trial.random
            with backend.fresh() as log, self._receiver(secret, rng.uniform(0.0, 0.03)) as rcv:
                record_workload(
                    log.app,
                    workflows=rng.randint(1, 3),
                    runs_per_workflow=rng.randint(2, 4),
                    seed=rng.randrange(10**6),
                )
                with open_source(log.app) as source:
                    mark = source.high_water_mark()
                    found = source.read(after=0, upto=mark, limit=10**6, topics=RunEvents.topics)
                    events = [source.decode(n).event_id for n in found]
                expected = {idempotency_key("run_events", "hooks", e) for e in events}
                concurrency = rng.randint(1, 4)
                env = {k: v for k, v in os.environ.items() if not k.startswith("SAFEREPLAY_")}
                env |= {"SAFEREPLAY_APPROVAL_REQUIRED": ""} | backend_env(log.settings)
                kills = 0
                outputs: list[str] = []
                ledger = open_ledger(log.settings)
                try:
                    for _ in range(rng.randint(1, 3)):
                        # The dead runner's lease (1 s) runs out before the next one starts.
                        wait_until(
                            lambda ledger=ledger: ledger.lease("run_events") is None,
                            timeout=120,
                            what="the killed runner's lease to run out",
                        )
                        done = len(set(rcv.keys()))
                        if done >= len(expected):
                            break
                        calls = len(rcv.received) + rng.randint(0, len(expected) - done)
                        child = subprocess.Popen(
                            [
                                sys.executable,
                                str(DELIVER),
                                rcv.url,
                                str(secret_file),
                                "--timeout=60",
                                "--attempts=50",
                                "--lease-seconds=1",
                                f"--concurrency={concurrency}",
                                f"--batch-size={rng.choice([1, 3, 500])}",
                            ],
                            env=env,
                            stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT,
                        )
                        try:
                            if calls == len(rcv.received):
                                time.sleep(rng.uniform(0.0, 1.5))
                            else:
                                wait_until(
                                    lambda c=calls, child=child: (
                                        len(rcv.received) >= c or child.poll() is not None
                                    ),
                                    timeout=120,
                                    what=f"{calls} calls at the receiver",
                                    interval=0.001,
                                )
                            if child.poll() is None:
                                os.kill(child.pid, signal.SIGKILL)
                                kills += 1
                                trial.fault()
                        finally:
                            if child.poll() is None:
                                child.kill()
                            output = child.communicate(timeout=60)[0].decode()
                            outputs.append(output)
                        assert child.returncode in (0, -signal.SIGKILL), output
                    wait_until(
                        lambda ledger=ledger: ledger.lease("run_events") is None,
                        timeout=120,
                        what="the last killed runner's lease to run out",
                    )
                    destination = WebhookDestination("hooks", rcv.url, secret=secret, timeout=60)
                    with open_source(log.app) as source:
                        runner = ReactionRunner(
                            RunEvents(destinations=["hooks"]),
                            source=source,
                            ledger=ledger,
                            destinations=[destination],
                            policy=RetryThenPark(attempts=50, backoff=QUICK),
                            options=ReactionOptions(concurrency=concurrency),
                        )
                        runner.run_until_idle()
                        runner.close()
                    destination.close()
                finally:
                    ledger.close()

                keys = rcv.keys()
                distinct = set(keys)
                rows = ledger_rows(log)
                delivered = [k for k, state, _ in rows if state == "delivered"]
                assert [s for _, s, _ in rows if s != "delivered"] == [], "rows left owed"
                assert Counter(delivered).most_common(1)[0][1] == 1, "one row per event"
                assert set(delivered) == distinct == expected
                never_acknowledged = set(delivered) - set(rcv.acknowledged)
                assert never_acknowledged == set(), "recorded delivered, never acknowledged"
                assert all(r.signed for r in rcv.received)
                # The webhook secret never shows: not in the ledger, not in any output.
                details = ledger_details(log)
                assert secret_file.read_text().strip() not in "".join([*details, *outputs])
                extra = len(keys) - len(distinct)
                trial.checked(
                    len(expected),
                    losses=len(expected - distinct) + len(expected - set(delivered)),
                    duplicates=max(0, extra - kills * concurrency),
                )

    @staticmethod
    def _receiver(secret: WebhookSecret, pause: float) -> Receiver:
        return Receiver(secret, pause=pause).start()


class TestSQLiteReactionKills(OnSQLite, ReactionKillContract):
    pass


@pytest.mark.postgres
class TestPostgresReactionKills(OnPostgres, ReactionKillContract):
    pass

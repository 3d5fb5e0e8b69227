"""Issue #20 point 6, a delivering process killed between the call and the ledger
commit (SQLite and PostgreSQL): a child process runs a reaction to a real webhook
receiver, which holds the first call; the test SIGKILLs the child while the call
is in flight. The ledger still owes every event (nothing recorded as delivered that
was not acknowledged); once the killed runner's lease runs out, a new runner
delivers them all, the interrupted one again
with the same key: the receiver's distinct keys are the events, and the ledger
agrees with the receiver.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from reaction_fixtures import (
    QUICK,
    PostgresReactionWorld,
    ReactionWorld,
    RunEvents,
    SQLiteReactionWorld,
)
from recovery_fixtures import backend_env, wait_until
from webhook_receiver import Receiver

from safereplay.projections import open_source
from safereplay.reactions import ReactionRunner, WebhookDestination, WebhookSecret, open_ledger
from safereplay.recovery.resilience.policies import RetryThenPark

#: The delivering process the test kills (a script of the tests' own).
DELIVER = Path(__file__).with_name("deliver_run_events.py")


class SigkillCases:
    @pytest.fixture
    def world(self, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ReactionWorld]:
        raise NotImplementedError

    def test_a_kill_between_the_call_and_the_commit_loses_nothing(
        self, world: ReactionWorld, tmp_path: Path
    ) -> None:
        events = world.events()
        secret_file = tmp_path / "webhook.secret"
        secret_file.write_text("w" * 48 + "\n")
        secret_file.chmod(0o600)
        secret = WebhookSecret.from_file(secret_file)

        with Receiver(secret, hang_first=True, delay=600).start() as receiver:
            env = {k: v for k, v in os.environ.items() if not k.startswith("SAFEREPLAY_")} | {
                "SAFEREPLAY_APPROVAL_REQUIRED": ""
            }
            child = subprocess.Popen(
                [sys.executable, str(DELIVER), receiver.url, str(secret_file)],
                env=env | backend_env(world.settings),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            try:
                wait_until(
                    lambda: receiver.received or child.poll() is not None,
                    timeout=120,
                    what="the call",
                )
                assert child.poll() is None, child.communicate()[0].decode()
                interrupted = receiver.received[0].key
                os.kill(child.pid, signal.SIGKILL)  # the call is in flight, unanswered
            finally:
                if child.poll() is None:
                    child.kill()
                child.wait(timeout=60)

            ledger = open_ledger(world.settings)  # the child's: the event store's database
            owed = ledger.owed("run_events")
            assert len(owed) == len(events), "recorded before the call, all still owed"
            assert {(e.state, e.attempts) for e in owed} == {("pending", 0)}
            assert interrupted in {e.idempotency_key for e in owed}
            # The killed runner's lease is not released: the next runner waits for it
            # to run out (one runner per reaction), then takes over.
            wait_until(
                lambda: ledger.lease("run_events") is None,
                timeout=120,
                what="the lease to run out",
            )

            destination = WebhookDestination("hooks", receiver.url, secret=secret, timeout=30)
            runner = ReactionRunner(
                RunEvents(destinations=["hooks"]),
                source=open_source(world.app),
                ledger=ledger,
                destinations=[destination],
                policy=RetryThenPark(attempts=3, backoff=QUICK),
            )
            world.runners.append(runner)
            runner.run_until_idle()
            destination.close()

            keys = receiver.keys()
            assert keys.count(interrupted) == 2, "sent again, with the same key"
            assert len(set(keys)) == len(events) == len(keys) - 1
            assert all(r.signed for r in receiver.received)
            delivered = ledger.entries("run_events", state="delivered")
            assert {e.idempotency_key for e in delivered} == set(keys)
            assert len(delivered) == len(events)
            ledger.close()


class TestSQLiteSigkill(SQLiteReactionWorld, SigkillCases):
    """The cases on SQLite."""


@pytest.mark.postgres
class TestPostgresSigkill(PostgresReactionWorld, SigkillCases):
    """The cases on PostgreSQL."""

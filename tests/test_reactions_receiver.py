"""Issue #20 point 6: the webhook reaction against a real receiver on 127.0.0.1, both backends.

The receiver (``tests/webhook_receiver.py``) keeps idempotency keys, as the contract
asks of one: it does a key's work once (:attr:`Receiver.processed`) and answers a
repeat of a processed key with 200 without doing it again (:attr:`Receiver.duplicates`).
Every scenario checks the receiver's own record against the ledger's:

- **slow** (answers after the webhook's timeout): the receiver did the work, but the
  attempt timed out, so the ledger records it as failed and the retry carries the
  same key; the receiver drops the retry as a duplicate and its answer is the one
  acknowledgement that reached the runner. In the end each key was processed once and
  acknowledged once, the ledger has every row delivered with one acknowledgement, and
  its attempt count per key is the number of requests the receiver saw with that key;
- **connection dropped mid-response** (200's headers and part of the body, then the
  connection closed): a retryable transport error, delivered on the retry;
- **projection rebuild, catch-up and replay** through the real ``safereplay``
  commands (with worker processes) after the reaction delivered everything: the
  receiver sees zero calls, and the ledger's rows and position do not change;
- **an outage during live delivery** (the receiver stops while a runner is sending,
  then comes back): retried automatically; every event delivered, the distinct keys
  are the events, and the ledger agrees with the receiver.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from reaction_fixtures import (
    QUICK,
    PostgresReactionWorld,
    ReactionContract,
    ReactionWorld,
    RunEvents,
    SQLiteReactionWorld,
)
from recovery_fixtures import backend_env, bootstrap_args, bootstrapped_token
from typer.testing import CliRunner
from webhook_receiver import Receiver

from safereplay.domain.workload import record_workload
from safereplay.projections import open_source
from safereplay.reactions import (
    Delivery,
    ReactionOptions,
    ReactionRunner,
    WebhookDestination,
    WebhookSecret,
    idempotency_key,
)
from safereplay.recovery.cli.app import app as cli
from safereplay.recovery.resilience.breaker import BreakerSettings, CircuitBreaker
from safereplay.recovery.resilience.policies import RetryThenPark
from safereplay.recovery.security.audit import AuditKey

SECRET = WebhookSecret(b"receiver-scenarios-shared-secret-0123")
REACTION = "run_events"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver(SECRET).start() as running:
        yield running


@pytest.fixture
def hooks(receiver: Receiver) -> Iterator[Callable[..., WebhookDestination]]:
    made: list[WebhookDestination] = []

    def make(*, timeout: float = 5.0) -> WebhookDestination:
        destination = WebhookDestination("hooks", receiver.url, secret=SECRET, timeout=timeout)
        made.append(destination)
        return destination

    yield make
    for destination in made:
        destination.close()


def webhook_runner(
    world: ReactionWorld,
    destination: WebhookDestination,
    *,
    breaker: CircuitBreaker | None = None,
    concurrency: int = 8,
) -> ReactionRunner:
    runner = ReactionRunner(
        RunEvents(destinations=["hooks"]),
        source=open_source(world.app),
        ledger=world.open_ledger(),
        destinations=[destination],
        policy=RetryThenPark(attempts=1000, backoff=QUICK),
        breakers=(lambda name: breaker) if breaker else None,
        options=ReactionOptions(concurrency=concurrency, breaker_poll=0.01),
    )
    world.runners.append(runner)
    return runner


def expected_keys(world: ReactionWorld) -> set[str]:
    return {idempotency_key(REACTION, "hooks", event_id) for _, event_id, _ in world.events()}


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def assert_receiver_and_ledger_agree(
    world: ReactionWorld, runner: ReactionRunner, receiver: Receiver
) -> None:
    """Every event delivered once in effect, in the receiver's record and in the ledger."""
    wanted = expected_keys(world)
    # The receiver: every key arrived (distinct keys == events), each one's work was
    # done once, everything signed, and every key was acknowledged.
    assert set(receiver.keys()) == wanted
    assert len(receiver.processed) == len(set(receiver.processed)) == len(wanted)
    assert set(receiver.processed) == wanted
    assert set(receiver.acknowledged) == wanted
    assert all(r.signed for r in receiver.received)
    # The ledger: one row per event, delivered with exactly one acknowledgement, the
    # same keys; each row's attempts are the requests the receiver saw with its key.
    entries = runner.ledger.entries(REACTION)
    assert len(entries) == len(wanted)
    assert {e.idempotency_key for e in entries} == wanted
    assert {(e.state, e.acknowledgements, e.last_status) for e in entries} == {
        ("delivered", 1, 200)
    }
    seen = Counter(receiver.keys())
    assert {e.idempotency_key: e.attempts for e in entries} == dict(seen)
    assert runner.ledger.position(REACTION) == world.source.high_water_mark()


class ReceiverScenarios(ReactionContract):
    def test_a_slow_receiver_times_out_did_the_work_and_drops_the_retry(
        self,
        world: ReactionWorld,
        receiver: Receiver,
        hooks: Callable[..., WebhookDestination],
    ) -> None:
        # Each key's first request: the work is done, the answer comes after the
        # webhook's timeout (the runner has given up on it by then).
        receiver.mode, receiver.delay = "late_first", 2.5
        runner = webhook_runner(world, hooks(timeout=1.0))

        runner.run_until_idle()
        # Let the held first requests end (their answers go to nobody).
        wait_for(lambda: receiver.finished == len(receiver.received), "the held requests")

        wanted = expected_keys(world)
        assert_receiver_and_ledger_agree(world, runner, receiver)
        seen = Counter(receiver.keys())
        assert min(seen.values()) >= 2, "every first attempt timed out and was retried"
        # Processed on the first (timed-out) request, so every retry was a duplicate
        # the receiver dropped by its key: once in effect.
        assert Counter(receiver.duplicates) == {k: n - 1 for k, n in seen.items()}
        # The late answers reached nobody: each key acknowledged once, by a retry,
        # as the ledger says (its single acknowledgement per row).
        assert sorted(receiver.acknowledged) == sorted(wanted)
        assert all(e.attempts >= 2 for e in runner.ledger.entries(REACTION))

    def test_a_connection_dropped_mid_response_is_retried_and_delivered(
        self,
        world: ReactionWorld,
        receiver: Receiver,
        hooks: Callable[..., WebhookDestination],
    ) -> None:
        receiver.mode = "drop_first"
        destination = hooks()
        # One call first, to see what the runner is told: headers and part of a 200
        # arrived, then the connection closed: retryable, never "delivered".
        mark = world.source.high_water_mark()
        first = world.source.read(after=0, upto=mark, limit=1, topics=RunEvents.topics)[0]
        probe = Delivery.of("probe", "hooks", world.source.decode(first))
        outcome = destination.send(probe)
        assert (outcome.kind, outcome.detail) == (
            "retryable",
            "transport error: RemoteProtocolError",
        )
        receiver.received.clear()
        receiver.processed.clear()

        runner = webhook_runner(world, destination)
        runner.run_until_idle()

        assert_receiver_and_ledger_agree(world, runner, receiver)
        seen = Counter(receiver.keys())
        assert set(seen.values()) == {2}, "each key: a dropped answer, then a retry"
        assert Counter(receiver.duplicates) == dict.fromkeys(seen, 1)
        assert probe.idempotency_key not in seen

    def test_rebuild_catch_up_and_replay_call_no_reaction(
        self,
        world: ReactionWorld,
        receiver: Receiver,
        hooks: Callable[..., WebhookDestination],
        tmp_path: Path,
    ) -> None:
        runner = webhook_runner(world, hooks())
        runner.run_until_idle()
        assert_receiver_and_ledger_agree(world, runner, receiver)
        calls = len(receiver.received)
        rows = runner.ledger.entries(REACTION)
        position = runner.ledger.position(REACTION)

        # The real commands, with worker processes, over the events the reaction
        # reacted to (run_status consumes the same Run events).
        audit_key = tmp_path / "audit.key"
        AuditKey.generate().save(audit_key)
        env = backend_env(world.settings) | {"SAFEREPLAY_AUDIT_KEY_FILE": str(audit_key)}
        booted = CliRunner().invoke(cli, bootstrap_args("root"), env=env)
        assert booted.exit_code == 0, booted.output
        env |= {"SAFEREPLAY_TOKEN": bootstrapped_token(booted.output)}
        head = world.source.high_water_mark()

        def run(*args: str) -> dict[str, object]:
            result = CliRunner().invoke(cli, [*args, "--json"], env=env)
            assert result.exit_code == 0, result.output
            answer: dict[str, object] = json.loads(result.output)
            return answer

        jobs = [
            run("catch-up", "run_status", "-w", "1", "-r", "first build"),
            run("rebuild", "run_status", "-n", "2", "-w", "2", "-r", "projection fixed"),
            run("swap", "run_status", "-r", "rebuilt"),
            run("replay", "run_status", "--from", "1", "--to", str(head), "-w", "1", "-r", "check"),
        ]
        for done in (jobs[0], jobs[1], jobs[3]):
            job = done["job"]
            assert isinstance(job, dict) and job["state"] == "completed", done
        assert jobs[2]["live"] == 2

        assert len(receiver.received) == calls, "no reaction was called"
        assert runner.ledger.entries(REACTION) == rows
        assert runner.ledger.position(REACTION) == position
        # Nothing owed either: the reaction's next cycle sends nothing.
        again = runner.run_once()
        assert (again.events, again.settled, len(receiver.received)) == (0, 0, calls)

    def test_an_outage_during_live_delivery_is_retried_until_everything_is_delivered(
        self,
        world: ReactionWorld,
        receiver: Receiver,
        hooks: Callable[..., WebhookDestination],
    ) -> None:
        breaker = CircuitBreaker(BreakerSettings(failure_threshold=3, cool_down=0.05))
        runner = webhook_runner(world, hooks(timeout=2.0), breaker=breaker, concurrency=4)
        runner.run_until_idle()  # live: what happened so far is delivered
        delivered_before = len(receiver.acknowledged)
        assert delivered_before == len(expected_keys(world))

        # More runs happen; the receiver goes down while the runner is sending them
        # (each answer takes a while, so the stop lands mid-delivery) and comes back
        # once the breaker has opened.
        record_workload(world.app, workflows=3, runs_per_workflow=3, seed=11)
        receiver.pause = 0.1

        def outage() -> None:
            deadline = time.monotonic() + 120
            while len(receiver.acknowledged) < delivered_before + 3:
                if time.monotonic() > deadline:
                    return
                time.sleep(0.002)
            receiver.stop()
            while breaker.snapshot().opened_count < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            receiver.pause = 0.0
            receiver.start()

        down = threading.Thread(target=outage)
        down.start()
        runner.run_until_idle()
        down.join()

        assert breaker.snapshot().opened_count >= 1, "the outage happened mid-delivery"
        entries = runner.ledger.entries(REACTION)
        assert any(e.attempts > 1 for e in entries), "some attempts failed and were retried"
        assert_receiver_and_ledger_agree_allowing_lost_answers(world, runner, receiver)


def assert_receiver_and_ledger_agree_allowing_lost_answers(
    world: ReactionWorld, runner: ReactionRunner, receiver: Receiver
) -> None:
    """As :func:`assert_receiver_and_ledger_agree`, for a receiver stopped mid-request:
    a request it received may have had its answer lost with the connection (the work
    done, the attempt failed), so its acknowledgements may repeat a key; the work is
    still done once per key, and the ledger still has one acknowledgement per row."""
    wanted = expected_keys(world)
    assert set(receiver.keys()) == wanted
    assert sorted(receiver.processed) == sorted(wanted)
    assert set(receiver.acknowledged) == wanted
    assert all(r.signed for r in receiver.received)
    entries = runner.ledger.entries(REACTION)
    assert {e.idempotency_key for e in entries} == wanted and len(entries) == len(wanted)
    assert {(e.state, e.acknowledgements) for e in entries} == {("delivered", 1)}
    seen = Counter(receiver.keys())
    assert all(e.attempts >= seen[e.idempotency_key] for e in entries)
    assert runner.ledger.position(REACTION) == world.source.high_water_mark()


class TestSQLiteReceiver(SQLiteReactionWorld, ReceiverScenarios):
    """The scenarios on SQLite."""


@pytest.mark.postgres
class TestPostgresReceiver(PostgresReactionWorld, ReceiverScenarios):
    """The scenarios on PostgreSQL."""

"""Issue #20 point 4, the webhook destination against a real HTTP receiver on 127.0.0.1:

- a delivery is POSTed as JSON with its Idempotency-Key and a signature the
  receiver verifies with the shared secret (a changed body does not verify), and
  the replay context's reason in Safereplay-Delivery-Reason (``live`` without one);
- 5xx and 429 are retryable, other 4xx permanent; a receiver that times out or is
  down is retryable; no outcome, repr or message carries the URL's token or the secret;
- a secret file others can read is refused;
- end to end on SQLite and PostgreSQL: the receiver is down, then answers 503 twice
  per key, then recovers: every event is delivered, the receiver's distinct keys are
  the events, every signature verifies, and the ledger agrees with the receiver.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

import pytest
from reaction_fixtures import (
    QUICK,
    PostgresReactionWorld,
    ReactionContract,
    ReactionWorld,
    RunEvents,
    SQLiteReactionWorld,
)
from webhook_receiver import Receiver

from safereplay.domain.envelope import Envelope, event_id_for
from safereplay.domain.errors import ConfigurationError
from safereplay.projections import ReplayContext, open_source, replaying
from safereplay.reactions import (
    Delivery,
    ReactionOptions,
    ReactionRunner,
    WebhookDestination,
    WebhookSecret,
    verify_signature,
)
from safereplay.reactions.webhook import sign
from safereplay.recovery.resilience.breaker import BreakerSettings, CircuitBreaker
from safereplay.recovery.resilience.policies import RetryThenPark

SECRET = WebhookSecret(b"s" * 16 + b"e" * 16 + b"cret-tail")


def a_delivery() -> Delivery:
    aggregate = UUID(int=42)
    envelope = Envelope(
        position=3,
        event_id=event_id_for(aggregate, 2),
        aggregate_id=aggregate,
        aggregate_version=2,
        topic="safereplay.domain.automation:Run.Completed",
        event_type="Run.Completed",
        schema_version=1,
        occurred_at=datetime(2026, 1, 1, tzinfo=UTC),
        source="test",
        correlation_id=UUID(int=1),
        causation_id=None,
        payload={"status": "succeeded"},
        event=None,
    )
    return Delivery.of("completions", "hooks", envelope)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver(SECRET).start() as running:
        yield running


def hooks(receiver: Receiver, *, timeout: float = 5.0) -> WebhookDestination:
    return WebhookDestination("hooks", receiver.url, secret=SECRET, timeout=timeout)


def test_a_delivery_is_posted_signed_with_its_key(receiver: Receiver) -> None:
    delivery = a_delivery()
    with hooks(receiver) as destination:
        outcome = destination.send(delivery)
    assert outcome.delivered and outcome.status == 200
    (got,) = receiver.received
    assert got.key == delivery.idempotency_key and got.signed
    assert json.loads(got.body) == dict(delivery.payload)
    assert got.headers["content-type"] == "application/json"
    assert got.headers["safereplay-event-id"] == str(delivery.event_id)
    assert got.headers["safereplay-delivery-reason"] == "live", "no context: live"
    assert not verify_signature(SECRET, got.headers["safereplay-signature"], got.body + b" ")
    other = WebhookSecret(b"x" * 32)
    assert not verify_signature(other, got.headers["safereplay-signature"], got.body)
    old = sign(SECRET, got.body, int(time.time()) - 3600)
    assert not verify_signature(SECRET, old, got.body), "an old signature is refused"


def test_the_delivery_reason_header_is_the_replay_context(receiver: Receiver) -> None:
    delivery = a_delivery()
    with hooks(receiver) as destination:
        with replaying(ReplayContext("redelivery", "orders", forced=True)):
            assert destination.send(delivery).delivered
        with replaying(ReplayContext("live", "orders")):
            assert destination.send(delivery).delivered
    reasons = [r.headers["safereplay-delivery-reason"] for r in receiver.received]
    assert reasons == ["redelivery", "live"]


@pytest.mark.parametrize(
    ("answer", "kind"), [(503, "retryable"), (429, "retryable"), (400, "permanent")]
)
def test_statuses_say_whether_to_retry(receiver: Receiver, answer: int, kind: str) -> None:
    receiver.mode = answer
    with hooks(receiver) as destination:
        outcome = destination.send(a_delivery())
    assert (outcome.kind, outcome.status) == (kind, answer)


def test_a_receiver_that_times_out_or_is_down_is_retryable(receiver: Receiver) -> None:
    receiver.mode, receiver.delay = "slow", 3.0
    with hooks(receiver, timeout=0.3) as destination:
        timed_out = destination.send(a_delivery())
        receiver.stop()
        down = destination.send(a_delivery())
    assert (timed_out.kind, timed_out.detail) == ("retryable", "timed out")
    assert (down.kind, down.detail) == ("retryable", "connection failed")
    for shown in (timed_out.detail, down.detail, repr(destination), repr(SECRET)):
        assert "secret" not in shown and "token" not in shown


def test_a_secret_file_others_can_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "webhook.secret"
    path.write_text("k" * 40 + "\n")
    os.chmod(path, 0o644)
    with pytest.raises(ConfigurationError, match="readable by group or others") as refused:
        WebhookSecret.from_file(path)
    assert "k" * 40 not in str(refused.value)
    os.chmod(path, 0o600)
    assert WebhookSecret.from_file(path).value == b"k" * 40
    with pytest.raises(ConfigurationError, match="at least 32 bytes"):
        WebhookSecret(b"short")


class WebhookCases(ReactionContract):
    def test_an_outage_then_recovery_delivers_every_event_once_in_effect(
        self, world: ReactionWorld, receiver: Receiver
    ) -> None:
        events = world.events()
        receiver.stop()  # the receiver is down when the runner starts
        destination = hooks(receiver, timeout=2.0)
        breaker = CircuitBreaker(BreakerSettings(failure_threshold=3, cool_down=0.05))
        runner = ReactionRunner(
            RunEvents(destinations=["hooks"]),
            source=open_source(world.app),
            ledger=world.open_ledger(),
            destinations=[destination],
            policy=RetryThenPark(attempts=1000, backoff=QUICK),
            breakers=lambda name: breaker,
            options=ReactionOptions(concurrency=8, breaker_poll=0.01),
        )
        world.runners.append(runner)
        assert runner.record_new().caught_up
        owed = {e.idempotency_key for e in runner.ledger.owed("run_events")}
        assert len(owed) == len(events)

        # Down while the runner delivers: the first attempts fail and open the
        # breaker; then the receiver comes back, answering 503 twice per key first.
        receiver.mode, receiver.failures = "fail_first", 2

        def come_back() -> None:
            deadline = time.monotonic() + 120
            while breaker.snapshot().opened_count < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            receiver.start()

        returning = threading.Thread(target=come_back)
        returning.start()
        runner.run_until_idle()
        returning.join()
        destination.close()

        keys = receiver.keys()
        assert set(keys) == owed and len(set(keys)) == len(events)
        assert set(receiver.acknowledged) == owed and len(receiver.acknowledged) == len(events)
        assert all(r.signed for r in receiver.received)
        entries = runner.ledger.entries("run_events")
        assert {e.state for e in entries} == {"delivered"}
        assert all(e.attempts >= 3 for e in entries)
        assert breaker.snapshot().opened_count >= 1


class TestSQLiteWebhook(SQLiteReactionWorld, WebhookCases):
    """The cases on SQLite."""


@pytest.mark.postgres
class TestPostgresWebhook(PostgresReactionWorld, WebhookCases):
    """The cases on PostgreSQL."""

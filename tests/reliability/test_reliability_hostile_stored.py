"""Hostile stored rows, written straight into the event table (SQLite, PostgreSQL).

**Damaged rows.** Each trial records a random workload (plus one run whose payload
carries a canary string), then damages 1-5 stored rows that ``run_status`` reads,
each in a way drawn at random: re-sealed under a wrong key with the same key id,
sealed under a key id the ring does not hold, one bit flipped anywhere, the blob
of another row of the same aggregate, the blob of a row of another aggregate, the
blob truncated, a valid ciphertext of a state with schema version 99, a valid
ciphertext of bytes that are no event state. A live catch-up (integrity failures
parked, the live policy for the rest) must park exactly those rows, and behind
each the later events of its aggregate, with an error naming the position and
what is wrong; apply every other event once (the projection's rows equal a clean
fold of the undamaged events, the checkpoint is at the head, its applied and parked
counts add up); and show no key material and no payload (the canary) in any parked
record or log record.

The same damage met by a **rebuild job** (a worker with ``on_integrity_failure`` =
park) completes with exactly those rows (and what is behind them) parked in the new
build, whose rows equal the clean fold.

**Unknown topics with a valid ciphertext.** Rows of an event type no code defines,
sealed under the ring and bound to their row, are inserted between the workload's
events at random moments. Every reference projection skips them (it reads only its
topics) and still equals the clean fold of the known events, nothing parked, its
checkpoint at the head; reading the log through the application refuses each one
with ``UnknownEventType`` naming its position and topic; a reaction never delivers
them; and ``keys reencrypt`` to a new key re-seals them too (they open under the
new key to the same plaintext, no row stays under the old key), after which the
projections still equal the fold.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Sequence
from typing import Any
from uuid import UUID, uuid4

import pytest
from eventsourcing.persistence import StoredEvent
from hostile_support import key_texts, leaks, select, stored_rows
from projection_fixtures import (
    EXPECTED,
    Catalog,
    Log,
    OnPostgres,
    OnSQLite,
    fold_run_status,
    table_state,
    write_state,
)
from reaction_fixtures import QUICK, RunEvents
from recovery_fixtures import Recovery

from safereplay.domain import AutomationApp, Envelope, KeyRing, UnknownEventType
from safereplay.domain.mapper import associated_data
from safereplay.domain.workload import record_workload
from safereplay.projections import REFERENCE_PROJECTIONS, Projection, RunStatusBoard, open_source
from safereplay.reactions import (
    ReactionOptions,
    ReactionRunner,
    RecordingDestination,
    open_ledger,
)
from safereplay.recovery.jobs.model import JobState
from safereplay.recovery.jobs.plans import JobRequest
from safereplay.recovery.resilience.policies import (
    ErrorRules,
    IntegrityPolicy,
    RetryThenPark,
    RulesPolicy,
)
from safereplay.recovery.security.keys import key_usage, reencrypt

#: The live policy of a follower with ``on_integrity_failure = park``, retries quick.
LIVE_PARKING = IntegrityPolicy(
    RulesPolicy(ErrorRules(default=RetryThenPark(attempts=2, backoff=QUICK))), "park"
)

#: Damage kind -> (error types it may raise, phrases one of which the message holds).
DAMAGES: dict[str, tuple[set[str], tuple[str, ...]]] = {
    "wrong key": ({"EventDecryptionError"}, ("failed authentication",)),
    "unknown key id": ({"UnknownKeyId"}, ("not in the key ring",)),
    "bit flipped": (
        {"EventDecryptionError", "UnknownKeyId"},
        ("failed authentication", "not in the key ring", "ciphertext", "key id"),
    ),
    "moved from a row of the same aggregate": (
        {"EventDecryptionError"},
        ("moved from another row",),
    ),
    "moved from another aggregate": ({"EventDecryptionError"}, ("moved from another row",)),
    "truncated": ({"EventDecryptionError"}, ("truncated", "failed authentication", "header")),
    "unknown schema version": ({"UnknownSchemaVersion"}, ("schema version 99",)),
    "not an event state": ({"UndecodableEvent"}, ("position",)),
}


def canary_run(app: AutomationApp, canary: str) -> None:
    """A run whose trigger payload and failure message carry ``canary``."""
    workflow = app.submit(
        {
            "type": "CreateWorkflow",
            "name": "canary",
            "owner": "ops@example.com",
            "trigger": {"kind": "webhook", "path": "/hooks/canary"},
        },
        source="test",
    )
    app.submit(
        {"type": "AddStep", "workflow_id": str(workflow), "step_name": "s", "action": "a.b"},
        source="test",
    )
    app.submit({"type": "PublishWorkflow", "workflow_id": str(workflow)}, source="test")
    run = app.submit(
        {
            "type": "StartRun",
            "workflow_id": str(workflow),
            "started_by": "webhook",
            "trigger_payload": {"note": canary},
        },
        source="test",
    )
    app.submit(
        {
            "type": "StepFailed",
            "schema_version": 2,
            "run_id": str(run),
            "step_name": "s",
            "attempt": 1,
            "duration_ms": 5,
            "error_code": "HTTP_502",
            "error_message": canary,
            "retryable": True,
        },
        source="test",
    )


def damage(
    log: Log, rng: Any, kind: str, row: dict[str, Any], rows: Sequence[dict[str, Any]]
) -> bytes:
    """The damaged state of ``row`` for ``kind`` (a blob or a valid ciphertext)."""
    ring = log.app.key_ring
    assert ring is not None
    aad = associated_data(UUID(row["aggregate"]), row["version"], row["topic"])
    state: bytes = row["state"]
    if kind == "wrong key":
        return KeyRing.generate(ring.active_key_id).seal(ring.open(state, aad), aad)
    if kind == "unknown key id":
        return KeyRing.generate("k-stolen").seal(ring.open(state, aad), aad)
    if kind == "bit flipped":
        flipped = bytearray(state)
        flipped[rng.randrange(len(state))] ^= 1 << rng.randrange(8)
        return bytes(flipped)
    if kind == "truncated":
        return state[: rng.randrange(len(state))]
    if kind == "unknown schema version":
        decoded = log.app.mapper.transcoder.decode(ring.open(state, aad))
        decoded["class_version"] = 99
        return ring.seal(log.app.mapper.transcoder.encode(decoded), aad)
    if kind == "not an event state":
        return ring.seal(rng.randbytes(rng.randint(0, 40)), aad)
    same = kind == "moved from a row of the same aggregate"
    others = [
        r
        for r in rows
        if r["position"] != row["position"] and (r["aggregate"] == row["aggregate"]) == same
    ]
    return bytes(rng.choice(others)["state"])


class StoredContract:
    def test_damaged_rows_parked(
        self, backend: Any, trials: Any, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.DEBUG)
        for trial in trials(default=2):
            rng = trial.random
            caplog.clear()
            canary = f"canary-{secrets.token_hex(8)}"
            with backend.fresh() as log:
                record_workload(
                    log.app,
                    workflows=rng.randint(1, 3),
                    runs_per_workflow=rng.randint(2, 5),
                    seed=rng.randrange(10**6),
                )
                canary_run(log.app, canary)
                envelopes = log.envelopes()
                rows = stored_rows(log)
                handled = [e for e in envelopes if e.topic in RunStatusBoard.topics]
                canary_failure = handled[-1]
                assert canary_failure.payload.get("error_message") == canary
                victims = {canary_failure.position: rng.choice(sorted(DAMAGES))}
                for event in rng.sample(handled[:-1], rng.randint(0, min(4, len(handled) - 1))):
                    victims[event.position] = rng.choice(sorted(DAMAGES))
                ring = log.app.key_ring
                for position, kind in victims.items():
                    row = rows[position - 1]
                    assert row["position"] == position
                    if kind == "moved from a row of the same aggregate" and not any(
                        r["aggregate"] == row["aggregate"] and r is not row for r in rows
                    ):
                        kind = victims[position] = "moved from another aggregate"
                    write_state(log, position, damage(log, rng, kind, row, rows))
                trial.fault(len(victims))

                runner = log.runner(RunStatusBoard(), policy=LIVE_PARKING)
                runner.catch_up()

                clean, parked_expected, blocked = [], {}, {}
                for event in handled:
                    # An aggregate's events behind a parked one are parked unread.
                    if event.aggregate_id in blocked:
                        parked_expected[event.position] = "behind"
                    elif event.position in victims:
                        parked_expected[event.position] = victims[event.position]
                        blocked[event.aggregate_id] = event.position
                    else:
                        clean.append(event)

                parked = select(
                    log,
                    "SELECT position, error_type, error_message, reason, blocked_by, topic "
                    "FROM {projection_parked} WHERE projection = 'run_status' ORDER BY position",
                )
                assert {p["position"] for p in parked} == set(parked_expected), (
                    victims,
                    parked,
                )
                for record in parked:
                    kind = parked_expected[record["position"]]
                    if kind == "behind":
                        assert record["error_type"] == "Blocked"
                        continue
                    types, phrases = DAMAGES[kind]
                    message = record["error_message"]
                    assert record["error_type"] in types, (kind, record)
                    assert f"position {record['position']}" in message, (kind, record)
                    assert any(p in message for p in phrases), (kind, record)
                [checkpoint] = select(
                    log,
                    "SELECT position, events_applied, events_parked FROM {projection_positions} "
                    "WHERE projection = 'run_status'",
                )
                assert checkpoint["position"] == log.app.head_position()
                assert checkpoint["events_parked"] == len(parked_expected)
                actual = table_state(runner.store, RunStatusBoard)["runs"]
                expected = fold_run_status(clean)
                wrong = {
                    k for k in expected.keys() | actual.keys() if actual.get(k) != expected.get(k)
                }
                assert wrong == set(), (victims, wrong)

                secrets_ = [*key_texts(ring), canary]
                shown = json.dumps(parked, default=str) + caplog.text
                assert leaks(shown, secrets_) == []
                trial.checked(
                    len(handled),
                    losses=len(wrong) + abs(len(clean) - checkpoint["events_applied"]),
                    duplicates=max(0, checkpoint["events_applied"] - len(clean)),
                )

    def test_damaged_rows_rebuild(
        self, backend: Any, trials: Any, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The same damage met by a rebuild job (a worker, ``on_integrity_failure`` =
        park; the kinds an integrity failure covers): the job completes, the new
        build parks exactly the damaged rows and the later events of their
        aggregates, and its rows equal the clean fold."""
        caplog.set_level(logging.DEBUG)
        kinds = sorted(k for k in DAMAGES if k != "unknown schema version")
        for trial in trials(default=1):
            rng = trial.random
            caplog.clear()
            canary = f"canary-{secrets.token_hex(8)}"
            with backend.fresh() as log:
                record_workload(
                    log.app,
                    workflows=rng.randint(1, 3),
                    runs_per_workflow=rng.randint(2, 5),
                    seed=rng.randrange(10**6),
                )
                canary_run(log.app, canary)
                recovery = Recovery(log)
                try:
                    recovery.first_build(RunStatusBoard)
                    handled = [e for e in log.envelopes() if e.topic in RunStatusBoard.topics]
                    rows = stored_rows(log)
                    victims = {handled[-1].position: rng.choice(kinds)}
                    for event in rng.sample(handled[:-1], rng.randint(0, 4)):
                        victims[event.position] = rng.choice(kinds)
                    for position, kind in victims.items():
                        row = rows[position - 1]
                        if kind == "moved from a row of the same aggregate" and not any(
                            r["aggregate"] == row["aggregate"] and r is not row for r in rows
                        ):
                            kind = victims[position] = "moved from another aggregate"
                        write_state(log, position, damage(log, rng, kind, row, rows))
                    trial.fault(len(victims))

                    job = recovery.rebuild(
                        "run_status", JobRequest(principal="alice", reason="hostile rows")
                    )
                    recovery.worker(on_integrity_failure="park").run()
                    assert recovery.job(job).state == JobState.COMPLETED

                    clean, parked_expected, blocked = [], set(), set()
                    for event in handled:
                        if event.aggregate_id in blocked or event.position in victims:
                            parked_expected.add(event.position)
                            blocked.add(event.aggregate_id)
                        else:
                            clean.append(event)
                    parked = select(
                        log,
                        "SELECT position, error_type, error_message FROM {projection_parked} "
                        "WHERE projection = 'run_status' AND build = %(b)s",
                        {"b": job.build},
                    )
                    assert {p["position"] for p in parked} == parked_expected, (victims, parked)
                    for record in parked:  # a victim behind another one is parked unread
                        if record["error_type"] != "Blocked":
                            assert record["position"] in victims, record
                            assert f"position {record['position']}" in record["error_message"]
                    actual = recovery.actual(RunStatusBoard, job.build)["runs"]
                    expected = fold_run_status(clean)
                    wrong = {
                        k
                        for k in expected.keys() | actual.keys()
                        if actual.get(k) != expected.get(k)
                    }
                    assert wrong == set(), (victims, wrong)
                    shown = json.dumps(parked, default=str) + caplog.text
                    assert leaks(shown, [*key_texts(log.app.key_ring), canary]) == []
                    trial.checked(len(handled), losses=len(wrong))
                finally:
                    recovery.close()

    def test_unknown_topics(
        self, backend: Any, trials: Any, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.DEBUG)
        for trial in trials(default=1):
            rng = trial.random
            caplog.clear()
            canary = f"canary-{secrets.token_hex(8)}"
            with backend.fresh() as log:
                ring = log.app.key_ring
                assert ring is not None
                foreign: dict[int, str] = {}
                for _ in range(rng.randint(2, 4)):
                    record_workload(
                        log.app,
                        workflows=1,
                        runs_per_workflow=rng.randint(1, 3),
                        seed=rng.randrange(10**6),
                    )
                    for _ in range(rng.randint(1, 3)):
                        topic = rng.choice(
                            [
                                "safereplay.domain.automation:Run.StepExploded",
                                "legacy.billing:Invoice.Paid",
                                f"m{rng.randrange(10**6)}:E{rng.randrange(99)}",
                            ]
                        )
                        aggregate = uuid4()
                        state = log.app.mapper.transcoder.encode(
                            {"timestamp": "now", "class_version": 1, "note": canary}
                        )
                        sealed = ring.seal(state, associated_data(aggregate, 1, topic))
                        log.app.recorder.insert_events([StoredEvent(aggregate, 1, topic, sealed)])
                        foreign[log.app.head_position()] = topic
                        trial.fault()
                head = log.app.head_position()
                known = [
                    e
                    for p in range(1, head + 1)
                    if p not in foreign
                    for e in log.app.read(after=p - 1, limit=1)
                ]
                assert len(known) == head - len(foreign)

                # The application refuses each foreign row by position and topic.
                for position, topic in foreign.items():
                    with pytest.raises(UnknownEventType) as caught:
                        log.app.read(after=position - 1, limit=1)
                    message = str(caught.value)
                    assert f"unknown event type {topic!r} at position {position}," in message
                    assert leaks(message, [*key_texts(ring), canary]) == []

                projections: list[type[Projection]] = [*REFERENCE_PROJECTIONS, Catalog]
                store = log.store()
                self.check_projections(log, store, projections, known, head)

                # A reaction delivers the known run events only.
                destination = RecordingDestination("crm")
                with open_source(log.app) as source:
                    ledger = open_ledger(log.settings)
                    runner = ReactionRunner(
                        RunEvents(destinations=["crm"]),
                        source=source,
                        ledger=ledger,
                        destinations=[destination],
                        policy=RetryThenPark(attempts=3, backoff=QUICK),
                        options=ReactionOptions(concurrency=2),
                    )
                    runner.run_until_idle()
                    runner.close()
                    ledger.close()
                delivered = [d.event_id for d in destination.calls]
                reacted = [e.event_id for e in known if e.topic in RunEvents.topics]
                assert sorted(map(str, delivered)) == sorted(map(str, reacted))

                # keys reencrypt to a new key re-seals the foreign rows too.
                rotated = ring.with_key("k2", activate=True)
                with AutomationApp(log.settings) as holder:
                    reencrypt(holder, rotated, batch_size=rng.randint(1, 7))
                    usage = key_usage(holder)
                assert dict(usage.by_key) == {"k2": head}, usage
                for row in stored_rows(log):
                    aad = associated_data(UUID(row["aggregate"]), row["version"], row["topic"])
                    rotated.open(row["state"], aad)
                # Content and order unchanged: the known events read back the same.
                assert log.settings.key_file is not None
                rotated.save(log.settings.key_file)
                with AutomationApp(log.settings) as reader:
                    again = [
                        e
                        for p in range(1, head + 1)
                        if p not in foreign
                        for e in reader.read(after=p - 1, limit=1)
                    ]
                assert [(e.event_id, e.payload) for e in again] == [
                    (e.event_id, e.payload) for e in known
                ]
                ring.save(log.settings.key_file)
                assert leaks(caplog.text, [*key_texts(ring, rotated), canary]) == []
                trial.checked(len(known) * len(projections) + len(reacted))

    @staticmethod
    def check_projections(
        log: Log,
        store: Any,
        projections: Sequence[type[Projection]],
        known: Sequence[Envelope],
        head: int,
    ) -> None:
        for projection in projections:
            log.runner(projection(), store=store, policy=LIVE_PARKING).catch_up()
            assert table_state(store, projection) == EXPECTED[projection.name](known), (
                projection.name
            )
            [checkpoint] = select(
                log,
                "SELECT position, events_parked FROM {projection_positions} "
                "WHERE projection = %(p)s",
                {"p": projection.name},
            )
            assert (checkpoint["position"], checkpoint["events_parked"]) == (head, 0)
        assert select(log, "SELECT position FROM {projection_parked}") == []


class TestSQLiteStored(OnSQLite, StoredContract):
    pass


@pytest.mark.postgres
class TestPostgresStored(OnPostgres, StoredContract):
    pass

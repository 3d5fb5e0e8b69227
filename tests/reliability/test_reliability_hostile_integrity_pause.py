"""The integrity pause in live following: ``safereplay follow`` (its own process, with
``SAFEREPLAY_ON_INTEGRITY_FAILURE=pause``) meets a stored event whose ciphertext
was damaged (SQLite, PostgreSQL).

Each trial starts the follower on ``run_status`` and ``failed_steps``, records a
random workload in chunks, and at a random moment inserts one ``Run.Started`` row
whose payload carries a canary string, its ciphertext damaged in a way drawn at
random (bit flipped, wrong key, unknown key id, blob of another row, truncated),
then more events after it. Checked in the database:

- a conflict is open for ``run_status`` naming the position (subject, position
  column and reason), and no secret (key material, token, audit key, the canary)
  shows in it, in the audit trail or in the follower's output;
- ``run_status`` is paused just before it: its checkpoint is at the position before,
  its rows equal a clean fold of the events before it, and stay so while later
  events are written and ``failed_steps`` (which the damaged event does not
  concern) has followed them to the head;
- resolved by parking (``safereplay conflicts resolve --action park``), the follower
  goes on: ``run_status`` reaches the head, equal to a clean fold of every other
  event, the damaged one parked.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from eventsourcing.persistence import StoredEvent
from eventsourcing.utils import get_topic
from hostile_support import key_texts, leaks, select, stored_rows
from projection_fixtures import (
    Log,
    OnPostgres,
    OnSQLite,
    fold_failed_steps,
    fold_run_status,
    table_state,
)
from recovery_fixtures import principals_world, wait_until
from typer.testing import CliRunner

from safereplay.domain import KeyRing
from safereplay.domain.automation import Run
from safereplay.domain.mapper import associated_data
from safereplay.domain.workload import record_workload
from safereplay.projections import FailedSteps, RunStatusBoard
from safereplay.recovery.cli.app import app
from safereplay.recovery.security.audit import AuditKey

DAMAGES = ("bit flipped", "wrong key", "unknown key id", "another row's blob", "truncated")


def damaged_started(log: Log, rng: Any, canary: str, kind: str) -> StoredEvent:
    """A new run's ``Run.Started`` row (payload with ``canary``), ciphertext damaged."""
    ring = log.app.key_ring
    assert ring is not None
    rows = stored_rows(log)
    topic = get_topic(Run.Started)
    [model, *_] = [r for r in rows if r["topic"] == topic]
    aad = associated_data(uuid.UUID(model["aggregate"]), model["version"], topic)
    state = log.app.mapper.transcoder.decode(ring.open(model["state"], aad))
    state["trigger_payload"] = {"note": canary}
    aggregate = uuid.uuid4()
    plaintext = log.app.mapper.transcoder.encode(state)
    own = associated_data(aggregate, 1, topic)
    sealed = ring.seal(plaintext, own)
    if kind == "bit flipped":
        flipped = bytearray(sealed)
        flipped[rng.randrange(len(sealed))] ^= 1 << rng.randrange(8)
        sealed = bytes(flipped)
    elif kind == "wrong key":
        sealed = KeyRing.generate(ring.active_key_id).seal(plaintext, own)
    elif kind == "unknown key id":
        sealed = KeyRing.generate("k-stolen").seal(plaintext, own)
    elif kind == "another row's blob":
        sealed = rng.choice(rows)["state"]
    else:
        sealed = sealed[: rng.randrange(len(sealed))]
    return StoredEvent(aggregate, 1, topic, sealed)


class PauseContract:
    def test_pause_names_position(self, backend: Any, trials: Any, tmp_path: Path) -> None:
        for trial in trials(default=1):
            rng = trial.random
            canary = f"canary-{secrets.token_hex(8)}"
            with backend.fresh() as log:
                audit_key_file = tmp_path / f"audit-{trial.index}.key"
                audit_key = AuditKey.generate()
                audit_key.save(audit_key_file)
                context, envs = principals_world(log.settings, audit_key_file)
                context.close()
                env = {k: v for k, v in os.environ.items() if not k.startswith("SAFEREPLAY_")}
                env |= envs["admin"] | {
                    "SAFEREPLAY_APPROVAL_REQUIRED": "",
                    "SAFEREPLAY_ON_INTEGRITY_FAILURE": "pause",
                    "SAFEREPLAY_PROJECTIONS_BATCH_SIZE": str(rng.choice([1, 5, 100])),
                }
                follower = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "safereplay.recovery.cli",
                        "follow",
                        "-p",
                        "run_status",
                        "-p",
                        "failed_steps",
                    ],
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
                output = output_resolve = ""
                try:
                    chunks = rng.randint(1, 3)
                    for _ in range(chunks):
                        record_workload(
                            log.app,
                            workflows=1,
                            runs_per_workflow=rng.randint(1, 3),
                            seed=rng.randrange(10**6),
                        )
                    before = log.envelopes()
                    kind = rng.choice(DAMAGES)
                    log.app.recorder.insert_events([damaged_started(log, rng, canary, kind)])
                    victim = log.app.head_position()
                    trial.fault()
                    for _ in range(rng.randint(1, 2)):
                        record_workload(
                            log.app,
                            workflows=1,
                            runs_per_workflow=rng.randint(1, 3),
                            seed=rng.randrange(10**6),
                        )
                    head = log.app.head_position()

                    conflict = wait_until(
                        lambda: select(
                            log,
                            "SELECT * FROM {conflicts} WHERE state = 'open' "
                            "AND projection = 'run_status'",
                        ),
                        timeout=120,
                        what="the follower to record a conflict",
                    )
                    [record] = conflict
                    assert record["position"] == victim, record
                    assert record["subject"].startswith("follower:run_status:")
                    assert f"position {victim}" in record["reason"], record
                    # failed_steps (not concerned) follows to the head: the follower polls.
                    wait_until(
                        lambda head=head: self.position(log, "failed_steps") == head,
                        timeout=120,
                        what="failed_steps to reach the head",
                    )
                    assert self.position(log, "run_status") == victim - 1
                    store = log.store()
                    assert table_state(store, RunStatusBoard)["runs"] == fold_run_status(before)
                    assert table_state(store, FailedSteps)["failures"] == fold_failed_steps(
                        [
                            e
                            for p in range(1, head + 1)
                            if p != victim
                            for e in log.app.read(after=p - 1, limit=1)
                        ]
                    )

                    resolved = CliRunner().invoke(
                        app,
                        ["conflicts", "resolve", record["conflict_id"], "--action", "park",
                         "--reason", "INC-1: row damaged"],
                        env=env,
                    )  # fmt: skip
                    assert resolved.exit_code == 0, resolved.output
                    output_resolve = resolved.output
                    wait_until(
                        lambda head=head: self.position(log, "run_status") == head,
                        timeout=120,
                        what="run_status to go on past the parked event",
                    )
                    after = [
                        e
                        for p in range(1, head + 1)
                        if p != victim
                        for e in log.app.read(after=p - 1, limit=1)
                    ]
                    actual = table_state(store, RunStatusBoard)["runs"]
                    expected = fold_run_status(after)
                    wrong = {
                        k
                        for k in actual.keys() | expected.keys()
                        if actual.get(k) != expected.get(k)
                    }
                    parked = select(
                        log,
                        "SELECT position FROM {projection_parked} WHERE projection = 'run_status'",
                    )
                    assert [p["position"] for p in parked] == [victim]
                finally:
                    if follower.poll() is None:
                        follower.send_signal(signal.SIGTERM)
                    try:
                        output = follower.communicate(timeout=120)[0]
                    except subprocess.TimeoutExpired:
                        follower.kill()
                        output = follower.communicate(timeout=60)[0]
                assert follower.returncode == 0, output
                audit = select(log, "SELECT reason, parameters FROM {audit_entries}")
                shown = json.dumps([record, audit], default=str) + output + output_resolve
                hidden = [
                    *key_texts(log.app.key_ring),
                    canary,
                    envs["admin"]["SAFEREPLAY_TOKEN"],
                    audit_key_file.read_text().strip().rstrip("="),
                    audit_key.key.hex(),
                ]
                assert leaks(shown, hidden) == []
                handled = [e for e in after if e.topic in RunStatusBoard.topics]
                trial.checked(len(handled), losses=len(wrong))

    @staticmethod
    def position(log: Log, projection: str) -> int | None:
        found = select(
            log,
            "SELECT position FROM {projection_positions} WHERE projection = %(p)s",
            {"p": projection},
        )
        return found[0]["position"] if found else None


class TestSQLiteIntegrityPause(OnSQLite, PauseContract):
    pass


@pytest.mark.postgres
class TestPostgresIntegrityPause(OnPostgres, PauseContract):
    pass

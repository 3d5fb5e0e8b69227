"""Re-encryption as documented: one short transaction per batch, each row a
compare-and-swap, resumable from its checkpoint after a kill without sealing any
row twice. SQLite and PostgreSQL."""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from test_recovery_keys import plain_settings, snapshot_of_log

from safereplay.domain import AutomationApp, DomainSettings, KeyRing
from safereplay.domain.keyring import sealed_key_id
from safereplay.domain.mapper import associated_data
from safereplay.domain.workload import record_workload
from safereplay.recovery.security.keys import (
    ReencryptProgress,
    _scan,
    _Table,
    _tables,
    add_key,
    key_usage,
    reencrypt,
)

BATCH = 5

RowKey = tuple[str, str, int]


class Crash(BaseException):
    """The process dying in the middle of a batch's transaction."""


def stored_states(app: AutomationApp) -> dict[RowKey, tuple[int, bytes]]:
    """Every stored row (events and snapshots): its cursor and its sealed state."""
    states = {}
    for table in _tables(app):
        for batch in _scan(table, batch_size=500):
            for row in batch:
                key = (table.name, str(row.originator_id), row.originator_version)
                states[key] = (row.cursor, row.state)
    return states


def datastores(app: AutomationApp) -> list[Any]:
    found = {id(t.recorder.datastore): t.recorder.datastore for t in _tables(app)}
    return list(found.values())


def watch_transactions(
    app: AutomationApp,
    monkeypatch: pytest.MonkeyPatch,
    *,
    on_execute: Callable[[], None] = lambda: None,
) -> list[int]:
    """Count the statements of each committed write transaction of ``app``'s tables;
    ``on_execute`` runs before each statement of a write transaction."""
    committed: list[int] = []

    class Cursor:
        def __init__(self, inner: Any) -> None:
            self.inner = inner
            self.statements = 0

        def execute(self, *args: Any, **kwargs: Any) -> Any:
            on_execute()
            self.statements += 1
            return self.inner.execute(*args, **kwargs)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

    for datastore in datastores(app):
        original = datastore.transaction

        @contextmanager
        def transaction(*, commit: bool, original: Any = original) -> Iterator[Any]:
            with original(commit=commit) as cursor:
                if not commit:
                    yield cursor
                    return
                counted = Cursor(cursor)
                yield counted
            committed.append(counted.statements)

        monkeypatch.setattr(datastore, "transaction", transaction)
    return committed


def _reencrypt_reporting(values: dict[str, Any], checkpoints: Any, stall_after: int) -> None:
    """Re-encrypt in a child process, reporting each checkpoint; after ``stall_after``
    of them, stall until the test kills the process."""
    app = AutomationApp(DomainSettings.from_env(**values))
    assert app.key_ring is not None
    reported = 0

    def report(progress: ReencryptProgress) -> None:
        nonlocal reported
        checkpoints.put((progress.table, progress.cursor, progress.resealed))
        reported += 1
        if reported == stall_after:
            threading.Event().wait(600)  # killed here

    reencrypt(app, app.key_ring, batch_size=BATCH, on_progress=report)


class ReencryptContract:
    settings: Callable[..., DomainSettings]

    def rotated(self, key_file: Path, *, runs: int = 4) -> tuple[AutomationApp, KeyRing]:
        app = AutomationApp(self.settings())
        record_workload(app, workflows=2, runs_per_workflow=runs, seed=3)
        ring = add_key(key_file, "k2", activate=True)
        return AutomationApp(self.settings()), ring

    def test_one_commit_per_batch(self, key_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        app, ring = self.rotated(key_file)
        rows = key_usage(app).uses("k1")
        assert rows > 3 * BATCH
        committed = watch_transactions(app, monkeypatch)
        batches: list[ReencryptProgress] = []

        done = reencrypt(app, ring, batch_size=BATCH, on_progress=batches.append)

        assert sum(p.resealed for p in done) == rows
        assert key_usage(app).uses("k1") == 0
        # Every batch re-sealed rows (all were under k1): one transaction each, each
        # holding one compare-and-swap per row of the batch.
        assert len(committed) == len(batches), f"{len(committed)} commits for {len(batches)}"
        assert sum(committed) == rows
        assert max(committed) == BATCH

    def test_a_crash_inside_a_batch_leaves_none_of_it(
        self, key_file: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        app, ring = self.rotated(key_file)
        rows = key_usage(app).uses("k1")
        statements = 0

        def crash_in_the_second_batch() -> None:
            nonlocal statements
            statements += 1
            if statements == BATCH + 3:  # the third row of the second batch
                raise Crash

        watch_transactions(app, monkeypatch, on_execute=crash_in_the_second_batch)
        with pytest.raises(Crash):
            reencrypt(app, ring, batch_size=BATCH)
        monkeypatch.undo()

        assert key_usage(app).uses("k1") == rows - BATCH, "the first batch whole, no more"

    def test_resumed_from_its_checkpoint_after_a_kill_no_row_is_sealed_twice(
        self, key_file: Path
    ) -> None:
        app, ring = self.rotated(key_file)
        initially = key_usage(app).uses("k1")
        context = multiprocessing.get_context("spawn")
        checkpoints = context.Queue()
        child = context.Process(
            target=_reencrypt_reporting,
            args=(plain_settings(self.settings()), checkpoints, 2),
            daemon=True,
        )
        child.start()
        try:
            reported = [checkpoints.get(timeout=120) for _ in range(2)]
        except queue.Empty:
            pytest.fail("the re-encryption never reported two checkpoints")
        finally:
            assert child.pid is not None
            os.kill(child.pid, signal.SIGKILL)
            child.join(30)
        table, cursor, first_run = reported[-1]
        assert first_run == 2 * BATCH
        # Resumed from the checkpoint before the last one (as if the last one had not
        # been saved when the process died): the batch in between is already re-sealed.
        _, cursor, _ = reported[0]

        before = stored_states(app)
        resumed = reencrypt(app, ring, batch_size=BATCH, start_after=[cursor])

        after = stored_states(app)
        events = {k: v for k, v in before.items() if k[0] == table}
        assert resumed[0].scanned == sum(1 for c, _ in events.values() if c > cursor), (
            "the resumed run starts after its checkpoint"
        )
        rescanned = [k for k, (c, state) in events.items() if c > cursor and state != after[k][1]]
        assert len(rescanned) == initially - first_run
        sealed_twice = [
            k
            for k, (_, state) in before.items()
            if sealed_key_id(state) == "k2" and after[k][1] != state
        ]
        assert sealed_twice == [], f"{len(sealed_twice)} rows sealed twice"
        assert first_run + sum(p.resealed for p in resumed) == initially
        assert key_usage(app).uses("k1") == 0
        assert snapshot_of_log(AutomationApp(self.settings())) == snapshot_of_log(app)

    def test_a_row_changed_by_a_concurrent_writer_is_not_overwritten(self, key_file: Path) -> None:
        app, ring = self.rotated(key_file, runs=2)
        rows = key_usage(app).uses("k1")
        content = snapshot_of_log(app)
        other = AutomationApp(self.settings())  # its own connections
        other_table = _Table(other.recorder)
        [target] = other_table.batch(2, 1)  # the third event
        aad = associated_data(target.originator_id, target.originator_version, target.topic)
        theirs = ring.seal(ring.open(target.state, aad), aad)

        class Interfering:
            """The ring, except that while the third row is being re-sealed, another
            writer re-seals it first (between this run's read and its write)."""

            active_key_id = ring.active_key_id
            open = staticmethod(ring.open)
            sealed = 0

            def seal(self, plaintext: bytes, associated: bytes, **kwargs: Any) -> bytes:
                Interfering.sealed += 1
                if Interfering.sealed == 3:
                    assert other_table.swap([(target, theirs)]) == 1
                return ring.seal(plaintext, associated, **kwargs)

        done = reencrypt(app, Interfering(), batch_size=BATCH)  # type: ignore[arg-type]

        assert Interfering.sealed >= 3
        assert sum(p.resealed for p in done) == rows - 1, "the changed row was left alone"
        key = (other_table.name, str(target.originator_id), target.originator_version)
        assert stored_states(app)[key][1] == theirs, "the concurrent write survived"
        assert key_usage(app).uses("k1") == 0
        assert snapshot_of_log(AutomationApp(self.settings())) == content


class TestSQLiteReencrypt(ReencryptContract):
    @pytest.fixture(autouse=True)
    def _settings(self, sqlite_settings: Callable[..., DomainSettings]) -> None:
        self.settings = sqlite_settings


@pytest.mark.postgres
class TestPostgresReencrypt(ReencryptContract):
    @pytest.fixture(autouse=True)
    def _settings(self, postgres_settings: Callable[..., DomainSettings]) -> None:
        self.settings = postgres_settings

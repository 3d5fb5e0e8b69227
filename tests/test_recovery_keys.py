"""Key rotation under load: re-encryption is resumable, content and order are unchanged,
and a key is only retired when nothing needs it."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from safereplay.domain import AutomationApp, DomainSettings, KeyRing, UnknownKeyId
from safereplay.domain.workload import record_workload
from safereplay.recovery.errors import InvalidRequest
from safereplay.recovery.security.keys import (
    ReencryptProgress,
    add_key,
    key_usage,
    reencrypt,
    retire_key,
)


def snapshot_of_log(app: AutomationApp) -> list[tuple[int | None, str, dict[str, Any]]]:
    envelopes = app.read(after=0, limit=1_000_000)
    return [(e.position, str(e.event_id), dict(e.payload)) for e in envelopes]


def plain_settings(settings: DomainSettings) -> dict[str, Any]:
    """Settings a child process can rebuild (secrets revealed only to it, in memory)."""
    values = settings.model_dump(mode="json")
    if settings.postgres_dsn is not None:
        values["postgres_dsn"] = settings.postgres_dsn.get_secret_value()
    return values


def _reencrypt_until_killed(values: dict[str, Any], resealed: Any) -> None:
    """Re-encrypt in a child process; after the first batch that re-sealed rows, say so
    and stall there until the test kills the process (part-way through, on any machine)."""
    app = AutomationApp(DomainSettings.from_env(**values))
    assert app.key_ring is not None

    def stall_after_the_first(progress: ReencryptProgress) -> None:
        if progress.resealed:
            resealed.set()
            threading.Event().wait(600)  # killed here

    reencrypt(
        app,
        app.key_ring,
        batch_size=5,
        events_per_second=60,
        on_progress=stall_after_the_first,
    )


class KeyRotationContract:
    settings: Callable[..., DomainSettings]

    def test_rotation_under_load_with_a_killed_and_resumed_reencrypt(self, key_file: Path) -> None:
        app = AutomationApp(self.settings())
        record_workload(app, workflows=3, runs_per_workflow=8, seed=1)
        before = snapshot_of_log(app)
        assert key_usage(app).by_key == {"k1": len(before)}

        ring = add_key(key_file, "k2", activate=True)
        writer_app = AutomationApp(self.settings())
        assert writer_app.key_ring is not None
        assert writer_app.key_ring.active_key_id == "k2", "new writers use the new key at once"
        stop_writing = threading.Event()

        written = threading.Semaphore(0)

        def keep_writing() -> None:
            seed = 100
            while not stop_writing.is_set():
                record_workload(writer_app, workflows=1, runs_per_workflow=2, seed=seed)
                written.release()
                seed += 1

        writer = threading.Thread(target=keep_writing)
        writer.start()
        try:
            context = multiprocessing.get_context("spawn")
            resealed = context.Event()
            child = context.Process(
                target=_reencrypt_until_killed,
                args=(plain_settings(self.settings()), resealed),
                daemon=True,
            )
            child.start()
            assert resealed.wait(120), "the re-encryption never re-sealed a batch"
            assert child.pid is not None
            os.kill(child.pid, signal.SIGKILL)
            child.join()
            partly = key_usage(app).uses("k1")
            assert 0 < partly < len(before), "killed part-way through"
            # Writes went on during the rotation (the writer started after add_key).
            assert written.acquire(timeout=120), "the writer never wrote"

            with pytest.raises(InvalidRequest, match="still seals"):
                retire_key(key_file, "k1", app)

            reencrypt(app, ring, batch_size=7)
        finally:
            stop_writing.set()
            writer.join()

        usage = key_usage(app)
        assert usage.uses("k1") == 0
        assert usage.plaintext == 0
        after = snapshot_of_log(AutomationApp(self.settings()))
        assert after[: len(before)] == before, "same content, same order, same ids"
        assert len(after) > len(before), "writers kept appending meanwhile"

        retired = retire_key(key_file, "k1", app)
        assert retired.key_ids == ("k2",)
        only_new = AutomationApp(self.settings())
        assert snapshot_of_log(only_new) == after

    def test_without_reencrypt_the_old_events_need_the_old_key(self, key_file: Path) -> None:
        app = AutomationApp(self.settings())
        record_workload(app, workflows=1, runs_per_workflow=1)
        KeyRing.load(key_file).with_key("k2", activate=True).without_key("k1").save(key_file)
        reader = AutomationApp(self.settings())
        with pytest.raises(UnknownKeyId, match="'k1'.*position 1"):
            reader.read(after=0, limit=10)


class TestSQLiteKeyRotation(KeyRotationContract):
    @pytest.fixture(autouse=True)
    def _settings(self, sqlite_settings: Callable[..., DomainSettings]) -> None:
        self.settings = sqlite_settings


class TestPostgresKeyRotation(KeyRotationContract):
    @pytest.fixture(autouse=True)
    def _settings(self, postgres_settings: Callable[..., DomainSettings]) -> None:
        self.settings = postgres_settings


def test_a_rotation_reaches_running_processes_without_restart(
    sqlite_settings: Callable[..., DomainSettings], key_file: Path
) -> None:
    reader = AutomationApp(sqlite_settings())
    writer = AutomationApp(sqlite_settings())
    record_workload(writer, workflows=1, runs_per_workflow=1, seed=5)
    add_key(key_file, "k2", activate=True)
    # The writer sealing with k2 before the reader re-checked its file: the reader's
    # UnknownKeyId makes it re-read the ring once, so it still decodes the event.
    writer.envelope_mapper.refresh_key_ring(force=True)
    record_workload(writer, workflows=1, runs_per_workflow=1, seed=6)
    assert key_usage(reader).uses("k2") > 0
    assert len(reader.read(after=0, limit=10_000)) == reader.head_position()
    # Within the reload interval, new writes of a process that did nothing use k2.
    time.sleep(1.1)
    assert reader.key_ring is not None
    assert reader.key_ring.active_key_id == "k2"

"""Rebuild while writers keep appending: readers only ever see the complete live
build, and after the swap the new build holds every event exactly once.

Plus a property: a partitioned rebuild of a projection whose state spans
aggregates equals the plain fold and an incremental single-runner build.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from projection_fixtures import (
    EXPECTED,
    OPS,
    OnPostgres,
    OnSQLite,
    Op,
    SQLiteBackend,
    handled_count,
    play,
)
from recovery_fixtures import QUICK_RUNNER, Recovery, RecoveryContract, fresh_recovery, wait_until

from safereplay.domain import AutomationApp, Envelope, KeyRing
from safereplay.domain.workload import record_workload
from safereplay.projections import DatabaseUnavailable, WorkflowStatistics, wait_for_position
from safereplay.projections.runner import FaultHook
from safereplay.recovery.jobs.model import JobState
from safereplay.recovery.jobs.plans import JobRequest

STATS = WorkflowStatistics
SMALL_BATCHES = replace(QUICK_RUNNER, batch_size=10)
REBUILD = JobRequest(principal="alice", reason="statistics code fixed", partitions=3)


class LiveReader:
    """Reads the live projection over and over, as a dashboard would.

    A sample is kept when nothing moved while it was read: the same live build
    and the same position and counters before and after reading the rows (each
    table is one query, so a commit in between would mix two states). Every kept
    sample must equal the fold of the log up to that position: the reader saw a
    complete build, never one being built.
    """

    def __init__(self, recovery: Recovery) -> None:
        self.recovery = recovery
        self.store = recovery.log.store()
        self.samples: list[tuple[int, int, dict[str, Any]]] = []
        self.builds_seen: list[int] = []
        #: Positions of build 2's partitions seen while reading (it is being built).
        self.building: list[tuple[int, ...]] = []
        self.reads = 0
        self.retries = 0
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _mark(self) -> tuple[int | None, list[tuple[int, int, int]]]:
        live = self.store.live_build(STATS.name)
        checkpoints = self.store.checkpoints(STATS.name, build=live) if live else []
        return live, [(c.position, c.events_applied, c.events_parked) for c in checkpoints]

    def _positions(self, build: int) -> list[int]:
        return [c.position for c in self.store.checkpoints(STATS.name, build=build)]

    def _run(self) -> None:
        try:
            while not self.stop.is_set():
                try:
                    self._read()
                except DatabaseUnavailable:
                    # A busy database on a loaded machine: a dashboard reads again.
                    self.retries += 1
                time.sleep(0.005)
        except BaseException as exc:
            self.error = exc

    def _read(self) -> None:
        before = self._mark()
        rows = {
            table.name: {
                tuple(row[k] for k in table.key_names): row
                for row in self.store.rows(STATS, table.name)
            }
            for table in STATS.tables
        }
        after = self._mark()
        if len(self.store.builds(STATS.name)) > 1 and after[0] == 1:
            self.building.append(tuple(self._positions(2)))
        self.reads += 1
        live, positions = before
        if live is not None and (live, positions) == after and len(positions) == 1:
            if not self.builds_seen or self.builds_seen[-1] != live:
                self.builds_seen.append(live)
            self.samples.append((live, positions[0][0], rows))

    def __enter__(self) -> LiveReader:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)


class Writers:
    """Threads recording workloads through their own applications until stopped."""

    def __init__(self, recovery: Recovery, count: int) -> None:
        self.recovery = recovery
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.rounds = 0
        # Apps are made one after the other: each makes its tables on first use.
        self.apps = [AutomationApp(recovery.log.settings) for _ in range(count)]
        self.threads = [
            threading.Thread(target=self._run, args=(app, 100 + i), daemon=True)
            for i, app in enumerate(self.apps)
        ]

    def _run(self, app: AutomationApp, seed: int) -> None:
        try:
            for n in range(10**6):
                if self.stop.is_set():
                    break
                record_workload(app, workflows=1, runs_per_workflow=2, seed=seed * 1000 + n)
                self.rounds += 1
                time.sleep(0.01)
        except BaseException as exc:
            self.errors.append(exc)
        finally:
            app.close()

    def __enter__(self) -> Writers:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)


def half_built(reader: LiveReader, target: int) -> bool:
    """The reader has read while some partition of build 2 was under way."""
    return any(0 < x < target for positions in list(reader.building) for x in positions)


def held_until_read_half_built(reader: LiveReader, target: int) -> FaultHook:
    """Workers hold on after a commit until the reader has read build 2 half built:
    it is read then on any machine, not only if its reads happen to fall in time."""

    store = reader.recovery.log.store()

    def building_now() -> bool:
        positions = [c.position for c in store.checkpoints(STATS.name, build=2)]
        return any(0 < x < target for x in positions)

    def hook(point: str) -> None:
        # Held only while build 2 is half built in the database: a commit that took
        # its partition straight to the target (few events of it) leaves nothing
        # half built to read, and two workers held then would wait for each other.
        if point == "after_commit" and not half_built(reader, target) and building_now():
            # A reader that died would hold the workers for nothing: its error is
            # the failure to report, not the wait's timeout.
            try:
                wait_until(
                    lambda: reader.error is not None or half_built(reader, target),
                    timeout=120,
                    what=f"the reader to read build 2 half built (target {target})",
                )
            except AssertionError as exc:
                # The worker logs the message only (its notes would be lost).
                raise AssertionError(
                    f"{exc}; the reader: {reader.reads} reads, {reader.retries} busy, "
                    f"partitions of build 2 last seen at {reader.building[-1:]}"
                ) from None
            if reader.error is not None:
                raise AssertionError(f"the reader failed after {reader.reads} reads") from (
                    reader.error
                )

    return hook


def fold_upto(envelopes: list[Envelope], position: int) -> dict[str, Any]:
    return EXPECTED[STATS.name]([e for e in envelopes if (e.position or 0) <= position])


class ConcurrencyContract(RecoveryContract):
    def test_rebuild_while_writers_append_then_swap(self, recovery: Recovery) -> None:
        record_workload(recovery.log.app, workflows=4, runs_per_workflow=12, seed=1)
        follower = recovery.log.runner(STATS(), store=recovery.log.store())
        with follower.in_background() as live, LiveReader(recovery) as reader:
            # Build 1 is the follower's once it has committed: a rebuild requested
            # before that would rebuild the never-written build in place.
            first = recovery.source.high_water_mark()
            wait_for_position(recovery.store, STATS, first, timeout=60, build=1)
            with Writers(recovery, count=2) as writers:
                wait_until(lambda: writers.rounds >= 2, timeout=20, what="writers to start")
                job = recovery.rebuild(STATS.name, REBUILD)
                assert job.target_position is not None
                hold = held_until_read_half_built(reader, job.target_position)
                workers = [
                    recovery.worker(faults=hold, runner_options=SMALL_BATCHES) for _ in range(2)
                ]
                threads = [threading.Thread(target=w.run) for w in workers]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join(300)
                assert recovery.job(job).state == JobState.COMPLETED, recovery.partitions(job)
                assert recovery.store.live_build(STATS.name) == 1, "no swap without asking"
                # Whole samples of build 1 before the swap: waited for, not hoped for.
                wait_until(lambda: len(reader.samples) >= 3, timeout=30, what="samples")
                during = len(reader.samples)
                result = recovery.swap(STATS.name)  # writers are still appending
                assert (result.previous, result.live) == (1, 2)
                wait_until(lambda: writers.rounds >= 6, timeout=20, what="more writes")
            assert not writers.errors, writers.errors
            head = recovery.source.high_water_mark()
            wait_for_position(recovery.store, STATS, head, timeout=20, build=2)
            wait_until(lambda: len(reader.samples) > during + 3, timeout=10, what="reads")
            assert live.alive, live.runner
        assert reader.error is None, reader.error

        envelopes = recovery.log.envelopes()
        assert job.target_position is not None and len(envelopes) > job.target_position
        assert recovery.actual(STATS) == recovery.expected(STATS)
        assert recovery.applied(STATS, 2) == handled_count(STATS, envelopes), "each event once"
        [checkpoint] = recovery.store.checkpoints(STATS.name, build=2)
        assert checkpoint.position == head and checkpoint.events_parked == 0

        # What the reader saw: build 1 until the swap, then build 2, each always whole.
        assert reader.builds_seen == [1, 2], reader.builds_seen
        assert {live for live, _, _ in reader.samples[:during]} == {1}
        assert during >= 3 and len(reader.samples) > during
        target = job.target_position
        half_built = [p for p in reader.building if any(0 < x < target for x in p)]
        assert half_built, "the reader read while build 2 was half built"
        for live, position, rows in reader.samples[:: max(1, len(reader.samples) // 40)]:
            assert rows == fold_upto(envelopes, position), (live, position)


class TestSQLiteConcurrency(OnSQLite, ConcurrencyContract):
    pass


@pytest.mark.postgres
class TestPostgresConcurrency(OnPostgres, ConcurrencyContract):
    pass


# -- a property: partitioning does not change a cross-aggregate projection ---------------------


@pytest.fixture(scope="module")
def sqlite_backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SQLiteBackend]:
    directory = tmp_path_factory.mktemp("partitioned")
    KeyRing.generate("k1").save(directory / "keyring.json")
    backend = SQLiteBackend(directory, directory / "keyring.json")
    yield backend
    backend.close()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS, partitions=st.integers(1, 5), split=st.floats(0, 1))
def test_partitioned_rebuild_equals_the_fold_and_an_incremental_build(
    sqlite_backend: SQLiteBackend, ops: list[Op], partitions: int, split: float
) -> None:
    with fresh_recovery(sqlite_backend) as recovery:
        incremental = recovery.log.runner(STATS(), store=recovery.store, batch_size=3)
        cut = int(len(ops) * split)
        play(recovery.log.app, ops[:cut])
        incremental.catch_up()
        play(recovery.log.app, ops[cut:])
        incremental.catch_up()

        request = JobRequest(principal="prop", reason="property", partitions=partitions)
        job = recovery.rebuild(STATS.name, request)
        recovery.worker().run()
        assert recovery.job(job).state == JobState.COMPLETED
        rebuilt = recovery.actual(STATS, build=2)
        assert rebuilt == recovery.expected(STATS)
        assert rebuilt == recovery.actual(STATS, build=1)

"""A job's circuit breaker and throttle, inside real jobs on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from projection_fixtures import OnPostgres, OnSQLite, handled_count
from recovery_fixtures import Recovery, RecoveryContract, RunCounts, recovery_of, wait_until

from safereplay.domain.workload import record_workload
from safereplay.recovery.jobs import worker as worker_module
from safereplay.recovery.jobs.model import JobState
from safereplay.recovery.jobs.plans import JobRequest
from safereplay.recovery.resilience.throttle import Throttle

COOL_DOWN = 0.05
#: Probes counted while the breaker is open.
PROBES = 10
#: Opens after two consecutive failures; probes again a cool-down later.
BREAKER = {"failure_threshold": 2, "cool_down": COOL_DOWN, "min_samples": 1000}
#: Retries every few milliseconds, giving up after 100 tries.
POLICY = {
    "on_error": "retry-then-fail",
    "attempts": 100,
    "backoff": {"initial": 0.001, "maximum": 0.005, "jitter": 0},
}


class LimitsContract(RecoveryContract):
    @pytest.fixture
    def runs(self, recovery: Recovery) -> Iterator[Recovery]:
        recovery_of(recovery, RunCounts)
        record_workload(recovery.log.app, workflows=2, runs_per_workflow=6, seed=31)
        yield recovery
        RunCounts.reset()

    def test_the_breaker_holds_retries_back_while_a_dependency_is_down(
        self, runs: Recovery
    ) -> None:
        positions = [e.position for e in runs.log.envelopes() if e.topic in RunCounts.topics]
        down = positions[len(positions) // 2]
        assert down is not None
        RunCounts.reset(flaky={down}, failures=10**6)  # the service is down until fixed
        request = JobRequest(
            principal="carol",
            reason="rebuild behind a flaky service",
            partitions=2,
            parameters={"breaker": BREAKER, "policy": POLICY},
        )
        job = runs.rebuild("run_counts", request)
        assert job.build == 1, "the first rebuild of a never-built projection is live"
        worker = threading.Thread(target=runs.worker().run)
        worker.start()

        opened = wait_until(
            lambda: runs.job(job).breaker.get("state") == "open",
            timeout=10,
            what="the breaker to open and be kept with the job",
        )
        assert opened
        # Count the probes of a window that ends once PROBES of them were seen, however
        # long that takes: the window is read before the first count and after the last.
        started = time.monotonic()
        tries = RunCounts.tries[down]
        wait_until(
            lambda: RunCounts.tries[down] - tries >= PROBES,
            timeout=30,
            what=f"{PROBES} probes of the service",
        )
        probes = RunCounts.tries[down] - tries
        window = time.monotonic() - started
        # While open, one probe per cool-down at most: no storm (the policy alone
        # would retry every few milliseconds, and give up after 100 tries).
        assert 1 <= probes <= window / COOL_DOWN + 2, (probes, window)
        assert runs.job(job).state == JobState.RUNNING, "nothing failed or parked meanwhile"

        RunCounts.flaky_failures = 0  # the service is back: the next probe closes it
        worker.join(30)
        done = runs.job(job)
        assert done.state == JobState.COMPLETED, done.error
        assert done.breaker["state"] == "closed" and done.breaker["opened_count"] >= 2
        assert runs.actual(RunCounts, build=1) == runs.expected(RunCounts)
        assert runs.applied(RunCounts, 1) == handled_count(RunCounts, runs.log.envelopes())
        assert runs.store.parked("run_counts", build=1) == []

    def test_an_events_per_second_cap_holds_across_parallel_partitions(
        self, runs: Recovery, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        handled = handled_count(RunCounts, runs.log.envelopes())
        rate = handled / 2.5
        request = JobRequest(
            principal="carol", reason="gentle rebuild", partitions=2, events_per_second=rate
        )
        job = runs.rebuild("run_counts", request)
        assert job.build == 1, "the first rebuild of a never-built projection is live"
        # Each partition's throttle on a clock of its own that moves only by the sleeps
        # it asks for: what is measured is what the throttle demanded, not the machine.
        throttles = VirtualThrottles()
        monkeypatch.setattr(worker_module, "Throttle", throttles)
        workers = [threading.Thread(target=runs.worker().run) for _ in range(2)]
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join(60)

        assert runs.job(job).state == JobState.COMPLETED
        assert runs.actual(RunCounts, build=1) == runs.expected(RunCounts)
        capped = [clock for throttle, clock in throttles.made if throttle.rate is not None]
        assert len(capped) == 2, "one throttle per partition"
        # The partitions run side by side, each on its own clock: the job lasts as long
        # as the longer one.
        elapsed = max(clock.now for clock in capped)
        # Each partition gets rate/2 with a burst of one second's worth: together at
        # most `rate` events in the first second and `rate` per second after it.
        assert elapsed >= handled / rate - 1, (elapsed, handled, rate)


class VirtualClock:
    """A clock that moves only when slept on (the sleep returns at once)."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class VirtualThrottles:
    """Stands in for the worker's ``Throttle``: each one made gets a virtual clock."""

    def __init__(self) -> None:
        self.made: list[tuple[Throttle, VirtualClock]] = []

    def __call__(self, rate: float | None, **options: Any) -> Throttle:
        clock = VirtualClock()
        throttle = Throttle(rate, clock=clock.monotonic, sleep=clock.sleep, **options)
        self.made.append((throttle, clock))
        return throttle


class TestSQLiteLimits(OnSQLite, LimitsContract):
    pass


@pytest.mark.postgres
class TestPostgresLimits(OnPostgres, LimitsContract):
    pass

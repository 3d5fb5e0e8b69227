"""Progress arithmetic, on a fake clock: the recent rate a throttled worker reports
never goes above its cap; a partition's progress is events done of events in scope;
the ETA is events left over the rate of the partitions a worker holds; an ended job
shows its average rate."""

from __future__ import annotations

from dataclasses import replace
from uuid import uuid4

from recovery_fixtures import FakeClock

from safereplay.recovery.jobs.model import (
    Job,
    JobKind,
    JobState,
    JobStatus,
    PartitionProgress,
    PartitionStatus,
)
from safereplay.recovery.resilience.throttle import RecentRate, Throttle


def test_a_throttled_workers_recent_rate_stays_under_its_cap() -> None:
    clock = FakeClock()
    cap = 100.0
    throttle = Throttle(cap, burst=0.0, clock=clock, sleep=clock.sleep)
    recent = RecentRate(window=10.0, clock=clock)
    rates = []
    for _ in range(200):
        clock.now += 0.002  # a batch of 20 events applied at once, far above the cap
        throttle.acquire(20)
        rate = recent.add(20)
        assert rate is not None
        rates.append(rate)
    assert max(rates) <= cap
    assert rates[-1] > cap * 0.9, "and close to it once the window is full"


def test_the_recent_rate_follows_a_slow_down_within_its_window() -> None:
    clock = FakeClock()
    recent = RecentRate(window=10.0, clock=clock)
    for _ in range(20):
        clock.now += 1.0
        recent.add(1000)
    for _ in range(20):
        clock.now += 1.0
        rate = recent.add(10)
    assert rate == 10.0, "only the last 10 s count"


def job(state: JobState = JobState.RUNNING, *, updated_at: float = 1100.0) -> Job:
    return Job(
        job_id=uuid4(),
        kind=JobKind.REBUILD,
        projection="run_status",
        build=2,
        partition_count=2,
        state=state,
        principal="carol",
        reason="r",
        parameters={},
        created_at=1000.0,
        updated_at=updated_at,
        target_position=1000,
    )


def partition(index: int, **changes: object) -> PartitionProgress:
    base = PartitionProgress(
        job_id=uuid4(),
        partition_index=index,
        status=PartitionStatus.RUNNING,
        start_position=0,
        position=1000,  # every position read: positions alone would say "done"
        target_position=1000,
        events_applied=100,
        parked=0,
        retries=0,
        conflicts=0,
        lease_owner="w",
        lease_token=1,
        lease_expires_at=2000.0,
        started_at=1000.0,
        updated_at=1050.0,
        last_error=None,
        events_in_scope=400,
        recent_rate=50.0,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def test_progress_is_events_done_of_events_in_scope_and_the_eta_divides_by_the_rate() -> None:
    running = JobStatus(job(), [partition(0), partition(1, parked=100, recent_rate=150.0)])
    assert [p.done for p in running.partitions] == [100, 200]
    assert (running.events_done, running.events_in_scope) == (300, 800)
    assert running.events_per_second(1060.0) == 200.0
    assert running.eta_seconds(1060.0) == 500 / 200.0

    # A lease that expired brings no rate: the job is stalled, with no ETA.
    expired = JobStatus(job(), [partition(i, lease_expires_at=1001.0) for i in (0, 1)])
    assert expired.stalled(1060.0) and expired.eta_seconds(1060.0) is None
    assert expired.events_per_second(1060.0) == 0.0


def test_an_ended_job_shows_its_average_rate_and_a_completed_partition_is_all_done() -> None:
    done = [
        partition(i, status=PartitionStatus.COMPLETED, events_applied=400, lease_expires_at=None)
        for i in (0, 1)
    ]
    status = JobStatus(job(JobState.COMPLETED, updated_at=1008.0), done)
    assert status.events_done == status.events_in_scope == 800
    assert status.events_per_second(5000.0) == 800 / 8.0
    assert status.eta_seconds(5000.0) == 0.0


def test_a_job_planned_without_a_count_falls_back_to_positions() -> None:
    old = partition(0, events_in_scope=None, position=250)
    assert (old.done, old.scope) == (250, 1000)

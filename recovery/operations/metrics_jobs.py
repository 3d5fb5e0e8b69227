"""The jobs' metrics, computed from the jobs table on each scrape.

Series are labelled by job kind and projection (and partition index, bounded by
the job's partition count), never by job id: a job id per series would grow the
number of series without bound (one per job ever run). Several active jobs of one
kind on one projection share a series: counts are summed, the longest ETA and the
longest time since progress are kept, a partition's position is the furthest,
and the breaker shows the worst state among them.

The breaker is an enum in the Prometheus way: one series per state
(``closed``, ``half-open``, ``open``), the current one 1 and the others 0.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from safereplay.recovery.jobs.model import JobKind, JobState, JobStatus
from safereplay.recovery.resilience.breaker import STATES

if TYPE_CHECKING:
    from safereplay.recovery.operations.context import RecoveryContext

__all__ = ["BREAKER_STATES", "MAX_JOBS_COUNTED", "job_families"]

#: The most jobs one scrape counts by state (the jobs table's newest ones).
MAX_JOBS_COUNTED = 10_000

#: A breaker's states, from the best to the worst (the breaker's own list).
BREAKER_STATES: tuple[str, ...] = STATES

JOB_LABELS = ["kind", "projection"]
PARTITION_LABELS = [*JOB_LABELS, "partition"]


@dataclass
class _Sums:
    """The active jobs of one kind on one projection, summed."""

    applied: int = 0
    parked: int = 0
    in_scope: int = 0
    retries: int = 0
    conflicts: int = 0
    rate: float = 0.0
    limit: float | None = None
    eta: float | None = 0.0
    since_progress: float | None = None
    breaker: int = 0
    partitions: dict[int, list[int]] = field(default_factory=dict)

    def add(self, status: JobStatus, now: float, progressed_at: float | None) -> None:
        job = status.job
        self.applied += status.events_applied
        self.parked += status.parked
        self.in_scope += status.events_in_scope
        self.retries += status.retries
        self.conflicts += status.conflicts
        self.rate += status.events_per_second(now)
        if job.events_per_second is not None:
            self.limit = (self.limit or 0.0) + job.events_per_second
        seconds = status.eta_seconds(now)
        # The series ends when the last job does; unknown if any job's ETA is.
        self.eta = None if seconds is None or self.eta is None else max(self.eta, seconds)
        if job.state == JobState.RUNNING and progressed_at is not None:
            since = max(0.0, now - progressed_at)
            self.since_progress = max(self.since_progress or 0.0, since)
        state = str(job.breaker.get("state", "closed"))
        if state in BREAKER_STATES:
            self.breaker = max(self.breaker, BREAKER_STATES.index(state))
        for p in status.partitions:
            done, scope, position = self.partitions.setdefault(p.partition_index, [0, 0, 0])
            self.partitions[p.partition_index] = [
                done + p.done,
                scope + p.scope,
                max(position, p.position),
            ]


def _progressed_at(context: RecoveryContext, status: JobStatus) -> float | None:
    """When the job last moved: its build's last commit, for the jobs that commit
    positions (rebuild, catch-up, replay into a sandbox); else its partitions' last
    report. A commit is made only when a batch moved something, whereas a worker
    waiting on the high-water mark reports (and renews its lease) with no progress."""
    job = status.job
    if job.kind in (JobKind.REBUILD, JobKind.CATCH_UP) or (
        job.kind == JobKind.REPLAY and job.parameters.get("into") != "live"
    ):
        commits = [
            c.committed_at.timestamp()
            for c in context.projection_store.checkpoints(job.projection, build=job.build)
            if c.partition.count == job.partition_count and c.committed_at is not None
        ]
        return max(commits, default=None)
    return max((p.updated_at for p in status.partitions), default=None)


def job_families(context: RecoveryContext) -> Iterator[Metric]:
    jobs = context.jobs
    now = jobs.clock()

    def gauge(name: str, documentation: str, labels: list[str] = JOB_LABELS) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, documentation, labels=labels)

    def counter(name: str, documentation: str) -> CounterMetricFamily:
        return CounterMetricFamily(name, documentation, labels=JOB_LABELS)

    applied = gauge("safereplay_job_events_applied", "Events the active jobs have applied.")
    parked = gauge("safereplay_job_events_parked", "Events the active jobs have parked.")
    in_scope = gauge(
        "safereplay_job_events_in_scope",
        "Events the active jobs read in all, counted when they were planned.",
    )
    ratio = gauge(
        "safereplay_job_success_ratio",
        "Applied over applied and parked events of the active jobs (absent: none yet).",
    )
    rate = gauge(
        "safereplay_job_events_per_second",
        "Events/s the active jobs' live workers apply now (their recent rates, summed).",
    )
    limit = gauge(
        "safereplay_job_throttle_events_per_second",
        "The events/s cap the active jobs were planned with (absent: not throttled).",
    )
    eta = gauge(
        "safereplay_job_eta_seconds",
        "Seconds left at the active jobs' rate now (the longest of them; absent: no rate).",
    )
    since_progress = gauge(
        "safereplay_job_seconds_since_progress",
        "Seconds since a running job last committed a batch that moved (the longest).",
    )
    breaker = gauge(
        "safereplay_job_breaker_state",
        "The active jobs' circuit breaker: 1 for the state it is in (the worst of them).",
        [*JOB_LABELS, "state"],
    )
    retries = counter("safereplay_job_retries", "Failure-policy and connection retries.")
    conflicts = counter(
        "safereplay_job_conflicts", "Batches that met a position moved by another writer."
    )
    done = gauge(
        "safereplay_job_partition_events_done",
        "Events an active job's partition has applied or parked.",
        PARTITION_LABELS,
    )
    scope = gauge(
        "safereplay_job_partition_events_in_scope",
        "Events an active job's partition reads in all (counted when planned).",
        PARTITION_LABELS,
    )
    position = gauge(
        "safereplay_job_partition_position",
        "The position an active job's partition has committed.",
        PARTITION_LABELS,
    )
    sums: dict[tuple[str, str], _Sums] = {}
    for job in jobs.list_jobs(active_only=True, limit=MAX_JOBS_COUNTED):
        key = (str(job.kind), job.projection)
        status = jobs.status(job.job_id)
        sums.setdefault(key, _Sums()).add(status, now, _progressed_at(context, status))
    for key, s in sorted(sums.items()):
        values = list(key)
        applied.add_metric(values, s.applied)
        parked.add_metric(values, s.parked)
        in_scope.add_metric(values, s.in_scope)
        if s.applied + s.parked:
            ratio.add_metric(values, s.applied / (s.applied + s.parked))
        rate.add_metric(values, s.rate)
        if s.limit is not None:
            limit.add_metric(values, s.limit)
        if s.eta is not None:
            eta.add_metric(values, s.eta)
        if s.since_progress is not None:
            since_progress.add_metric(values, s.since_progress)
        for index, state in enumerate(BREAKER_STATES):
            breaker.add_metric([*values, state], 1 if index == s.breaker else 0)
        retries.add_metric(values, s.retries)
        conflicts.add_metric(values, s.conflicts)
        for partition, (events_done, events_in_scope, at) in sorted(s.partitions.items()):
            labels = [*values, str(partition)]
            done.add_metric(labels, events_done)
            scope.add_metric(labels, events_in_scope)
            position.add_metric(labels, at)
    yield from (applied, parked, in_scope, ratio, rate, limit, eta, since_progress, breaker)
    yield from (retries, conflicts, done, scope, position)
    by_state = gauge("safereplay_jobs", "Jobs in the jobs table, by state.", ["state"])
    counts = dict.fromkeys(JobState, 0)
    for job in jobs.list_jobs(limit=MAX_JOBS_COUNTED):
        counts[job.state] += 1
    for state, count in counts.items():
        by_state.add_metric([str(state)], count)
    yield by_state

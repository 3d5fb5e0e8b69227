"""One evaluation: read the facts, run the rules, raise and clear alerts.

:func:`read_snapshot` builds a :class:`~safereplay.recovery.alerts.facts.Snapshot`
from the stores every backend has (the job store, the followers' heartbeats, the
projection store and the log's head), through the :class:`Database` abstraction;
:class:`AlertMonitor` runs the rules on it and reconciles the alerts table.
Evaluating is cheap and idempotent, so every reader of alerts (``safereplay
alerts``, ``status``, ``GET /api/alerts``, a metrics scrape) evaluates first:
no separate daemon has to run for alerts to be current.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from safereplay.projections import EventSource, ProjectionStore
from safereplay.projections.status import projection_status
from safereplay.recovery.alerts.facts import (
    Finding,
    JobFacts,
    ProjectionFacts,
    RunnerFacts,
    Sample,
    Snapshot,
)
from safereplay.recovery.alerts.rules import Rule, evaluate, history_seconds, sample_interval
from safereplay.recovery.alerts.store import Alert, AlertStore, Changes
from safereplay.recovery.database import recorded_rows
from safereplay.recovery.jobs.heartbeats import FollowerHeartbeats
from safereplay.recovery.jobs.model import PartitionStatus
from safereplay.recovery.jobs.store import JobStore, SQLJobStore

__all__ = ["AlertMonitor", "Evaluation", "read_snapshot"]

#: The most jobs one evaluation looks at (the newest).
MAX_JOBS = 1_000

# Retries of every job partition of each projection, cumulative (they only grow).
_JOB_RETRIES = """
SELECT j.projection AS projection, SUM(p.retries) AS retries
FROM {jobs} j JOIN {job_partitions} p ON p.job_id = j.job_id
GROUP BY j.projection"""


@dataclass(frozen=True)
class Evaluation:
    """An evaluation's result: when, the facts, the findings, what changed, the alerts now."""

    evaluated_at: float
    snapshot: Snapshot
    findings: tuple[Finding, ...]
    changes: Changes
    alerts: tuple[Alert, ...]


def read_snapshot(
    *,
    jobs: JobStore,
    followers: FollowerHeartbeats,
    store: ProjectionStore,
    log: EventSource,
    alerts: AlertStore,
    rules: Sequence[Rule],
) -> Snapshot:
    """The facts the rules look at, now; records this moment's projection samples."""
    now = jobs.clock()
    mark = log.high_water_mark()
    head = max(log.head(), mark)
    runners: list[RunnerFacts] = []
    job_facts: list[JobFacts] = []
    for job in jobs.list_jobs(limit=MAX_JOBS):
        status = jobs.status(job.job_id) if job.active else None
        job_facts.append(
            JobFacts(
                job_id=str(job.job_id),
                projection=job.projection,
                kind=str(job.kind),
                state=str(job.state),
                created_at=job.created_at,
                active=job.active,
                events_applied=status.events_applied if status else 0,
                events_in_scope=status.events_in_scope if status else 0,
            )
        )
        for part in status.partitions if status else ():
            if part.status != PartitionStatus.RUNNING:
                continue
            runners.append(
                RunnerFacts(
                    kind="worker",
                    projection=job.projection,
                    partition=f"{part.partition_index}/{job.partition_count}",
                    position=part.position,
                    heartbeat_at=part.updated_at,
                    advanced_at=part.advanced_at or part.started_at or part.updated_at,
                    backlog=max(part.remaining(), (part.target_position or 0) - part.position),
                    alive=part.live(now),
                    job_id=str(job.job_id),
                )
            )
    retries: dict[str, int] = {}
    for beat in followers.beats():
        retries[beat.projection] = retries.get(beat.projection, 0) + beat.retries
        if beat.stopped_at is None:
            runners.append(
                RunnerFacts(
                    kind="follower",
                    projection=beat.projection,
                    partition=beat.partition,
                    position=beat.position,
                    heartbeat_at=beat.heartbeat_at,
                    advanced_at=beat.advanced_at,
                    # What it can read: up to the safe head (held-back events wait).
                    backlog=max(0, mark - beat.position),
                )
            )
    if isinstance(jobs, SQLJobStore):
        for row in recorded_rows(jobs.database, _JOB_RETRIES, {}):
            name = str(row["projection"])
            retries[name] = retries.get(name, 0) + int(row["retries"] or 0)
    samples: dict[str, Sample] = {}
    for name in sorted(store.projection_names()):
        if store.live_build(name) is None:
            continue
        report = projection_status(store, name, high_water_mark=mark, head=head)
        samples[name] = Sample(
            at=now,
            head=head,
            position=report.position,
            parked=report.parked_now + report.redriven + report.skipped,
            retries=retries.get(name, 0),
        )
    # A bounded table however often alerts are read: a sample per projection every
    # tenth of the shortest window at most, none older than the rules look back.
    keep = history_seconds(rules)
    series = alerts.add_samples(samples, every=sample_interval(rules), keep=keep + 60)
    return Snapshot(
        now=now,
        runners=tuple(runners),
        projections=tuple(ProjectionFacts(n, tuple(s)) for n, s in sorted(series.items())),
        jobs=tuple(job_facts),
    )


class AlertMonitor:
    """Evaluates ``rules`` over the stores and keeps the alerts table current."""

    def __init__(
        self,
        *,
        rules: Sequence[Rule],
        jobs: JobStore,
        followers: FollowerHeartbeats,
        store: ProjectionStore,
        log: EventSource,
        alerts: AlertStore,
    ) -> None:
        self.rules = tuple(rules)
        self.jobs = jobs
        self.followers = followers
        self.store = store
        self.log = log
        self.alerts = alerts

    def snapshot(self) -> Snapshot:
        return read_snapshot(
            jobs=self.jobs,
            followers=self.followers,
            store=self.store,
            log=self.log,
            alerts=self.alerts,
            rules=self.rules,
        )

    def evaluate(
        self, *, evaluated_by: str, include_cleared: bool = False, limit: int = 100
    ) -> Evaluation:
        """Read the facts, run the rules, raise and clear; the alerts as they are now."""
        snapshot = self.snapshot()
        findings = evaluate(self.rules, snapshot)
        changes = self.alerts.reconcile(findings, evaluated_by=evaluated_by)
        return Evaluation(
            evaluated_at=snapshot.now,
            snapshot=snapshot,
            findings=tuple(findings),
            changes=changes,
            alerts=tuple(self.alerts.alerts(include_cleared=include_cleared, limit=limit)),
        )

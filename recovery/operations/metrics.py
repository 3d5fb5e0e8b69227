"""Prometheus metrics computed from the database on each scrape: ``metrics``.

Nothing is kept in process memory between scrapes: a custom collector reads the
same read models ``projections`` and ``jobs`` show (the log's head and safe head,
each projection's live-build status, the jobs table), so any process that can
open the store reports the same figures, and a restart loses nothing.

Job metrics are labelled by job kind and projection, never by job id: a job id
per series would grow the number of series without bound (one per job ever run).

The ``metrics`` operation is a read (view permission on ``projection:*``), run
through the dispatch layer like every other read, so a scrape is checked and
audited.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from safereplay.projections.status import projection_status
from safereplay.recovery.jobs.model import JobState
from safereplay.recovery.operations.alert_metrics import AlertCollector
from safereplay.recovery.operations.dispatch import OperationContext, Operations
from safereplay.recovery.security.access import Permission

if TYPE_CHECKING:
    from safereplay.recovery.operations.context import RecoveryContext

__all__ = [
    "MetricSample",
    "RecoveryCollector",
    "register_metrics_operations",
    "render_metrics",
    "samples_of",
]

#: The most jobs one scrape counts by state (the jobs table's newest ones).
MAX_JOBS_COUNTED = 10_000


@dataclass(frozen=True)
class MetricSample:
    """One sample of the exposition: what ``safereplay metrics --json`` lists."""

    name: str
    labels: Mapping[str, str]
    value: float


def _gauge(name: str, documentation: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=labels)


class RecoveryCollector(Collector):
    """Reads the store on each ``collect()``: projections' positions, lag and parked
    events, the log's head and safe head, and the active jobs' progress."""

    def __init__(self, context: RecoveryContext) -> None:
        self._context = context

    def collect(self) -> Iterator[Metric]:
        yield from self._log_and_projections()
        yield from self._jobs()

    def _log_and_projections(self) -> Iterator[Metric]:
        context = self._context
        # Nothing is decrypted: the head and the safe head only.
        mark = context.log.high_water_mark()
        head = max(context.log.head(), mark)
        head_family = _gauge("safereplay_log_head_position", "The event log's last position.", [])
        head_family.add_metric([], head)
        mark_family = _gauge(
            "safereplay_high_water_mark_position",
            "The log's safe head: every position up to it is settled and readable.",
            [],
        )
        mark_family.add_metric([], mark)
        labels = ["projection", "build"]
        position = _gauge(
            "safereplay_projection_position", "The live build's position in the log.", labels
        )
        lag = _gauge(
            "safereplay_projection_lag_positions",
            "Positions between the log's head and the live build's position.",
            labels,
        )
        backlog = _gauge(
            "safereplay_projection_backlog_events",
            "Positions the live build has still to read, up to the log's head.",
            labels,
        )
        parked = _gauge(
            "safereplay_projection_parked_events",
            "Events parked now (not re-driven or skipped) on the live build.",
            labels,
        )
        # Counters in the Prometheus sense: they only grow for a build (the family
        # name gets its `_total` suffix from the client library).
        redriven = CounterMetricFamily(
            "safereplay_projection_redriven_events",
            "Parked events since re-driven (resolved) on the live build.",
            labels=labels,
        )
        skipped = CounterMetricFamily(
            "safereplay_projection_skipped_events",
            "Parked events an operator skipped (never applied) on the live build.",
            labels=labels,
        )
        store = context.projection_store
        for name in sorted(store.projection_names()):
            if store.live_build(name) is None:
                continue  # never built: no position to report yet
            report = projection_status(store, name, high_water_mark=mark, head=head)
            values = [name, str(report.build)]
            position.add_metric(values, report.position)
            lag.add_metric(values, max(0, head - report.position))
            backlog.add_metric(values, report.backlog)
            parked.add_metric(values, report.parked_now)
            redriven.add_metric(values, report.redriven)
            skipped.add_metric(values, report.skipped)
        yield from (head_family, mark_family, position, lag, backlog, parked, redriven, skipped)

    def _jobs(self) -> Iterator[Metric]:
        jobs = self._context.jobs
        now = jobs.clock()
        labels = ["job", "projection"]
        applied = _gauge(
            "safereplay_job_events_applied", "Events the active jobs have applied.", labels
        )
        in_scope = _gauge(
            "safereplay_job_events_in_scope",
            "Events the active jobs read in all, counted when they were planned.",
            labels,
        )
        eta = _gauge(
            "safereplay_job_eta_seconds",
            "Seconds left at the active jobs' rate now (the longest of them; absent: no rate).",
            labels,
        )
        # Several active jobs of one kind on one projection share a series: summed,
        # and the longest ETA (when the series ends is when the last of them does).
        totals: dict[tuple[str, str], list[int]] = {}
        etas: dict[tuple[str, str], float | None] = {}
        for job in jobs.list_jobs(active_only=True, limit=MAX_JOBS_COUNTED):
            status = jobs.status(job.job_id)
            key = (str(job.kind), job.projection)
            sums = totals.setdefault(key, [0, 0])
            sums[0] += status.events_applied
            sums[1] += status.events_in_scope
            seconds = status.eta_seconds(now)
            if key not in etas:
                etas[key] = seconds
            else:
                known = etas[key]
                etas[key] = None if seconds is None or known is None else max(known, seconds)
        for key, (done, scope) in sorted(totals.items()):
            applied.add_metric(list(key), done)
            in_scope.add_metric(list(key), scope)
            seconds = etas[key]
            if seconds is not None:
                eta.add_metric(list(key), seconds)
        by_state = _gauge("safereplay_jobs", "Jobs in the jobs table, by state.", ["state"])
        counts = dict.fromkeys(JobState, 0)
        for job in jobs.list_jobs(limit=MAX_JOBS_COUNTED):
            counts[job.state] += 1
        for state, count in counts.items():
            by_state.add_metric([str(state)], count)
        yield from (applied, in_scope, eta, by_state)


def render_metrics(context: RecoveryContext) -> bytes:
    """The Prometheus text exposition of the store now (a fresh registry per call,
    so nothing of a previous scrape is reused)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RecoveryCollector(context))
    registry.register(AlertCollector(context))
    return generate_latest(registry)


def samples_of(text: str) -> list[MetricSample]:
    """Every sample of an exposition text, in its order."""
    return [
        MetricSample(name=sample.name, labels=dict(sample.labels), value=sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def register_metrics_operations(operations: Operations, context: RecoveryContext) -> None:
    def metrics(ctx: OperationContext, p: Mapping[str, Any]) -> str:
        return render_metrics(context).decode()

    operations.register(
        "metrics",
        permission=Permission.VIEW,
        handler=metrics,
        scope="projection:*",
        summary="Prometheus metrics: projections' positions and lag, active jobs' progress",
        monitoring=True,
    )

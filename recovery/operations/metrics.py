"""Prometheus metrics computed from the database on each scrape: ``metrics``.

Nothing is kept in process memory between scrapes: a custom collector reads the
same read models ``projections`` and ``jobs`` show (the log's head and safe head,
each projection's live-build status, the jobs table), so any process that can
open the store reports the same figures, and a restart loses nothing.

Job metrics are labelled by job kind and projection (and partition index), never
by job id: a job id per series would grow the number of series without bound (one
per job ever run). The label is ``kind``, not ``job``: Prometheus sets ``job`` on
every scraped series (the scrape job's name).

``safereplay worker`` and ``safereplay follow`` can serve metrics of their own
process too (``--metrics-port``): see :mod:`.metrics_process`.

The ``metrics`` operation is a read (view permission on ``projection:*``), run
through the dispatch layer like every other read, so a scrape is checked and
audited. The reactions' series (:mod:`.metrics_reactions`) are in it only for a
principal that may also view ``reaction:*``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from safereplay.recovery.operations.alert_metrics import AlertCollector
from safereplay.recovery.operations.dispatch import OperationContext, Operations
from safereplay.recovery.operations.metrics_jobs import job_families
from safereplay.recovery.operations.metrics_projections import projection_families
from safereplay.recovery.operations.metrics_reactions import reaction_families
from safereplay.recovery.operations.slo_metrics import SLOCollector
from safereplay.recovery.security.access import Permission
from safereplay.recovery.security.approvals import ChangeRequestStore

if TYPE_CHECKING:
    from safereplay.recovery.operations.context import RecoveryContext

__all__ = [
    "MetricSample",
    "RecoveryCollector",
    "register_metrics_operations",
    "render_metrics",
    "samples_of",
]


@dataclass(frozen=True)
class MetricSample:
    """One sample of the exposition: what ``safereplay metrics --json`` lists."""

    name: str
    labels: Mapping[str, str]
    value: float


class RecoveryCollector(Collector):
    """Reads the store on each ``collect()``: the log's head and safe head, the
    projections' positions, lag (positions, matching events, seconds) and parked
    events, the active jobs' progress, and the reactions' deliveries per destination
    (:mod:`.metrics_projections`, :mod:`.metrics_jobs`, :mod:`.metrics_reactions`)."""

    def __init__(self, context: RecoveryContext, *, reactions: bool = True) -> None:
        self._context = context
        self._reactions = reactions

    def collect(self) -> Iterator[Metric]:
        yield from projection_families(self._context)
        yield from job_families(self._context)
        pending = GaugeMetricFamily(
            "safereplay_change_requests_pending",
            "Change requests waiting for a second person's approval (four-eyes).",
        )
        pending.add_metric([], ChangeRequestStore(self._context.database).pending())
        yield pending
        if self._reactions:
            yield from reaction_families(self._context)


def render_metrics(context: RecoveryContext, *, reactions: bool = True) -> bytes:
    """The Prometheus text exposition of the store now (a fresh registry per call,
    so nothing of a previous scrape is reused); ``reactions`` (default true): with
    the reactions' series."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RecoveryCollector(context, reactions=reactions))
    registry.register(AlertCollector(context))
    registry.register(SLOCollector(context, reactions=reactions))
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
        # The reactions' series are for principals who may view every reaction, as
        # `safereplay status` shows them: a scrape token on projection:* gets none.
        reactions = context.access.allows(ctx.principal.name, Permission.VIEW, "reaction:*")
        return render_metrics(context, reactions=reactions).decode()

    operations.register(
        "metrics",
        permission=Permission.VIEW,
        handler=metrics,
        scope="projection:*",
        summary="Prometheus metrics: projections' positions and lag, active jobs' progress, "
        "reactions' deliveries",
        monitoring=True,
    )

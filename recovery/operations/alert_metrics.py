"""Prometheus metrics of stall and anomaly detection, computed on each scrape.

A scrape evaluates the rules (as ``safereplay alerts`` does: alerts raised and
cleared are audited, with ``evaluated_by`` "metrics scrape"), then exposes the
open alerts and each running worker's and follower's heartbeat. Labels are the
projection, the rule, the runner's kind and partition (``i/n``): a handful of
series per projection, never a job id (one series per job ever run would grow
without bound).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from safereplay.recovery.alerts.rules import Stalled
from safereplay.recovery.operations.alerts import alert_monitor

if TYPE_CHECKING:
    from safereplay.recovery.operations.context import RecoveryContext

__all__ = ["AlertCollector", "EVALUATED_BY"]

#: ``evaluated_by`` of the alerts a scrape raises or clears.
EVALUATED_BY = "metrics scrape"


class AlertCollector(Collector):
    """Evaluates the alert rules on each ``collect()``; open alerts and runners' beats."""

    def __init__(self, context: RecoveryContext) -> None:
        self._context = context

    def collect(self) -> Iterator[Metric]:
        monitor = alert_monitor(self._context)
        evaluation = monitor.evaluate(evaluated_by=EVALUATED_BY)
        snapshot = evaluation.snapshot
        open_alerts = GaugeMetricFamily(
            "safereplay_alerts_open",
            "Open alerts, by rule and projection (see docs/alerts.md).",
            labels=["rule", "projection"],
        )
        counts: dict[tuple[str, str], int] = {}
        for alert in evaluation.alerts:
            key = (alert.rule, alert.projection or "")
            counts[key] = counts.get(key, 0) + 1
        for key, count in sorted(counts.items()):
            open_alerts.add_metric(list(key), count)
        labels = ["projection", "kind", "partition"]
        age = GaugeMetricFamily(
            "safereplay_runner_heartbeat_age_seconds",
            "Seconds since each running worker partition or live follower last heartbeat.",
            labels=labels,
        )
        since = GaugeMetricFamily(
            "safereplay_runner_seconds_since_progress",
            "Seconds since each running worker partition or live follower last advanced.",
            labels=labels,
        )
        stalled_at = GaugeMetricFamily(
            "safereplay_runner_stalled_position",
            "The position a stalled runner stands still at (present only while stalled).",
            labels=labels,
        )
        stalled = {f.subject for f in evaluation.findings if f.rule == Stalled.name}
        seen: set[tuple[str, str, str]] = set()
        for runner in snapshot.runners:
            key3 = (runner.projection, runner.kind, runner.partition)
            if key3 in seen:
                continue  # one active job per projection: only a stale row could repeat
            seen.add(key3)
            age.add_metric(list(key3), max(0.0, snapshot.now - runner.heartbeat_at))
            since.add_metric(list(key3), max(0.0, snapshot.now - runner.advanced_at))
            if runner.subject in stalled:
                stalled_at.add_metric(list(key3), runner.position)
        yield from (open_alerts, age, since, stalled_at)

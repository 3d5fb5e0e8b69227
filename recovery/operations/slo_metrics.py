"""Prometheus metrics of the replay SLOs, read on each scrape (see docs/slo.md).

A scrape samples the targets that are due (as ``safereplay slo`` does: a breach
opened or closed is audited, ``sampled_by`` "metrics scrape"), then exposes per
target its last value and its target, whether it is in breach, the share of good
samples and the error budget left over the window, the burn rates (over the
window and the last hour) and the breaches opened so far. Labels: ``kind``
(projection or reaction), ``subject`` (its name) and ``measure`` (lag_seconds,
lag_events, undelivered_age_seconds, rebuild_seconds): a handful of series per
projection, never a breach id. The reactions' targets only for a scrape allowed to view every
reaction, as for the reactions' own series.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from safereplay.recovery.operations.slos import sample_slos, slo_status, slo_store
from safereplay.recovery.settings import SLOSettings

if TYPE_CHECKING:
    from safereplay.recovery.operations.context import RecoveryContext

__all__ = ["SAMPLED_BY", "SLO_METRIC_NAMES", "SLOCollector"]

#: ``sampled_by`` of the samples a scrape takes.
SAMPLED_BY = "metrics scrape"
LABELS = ["kind", "subject", "measure"]
#: Every family this collector exposes (as named in the exposition; counters end in _total).
SLO_METRIC_NAMES = (
    "safereplay_slo_value",
    "safereplay_slo_target",
    "safereplay_slo_in_breach",
    "safereplay_slo_good_ratio",
    "safereplay_slo_objective",
    "safereplay_slo_error_budget_remaining",
    "safereplay_slo_burn_rate",
    "safereplay_slo_burn_rate_1h",
    "safereplay_slo_breaches_total",
)


class SLOCollector(Collector):
    """Samples the SLOs if due on each ``collect()``; each target's figures."""

    def __init__(self, context: RecoveryContext, *, reactions: bool = True) -> None:
        self._context = context
        self._reactions = reactions

    def collect(self) -> Iterator[Metric]:
        settings = SLOSettings.from_env()
        if not settings.targets.projections and not settings.targets.reactions:
            return
        sample_slos(self._context, sampled_by=SAMPLED_BY, settings=settings)
        status = slo_status(self._context, settings=settings, reactions=self._reactions)
        opened = slo_store(self._context).breach_counts()

        def gauge(name: str, text: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, text, labels=LABELS)

        value = gauge("safereplay_slo_value", "The target's figure at its last sample.")
        target = gauge("safereplay_slo_target", "The target: the figure's most that is good.")
        breach = gauge("safereplay_slo_in_breach", "1 while the target is breached, else 0.")
        good = gauge("safereplay_slo_good_ratio", "Share of the window's samples that were good.")
        objective = gauge("safereplay_slo_objective", "Share of samples that must be good.")
        budget = gauge(
            "safereplay_slo_error_budget_remaining",
            "Share of the window's error budget left (1: untouched, 0 or less: spent).",
        )
        burn = gauge(
            "safereplay_slo_burn_rate",
            "Bad share of the window's samples over the budget (1: spent exactly by its end).",
        )
        burn_1h = gauge(
            "safereplay_slo_burn_rate_1h", "Bad share of the last hour's samples over the budget."
        )
        breaches = CounterMetricFamily(
            "safereplay_slo_breaches", "Breaches of the target opened so far.", labels=LABELS
        )
        for slo in status["slos"]:
            labels = [slo["kind"], slo["subject"], slo["metric"]]
            if slo["value"] is not None:
                value.add_metric(labels, float(slo["value"]))
            target.add_metric(labels, float(slo["target"]))
            breach.add_metric(labels, 1.0 if slo["in_breach"] else 0.0)
            figures = slo["budget"]
            good.add_metric(labels, float(figures["good_share"]))
            objective.add_metric(labels, float(slo["objective"]))
            budget.add_metric(labels, float(figures["budget_remaining"]))
            burn.add_metric(labels, float(figures["burn_rate"]))
            burn_1h.add_metric(labels, float(figures["burn_rate_1h"]))
            breaches.add_metric(labels, float(opened.get(slo["slo"], 0)))
        yield from (value, target, breach, good, objective, budget, burn, burn_1h, breaches)

"""The reactions' metrics, computed from the delivery ledger on each scrape.

The figures are those of ``reactions.status`` (``safereplay status``, ``GET
/api/reactions``), so the dashboard, the command line and Prometheus never
disagree: per reaction its position and how many events it is behind the log's
head; per reaction and destination its deliveries by state, the age of the
oldest one still owed, and its circuit breaker.

Series are labelled by reaction, destination and state only: never an event, an
aggregate or an idempotency key (one series each would grow without bound). A
destination that is owed nothing reports an oldest undelivered age of 0, so an
alert on the age clears when the backlog is delivered. The breaker is an enum in
the Prometheus way, like the jobs' (:mod:`.metrics_jobs`): one series per state,
the current one 1; a destination whose breaker never changed is ``closed``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client.core import GaugeMetricFamily, Metric

from safereplay.reactions.ledger import DELIVERY_STATES
from safereplay.recovery.operations.metrics_jobs import BREAKER_STATES
from safereplay.recovery.operations.reactions import reaction_status

if TYPE_CHECKING:
    from safereplay.recovery.operations.context import RecoveryContext

__all__ = ["reaction_families", "status_families"]

REACTION_LABELS = ["reaction"]
DESTINATION_LABELS = ["reaction", "destination"]


def reaction_families(context: RecoveryContext) -> Iterator[Metric]:
    """Every registered reaction's families, from the ledger now."""
    # As reactions.status reads them: the log's head only, nothing decrypted.
    head = max(context.log.head(), context.log.high_water_mark())
    now = time.time()
    statuses = [
        reaction_status(context, context.reactions[name], head=head, now=now)
        for name in context.reactions
    ]
    yield from status_families(statuses)


def status_families(statuses: Iterable[Mapping[str, Any]]) -> Iterator[Metric]:
    """The families of ``statuses``: the ``reactions`` list of ``reactions.status``."""
    position = GaugeMetricFamily(
        "safereplay_reaction_position",
        "The reaction's position: every event up to it is recorded in the ledger.",
        labels=REACTION_LABELS,
    )
    behind = GaugeMetricFamily(
        "safereplay_reaction_behind_events",
        "Events of the reaction's types between its position and the log's head (not "
        "yet recorded).",
        labels=REACTION_LABELS,
    )
    deliveries = GaugeMetricFamily(
        "safereplay_reaction_deliveries",
        "The reaction's deliveries to the destination, by state (pending, failed, "
        "parked, delivered).",
        labels=[*DESTINATION_LABELS, "state"],
    )
    oldest = GaugeMetricFamily(
        "safereplay_reaction_oldest_owed_age_seconds",
        "Seconds since the oldest delivery still owed (pending or failed) was recorded "
        "(0: nothing owed).",
        labels=DESTINATION_LABELS,
    )
    breaker = GaugeMetricFamily(
        "safereplay_reaction_breaker_state",
        "The destination's circuit breaker: 1 for the state it is in, 0 for the others.",
        labels=[*DESTINATION_LABELS, "state"],
    )
    for status in sorted(statuses, key=lambda s: str(s["name"])):
        name = str(status["name"])
        position.add_metric([name], float(status["position"]))
        behind.add_metric([name], float(status["behind"]))
        for destination in status["destinations"]:
            labels = [name, str(destination["destination"])]
            for delivery_state in DELIVERY_STATES:
                count = float(destination[delivery_state])
                deliveries.add_metric([*labels, delivery_state], count)
            age = destination.get("oldest_owed_age_seconds")
            oldest.add_metric(labels, float(age) if age is not None else 0.0)
            current = destination.get("breaker_state") or BREAKER_STATES[0]
            for state in BREAKER_STATES:
                breaker.add_metric([*labels, state], 1.0 if state == current else 0.0)
    yield from (position, behind, deliveries, oldest, breaker)

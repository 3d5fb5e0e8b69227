"""The log's and the projections' metrics, computed from the store on each scrape.

Lag is reported in three units, because each alone misleads:

- ``lag_positions``: positions between the live build's position and the log's
  head. Cheap, but it over-reports: holes (positions no event will ever fill),
  other projections' event types and other partitions' aggregates all count.
- ``backlog_events``: the events the build has still to apply, counted in the
  database with the projection's topics filter, per partition of the build's
  partitioning, up to the head (held-back events included: they are pending too).
- ``lag_seconds``: how stale the build's state is, measured against the log
  itself: the newest event's time less the time of the oldest event the build
  has still to apply (0 when it has none). Its rows reflect every event before
  that one, so they are that many seconds behind the log's newest state. Event
  times are the envelopes' ``occurred_at`` (decoding two events per build: a
  scrape reads no payload beyond them, and exposes none).

Parked events are counted by error class (never by message, aggregate or
payload): the :data:`MAX_ERROR_TYPES` most frequent classes of a build, the rest
summed as ``other``, so the number of series stays bounded.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from safereplay.projections import EventSource, Partition
from safereplay.projections.status import ProjectionStatus, projection_status

if TYPE_CHECKING:
    from safereplay.recovery.operations.context import RecoveryContext

__all__ = ["MAX_ERROR_TYPES", "OTHER_ERRORS", "PendingLag", "pending_lag", "projection_families"]

logger = logging.getLogger(__name__)

#: Error classes counted apart per build; the rest are summed as :data:`OTHER_ERRORS`.
MAX_ERROR_TYPES = 5
OTHER_ERRORS = "other"

BUILD_LABELS = ["projection", "build"]


@dataclass(frozen=True)
class PendingLag:
    """A build's pending work: matching events up to the head and their staleness."""

    events: int
    seconds: float | None


def _occurred_at(source: EventSource, position: int, *, topics: Sequence[str] = ()) -> datetime:
    (notification,) = source.read(after=position - 1, upto=position, limit=1, topics=topics)
    return source.decode(notification).occurred_at


def _covering(status: ProjectionStatus) -> list[tuple[Partition, int]]:
    """The partitions (and positions) of the build's complete partitioning that has
    reached furthest: the one its position is the minimum of."""
    groups: dict[int, list[tuple[Partition, int]]] = {}
    for p in status.partitions:
        groups.setdefault(p.count, []).append((Partition(p.index, p.count), p.position))
    complete = [g for count, g in groups.items() if {q.index for q, _ in g} == set(range(count))]
    if not complete:
        return []
    return max(complete, key=lambda group: min(position for _, position in group))


def pending_lag(
    source: EventSource,
    status: ProjectionStatus,
    topics: Sequence[str],
    *,
    head: int,
    timed: bool = True,
) -> PendingLag:
    """Matching events the build has still to apply up to ``head``, and (``timed``)
    the seconds between the head's event and the oldest of them (None: no key ring)."""
    covering = _covering(status) or [(Partition(0, 1), status.position)]
    firsts: list[int] = []
    events = 0
    for partition, position in covering:
        if position >= head:
            continue
        count = source.count(after=position, upto=head, topics=topics, partition=partition)
        if count:
            events += count
            (first,) = source.read(
                after=position, upto=head, limit=1, topics=topics, partition=partition
            )
            firsts.append(first.id)
    if not firsts:
        return PendingLag(events, 0.0)
    if not timed or source.mapper is None:
        return PendingLag(events, None)
    newest = _occurred_at(source, head)
    oldest = _occurred_at(source, min(firsts), topics=topics)
    return PendingLag(events, max(0.0, (newest - oldest).total_seconds()))


def _error_types(types: Counter[str]) -> list[tuple[str, int]]:
    """The most frequent classes, then ``other`` for the rest (if any)."""
    top = types.most_common(MAX_ERROR_TYPES)
    rest = sum(types.values()) - sum(n for _, n in top)
    return sorted(top) + ([(OTHER_ERRORS, rest)] if rest else [])


def projection_families(context: RecoveryContext) -> Iterator[Metric]:
    # Nothing is decrypted for the head and the safe head.
    mark = context.log.high_water_mark()
    head = max(context.log.head(), mark)
    head_family = GaugeMetricFamily(
        "safereplay_log_head_position", "The event log's last position."
    )
    head_family.add_metric([], head)
    mark_family = GaugeMetricFamily(
        "safereplay_high_water_mark_position",
        "The log's safe head: every position up to it is settled and readable.",
    )
    mark_family.add_metric([], mark)

    def gauge(name: str, documentation: str) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, documentation, labels=BUILD_LABELS)

    position = gauge("safereplay_projection_position", "The live build's position in the log.")
    lag = gauge(
        "safereplay_projection_lag_positions",
        "Positions between the log's head and the live build's position (holes and "
        "other event types included).",
    )
    backlog = gauge(
        "safereplay_projection_backlog_events",
        "Events of the projection's types the live build has still to apply, up to the head.",
    )
    lag_seconds = gauge(
        "safereplay_projection_lag_seconds",
        "Seconds between the newest event in the log and the oldest event the live "
        "build has still to apply (0: nothing to apply).",
    )
    parked = gauge(
        "safereplay_projection_parked_events",
        "Events parked now (not re-driven or skipped) on the live build.",
    )
    parked_errors = GaugeMetricFamily(
        "safereplay_projection_parked_errors",
        f"Events parked now on the live build, by error class (the {MAX_ERROR_TYPES} most "
        f"frequent; the rest as {OTHER_ERRORS!r}).",
        labels=[*BUILD_LABELS, "error_type"],
    )
    # Counters in the Prometheus sense: they only grow for a build (the family
    # name gets its `_total` suffix from the client library).
    redriven = CounterMetricFamily(
        "safereplay_projection_redriven_events",
        "Parked events since re-driven (resolved) on the live build.",
        labels=BUILD_LABELS,
    )
    skipped = CounterMetricFamily(
        "safereplay_projection_skipped_events",
        "Parked events an operator skipped (never applied) on the live build.",
        labels=BUILD_LABELS,
    )
    store = context.projection_store
    known = set(context.registry)
    for name in sorted(store.projection_names()):
        if store.live_build(name) is None:
            continue  # never built: no position to report yet
        report = projection_status(store, name, high_water_mark=mark, head=head)
        values = [name, str(report.build)]
        position.add_metric(values, report.position)
        lag.add_metric(values, max(0, head - report.position))
        if name in known:  # the topics filter is the registered class's
            pending = _pending(context, report, head)
            backlog.add_metric(values, pending.events)
            if pending.seconds is not None:
                lag_seconds.add_metric(values, pending.seconds)
        parked.add_metric(values, report.parked_now)
        types = Counter(p.error_type for p in store.parked(name, build=report.build))
        for error_type, count in _error_types(types):
            parked_errors.add_metric([*values, error_type], count)
        redriven.add_metric(values, report.redriven)
        skipped.add_metric(values, report.skipped)
    yield from (head_family, mark_family, position, lag, backlog, lag_seconds, parked)
    yield from (parked_errors, redriven, skipped)


def _pending(context: RecoveryContext, report: ProjectionStatus, head: int) -> PendingLag:
    topics = context.registry[report.name].topics
    try:
        return pending_lag(context.source, report, topics, head=head)
    except Exception as exc:
        # Decoding needs the application's key ring: without it (or with an event it
        # cannot decode) the count still holds, the seconds are left out.
        logger.warning("metrics: no lag in seconds for %r: %s", report.name, type(exc).__name__)
        return pending_lag(context.log, report, topics, head=head, timed=False)

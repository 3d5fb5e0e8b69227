"""Metrics of one worker or follower process: ``--metrics-port``.

``safereplay worker`` and ``safereplay follow`` count what they do as they do it
(events applied and parked, retries, handler errors, batches, the breaker's state,
a heartbeat) and, with ``--metrics-port PORT``, serve those counters with
prometheus_client's own HTTP server at ``http://127.0.0.1:PORT/metrics``, beside
the client's process metrics (CPU, memory, open files, garbage collection).

Unlike ``safereplay metrics`` (computed from the database, the same from any
process), these live in the process: they start at 0 and are lost when it exits,
as Prometheus counters are meant to (``rate()`` handles the restarts). The
server binds the loopback interface only: a scraper on the same host (or a
tunnel) reads it; nothing is served to the network, and no secret is in it.

The counters are updated per batch and per failure (never per event), through
the observer seams of the runner and the worker
(:class:`~safereplay.projections.RunnerObserver`,
:class:`~safereplay.recovery.jobs.observer.WorkObserver`). Error classes are
label values: the first :data:`MAX_ERROR_TYPES` seen are kept, later ones are
counted as ``other``, so a process cannot grow its series without bound.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    disable_created_metrics,
    start_http_server,
)

from safereplay.projections import ParkedEvent, RunnerObserver
from safereplay.recovery.jobs.observer import NO_WORK_OBSERVER, WorkObserver
from safereplay.recovery.operations.metrics_jobs import BREAKER_STATES

__all__ = ["LOOPBACK", "MAX_ERROR_TYPES", "ProcessMetrics", "serving_metrics"]

#: The only address the metrics server binds.
LOOPBACK = "127.0.0.1"

#: Error classes a process labels apart; later ones are counted as ``other``.
MAX_ERROR_TYPES = 20


class ProcessMetrics:
    """The counters of one process (``process``: ``worker`` or ``follow``), in a
    registry of their own with the client's process, platform and GC collectors."""

    def __init__(self, process: str) -> None:
        self.process = process
        # No `_created` gauge beside each counter: the text format would expose one
        # series more per counter for a start time Prometheus does not use. (The
        # switch is the client's, process-wide: this process's counters are these.)
        disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped in the client
        self.registry = registry = CollectorRegistry()
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            registry.register(collector)
        runs = ["projection", "kind"]
        self.applied = Counter(
            "safereplay_events_applied", "Events this process applied.", runs, registry=registry
        )
        self.parked = Counter(
            "safereplay_events_parked",
            "Events this process parked, by error class.",
            [*runs, "error_type"],
            registry=registry,
        )
        self.retries = Counter(
            "safereplay_event_retries",
            "Failing events the failure policy retried.",
            runs,
            registry=registry,
        )
        self.batches = Counter(
            "safereplay_batches_committed",
            "Batches this process committed.",
            runs,
            registry=registry,
        )
        self.errors = Counter(
            "safereplay_handler_errors",
            "Handler (or decoding) failures, by error class, whatever the policy decided.",
            ["projection", "error_type"],
            registry=registry,
        )
        self.breaker = Gauge(
            "safereplay_breaker_state",
            "The circuit breaker of the job this process runs on the projection: 1 for its state.",
            ["projection", "state"],
            registry=registry,
        )
        self.heartbeat_at = Gauge(
            "safereplay_worker_heartbeat_timestamp_seconds",
            "When this process last polled for work or ran a batch (Unix time).",
            ["kind"],
            registry=registry,
        )
        self._types: set[str] = set()
        self._lock = threading.Lock()

    def error_type(self, name: str) -> str:
        """``name``, or ``other`` once :data:`MAX_ERROR_TYPES` classes were seen."""
        with self._lock:
            if name in self._types:
                return name
            if len(self._types) < MAX_ERROR_TYPES:
                self._types.add(name)
                return name
        return "other"

    # -- WorkObserver -----------------------------------------------------------------------

    def runner(self, kind: str) -> RunnerObserver:
        return _RunnerMetrics(self, kind)

    def heartbeat(self) -> None:
        self.heartbeat_at.labels(self.process).set(time.time())

    def breaker_changed(self, projection: str, state: str) -> None:
        for known in BREAKER_STATES:
            self.breaker.labels(projection, known).set(1 if known == state else 0)


class _RunnerMetrics:
    """The runner observer of one job kind (``live`` for a follower)."""

    def __init__(self, metrics: ProcessMetrics, kind: str) -> None:
        self.metrics = metrics
        self.kind = kind

    def polled(self, projection: str) -> None:
        self.metrics.heartbeat()

    def committed(self, projection: str, applied: int, parked: Sequence[ParkedEvent]) -> None:
        metrics = self.metrics
        metrics.batches.labels(projection, self.kind).inc()
        if applied:
            metrics.applied.labels(projection, self.kind).inc(applied)
        for record in parked:
            error_type = metrics.error_type(record.error_type)
            metrics.parked.labels(projection, self.kind, error_type).inc()

    def failed(self, projection: str, error: BaseException, *, retrying: bool) -> None:
        metrics = self.metrics
        metrics.errors.labels(projection, metrics.error_type(type(error).__name__)).inc()
        if retrying:
            metrics.retries.labels(projection, self.kind).inc()


@contextmanager
def serving_metrics(process: str, port: int | None) -> Iterator[WorkObserver]:
    """With a ``port``, serve a new :class:`ProcessMetrics` on the loopback interface
    while the block runs and yield it; without one, yield the observer that does
    nothing (and serve nothing)."""
    if port is None:
        yield NO_WORK_OBSERVER
        return
    metrics = ProcessMetrics(process)
    metrics.heartbeat()
    server, thread = start_http_server(port, addr=LOOPBACK, registry=metrics.registry)
    try:
        yield metrics
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

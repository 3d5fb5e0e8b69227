"""Replay SLOs through the dispatch layer: ``slo.status``, ``slo.history``; the sampler.

:func:`sample_slos` measures every target that is due (see :mod:`safereplay.
recovery.alerts.slo`) and records it (:mod:`safereplay.recovery.alerts.slo_store`):
``safereplay serve`` runs it in a background loop every ``SAFEREPLAY_SLO_SAMPLE_SECONDS``
(:class:`SLOSampler`), ``safereplay slo watch`` runs the same loop in the
foreground, and ``slo.status`` samples once more before it reads (a target
sampled within the interval is left alone, so readers add nothing).

Figures: a projection's ``lag_events`` is the positions between the log's head and
its live build's position (the alert monitor's sample); its ``lag_seconds``, how
long ago a sample first saw the head above that position (so its resolution is
the sampling interval); ``rebuild_seconds``, how long its active rebuild has run
(0 with none). A reaction's ``lag_events`` is the events of its types it has not
recorded, ``lag_seconds`` as for a projection, ``undelivered_age_seconds`` the
age of the oldest delivery still owed to any destination (0: none).

Both operations are routine reads (view on ``projection:*``, success not audited);
a breach opened or closed by a sample is audited on its own (actor ``system``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from safereplay.recovery.alerts.slo import Budget, Measurement, Target, targets_for
from safereplay.recovery.alerts.slo_store import Breach, Recorded, SLOStore
from safereplay.recovery.jobs.model import JobKind
from safereplay.recovery.operations.alerts import alert_monitor
from safereplay.recovery.operations.dispatch import (
    OperationContext,
    Operations,
    limit_parameter,
)
from safereplay.recovery.operations.reactions import reaction_status
from safereplay.recovery.operations.shapes import iso_time
from safereplay.recovery.security.access import Permission
from safereplay.recovery.settings import SLOSettings

if TYPE_CHECKING:
    from safereplay.recovery.operations.context import RecoveryContext

__all__ = [
    "MAX_BREACHES",
    "Recorded",
    "SLOSampler",
    "breach_json",
    "register_slo_operations",
    "sample_slos",
    "slo_status",
    "slo_store",
]

#: The most breaches one ``slo.history`` lists (``--limit``); the default is 100.
MAX_BREACHES = 10_000


def slo_store(context: RecoveryContext) -> SLOStore:
    _ = context.jobs  # checks the recovery schema (the SLO tables are in it)
    return SLOStore(context.database, context.audit)


def configured_targets(context: RecoveryContext, settings: SLOSettings) -> list[Target]:
    """The targets of the projections with a live build and the registered reactions."""
    store = context.projection_store
    live = [n for n in store.projection_names() if store.live_build(n) is not None]
    return targets_for(settings, projections=live, reactions=list(context.reactions))


def _measure(
    context: RecoveryContext, store: SLOStore, targets: list[Target], settings: SLOSettings
) -> list[Measurement]:
    """Each target's figure now."""
    now = store.now()
    since = now - settings.window
    found: list[Measurement] = []
    projections = {t.subject for t in targets if t.kind == "projection"}
    reactions = {t.subject for t in targets if t.kind == "reaction"}
    figures: dict[tuple[str, str], tuple[int, int, dict[str, float]]] = {}
    if projections:
        snapshot = alert_monitor(context).snapshot()
        for facts in snapshot.projections:
            if facts.projection not in projections or not facts.samples:
                continue
            last = facts.samples[-1]
            running = [
                snapshot.now - job.created_at
                for job in snapshot.jobs
                if job.projection == facts.projection and job.active and job.kind == JobKind.REBUILD
            ]
            figures[("projection", facts.projection)] = (
                last.head,
                last.position,
                {"lag_events": float(last.lag), "rebuild_seconds": max(running, default=0.0)},
            )
    if reactions:
        head = max(context.log.head(), context.log.high_water_mark())
        for name in sorted(reactions):
            status = reaction_status(context, context.reactions[name], head=head, now=now)
            ages = [float(d["oldest_owed_age_seconds"] or 0.0) for d in status["destinations"]]
            figures[("reaction", name)] = (
                head,
                int(status["position"]),
                {
                    "lag_events": float(status["behind"]),
                    "undelivered_age_seconds": max(ages, default=0.0),
                },
            )
    for target in targets:
        figure = figures.get((target.kind, target.subject))
        if figure is None:
            continue
        head, position, values = figure
        if target.metric == "lag_seconds":
            first = store.behind_since(target.slo, position=position, since=since)
            # Not behind (no event it still has to apply or record): no lag in time.
            behind = values["lag_events"] > 0
            value = max(0.0, now - first) if behind and first is not None else 0.0
        else:
            value = values[target.metric]
        found.append(Measurement(target, value, head, position))
    return found


def sample_slos(
    context: RecoveryContext, *, sampled_by: str, settings: SLOSettings | None = None
) -> Recorded:
    """Measure and record every target that is due; breaches opened and closed."""
    settings = settings or SLOSettings.from_env()
    store = slo_store(context)
    targets = configured_targets(context, settings)
    due = store.due(targets, now=store.now(), every=settings.sample_seconds)
    if not due:
        return Recorded((), (), ())
    measured = _measure(context, store, due, settings)
    return store.record(
        measured, every=settings.sample_seconds, keep=settings.window, sampled_by=sampled_by
    )


def _when(seconds: float | None) -> str | None:
    return None if seconds is None else iso_time(seconds)


def breach_json(breach: Breach) -> dict[str, Any]:
    """One breach as the CLI's ``--json`` and the API show it (times in ISO 8601)."""
    shown = asdict(breach)
    shown["opened_at"] = _when(breach.opened_at)
    shown["closed_at"] = _when(breach.closed_at)
    shown["duration_seconds"] = (
        None if breach.closed_at is None else breach.closed_at - breach.opened_at
    )
    return shown


def _budget_json(budget: Budget) -> dict[str, Any]:
    return asdict(budget)


def slo_status(
    context: RecoveryContext,
    *,
    settings: SLOSettings,
    subject: str | None = None,
    reactions: bool = True,
) -> dict[str, Any]:
    """Every target (of ``subject``, ``kind:name``, if given; the reactions' only with
    ``reactions``): its last sample, whether it is in breach, and its error budget
    over the window."""
    store = slo_store(context)
    targets = configured_targets(context, settings)
    if not reactions:
        targets = [t for t in targets if t.kind != "reaction"]
    if subject is not None:
        targets = [t for t in targets if f"{t.kind}:{t.subject}" == subject]
    now = store.now()
    latest = store.latest()
    budgets = store.budgets(targets, now=now, window=settings.window)
    open_breaches = {b.slo: b for b in store.breaches(since=now) if b.closed_at is None}
    shown = []
    for target in targets:
        last = latest.get(target.slo)
        breach = open_breaches.get(target.slo)
        shown.append(
            {
                "slo": target.slo,
                "kind": target.kind,
                "subject": target.subject,
                "metric": target.metric,
                "target": target.target,
                "objective": target.objective,
                "value": None if last is None else last.value,
                "sampled_at": None if last is None else _when(last.at),
                "in_breach": breach is not None,
                "breach_since": None if breach is None else _when(breach.opened_at),
                "budget": _budget_json(budgets[target.slo]),
            }
        )
    return {
        "evaluated_at": _when(now),
        "window_seconds": settings.window,
        "sample_seconds": settings.sample_seconds,
        "slos": shown,
    }


def register_slo_operations(operations: Operations, context: RecoveryContext) -> None:
    def sees_reactions(ctx: OperationContext) -> bool:
        # The reactions' figures are for principals who may view every reaction, as
        # `safereplay status` and /metrics show them.
        return context.access.allows(ctx.principal.name, Permission.VIEW, "reaction:*")

    def status(ctx: OperationContext, p: Mapping[str, Any]) -> dict[str, Any]:
        settings = SLOSettings.from_env()
        sample_slos(context, sampled_by=ctx.principal.name, settings=settings)
        subject = p.get("subject") or None
        return slo_status(
            context, settings=settings, subject=subject, reactions=sees_reactions(ctx)
        )

    def history(ctx: OperationContext, p: Mapping[str, Any]) -> dict[str, Any]:
        settings = SLOSettings.from_env()
        limit = limit_parameter(p, most=MAX_BREACHES)
        store = slo_store(context)
        now = store.now()
        breaches = store.breaches(since=now - settings.window, limit=limit)
        subject = p.get("subject")
        if subject:
            breaches = [b for b in breaches if f"{b.kind}:{b.subject}" == subject]
        if not sees_reactions(ctx):
            breaches = [b for b in breaches if b.kind != "reaction"]
        return {
            "evaluated_at": _when(now),
            "window_seconds": settings.window,
            "breaches": [breach_json(b) for b in breaches],
        }

    operations.register(
        "slo.status",
        permission=Permission.VIEW,
        handler=status,
        scope="projection:*",
        summary="sample the replay SLOs if due, then show each target, breach and error budget",
        monitoring=True,
    )
    operations.register(
        "slo.history",
        permission=Permission.VIEW,
        handler=history,
        scope="projection:*",
        summary="the replay SLOs' breaches over the window (open ones first)",
        monitoring=True,
    )


class SLOSampler:
    """Samples the SLOs every ``SAFEREPLAY_SLO_SAMPLE_SECONDS`` in a background thread
    until :meth:`stop`; each turn opens a context with ``open_context`` (its own
    connections), tells ``on_sample`` (if given) what it recorded, and reports a
    failure to ``on_error`` instead of dying."""

    def __init__(
        self,
        open_context: Callable[[], RecoveryContext],
        *,
        sampled_by: str,
        on_error: Callable[[Exception], None],
        settings: SLOSettings | None = None,
        on_sample: Callable[[Recorded], None] | None = None,
    ) -> None:
        self._open_context = open_context
        self._on_sample = on_sample
        self._sampled_by = sampled_by
        self._on_error = on_error
        self._settings = settings or SLOSettings.from_env()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.turns = 0

    def turn(self) -> Recorded | None:
        """Sample once (if anything is configured)."""
        if not self._settings.targets.projections and not self._settings.targets.reactions:
            self.turns += 1
            return None
        context: RecoveryContext | None = None
        try:
            context = self._open_context()
            recorded = sample_slos(context, sampled_by=self._sampled_by, settings=self._settings)
            if self._on_sample is not None:
                self._on_sample(recorded)
            return recorded
        except Exception as exc:  # a failed turn must not stop the loop
            self._on_error(exc)
            return None
        finally:
            self.turns += 1
            if context is not None:
                context.close()

    def run(self, *, turns: int | None = None) -> None:
        """Sample now and every interval until stopped (or ``turns`` are done)."""
        while True:
            self.turn()
            if turns is not None and self.turns >= turns:
                return
            if self._stopping.wait(self._settings.sample_seconds):
                return

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="slo-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=60)

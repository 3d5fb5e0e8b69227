"""Stall and anomaly alerts through the dispatch layer: ``alerts``.

``alerts`` evaluates the rules (:mod:`safereplay.recovery.alerts`) over the store
first, then lists the alerts: reading alerts is what keeps them current, so the
CLI, the API and a metrics scrape all see the same, fresh state without a daemon.
It is a routine read (view on ``projection:*``, success not audited); the alerts
an evaluation raises or clears are audited on their own, with the system as
actor and the evaluating principal as ``evaluated_by`` (see
:mod:`safereplay.recovery.alerts.store`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from safereplay.recovery.alerts.monitor import AlertMonitor, Evaluation
from safereplay.recovery.alerts.rules import rules_from_settings
from safereplay.recovery.alerts.store import Alert, AlertStore
from safereplay.recovery.jobs.heartbeats import FollowerHeartbeats
from safereplay.recovery.operations.dispatch import (
    OperationContext,
    Operations,
    limit_parameter,
)
from safereplay.recovery.operations.shapes import iso_time
from safereplay.recovery.security.access import Permission
from safereplay.recovery.settings import AlertSettings

if TYPE_CHECKING:
    from safereplay.recovery.operations.context import RecoveryContext

__all__ = ["MAX_ALERTS", "alert_monitor", "alerts_json", "register_alert_operations"]

#: The most alerts one ``alerts`` read lists (``--limit``); the default is 100.
MAX_ALERTS = 10_000


def alert_monitor(context: RecoveryContext) -> AlertMonitor:
    """The monitor over ``context``'s stores, with thresholds from ``SAFEREPLAY_ALERT_*``."""
    jobs = context.jobs  # checks the recovery schema (the alert tables are in it)
    return AlertMonitor(
        rules=rules_from_settings(AlertSettings.from_env()),
        jobs=jobs,
        followers=FollowerHeartbeats(context.database),
        store=context.projection_store,
        log=context.log,
        alerts=AlertStore(context.database, context.audit),
    )


def _when(seconds: float | None) -> str | None:
    return None if seconds is None else iso_time(seconds)


def alert_json(alert: Alert) -> dict[str, Any]:
    """One alert as the CLI's ``--json`` and the API show it (times in ISO 8601)."""
    shown = asdict(alert)
    shown["raised_at"] = _when(alert.raised_at)
    shown["cleared_at"] = _when(alert.cleared_at)
    return shown


def alerts_json(evaluation: Evaluation) -> dict[str, Any]:
    """An evaluation as ``{"evaluated_at", "alerts": [...]}``."""
    return {
        "evaluated_at": _when(evaluation.evaluated_at),
        "alerts": [alert_json(a) for a in evaluation.alerts],
    }


def register_alert_operations(operations: Operations, context: RecoveryContext) -> None:
    def alerts(ctx: OperationContext, p: Mapping[str, Any]) -> dict[str, Any]:
        limit = limit_parameter(p, most=MAX_ALERTS)
        evaluation = alert_monitor(context).evaluate(
            evaluated_by=ctx.principal.name,
            include_cleared=bool(p.get("include_cleared")),
            limit=limit,
        )
        return alerts_json(evaluation)

    operations.register(
        "alerts",
        permission=Permission.VIEW,
        handler=alerts,
        scope="projection:*",
        summary="evaluate the stall and anomaly rules, then list open (or all) alerts",
        monitoring=True,
    )

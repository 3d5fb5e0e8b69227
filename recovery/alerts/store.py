"""Open and cleared alerts, and the projections' samples the anomaly rules compare.

:meth:`AlertStore.reconcile` turns an evaluation's findings into alerts: a finding
with no open alert of its rule and subject raises one, an open alert with no
finding any more is cleared, and each raise and each clear appends an audit entry
*in the same transaction* (an alert is never raised or cleared without its entry).

Actor: ``safereplay`` — the condition is the system's finding, not the act of
whoever happened to look; the principal (or the scrape) whose evaluation noticed
it is kept in the entry's parameters as ``evaluated_by``.

Concurrency: two processes may evaluate at once (an API request and a metrics
scrape). A partial unique index allows one open alert per rule and subject; a
raise is ``INSERT ... ON CONFLICT DO NOTHING`` and a clear an ``UPDATE ... WHERE
cleared_at IS NULL``: only the process whose statement changed a row writes the
audit entry, so the same facts evaluated twice, or by two processes, raise once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any
from uuid import uuid4

from safereplay.recovery.alerts.facts import Finding, Sample
from safereplay.recovery.database import Database, Tx, recorded_rows
from safereplay.recovery.security.access import ALERTS_ACTOR
from safereplay.recovery.security.audit import AuditRecord, AuditTrail

__all__ = ["ACTOR", "Alert", "AlertStore", "Changes"]

#: The audit actor of alerts raised and cleared (see the module docstring).
ACTOR = ALERTS_ACTOR

_CREATE_ALERTS = """
CREATE TABLE IF NOT EXISTS {alerts} (
    alert_id TEXT PRIMARY KEY,
    rule TEXT NOT NULL,
    subject TEXT NOT NULL,
    projection TEXT,
    job_id TEXT,
    severity TEXT NOT NULL,
    message TEXT NOT NULL,
    value DOUBLE PRECISION NOT NULL,
    threshold DOUBLE PRECISION NOT NULL,
    raised_at DOUBLE PRECISION NOT NULL,
    cleared_at DOUBLE PRECISION
)"""
# One open alert per rule and subject, kept by the database itself.
_CREATE_ONE_OPEN = """
CREATE UNIQUE INDEX IF NOT EXISTS {idx_alerts_one_open} ON {alerts} (rule, subject)
WHERE cleared_at IS NULL"""
_CREATE_SAMPLES = """
CREATE TABLE IF NOT EXISTS {alert_samples} (
    projection TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL,
    head BIGINT NOT NULL,
    position BIGINT NOT NULL,
    parked BIGINT NOT NULL,
    retries BIGINT NOT NULL,
    PRIMARY KEY (projection, at)
)"""

_RAISE = """
INSERT INTO {alerts} (alert_id, rule, subject, projection, job_id, severity, message, value,
    threshold, raised_at, cleared_at)
VALUES (%(alert_id)s, %(rule)s, %(subject)s, %(projection)s, %(job_id)s, %(severity)s,
    %(message)s, %(value)s, %(threshold)s, %(now)s, NULL)
ON CONFLICT DO NOTHING"""
# An open alert follows its finding's figures; the same figures change nothing.
_REFRESH = """
UPDATE {alerts} SET value = %(value)s, threshold = %(threshold)s, message = %(message)s
WHERE rule = %(rule)s AND subject = %(subject)s AND cleared_at IS NULL
  AND (value <> %(value)s OR threshold <> %(threshold)s OR message <> %(message)s)"""
_CLEAR = """
UPDATE {alerts} SET cleared_at = %(now)s WHERE alert_id = %(alert_id)s AND cleared_at IS NULL"""
_OPEN = "SELECT * FROM {alerts} WHERE cleared_at IS NULL ORDER BY raised_at, alert_id"
_LIST_OPEN = "SELECT * FROM {alerts} WHERE cleared_at IS NULL ORDER BY raised_at DESC, alert_id"
_LIST_ALL = """
SELECT * FROM {alerts} ORDER BY (CASE WHEN cleared_at IS NULL THEN 0 ELSE 1 END),
    raised_at DESC, alert_id LIMIT %(limit)s"""
_ADD_SAMPLE = """
INSERT INTO {alert_samples} (projection, at, head, position, parked, retries)
VALUES (%(projection)s, %(at)s, %(head)s, %(position)s, %(parked)s, %(retries)s)
ON CONFLICT DO NOTHING"""
_PRUNE_SAMPLES = "DELETE FROM {alert_samples} WHERE at < %(before)s"
_SAMPLES = """
SELECT * FROM {alert_samples} WHERE at >= %(since)s ORDER BY projection, at"""


@dataclass(frozen=True)
class Alert:
    """An alert, open (``cleared_at`` None) or cleared; times in epoch seconds."""

    alert_id: str
    rule: str
    subject: str
    projection: str | None
    job_id: str | None
    severity: str
    message: str
    value: float
    threshold: float
    raised_at: float
    cleared_at: float | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Alert:
        return cls(
            alert_id=str(row["alert_id"]),
            rule=str(row["rule"]),
            subject=str(row["subject"]),
            projection=row["projection"],
            job_id=row["job_id"],
            severity=str(row["severity"]),
            message=str(row["message"]),
            value=float(row["value"]),
            threshold=float(row["threshold"]),
            raised_at=float(row["raised_at"]),
            cleared_at=None if row["cleared_at"] is None else float(row["cleared_at"]),
        )


@dataclass(frozen=True)
class Changes:
    """What one reconciliation changed: alerts it raised and alerts it cleared."""

    raised: tuple[Alert, ...]
    cleared: tuple[Alert, ...]


class AlertStore:
    """Alerts and samples in the recovery database; raises and clears are audited."""

    def __init__(self, database: Database, audit: AuditTrail) -> None:
        self.database = database
        self.audit = audit

    @staticmethod
    def schema_statements() -> list[str]:
        """The tables' DDL (templates), run by the ``recovery`` schema step."""
        return [_CREATE_ALERTS, _CREATE_ONE_OPEN, _CREATE_SAMPLES]

    def create_tables(self) -> None:
        """Run the DDL directly (tools and tests)."""
        with self.database.transaction(write=True) as tx:
            for statement in self.schema_statements():
                tx.execute(statement)

    def now(self) -> float:
        """Now by the database's clock (what alerts and samples are timed by)."""
        with self.database.transaction(write=False) as tx:
            return tx.now()

    # -- samples -------------------------------------------------------------------------

    def add_samples(
        self, samples: Mapping[str, Sample], *, every: float, keep: float
    ) -> dict[str, list[Sample]]:
        """Record each projection's sample unless its last one is under ``every``
        seconds old, drop those older than ``keep`` seconds, and return the kept
        ones with ``samples`` as the latest of each projection."""
        now = max((s.at for s in samples.values()), default=None)
        if now is None:
            return {}
        rows = recorded_rows(self.database, _SAMPLES, {"since": now - keep})
        last: dict[str, float] = {}
        for row in rows:
            last[row["projection"]] = max(last.get(row["projection"], 0.0), float(row["at"]))
        due = {
            name: sample
            for name, sample in samples.items()
            if name not in last or sample.at - last[name] >= every
        }
        if due:
            # Written only when a sample is due: most evaluations write nothing here.
            with self.database.transaction(write=True) as tx:
                for projection, sample in due.items():
                    tx.execute(_ADD_SAMPLE, {"projection": projection, **_sample_row(sample)})
                tx.execute(_PRUNE_SAMPLES, {"before": now - keep})
        kept: dict[str, list[Sample]] = {name: [] for name in samples}
        for row in rows:
            if row["projection"] in kept:
                kept[row["projection"]].append(_sample(row))
        for projection, sample in samples.items():
            series = kept[projection]
            if not series or series[-1].at < sample.at:
                series.append(sample)  # not recorded (too soon after the last): still now
        return kept

    # -- alerts --------------------------------------------------------------------------

    def reconcile(self, findings: Sequence[Finding], *, evaluated_by: str) -> Changes:
        """Raise an alert per new finding, clear each open alert without one."""
        raised: list[Alert] = []
        cleared: list[Alert] = []
        keys = {(f.rule, f.subject) for f in findings}
        if self._unchanged(findings):
            # The common case (a scrape every few seconds, nothing new): no write
            # transaction at all, so readers of alerts never queue behind each other.
            return Changes((), ())
        with self.database.transaction(write=True) as tx:
            now = tx.now()
            for alert in (Alert.from_row(r) for r in tx.rows(_OPEN)):
                if (alert.rule, alert.subject) in keys:
                    continue
                if tx.execute(_CLEAR, {"alert_id": alert.alert_id, "now": now}) == 1:
                    gone = replace(alert, cleared_at=now)
                    self._audit(tx, "alert.cleared", "alert cleared", gone, evaluated_by)
                    cleared.append(gone)
            for finding in findings:
                alert = _alert_of(finding, alert_id=str(uuid4()), raised_at=now)
                if tx.execute(_RAISE, {**alert.__dict__, "now": now}) == 1:
                    self._audit(tx, "alert.raised", "alert raised", alert, evaluated_by)
                    raised.append(alert)
                else:
                    refresh = ("rule", "subject", "value", "threshold", "message")
                    tx.execute(_REFRESH, {k: alert.__dict__[k] for k in refresh})
        return Changes(tuple(raised), tuple(cleared))

    def _unchanged(self, findings: Sequence[Finding]) -> bool:
        """Do the open alerts match ``findings`` exactly (same subjects, same figures)?"""
        shown = {
            (a.rule, a.subject): (a.value, a.threshold, a.message)
            for a in (Alert.from_row(r) for r in recorded_rows(self.database, _OPEN, {}))
        }
        wanted = {(f.rule, f.subject): (f.value, f.threshold, f.message) for f in findings}
        return shown == wanted

    def _audit(self, tx: Tx, action: str, reason: str, alert: Alert, evaluated_by: str) -> None:
        self.audit.append_in(
            tx,
            AuditRecord(
                actor=ACTOR,
                action=action,
                scope=f"projection:{alert.projection}" if alert.projection else "projection:*",
                reason=f"{reason}: {alert.message}",
                outcome="succeeded",
                parameters={
                    "alert_id": alert.alert_id,
                    "rule": alert.rule,
                    "subject": alert.subject,
                    "severity": alert.severity,
                    "value": alert.value,
                    "threshold": alert.threshold,
                    "evaluated_by": evaluated_by,
                },
                job_id=None,
            ),
        )

    def alerts(self, *, include_cleared: bool = False, limit: int = 100) -> list[Alert]:
        """Open alerts, newest first; with ``include_cleared``, then cleared ones (up
        to ``limit`` in all). None before the tables exist."""
        template = _LIST_ALL if include_cleared else _LIST_OPEN
        rows = recorded_rows(self.database, template, {"limit": limit})
        return [Alert.from_row(r) for r in rows][:limit]


def _alert_of(finding: Finding, *, alert_id: str, raised_at: float) -> Alert:
    return Alert(
        alert_id=alert_id,
        rule=finding.rule,
        subject=finding.subject,
        projection=finding.projection,
        job_id=finding.job_id,
        severity=finding.severity,
        message=finding.message,
        value=finding.value,
        threshold=finding.threshold,
        raised_at=raised_at,
        cleared_at=None,
    )


def _sample_row(sample: Sample) -> dict[str, Any]:
    return {
        "at": sample.at,
        "head": sample.head,
        "position": sample.position,
        "parked": sample.parked,
        "retries": sample.retries,
    }


def _sample(row: Mapping[str, Any]) -> Sample:
    return Sample(
        at=float(row["at"]),
        head=int(row["head"]),
        position=int(row["position"]),
        parked=int(row["parked"]),
        retries=int(row["retries"]),
    )

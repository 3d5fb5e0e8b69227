"""Replay SLO samples and breaches in the recovery database.

:meth:`SLOStore.record` takes one measurement per target: a target sampled less
than ``every`` seconds ago is left alone (two samplers — ``safereplay serve`` and
``safereplay slo watch``, or a read — do not double the samples), the others get
a sample row; a bad sample with no open breach of its target **opens** one, a good
sample with one open **closes** it. Each opening and closing appends an audit
entry *in the same transaction* (actor ``system``: the condition is the system's
finding, not the act of whoever sampled; that one is ``sampled_by`` in the
parameters). As for alerts, a partial unique index allows one open breach per
target and only the process whose statement changed a row writes the entry.

Samples older than the window are pruned as new ones are recorded; breaches are
kept (they are the history ``safereplay slo history`` lists).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any
from uuid import uuid4

from safereplay.recovery.alerts.slo import Budget, Measurement, Target, budget_of
from safereplay.recovery.database import Database, Tx, recorded_rows
from safereplay.recovery.security.access import SYSTEM_ACTOR
from safereplay.recovery.security.audit import AuditRecord, AuditTrail

__all__ = ["ACTOR", "Breach", "LastSample", "Recorded", "SLOStore"]

#: The audit actor of breaches opened and closed (see the module docstring).
ACTOR = SYSTEM_ACTOR
#: The last hour, over which the short burn rate is worked out.
RECENT_SECONDS = 3_600.0

_CREATE_SAMPLES = """
CREATE TABLE IF NOT EXISTS {slo_samples} (
    slo TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL,
    value DOUBLE PRECISION NOT NULL,
    target DOUBLE PRECISION NOT NULL,
    good INTEGER NOT NULL,
    head BIGINT NOT NULL,
    position BIGINT NOT NULL,
    PRIMARY KEY (slo, at)
)"""
_CREATE_BREACHES = """
CREATE TABLE IF NOT EXISTS {slo_breaches} (
    breach_id TEXT PRIMARY KEY,
    slo TEXT NOT NULL,
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    metric TEXT NOT NULL,
    target DOUBLE PRECISION NOT NULL,
    value DOUBLE PRECISION NOT NULL,
    worst DOUBLE PRECISION NOT NULL,
    opened_at DOUBLE PRECISION NOT NULL,
    closed_at DOUBLE PRECISION
)"""
_CREATE_ONE_OPEN = """
CREATE UNIQUE INDEX IF NOT EXISTS {idx_slo_breaches_one_open} ON {slo_breaches} (slo)
WHERE closed_at IS NULL"""

_LAST = """
SELECT slo, MAX(at) AS at FROM {slo_samples} GROUP BY slo"""
_ADD = """
INSERT INTO {slo_samples} (slo, at, value, target, good, head, position)
VALUES (%(slo)s, %(at)s, %(value)s, %(target)s, %(good)s, %(head)s, %(position)s)
ON CONFLICT DO NOTHING"""
_PRUNE = "DELETE FROM {slo_samples} WHERE at < %(before)s"
_OPEN_BREACH = """
INSERT INTO {slo_breaches} (breach_id, slo, kind, subject, metric, target, value, worst,
    opened_at, closed_at)
VALUES (%(breach_id)s, %(slo)s, %(kind)s, %(subject)s, %(metric)s, %(target)s, %(value)s,
    %(value)s, %(at)s, NULL)
ON CONFLICT DO NOTHING"""
_STILL_OPEN = """
UPDATE {slo_breaches} SET value = %(value)s,
    worst = CASE WHEN worst < %(value)s THEN %(value)s ELSE worst END
WHERE slo = %(slo)s AND closed_at IS NULL"""
_OPEN_OF = "SELECT * FROM {slo_breaches} WHERE slo = %(slo)s AND closed_at IS NULL"
_CLOSE = """
UPDATE {slo_breaches} SET closed_at = %(at)s, value = %(value)s
WHERE breach_id = %(breach_id)s AND closed_at IS NULL"""
_COUNTS = """
SELECT slo, COUNT(*) AS samples, SUM(good) AS good,
    SUM(CASE WHEN at >= %(recent)s THEN 1 ELSE 0 END) AS recent,
    SUM(CASE WHEN at >= %(recent)s THEN good ELSE 0 END) AS recent_good
FROM {slo_samples} WHERE at >= %(since)s GROUP BY slo"""
_LATEST = """
SELECT s.* FROM {slo_samples} s
JOIN (SELECT slo, MAX(at) AS at FROM {slo_samples} GROUP BY slo) m
  ON m.slo = s.slo AND m.at = s.at"""
_BEHIND_SINCE = """
SELECT MIN(at) AS at FROM {slo_samples}
WHERE slo = %(slo)s AND at >= %(since)s AND head > %(position)s"""
_BREACH_COUNTS = "SELECT slo, COUNT(*) AS opened FROM {slo_breaches} GROUP BY slo"
_BREACHES = """
SELECT * FROM {slo_breaches}
WHERE (closed_at IS NULL OR closed_at >= %(since)s)
ORDER BY (CASE WHEN closed_at IS NULL THEN 0 ELSE 1 END), opened_at DESC, breach_id
LIMIT %(limit)s"""


@dataclass(frozen=True)
class Breach:
    """A target's breach: open (``closed_at`` None) or closed; epoch seconds.
    ``value``: the figure when last sampled in it (or when it closed); ``worst``:
    the highest seen while it was open."""

    breach_id: str
    slo: str
    kind: str
    subject: str
    metric: str
    target: float
    value: float
    worst: float
    opened_at: float
    closed_at: float | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Breach:
        return cls(
            breach_id=str(row["breach_id"]),
            slo=str(row["slo"]),
            kind=str(row["kind"]),
            subject=str(row["subject"]),
            metric=str(row["metric"]),
            target=float(row["target"]),
            value=float(row["value"]),
            worst=float(row["worst"]),
            opened_at=float(row["opened_at"]),
            closed_at=None if row["closed_at"] is None else float(row["closed_at"]),
        )


@dataclass(frozen=True)
class LastSample:
    """A target's latest sample."""

    at: float
    value: float
    target: float
    good: bool


@dataclass(frozen=True)
class Recorded:
    """What one :meth:`SLOStore.record` did: targets sampled, breaches opened, closed."""

    sampled: tuple[str, ...]
    opened: tuple[Breach, ...]
    closed: tuple[Breach, ...]


class SLOStore:
    """Samples and breaches; openings and closings are audited (actor ``system``)."""

    def __init__(self, database: Database, audit: AuditTrail) -> None:
        self.database = database
        self.audit = audit

    @staticmethod
    def schema_statements() -> list[str]:
        """The tables' DDL (templates), run by the ``recovery`` schema step."""
        return [_CREATE_SAMPLES, _CREATE_BREACHES, _CREATE_ONE_OPEN]

    def create_tables(self) -> None:
        """Run the DDL directly (tools and tests)."""
        with self.database.transaction(write=True) as tx:
            for statement in self.schema_statements():
                tx.execute(statement)

    def now(self) -> float:
        """Now by the database's clock (what samples are timed by)."""
        with self.database.transaction(write=False) as tx:
            return tx.now()

    # -- recording -----------------------------------------------------------------------

    def due(self, targets: Sequence[Target], *, now: float, every: float) -> list[Target]:
        """The targets not sampled in the last ``every`` seconds (a tenth of it spare,
        so a loop of ``every`` seconds never skips a turn)."""
        last = {str(r["slo"]): float(r["at"]) for r in recorded_rows(self.database, _LAST, {})}
        return [t for t in targets if now - last.get(t.slo, float("-inf")) >= every * 0.9]

    def behind_since(self, slo: str, *, position: int, since: float) -> float | None:
        """When a sample of ``slo`` (after ``since``) first saw the log's head above
        ``position``: the moment the oldest event not yet applied was there."""
        rows = recorded_rows(
            self.database, _BEHIND_SINCE, {"slo": slo, "position": position, "since": since}
        )
        found = rows[0]["at"] if rows else None
        return None if found is None else float(found)

    def record(
        self,
        measurements: Sequence[Measurement],
        *,
        every: float,
        keep: float,
        sampled_by: str,
    ) -> Recorded:
        """Record each measurement whose target is due; open and close breaches."""
        sampled: list[str] = []
        opened: list[Breach] = []
        closed: list[Breach] = []
        if not measurements:
            return Recorded((), (), ())
        with self.database.transaction(write=True) as tx:
            now = tx.now()
            last = {str(r["slo"]): float(r["at"]) for r in tx.rows(_LAST)}
            for m in measurements:
                slo = m.target.slo
                if now - last.get(slo, float("-inf")) < every * 0.9:
                    continue
                row = {
                    "slo": slo,
                    "at": now,
                    "value": m.value,
                    "target": m.target.target,
                    "good": 1 if m.good else 0,
                    "head": m.head,
                    "position": m.position,
                }
                if tx.execute(_ADD, row) != 1:
                    continue
                sampled.append(slo)
                if m.good:
                    for open_row in tx.rows(_OPEN_OF, {"slo": slo}):
                        breach = Breach.from_row(open_row)
                        params = {"breach_id": breach.breach_id, "at": now, "value": m.value}
                        if tx.execute(_CLOSE, params) == 1:
                            done = replace(breach, closed_at=now, value=m.value)
                            self._audit(tx, "slo.recovered", done, m, sampled_by)
                            closed.append(done)
                    continue
                breach = Breach(
                    breach_id=str(uuid4()),
                    slo=slo,
                    kind=m.target.kind,
                    subject=m.target.subject,
                    metric=m.target.metric,
                    target=m.target.target,
                    value=m.value,
                    worst=m.value,
                    opened_at=now,
                    closed_at=None,
                )
                if tx.execute(_OPEN_BREACH, {**breach.__dict__, "at": now}) == 1:
                    self._audit(tx, "slo.breached", breach, m, sampled_by)
                    opened.append(breach)
                else:
                    tx.execute(_STILL_OPEN, {"slo": slo, "value": m.value})
            tx.execute(_PRUNE, {"before": now - keep})
        return Recorded(tuple(sampled), tuple(opened), tuple(closed))

    def _audit(self, tx: Tx, action: str, breach: Breach, m: Measurement, sampled_by: str) -> None:
        what = "breached" if action == "slo.breached" else "met again"
        self.audit.append_in(
            tx,
            AuditRecord(
                actor=ACTOR,
                action=action,
                scope=f"{breach.kind}:{breach.subject}",
                reason=(
                    f"SLO {breach.slo} {what}: {m.value:g} against a target of {breach.target:g}"
                ),
                outcome="succeeded",
                parameters={
                    "breach_id": breach.breach_id,
                    "slo": breach.slo,
                    "metric": breach.metric,
                    "value": m.value,
                    "target": breach.target,
                    "sampled_by": sampled_by,
                },
                job_id=None,
            ),
        )

    # -- reading -------------------------------------------------------------------------

    def latest(self) -> dict[str, LastSample]:
        """Each target's latest sample, by SLO name."""
        return {
            str(r["slo"]): LastSample(
                at=float(r["at"]),
                value=float(r["value"]),
                target=float(r["target"]),
                good=bool(r["good"]),
            )
            for r in recorded_rows(self.database, _LATEST, {})
        }

    def budgets(self, targets: Sequence[Target], *, now: float, window: float) -> dict[str, Budget]:
        """Each target's error budget over the ``window`` seconds before ``now``."""
        params = {"since": now - window, "recent": now - RECENT_SECONDS}
        counts = {str(r["slo"]): r for r in recorded_rows(self.database, _COUNTS, params)}
        budgets = {}
        for target in targets:
            row = counts.get(target.slo, {})
            budgets[target.slo] = budget_of(
                samples=int(row.get("samples") or 0),
                good=int(row.get("good") or 0),
                recent=int(row.get("recent") or 0),
                recent_good=int(row.get("recent_good") or 0),
                objective=target.objective,
            )
        return budgets

    def breaches(self, *, since: float, limit: int = 100) -> list[Breach]:
        """Open breaches, then those closed after ``since``, newest first."""
        rows = recorded_rows(self.database, _BREACHES, {"since": since, "limit": limit})
        return [Breach.from_row(r) for r in rows]

    def breach_counts(self) -> dict[str, int]:
        """Breaches ever opened, by SLO name."""
        rows = recorded_rows(self.database, _BREACH_COUNTS, {})
        return {str(r["slo"]): int(r["opened"]) for r in rows}

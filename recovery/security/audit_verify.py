"""Verifying the audit trail against its anchor outside the database, and anchoring it.

:meth:`AuditTrail.verify <safereplay.recovery.security.audit.AuditTrail.verify>`
checks what the database holds: the chain, the signatures and the signed head.
What it cannot see is a trail cut back *consistently* — tail deleted and an
older signed head put back, or both tables emptied — because the head lives in
the same database. :func:`verify_audit` adds two checks that can:

- against the latest digest of the anchor (:mod:`.anchors`): the anchored entry
  must still be there with the same hash, and the head may not be older than it
  (``rolled back``), the trail may not hold fewer entries (``truncated``) or none
  (``emptied``); the anchor's own digests must be signed and chained;
- against the rest of the store: a store with principals, jobs or builds but no
  audit entry was emptied (every one of those is audited when made).

Without an anchor the report says so plainly instead of calling the trail intact
beyond what it can know.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, replace
from datetime import UTC, datetime

from safereplay.recovery.database import recorded_rows
from safereplay.recovery.security.anchors import (
    AnchorError,
    AnchorSink,
    AuditDigest,
    check_digests,
)
from safereplay.recovery.security.audit import GENESIS, AuditKey, AuditTrail
from safereplay.recovery.security.audit_report import VerificationReport, outcomes_unknown

__all__ = ["NO_ANCHOR", "Anchoring", "verify_audit"]

NO_ANCHOR = "no anchor: truncation and rollback cannot be detected"

#: Tables whose rows are each made by an audited operation.
_AUDITED_STATE = (
    "SELECT 1 AS found FROM {principals} LIMIT 1",
    "SELECT 1 AS found FROM {jobs} LIMIT 1",
    "SELECT 1 AS found FROM {builds} LIMIT 1",
)


def _store_has_audited_state(trail: AuditTrail) -> bool:
    return any(recorded_rows(trail.database, template, {}) for template in _AUDITED_STATE)


def verify_audit(trail: AuditTrail, anchoring: Anchoring | None) -> VerificationReport:
    """The trail's own check, then the store's and the anchor's; never raises on tampering.

    A trail whose chain holds also gets the intents without an outcome listed
    (``outcome_unknown``): they are no tampering, and never fail the verification.
    """
    report = _verified(trail, anchoring)
    if report.first_bad_seq is not None or report.entries_checked == 0:
        return report  # entries past the first bad one are not to be trusted, or read
    try:
        entries = trail.entries()
    except (ValueError, TypeError):  # rewritten since the check: the next one names it
        return report
    return replace(report, outcome_unknown=outcomes_unknown(entries))


def _verified(trail: AuditTrail, anchoring: Anchoring | None) -> VerificationReport:
    report = trail.verify()
    if not report.ok:
        return replace(report, anchor=NO_ANCHOR if anchoring is None else "")
    if report.entries_checked == 0 and _store_has_audited_state(trail):
        report = VerificationReport(
            False,
            0,
            1,
            "the store has principals, jobs or builds but no audit entry (the trail was emptied)",
            status="emptied",
        )
    if anchoring is None:
        return replace(report, anchor=NO_ANCHOR)
    try:
        digests = anchoring.sink.digests()
        problem = check_digests(digests, anchoring.key)
    except AnchorError as exc:
        digests, problem = [], str(exc)
    if problem is not None:
        note = f"anchor ({anchoring.sink.where}) NOT VALID: {problem}"
        if not report.ok:
            return replace(report, anchor=note)
        return VerificationReport(
            False,
            report.entries_checked,
            None,
            f"the anchor cannot be trusted: {problem}",
            status="tampered",
            anchor=note,
        )
    if not digests:
        nothing = f"{NO_ANCHOR} (nothing anchored yet in {anchoring.sink.where})"
        return replace(report, anchor=nothing)
    latest = digests[-1]
    where = f"anchor digest {latest.number} of {latest.at} (entry {latest.seq})"
    if not report.ok:
        return replace(report, anchor=f"checked against {where}")
    return _against(trail, report, latest, where)


def _against(
    trail: AuditTrail, report: VerificationReport, latest: AuditDigest, where: str
) -> VerificationReport:
    head = trail.head()
    count = 0 if head is None else head.entries
    checked = report.entries_checked
    if head is None or count == 0:
        return VerificationReport(
            False,
            checked,
            1,
            f"the trail holds no entry, but {where} records {latest.entries}",
            status="emptied",
            anchor=f"checked against {where}",
        )
    if head.seq < latest.seq:
        return VerificationReport(
            False,
            checked,
            head.seq + 1,
            f"the signed head names entry {head.seq}, older than entry {latest.seq} of {where} "
            "(an older head was put back)",
            status="rolled back",
            anchor=f"checked against {where}",
        )
    if count < latest.entries:
        return VerificationReport(
            False,
            checked,
            count + 1,
            f"the trail holds {count} entries, fewer than the {latest.entries} of {where}",
            status="truncated",
            anchor=f"checked against {where}",
        )
    if trail.hash_at(latest.seq) != latest.hash:
        return VerificationReport(
            False,
            checked,
            latest.seq,
            f"entry {latest.seq} is not the one {where} records (the trail was rewritten)",
            status="tampered",
            anchor=f"checked against {where}",
        )
    later = head.seq - latest.seq
    return replace(
        report,
        anchor=f"matches {where}; {later} entries since, not yet anchored",
    )


class Anchoring:
    """Writes digests of ``trail``'s head to ``sink``: on demand, or when due."""

    def __init__(
        self,
        trail: AuditTrail,
        sink: AnchorSink,
        key: AuditKey,
        *,
        interval_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.trail = trail
        self.sink = sink
        self.key = key
        self.interval_seconds = interval_seconds
        self._clock = clock

    def latest(self) -> AuditDigest | None:
        digests = self.sink.digests()
        return digests[-1] if digests else None

    def anchor(self) -> AuditDigest:
        """Anchor the current head, after checking the trail (against the anchor too):
        a trail that does not verify is not anchored, so no digest blesses tampering."""
        report = verify_audit(self.trail, self)
        if not report.ok:
            raise AnchorError(f"not anchored: {report}")
        digests = self.sink.digests()
        head = self.trail.head()
        if head is None:
            raise AnchorError("not anchored: the audit trail has no entries yet")
        previous = digests[-1] if digests else None
        at = datetime.fromtimestamp(self._clock(), UTC).isoformat(timespec="microseconds")
        unsigned = AuditDigest(
            number=previous.number + 1 if previous else 1,
            seq=head.seq,
            hash=head.hash,
            entries=head.entries,
            at=at,
            prev_digest=previous.fingerprint() if previous else GENESIS,
        )
        digest = AuditDigest(**{**asdict(unsigned), "mac": self.key.sign(unsigned.signed_text())})
        self.sink.write(digest)
        return digest

    def due(self) -> bool:
        latest = self.latest()
        if latest is None:
            return True
        try:
            anchored = datetime.fromisoformat(latest.at).timestamp()
        except ValueError:
            return True
        return self._clock() - anchored >= self.interval_seconds

    def anchor_if_due(self) -> AuditDigest | None:
        """Anchor when the latest digest is older than the interval (or missing)."""
        return self.anchor() if self.due() else None

"""Failed sign-ins: every one audited, a flood aggregated.

A refused token — none given, a token file that is unreadable or that group or
others may read, a malformed, unknown, revoked or wrong token, a token given on
the command line — is appended to the audit trail (:mod:`~safereplay.recovery.security.audit`)
as action ``authenticate``, scope ``auth``, outcome ``failed``:

- actor: the principal the token's id belongs to (who it *claimed* to be), or
  ``(unknown)`` when the token names no known id;
- reason: ``sign-in failed: <failure>`` (``no-token``, ``token-file``,
  ``malformed-token``, ``unknown-token``, ``wrong-secret``, ``revoked-token``,
  ``token-on-command-line``);
- parameters: the failure, the token's id (its public part ``sr_ID.``; never
  its secret), and where the attempt came from (the command, and the host, user
  and process of the command line; an address for a network API).

A flood must not fill the database: per claimed principal and failure, in each
fixed window of ``SAFEREPLAY_AUTH_FAILURE_WINDOW_SECONDS`` (by the database's
clock), the first ``SAFEREPLAY_AUTH_FAILURES_AUDITED`` failures get an entry
each; later ones are only counted, in ``safereplay_auth_failures``. Once the
window has closed, the next sign-in attempt (failed or not) replaces the count
by **one** entry saying how many more failures there were and when. Every token
that names no known id shares the actor ``(unknown)``, so random tokens cannot
make counters without bound: the table holds at most (principals + 1) times failures
rows per open window, and closed windows are deleted as they are summed up.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime

from safereplay.recovery.database import Database, Tx, recorded_rows
from safereplay.recovery.errors import AuthenticationFailed
from safereplay.recovery.security.audit import AuditRecord, AuditTrail

__all__ = ["UNKNOWN_PRINCIPAL", "SignInAudit"]

#: The actor of a failed sign-in whose token names no known principal.
UNKNOWN_PRINCIPAL = "(unknown)"

_CREATE = """
CREATE TABLE IF NOT EXISTS {auth_failures} (
    claimed TEXT NOT NULL,
    failure TEXT NOT NULL,
    bucket BIGINT NOT NULL,
    failures BIGINT NOT NULL,
    first_at DOUBLE PRECISION NOT NULL,
    last_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (claimed, failure, bucket)
)"""
_COUNT = """
INSERT INTO {auth_failures} AS f (claimed, failure, bucket, failures, first_at, last_at)
VALUES (%(claimed)s, %(failure)s, %(bucket)s, 1, %(now)s, %(now)s)
ON CONFLICT (claimed, failure, bucket)
DO UPDATE SET failures = f.failures + 1, last_at = %(now)s"""
_COUNTED = """
SELECT failures FROM {auth_failures}
WHERE claimed = %(claimed)s AND failure = %(failure)s AND bucket = %(bucket)s"""
_CLOSED = """
SELECT claimed, failure, bucket, failures, first_at, last_at FROM {auth_failures}
WHERE bucket < %(bucket)s ORDER BY bucket, claimed, failure"""
_FORGET = """
DELETE FROM {auth_failures}
WHERE claimed = %(claimed)s AND failure = %(failure)s AND bucket = %(bucket)s
  AND failures = %(failures)s"""


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


class SignInAudit:
    """Audits failed sign-ins, at most ``audited`` entries per claimed principal and
    failure in each ``window`` seconds, then one entry counting the rest.

    ``clock`` (tests) replaces the database's clock.
    """

    def __init__(
        self,
        database: Database,
        audit: AuditTrail,
        *,
        audited: int = 20,
        window: float = 300.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if audited < 1 or window <= 0:
            raise ValueError("audited must be at least 1 and window positive")
        self.database = database
        self.audit = audit
        self.audited = audited
        self.window = window
        self._clock = clock

    @staticmethod
    def schema_statements() -> list[str]:
        """The counts' table (a template), set up by the ``recovery`` schema step."""
        return [_CREATE]

    def create_tables(self) -> None:
        """Run the DDL directly (tools and tests); processes go through the schema
        catalog (:mod:`safereplay.recovery.migrations`)."""
        with self.database.transaction(write=True) as tx:
            tx.execute(_CREATE)

    def _now(self, tx: Tx) -> float:
        return self._clock() if self._clock is not None else tx.now()

    def failed(self, error: AuthenticationFailed, origin: Mapping[str, str]) -> bool:
        """Record one failed sign-in; True if it got an entry of its own (else it was
        counted into the aggregate of its window)."""
        claimed = error.claimed or UNKNOWN_PRINCIPAL
        with self.database.transaction(write=True) as tx:
            now = self._now(tx)
            key = {"claimed": claimed, "failure": error.failure, "bucket": self._bucket(now)}
            tx.execute(_COUNT, {**key, "now": now})
            failures = int(tx.rows(_COUNTED, key)[0]["failures"])
        self._sum_up_closed(now)
        if failures > self.audited:
            return False
        parameters: dict[str, str | None] = {
            "failure": error.failure,
            "token_id": error.token_id,
            "message": str(error),
            **origin,
        }
        self.audit.append(
            AuditRecord(
                actor=claimed,
                action="authenticate",
                scope="auth",
                reason=f"sign-in failed: {error.failure}",
                outcome="failed",
                parameters=parameters,
            )
        )
        return True

    def flush(self) -> int:
        """Sum up the windows that have closed (one entry each that counted more
        failures than it audited); returns how many entries that wrote."""
        if self._clock is not None:
            now = self._clock()
        else:
            with self.database.transaction(write=False) as tx:
                now = tx.now()
        return self._sum_up_closed(now)

    def _bucket(self, now: float) -> int:
        return int(now // self.window)

    def _sum_up_closed(self, now: float) -> int:
        written = 0
        # None recorded if the table was never created (no sign-in ever failed here).
        closed = recorded_rows(self.database, _CLOSED, {"bucket": self._bucket(now)})
        for row in closed:
            key = {k: row[k] for k in ("claimed", "failure", "bucket", "failures")}
            with self.database.transaction(write=True) as tx:
                # Whoever deletes the count writes its entry: two processes summing up
                # at once write it once.
                if tx.execute(_FORGET, key) != 1:
                    continue
            more = int(row["failures"]) - self.audited
            if more <= 0:
                continue
            first, last = _iso(float(row["first_at"])), _iso(float(row["last_at"]))
            self.audit.append(
                AuditRecord(
                    actor=row["claimed"],
                    action="authenticate",
                    scope="auth",
                    reason=(
                        f"{more} more failed sign-ins ({row['failure']}) between {first} and "
                        f"{last}: counted, not audited one by one"
                    ),
                    outcome="failed",
                    parameters={
                        "failure": row["failure"],
                        "more_failures": more,
                        "audited_per_window": self.audited,
                        "window_seconds": self.window,
                        "first_at": first,
                        "last_at": last,
                    },
                )
            )
            written += 1
        return written

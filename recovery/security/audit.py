"""A tamper-evident audit trail of every recovery operation.

Each entry is hash-chained to the one before it and signed with HMAC-SHA256
under a key kept *apart from the database* (a key file or the environment)::

    hash_n = SHA-256(canonical JSON of entry n, including seq and hash_{n-1})
    mac_n  = HMAC-SHA-256(audit key, hash_n)

A signed *head* row (last seq and hash) is updated in the same transaction as
each append. :meth:`AuditTrail.verify` then detects, and names the first bad
entry for:

- a changed entry (its hash no longer matches its content);
- a deleted entry (a gap in ``seq``), or deleted trailing entries (the head
  names a later entry than the last one found);
- an inserted or reordered entry (the chain link ``prev_hash`` breaks);
- a forged entry or head with recomputed hashes (the MAC fails: the forger does
  not hold the audit key).

In normal operation the tables are append-only in the database itself
(triggers refuse UPDATE, DELETE and TRUNCATE); verification is what catches
someone who bypasses that with owner or superuser rights.

Entries never hold payloads or secrets: parameters whose names suggest secrets
are redacted, and passwords are taken out of any connection string in the
other values, before anything is hashed or stored.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Unpack
from uuid import UUID

from safereplay.domain.secret import hide_passwords, read_owner_only
from safereplay.recovery.database import Database, Tx, missing_table
from safereplay.recovery.errors import AuditKeyError, RecoveryError
from safereplay.recovery.security.audit_query import EntryFilters, select_entries
from safereplay.recovery.security.audit_report import (
    ListedEntry,
    UnreadableEntry,
    VerificationReport,
)
from safereplay.recovery.settings import RecoverySettings

__all__ = [
    "AuditEntry",
    "AuditKey",
    "AuditKeyError",
    "AuditRecord",
    "AuditTrail",
    "AuditTrailUnavailable",
    "TrailHead",
    "UnreadableEntry",
    "VerificationReport",
    "redact",
]

#: ``deferred``: a gate took the call another way (a change request to approve).
Outcome = Literal["succeeded", "failed", "denied", "started", "deferred"]
GENESIS = "0" * 64
_SECRET_NAME = re.compile(
    r"(secret|password|passwd|token|credential|dsn|private|api_?key|^key$)", re.I
)
_ALLOWED_NAMES = {"key_id", "key_ids", "active_key_id", "token_id"}


def redact(value: Any, *, name: str = "") -> Any:
    """``value`` with anything that could be a secret replaced by a marker."""
    if name and name not in _ALLOWED_NAMES and _SECRET_NAME.search(name):
        return "[redacted]"
    if isinstance(value, Mapping):
        return {str(k): redact(v, name=str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [redact(v) for v in value]
    if isinstance(value, bytes | bytearray | memoryview):
        return "[bytes redacted]"
    if isinstance(value, str):
        # A secret can also hide in a value whose name says nothing: a connection
        # string with its password, e.g. in a description or an error message.
        return hide_passwords(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    return hide_passwords(str(value))


def _storable(text: str) -> str:
    """``text`` with its NUL characters written ``\\x00``: PostgreSQL's text refuses
    them, and a hostile reason or scope (a JSON ``\\u0000`` through the API) must be
    recorded as denied, not fail the append (and go unaudited)."""
    return text.replace("\x00", "\\x00")


@dataclass(frozen=True, repr=False)
class AuditKey:
    """The HMAC key; ``repr`` never shows it."""

    key: bytes

    def __post_init__(self) -> None:
        if len(self.key) < 32:
            raise AuditKeyError("the audit key must be at least 32 bytes")

    def __repr__(self) -> str:
        return "AuditKey(<hidden>)"

    @classmethod
    def generate(cls) -> AuditKey:
        return cls(os.urandom(32))

    @classmethod
    def from_base64(cls, text: str) -> AuditKey:
        try:
            return cls(base64.b64decode(text.strip(), validate=True))
        except (binascii.Error, ValueError):
            raise AuditKeyError("the audit key is not valid base64") from None

    @classmethod
    def load(cls, path: Path | str) -> AuditKey:
        path = Path(path)
        text = read_owner_only(path, what="audit key file", error=AuditKeyError)
        if not text.strip():
            raise AuditKeyError(f"audit key file {str(path)!r} is empty")
        return cls.from_base64(text)

    def save(self, path: Path | str) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(base64.b64encode(self.key).decode("ascii"))

    def sign(self, digest: str) -> str:
        # UTF-8, not ASCII: a digest read from a tampered row may hold any character,
        # and signing it must yield a mismatch, not an exception (ASCII is UTF-8).
        return hmac.new(
            self.key, digest.encode("utf-8", "surrogatepass"), hashlib.sha256
        ).hexdigest()

    def verifies(self, digest: str, mac: object) -> bool:
        """Whether ``mac`` is this key's signature of ``digest``, in constant time.

        Anything read back from storage may be tampered with: a MAC that is not a
        string, or holds non-ASCII characters (which ``hmac.compare_digest`` refuses
        as ``str``), is simply not a match."""
        if not isinstance(mac, str):
            return False
        return hmac.compare_digest(
            self.sign(digest).encode("ascii"), mac.encode("utf-8", "surrogatepass")
        )

    @classmethod
    def from_settings(cls, settings: RecoverySettings) -> AuditKey:
        """The key the settings name: a file (recommended) or the environment."""
        if settings.audit_key_file is not None:
            return cls.load(settings.audit_key_file)
        if settings.audit_key is not None:
            return cls.from_base64(settings.audit_key.get_secret_value())
        raise AuditKeyError(
            "no audit key configured: set SAFEREPLAY_AUDIT_KEY_FILE (recommended) or "
            "SAFEREPLAY_AUDIT_KEY; recovery operations are not run unaudited"
        )


@dataclass(frozen=True)
class AuditRecord:
    """What an operation reports: who, what, on what, why, with what, and how it ended."""

    actor: str
    action: str
    scope: str
    reason: str
    outcome: Outcome
    parameters: Mapping[str, Any]
    job_id: UUID | None = None


@dataclass(frozen=True)
class AuditEntry(ListedEntry):
    # A stored entry's seq is always a number (an unreadable row's may not be).
    seq: int
    entry_id: str
    parameters: Mapping[str, Any]
    job_id: str | None
    prev_hash: str
    hash: str
    mac: str

    def content(self) -> dict[str, Any]:
        """The hashed fields (everything but the hash and MAC themselves)."""
        fields = asdict(self)
        del fields["hash"], fields["mac"]
        return fields


class AuditTrailUnavailable(RecoveryError):
    """The audit tables cannot be written (dropped?): nothing is run unaudited."""


@dataclass(frozen=True)
class TrailHead:
    """The signed head as found, with the number of entries: what an anchor records."""

    seq: int
    hash: str
    mac: str
    entries: int


def _bad(checked: int, seq: int, problem: str, status: str = "tampered") -> VerificationReport:
    return VerificationReport(False, checked, seq, problem, status=status)


def entry_hash(content: Mapping[str, Any]) -> str:
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


_CREATE_ENTRIES = """
CREATE TABLE IF NOT EXISTS {audit_entries} (
    seq BIGINT PRIMARY KEY,
    entry_id TEXT NOT NULL UNIQUE,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    scope TEXT NOT NULL,
    reason TEXT NOT NULL,
    outcome TEXT NOT NULL,
    parameters TEXT NOT NULL,
    job_id TEXT,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    mac TEXT NOT NULL
)"""
_CREATE_HEAD = """
CREATE TABLE IF NOT EXISTS {audit_head} (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq BIGINT NOT NULL,
    hash TEXT NOT NULL,
    mac TEXT NOT NULL
)"""
_SQLITE_GUARDS = [
    """CREATE TRIGGER IF NOT EXISTS {idx_audit_entries_no_update}
    BEFORE UPDATE ON {audit_entries}
    BEGIN SELECT RAISE(ABORT, 'audit entries are append-only'); END""",
    """CREATE TRIGGER IF NOT EXISTS {idx_audit_entries_no_delete}
    BEFORE DELETE ON {audit_entries}
    BEGIN SELECT RAISE(ABORT, 'audit entries are append-only'); END""",
    """CREATE TRIGGER IF NOT EXISTS {idx_audit_head_forward_only}
    BEFORE UPDATE ON {audit_head} WHEN NEW.seq <= OLD.seq
    BEGIN SELECT RAISE(ABORT, 'the audit head only moves forward'); END""",
    """CREATE TRIGGER IF NOT EXISTS {idx_audit_head_no_delete}
    BEFORE DELETE ON {audit_head}
    BEGIN SELECT RAISE(ABORT, 'the audit head cannot be deleted'); END""",
]
_POSTGRES_GUARDS = [
    """CREATE OR REPLACE FUNCTION {audit_refuse_change}() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_TABLE_NAME = 'safereplay_audit_head' AND TG_OP = 'UPDATE'
           AND NEW.seq > OLD.seq THEN
            RETURN NEW;
        END IF;
        RAISE EXCEPTION 'safereplay audit trail is append-only (% on %)', TG_OP, TG_TABLE_NAME;
    END $$""",
    "DROP TRIGGER IF EXISTS {idx_audit_entries_append_only} ON {audit_entries}",
    """CREATE TRIGGER {idx_audit_entries_append_only}
    BEFORE UPDATE OR DELETE ON {audit_entries}
    FOR EACH ROW EXECUTE FUNCTION {audit_refuse_change}()""",
    "DROP TRIGGER IF EXISTS {idx_audit_entries_no_truncate} ON {audit_entries}",
    """CREATE TRIGGER {idx_audit_entries_no_truncate}
    BEFORE TRUNCATE ON {audit_entries}
    FOR EACH STATEMENT EXECUTE FUNCTION {audit_refuse_change}()""",
    "DROP TRIGGER IF EXISTS {idx_audit_head_forward_only} ON {audit_head}",
    """CREATE TRIGGER {idx_audit_head_forward_only}
    BEFORE UPDATE OR DELETE ON {audit_head}
    FOR EACH ROW EXECUTE FUNCTION {audit_refuse_change}()""",
    "DROP TRIGGER IF EXISTS {idx_audit_head_no_truncate} ON {audit_head}",
    """CREATE TRIGGER {idx_audit_head_no_truncate}
    BEFORE TRUNCATE ON {audit_head}
    FOR EACH STATEMENT EXECUTE FUNCTION {audit_refuse_change}()""",
]
_SELECT_HEAD = "SELECT seq, hash, mac FROM {audit_head} WHERE id = 1"
_SELECT_LAST_SEQ = "SELECT MAX(seq) AS seq, COUNT(*) AS entries FROM {audit_entries}"
_SELECT_HASH_AT = "SELECT hash FROM {audit_entries} WHERE seq = %(seq)s"
_SELECT_FIRST = "SELECT seq, hash, mac FROM {audit_entries} ORDER BY seq LIMIT 1"
_LOCK_FIRST_APPEND = "SELECT pg_advisory_xact_lock(hashtext('safereplay_audit_head')::bigint)"
_INSERT_ENTRY = """
INSERT INTO {audit_entries} (seq, entry_id, at, actor, action, scope, reason, outcome,
    parameters, job_id, prev_hash, hash, mac)
VALUES (%(seq)s, %(entry_id)s, %(at)s, %(actor)s, %(action)s, %(scope)s, %(reason)s,
    %(outcome)s, %(parameters)s, %(job_id)s, %(prev_hash)s, %(hash)s, %(mac)s)"""
_INSERT_HEAD = (
    "INSERT INTO {audit_head} (id, seq, hash, mac) VALUES (1, %(seq)s, %(hash)s, %(mac)s)"
)
_UPDATE_HEAD = "UPDATE {audit_head} SET seq = %(seq)s, hash = %(hash)s, mac = %(mac)s WHERE id = 1"


def _head_digest(seq: int, digest: str) -> str:
    return f"head:{seq}:{digest}"


class AuditTrail:
    """Append, list and verify audit entries in the recovery database."""

    def __init__(self, database: Database, key: AuditKey) -> None:
        self.database = database
        self._key = key

    @staticmethod
    def schema_statements(dialect: str) -> list[str]:
        """The tables' and guards' DDL (templates), run by the ``recovery`` schema
        step once per schema version: the triggers are (re)created there, never at a
        process's start, where dropping them would lock the trail against appenders."""
        guards = _POSTGRES_GUARDS if dialect == "postgres" else _SQLITE_GUARDS
        return [_CREATE_ENTRIES, _CREATE_HEAD, *guards]

    def create_tables(self) -> None:
        """Run the DDL directly (tools and tests); processes go through the schema
        catalog (:mod:`safereplay.recovery.migrations`)."""
        with self.database.transaction(write=True) as tx:
            for statement in self.schema_statements(self.database.dialect):
                tx.execute(statement)

    def append(self, record: AuditRecord) -> AuditEntry:
        """Append one entry and move the signed head to it, in one transaction.

        Refused (:class:`AuditKeyError`, nothing appended) when the key verifies
        neither the head nor the first entry: it is not the key this trail was
        written with. The new entry takes the sequence number after both the head
        and the last entry found, so a row forged after the head never makes an
        append collide; it links to the signed head, so ``audit verify`` still names
        the forged row (see docs/security.md).
        """
        try:
            return self._append(record)
        except Exception as exc:
            if missing_table(exc):
                raise AuditTrailUnavailable(
                    "the audit tables are missing (dropped?): nothing is run unaudited; "
                    "run `safereplay audit verify`, then restore the trail"
                ) from None
            raise

    def _append(self, record: AuditRecord) -> AuditEntry:
        with self.database.transaction(write=True) as tx:
            return self.append_in(tx, record)

    def append_in(self, tx: Tx, record: AuditRecord) -> AuditEntry:
        """Append one entry inside the caller's write transaction ``tx``: the entry
        commits, or rolls back, with the change it records (an alert raised or
        cleared is never recorded without its entry, nor the other way round)."""
        parameters = redact(dict(record.parameters))
        # Locking the head row serialises appenders, so seq and prev_hash are
        # taken from the entry that really is last.
        head = tx.rows(_SELECT_HEAD, for_update=True)
        if not head and self.database.dialect == "postgres":
            # The first append has no head row to lock, so two first appenders
            # (processes bootstrapping a new store together) would both take seq
            # 1. A transaction-level advisory lock serialises them until the head
            # row exists; the second then reads the first's head. (SQLite's write
            # transactions are serial already.)
            tx.rows(_LOCK_FIRST_APPEND)
            head = tx.rows(_SELECT_HEAD, for_update=True)
        if head:
            self._check_key(tx, head[0])
        last = tx.rows(_SELECT_LAST_SEQ)[0]["seq"]
        seq = max(int(head[0]["seq"]) if head else 0, int(last or 0)) + 1
        prev_hash = str(head[0]["hash"]) if head else GENESIS
        at = datetime.fromtimestamp(tx.now(), UTC).isoformat(timespec="microseconds")
        unsigned = {
            "seq": seq,
            "entry_id": str(uuid.uuid4()),
            "at": at,
            "actor": record.actor,
            "action": record.action,
            "scope": _storable(record.scope),
            "reason": _storable(hide_passwords(record.reason)),
            "outcome": record.outcome,
            "parameters": parameters,
            "job_id": str(record.job_id) if record.job_id else None,
            "prev_hash": prev_hash,
        }
        digest = entry_hash(unsigned)
        entry = AuditEntry(**unsigned, hash=digest, mac=self._key.sign(digest))
        row = {
            **unsigned,
            "parameters": json.dumps(parameters, sort_keys=True),
            "hash": entry.hash,
            "mac": entry.mac,
        }
        tx.execute(_INSERT_ENTRY, row)
        head_params = {
            "seq": seq,
            "hash": digest,
            "mac": self._key.sign(_head_digest(seq, digest)),
        }
        tx.execute(_UPDATE_HEAD if head else _INSERT_HEAD, head_params)
        return entry

    def _check_key(self, tx: Any, head: Mapping[str, Any]) -> None:
        """Refuse a key that verifies neither the head nor the first entry."""
        if self._signs(_head_digest(int(head["seq"]), str(head["hash"])), head["mac"]):
            return
        first = tx.rows(_SELECT_FIRST)
        if first and self._signs(str(first[0]["hash"]), first[0]["mac"]):
            return  # the head was tampered with, not signed with another key: verify says so
        raise AuditKeyError(
            "the audit key does not verify this trail (neither its signed head nor its first "
            "entry): it is not the key the trail was written with; nothing was appended. "
            "Check SAFEREPLAY_AUDIT_KEY_FILE / SAFEREPLAY_AUDIT_KEY"
        )

    def _signs(self, digest: str, mac: Any) -> bool:
        return self._key.verifies(digest, mac)

    def authentic(self, entry: AuditEntry) -> bool:
        """Does ``entry`` hold its own content's hash, signed with this trail's key?

        One entry, not the chain (:meth:`verify`): what a reader relying on a single
        record checks, since a writer of the table cannot sign without the key.
        """
        return entry_hash(entry.content()) == entry.hash and self._signs(entry.hash, entry.mac)

    def hash_at(self, seq: int) -> str | None:
        """The stored hash of entry ``seq`` (None if there is none)."""
        with self.database.transaction(write=False) as tx:
            rows = tx.rows(_SELECT_HASH_AT, {"seq": seq})
        return str(rows[0]["hash"]) if rows else None

    def head(self) -> TrailHead | None:
        """The signed head and the number of entries (None without a head)."""
        with self.database.transaction(write=False) as tx:
            head = tx.rows(_SELECT_HEAD)
            count = tx.rows(_SELECT_LAST_SEQ)[0]["entries"]
        if not head:
            return None
        return TrailHead(int(head[0]["seq"]), str(head[0]["hash"]), str(head[0]["mac"]), int(count))

    def entries(self, **filters: Unpack[EntryFilters]) -> list[AuditEntry]:
        return [self._entry(row) for row in self._rows(filters)]

    def listing(self, **filters: Unpack[EntryFilters]) -> list[AuditEntry | UnreadableEntry]:
        """:meth:`entries` (same filters) for a reader: a row that cannot be read (a
        value rewritten behind the trail's back, such as invalid JSON) is listed as an
        :class:`UnreadableEntry` instead of stopping the listing."""
        listed: list[AuditEntry | UnreadableEntry] = []
        for row in self._rows(filters):
            try:
                listed.append(self._entry(row))
            except (ValueError, TypeError, KeyError) as exc:
                listed.append(UnreadableEntry.of(row, exc))
        return listed

    def _rows(self, filters: EntryFilters) -> list[Mapping[str, Any]]:
        template, params = select_entries(filters)
        with self.database.transaction(write=False) as tx:
            return list(tx.rows(template, params))

    @staticmethod
    def _entry(row: Mapping[str, Any]) -> AuditEntry:
        return AuditEntry(
            seq=int(row["seq"]),
            entry_id=row["entry_id"],
            at=row["at"],
            actor=row["actor"],
            action=row["action"],
            scope=row["scope"],
            reason=row["reason"],
            outcome=row["outcome"],
            parameters=json.loads(row["parameters"]),
            job_id=row["job_id"],
            prev_hash=row["prev_hash"],
            hash=row["hash"],
            mac=row["mac"],
        )

    def verify(self) -> VerificationReport:
        """Check the chain, the signatures and the head; never raises on tampering.

        Whatever was done to the rows — changed, deleted, reordered, inserted,
        unreadable values, a forged or missing head, the tables dropped — ends in a
        report naming the first bad entry.
        """
        try:
            with self.database.transaction(write=False) as tx:
                rows = tx.rows("SELECT * FROM {audit_entries} ORDER BY seq")
                head = tx.rows(_SELECT_HEAD)
        except Exception as exc:
            if missing_table(exc):
                return _bad(0, 1, "the audit tables are missing (dropped)", "dropped")
            raise
        previous = GENESIS
        expected = 1
        for row in rows:
            try:
                entry = self._entry(row)
            except (ValueError, TypeError, KeyError):
                return _bad(
                    expected - 1,
                    _seq_of(row, expected),
                    "it cannot be read (a value is not what was written: modified)",
                )
            if entry.seq != expected:
                return _bad(
                    expected - 1,
                    expected,
                    f"entry {expected} is missing (deleted); next found is {entry.seq}",
                )
            if entry_hash(entry.content()) != entry.hash:
                return _bad(
                    expected - 1, entry.seq, "its content does not match its hash (modified)"
                )
            if not self._signs(str(entry.hash), entry.mac):
                return _bad(
                    expected - 1, entry.seq, "its signature is invalid (forged or re-hashed)"
                )
            if entry.prev_hash != previous:
                if entry.prev_hash == GENESIS:
                    problem = (
                        "it restarts the chain: it was appended while the signed head was "
                        "missing (head deleted; entries after the one before it may be cut)"
                    )
                else:
                    problem = "it does not link to the entry before it (inserted or reordered)"
                return _bad(expected - 1, entry.seq, problem)
            previous = entry.hash
            expected += 1
        last = expected - 1
        if not head:
            if rows:
                return _bad(last, last, "the signed head record is missing")
            return VerificationReport(True, 0)
        try:
            head_seq, head_hash, head_mac = (
                int(head[0]["seq"]),
                str(head[0]["hash"]),
                head[0]["mac"],
            )
        except (ValueError, TypeError):
            return _bad(last, last, "the head record cannot be read (modified)")
        if not self._signs(_head_digest(head_seq, head_hash), head_mac):
            return _bad(last, head_seq, "the head record's signature is invalid")
        if head_seq != last or head_hash != previous:
            return _bad(
                last,
                last + 1 if head_seq > last else max(head_seq, 1),
                f"the head names entry {head_seq} but the chain ends at {last} "
                "(trailing entries deleted or replaced)",
                "truncated" if head_seq > last else "tampered",
            )
        return VerificationReport(True, last)


def _seq_of(row: Mapping[str, Any], default: int) -> int:
    try:
        return int(row["seq"])
    except (ValueError, TypeError, KeyError):
        return default

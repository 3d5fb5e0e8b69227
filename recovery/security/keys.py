"""Key ring operations: add, activate, rotate, re-encrypt stored events, retire.

``reencrypt`` re-seals every stored event (and snapshot) that is not sealed under
the active key. It walks the log by position in batches, each batch one short
transaction; every update is a compare-and-swap on the old ciphertext, so it can
be killed at any moment and resumed (or run twice) without harm. The event's
content is verified before the update (the new blob must decrypt to the same
plaintext under the same row binding), and its position, identity and topic are
never touched, so content and order stay identical.

A key is retired only after a full scan proves no stored event needs it.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

from eventsourcing.persistence import AggregateRecorder, OperationalError
from eventsourcing.postgres import PostgresAggregateRecorder
from eventsourcing.sqlite import SQLiteAggregateRecorder
from psycopg import sql

from safereplay.domain import EventStoreApplication, KeyRing
from safereplay.domain.keyring import is_sealed, sealed_key_id
from safereplay.domain.mapper import associated_data
from safereplay.recovery.errors import InvalidRequest, StoreUnavailable
from safereplay.recovery.resilience.throttle import Throttle

__all__ = [
    "KeyUsage",
    "ReencryptProgress",
    "activate_key",
    "add_key",
    "key_usage",
    "reencrypt",
    "retire_key",
]


@dataclass(frozen=True)
class StoredRow:
    cursor: int  # rowid / notification id (events) or a stable row order (snapshots)
    originator_id: UUID | str
    originator_version: int
    topic: str
    state: bytes


@dataclass(frozen=True)
class KeyUsage:
    by_key: Counter[str]
    plaintext: int
    rows: int

    def uses(self, key_id: str) -> int:
        return self.by_key.get(key_id, 0)


@dataclass(frozen=True)
class ReencryptProgress:
    table: str
    cursor: int
    scanned: int
    resealed: int


class _Table:
    """Keyset reads and compare-and-swap updates of one eventsourcing table.

    Events are walked by position. Snapshot tables have no position (SQLite keeps
    them WITHOUT ROWID), so they are walked in primary-key order by offset, which
    is stable because re-sealing never changes a row's key.
    """

    def __init__(self, recorder: AggregateRecorder) -> None:
        self.recorder = recorder
        self.name: str = getattr(recorder, "events_table_name", "stored_events")
        self.by_position = hasattr(recorder, "select_notifications")

    def batch(self, after: int, limit: int) -> list[StoredRow]:
        if isinstance(self.recorder, SQLiteAggregateRecorder):
            rows = self._sqlite_batch(self.recorder, after, limit)
        else:
            assert isinstance(self.recorder, PostgresAggregateRecorder)
            rows = self._postgres_batch(self.recorder, after, limit)
        return [
            StoredRow(
                cursor=int(r["c"]) if self.by_position else after + i + 1,
                # The row binding uses the id as the mapper sees it (a UUID), not
                # SQLite's stored hex text.
                originator_id=_as_uuid(r["originator_id"]),
                originator_version=int(r["originator_version"]),
                topic=r["topic"],
                state=bytes(r["state"]),
            )
            for i, r in enumerate(rows)
        ]

    def _sqlite_batch(self, recorder: SQLiteAggregateRecorder, after: int, limit: int) -> Any:
        table = _sqlite_identifier(self.name)
        columns = "originator_id, originator_version, topic, state"
        with recorder.datastore.transaction(commit=False) as cursor:
            if self.by_position:
                cursor.execute(
                    f"SELECT rowid AS c, {columns} FROM {table} WHERE rowid > ? "
                    "ORDER BY rowid LIMIT ?",
                    (after, limit),
                )
            else:
                cursor.execute(
                    f"SELECT {columns} FROM {table} ORDER BY originator_id, originator_version "
                    "LIMIT ? OFFSET ?",
                    (limit, after),
                )
            return cursor.fetchall()

    def _postgres_batch(self, recorder: PostgresAggregateRecorder, after: int, limit: int) -> Any:
        table = sql.Identifier(recorder.datastore.schema or "public", self.name)
        if self.by_position:
            statement = sql.SQL(
                "SELECT notification_id AS c, originator_id, originator_version, topic, state "
                "FROM {} WHERE notification_id > %s ORDER BY notification_id LIMIT %s"
            ).format(table)
            params: tuple[int, ...] = (after, limit)
        else:
            statement = sql.SQL(
                "SELECT originator_id, originator_version, topic, state FROM {} "
                "ORDER BY originator_id, originator_version LIMIT %s OFFSET %s"
            ).format(table)
            params = (limit, after)
        with recorder.datastore.transaction(commit=False) as cursor:
            cursor.execute(statement, params)
            return cursor.fetchall()

    def swap(self, changes: Sequence[tuple[StoredRow, bytes]]) -> int:
        """Replace each row's state with its new one, in **one** transaction, but only
        where it is still the state read (a compare-and-swap per row): a row another
        writer changed meanwhile is left as that writer left it. Returns how many
        rows were replaced."""
        if not changes:
            return 0
        if isinstance(self.recorder, SQLiteAggregateRecorder):
            statement: Any = (
                f"UPDATE {_sqlite_identifier(self.name)} SET state = ? "
                "WHERE originator_id = ? AND originator_version = ? AND state = ?"
            )
            params: list[tuple[Any, ...]] = [
                (
                    new_state,
                    row.originator_id.hex
                    if isinstance(row.originator_id, UUID)
                    else row.originator_id,
                    row.originator_version,
                    row.state,
                )
                for row, new_state in changes
            ]
            datastore: Any = self.recorder.datastore
        else:
            assert isinstance(self.recorder, PostgresAggregateRecorder)
            table = sql.Identifier(self.recorder.datastore.schema or "public", self.name)
            statement = sql.SQL(
                "UPDATE {} SET state = %s WHERE originator_id = %s "
                "AND originator_version = %s AND state = %s"
            ).format(table)
            params = [
                (new_state, row.originator_id, row.originator_version, row.state)
                for row, new_state in changes
            ]
            datastore = self.recorder.datastore
        swapped = 0
        with datastore.transaction(commit=True) as cursor:
            for values in params:
                cursor.execute(statement, values)
                swapped += _rowcount(cursor)
        return swapped


def _rowcount(cursor: Any) -> int:
    """Rows the last statement changed (eventsourcing's SQLite cursor wraps sqlite3's)."""
    inner = getattr(cursor, "sqlite_cursor", cursor)
    return max(0, int(inner.rowcount))


def _as_uuid(value: UUID | str) -> UUID | str:
    if isinstance(value, UUID):
        return value
    try:
        return UUID(value)
    except ValueError:
        return value


def _sqlite_identifier(name: str) -> str:
    """A quoted SQLite identifier (table names come from eventsourcing, never from input)."""
    return '"' + name.replace('"', '""') + '"'


def _tables(app: EventStoreApplication) -> list[_Table]:
    tables = [_Table(app.recorder)]
    if app.snapshots is not None:
        tables.append(_Table(app.snapshots.recorder))
    return tables


def _scan(table: _Table, *, batch_size: int, after: int = 0) -> Iterator[list[StoredRow]]:
    cursor = after
    while True:
        rows = table.batch(cursor, batch_size)
        if not rows:
            return
        yield rows
        cursor = rows[-1].cursor


def key_usage(app: EventStoreApplication, *, batch_size: int = 2000) -> KeyUsage:
    """Count stored rows (events and snapshots) per sealing key id, by a full scan."""
    by_key: Counter[str] = Counter()
    plaintext = 0
    rows = 0
    for table in _tables(app):
        for batch in _scan(table, batch_size=batch_size):
            for row in batch:
                rows += 1
                if is_sealed(row.state):
                    by_key[sealed_key_id(row.state)] += 1
                else:
                    plaintext += 1
    return KeyUsage(by_key=by_key, plaintext=plaintext, rows=rows)


def reencrypt(
    app: EventStoreApplication,
    ring: KeyRing,
    *,
    batch_size: int = 500,
    events_per_second: float | None = None,
    start_after: Sequence[int] = (),
    on_progress: Callable[[ReencryptProgress], None] | None = None,
    stop: threading.Event | None = None,
) -> list[ReencryptProgress]:
    """Re-seal every row not sealed under ``ring.active_key_id``; resumable.

    ``start_after`` resumes from checkpoints (one per table, as reported through
    ``on_progress``); correctness never depends on them, only speed.
    """
    throttle = Throttle(events_per_second)
    results = []
    for index, table in enumerate(_tables(app)):
        after = start_after[index] if index < len(start_after) else 0
        scanned = resealed = 0
        cursor = after
        try:
            for batch in _scan(table, batch_size=batch_size, after=after):
                throttle.acquire(len(batch))
                changes: list[tuple[StoredRow, bytes]] = []
                for row in batch:
                    scanned += 1
                    if not is_sealed(row.state) or sealed_key_id(row.state) == ring.active_key_id:
                        continue
                    aad = associated_data(row.originator_id, row.originator_version, row.topic)
                    where = f"{table.name} row {row.cursor}"
                    plaintext = ring.open(row.state, aad, where=where)
                    sealed = ring.seal(plaintext, aad)
                    # Verify before writing: the new blob must open to the same content.
                    if ring.open(sealed, aad, where=where) != plaintext:
                        raise InvalidRequest(f"re-sealed {where} does not verify; nothing written")
                    changes.append((row, sealed))
                # The whole batch in one short transaction (the cryptography is done
                # before it opens), each row compared-and-swapped.
                resealed += table.swap(changes)
                cursor = batch[-1].cursor
                progress = ReencryptProgress(table.name, cursor, scanned, resealed)
                if on_progress is not None:
                    on_progress(progress)
                if stop is not None and stop.is_set():
                    results.append(progress)
                    return results
        except OperationalError as exc:
            # A lost connection (a server restart, a terminated backend) ends the run
            # with a clear error, not a trace: every batch committed so far stays
            # re-sealed, and a batch in flight was rolled back whole.
            raise StoreUnavailable(
                f"re-encryption stopped after {table.name} row {cursor}: the event store "
                f"failed ({exc}); the rows re-sealed so far are kept, and running the "
                "same command again re-seals the rest"
            ) from exc
        results.append(ReencryptProgress(table.name, cursor, scanned, resealed))
    return results


def add_key(path: Path, key_id: str, *, activate: bool = False) -> KeyRing:
    ring = KeyRing.load(path).with_key(key_id, activate=activate)
    ring.save(path)
    return ring


def activate_key(path: Path, key_id: str) -> KeyRing:
    ring = KeyRing.load(path).activate(key_id)
    ring.save(path)
    return ring


def retire_key(path: Path, key_id: str, app: EventStoreApplication) -> KeyRing:
    """Remove ``key_id`` from the ring file, only if no stored row is sealed with it."""
    ring = KeyRing.load(path)
    usage = key_usage(app)
    if usage.uses(key_id):
        raise InvalidRequest(
            f"key {key_id!r} still seals {usage.uses(key_id)} stored rows; run "
            "'safereplay keys reencrypt' first, then retire it"
        )
    retired = ring.without_key(key_id)
    retired.save(path)
    return retired

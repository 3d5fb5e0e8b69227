"""The PostgreSQL high-water mark: hold at holes until they are provably dead.

eventsourcing's PostgreSQL recorder numbers events from a sequence
(``notification_id bigserial``). Ids are handed out before commit, so they can
commit out of order (always so with ``POSTGRES_ENABLE_DB_FUNCTIONS=y``, which
inserts without the table lock), and an id whose insert rolls back, fails, or
was taken by ``nextval`` without an insert is a permanent hole. A reader that
walks past a hole too early misses an event for good (Eventuous #222, Marten
#4953); one that never walks past a dead hole stalls for good (Marten #3503).

How a hole is proved dead (``docs/gaps.md`` has the full argument):

1. One statement, one snapshot, an index-only keyset scan of the ids above the
   mark. The contiguous prefix is committed and visible: the mark moves over it.
2. At the first hole ``h`` the scan also saw a committed id ``g > h``; with a
   sequence of ``CACHE 1`` and ``INCREMENT 1`` (checked), ``h`` was handed out
   before ``g`` and so before the scan. An insert takes ``RowExclusiveLock`` on
   the events table before it evaluates the id's default and keeps it until its
   transaction ends (or the (sub)transaction that inserted ``h`` aborts). So the
   transaction that holds ``h`` either has ended by the time of the next
   statement, or appears in ``pg_locks`` holding ``RowExclusiveLock`` on the table.
3. After the scan, collect the virtual transaction ids of those lock holders
   (other backends, prepared transactions included): a **proof**, kept in
   ``{table}_hole_proofs`` so that any process continues it
   (:mod:`safereplay.projections.hole_proofs`). Once none of them holds the
   lock any more, every id up to the largest id that scan saw is decided: a fresh
   read shows it (committed) or it is dead for ever. While proofs are pending, a
   newer one is begun at most every ``hole_proof_refresh``, so that writers that
   always overlap still let the mark through.
4. The dead ids are recorded in ``{table}_skipped_holes`` in the same transaction
   that moves the persisted mark (``{table}_hwm``) past them and removes the
   proofs it completes.

A transaction snapshot (``pg_current_snapshot()``) is not enough on its own: a
transaction that has taken an id from the sequence may not have a transaction id
yet (``nextval`` assigns none, except when it WAL-logs a new batch of values),
so it is absent from every snapshot's in-progress list while it still holds the
id. Its virtual transaction id and its lock are there from the start.

Waiting is bounded (``hole_wait``); while the proof is pending, :meth:`advance`
returns the mark held below the hole and the caller (or the next process) polls
again. Assumptions,
checked where possible: the mark is computed on the primary; ids are assigned
only by the column's default inside the INSERT (no ``nextval`` taken earlier and
written explicitly later); rows are never deleted from the events table.

Why this module is long (about 760 lines): it is the proof
above and the one class that carries it out; its statements, its steps and its
connection handling are checked against that argument, which would be spread
over several modules if it were split further. What could move without that
cost has: the proofs as values and their table
(:mod:`safereplay.projections.hole_proofs`), the tables' DDL
(:mod:`safereplay.projections.watermark_tables`), and its error,
:class:`WatermarkError`, in :mod:`safereplay.projections.errors` (importable
from here).
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

import psycopg
from psycopg import sql

from safereplay.domain.schema import PostgresSchema, SchemaStep, ensure_schema
from safereplay.domain.secret import Conninfo
from safereplay.projections.errors import WatermarkError  # re-exported: its former home
from safereplay.projections.hole_proofs import (
    MAX_PENDING,
    HoleProof,
    HoleProofs,
    Writers,
    decided,
    first_seen,
)
from safereplay.projections.watermark import HighWaterMark, SkippedHole
from safereplay.projections.watermark_tables import MAX_IDENTIFIER_BYTES, WatermarkTables

__all__ = [
    "WATERMARK_SCHEMA_VERSION",
    "PostgresHighWaterMark",
    "WatermarkError",
    "WatermarkStatus",
    "create_watermark_tables",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: The version of the tables :func:`create_watermark_tables` sets up: 1, the skipped
#: holes and the mark; 2, the pending hole proofs.
WATERMARK_SCHEMA_VERSION = 2
#: A hold at one hole longer than this is logged (once per hole) as a warning.
_LONG_HOLD_SECONDS = 60.0


@dataclass(frozen=True)
class WatermarkStatus:
    """What :meth:`PostgresHighWaterMark.advance` last saw, for lag and stall reports.

    ``holding_at`` is the first position above ``mark`` not yet proven committed or
    dead (None when the mark is not held by a hole); ``holding_since`` when the
    oldest pending proof began (the database's clock: the oldest doubt, whichever
    process first saw it); ``waiting_for`` are the backend pids (None for a
    prepared transaction) of the transactions that may still fill it.
    """

    mark: int
    holding_at: int | None
    holding_since: datetime | None
    waiting_for: tuple[int | None, ...]


@dataclass(frozen=True)
class _Decision:
    """Move the mark over every position <= ``proof.cover``: proven when no writer
    of the proof is ``running``, else forced (the escape hatch)."""

    proof: HoleProof
    proofs: list[HoleProof]
    running: Writers
    held_for: timedelta


class PostgresHighWaterMark(HighWaterMark):
    """Safe head of one eventsourcing PostgreSQL notification log.

    ``conninfo`` is a libpq connection string; ``schema`` and ``table`` name the
    events table (``{application_name}_events`` for eventsourcing). Options:

    - ``column`` (``"notification_id"``): the position column.
    - ``batch_size`` (10 000): ids scanned per statement; also the most positions
      settled (and hole rows written) per transaction.
    - ``hole_wait`` (0.5 s): the longest one :meth:`advance` call waits for
      in-flight writers before returning the mark held below a hole.
    - ``hole_proof_refresh`` (1.0 s): while proofs are pending, begin a newer one
      (covering more positions) at most this often, so that the mark trails
      overlapping writers by about this plus the longest writer transaction
      (:mod:`safereplay.projections.hole_proofs`).
    - ``poll_interval`` (0.01 s): first pause between ``pg_locks`` checks while
      waiting (doubles up to 0.1 s).
    - ``skip_stale_holes_despite_live_transactions_after`` (None = never): the
      operator's escape hatch. A hole still unproven after this many seconds is
      skipped although a transaction that may fill it is running; the record says
      ``forced`` and names the transactions. The event may be lost to readers;
      :meth:`filled_holes` finds the ones that were. Off by default.
    - ``holes_table`` (``"{table}_skipped_holes"``), ``mark_table``
      (``"{table}_hwm"``), ``proofs_table`` (``"{table}_hole_proofs"``): the
      tables this class owns in ``schema``, set up through the schema catalog
      (component ``watermark:<table>``, :func:`create_watermark_tables`) when
      missing and ``create_tables`` (True; ``SAFEREPLAY_MIGRATE_ON_START``); with
      False, missing tables raise ``DatabaseSchemaOutdated``.
    - ``persist_interval`` (1.0 s): the least time between writes of the mark
      when it moved over committed ids only (moves over holes are written at once,
      with the holes).
    - ``connect_timeout`` (5 s), ``statement_timeout`` (30 s),
      ``reconnect_for`` (10 s): a lost connection is reopened with back-off for up
      to ``reconnect_for`` before :class:`WatermarkError` is raised.
    """

    def __init__(
        self,
        conninfo: str,
        *,
        schema: str,
        table: str,
        column: str = "notification_id",
        batch_size: int = 10_000,
        hole_wait: float = 0.5,
        hole_proof_refresh: float = 1.0,
        poll_interval: float = 0.01,
        skip_stale_holes_despite_live_transactions_after: float | None = None,
        holes_table: str | None = None,
        mark_table: str | None = None,
        proofs_table: str | None = None,
        create_tables: bool = True,
        persist_interval: float = 1.0,
        connect_timeout: float = 5.0,
        statement_timeout: float = 30.0,
        reconnect_for: float = 10.0,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if hole_wait < 0 or hole_proof_refresh < 0 or poll_interval <= 0 or persist_interval < 0:
            raise ValueError(
                "hole_wait, hole_proof_refresh and persist_interval must be >= 0, poll_interval > 0"
            )
        force_after = skip_stale_holes_despite_live_transactions_after
        if force_after is not None and force_after < 0:
            raise ValueError("skip_stale_holes_despite_live_transactions_after must be >= 0")
        if not column or len(column.encode()) > MAX_IDENTIFIER_BYTES:
            raise ValueError(f"identifier {column!r} must be 1 to {MAX_IDENTIFIER_BYTES} bytes")
        tables = WatermarkTables.of(
            schema, table, holes=holes_table, mark=mark_table, proofs=proofs_table
        )
        self._conninfo = Conninfo(conninfo)  # its repr hides a password
        self._schema = schema
        self._table = table
        self._column = column
        self._batch = batch_size
        self._hole_wait = hole_wait
        self._refresh = timedelta(seconds=hole_proof_refresh)
        self._poll = poll_interval
        self._force_after = force_after
        self._create_tables = create_tables
        self._persist_interval = persist_interval
        self._connect_timeout = connect_timeout
        self._statement_timeout_ms = int(statement_timeout * 1000)
        self._reconnect_for = reconnect_for

        self._lock = threading.RLock()
        self._conn: psycopg.Connection[Any] | None = None
        self._table_exists = False
        #: The events table's oid and the server run's start, read per connection.
        self._relid = 0
        self._server_started = datetime.min
        self._mark = 0
        self._persisted = 0
        self._persisted_at = 0.0
        #: What holds the mark, as of the last :meth:`advance` (None: nothing).
        self._held: WatermarkStatus | None = None
        self._warned_at_hole = 0

        self.tables = tables
        self._proofs = HoleProofs(tables)
        events = tables.qualified(table)
        col = sql.Identifier(column)
        holes = tables.qualified(tables.holes)
        marks = tables.qualified(tables.mark)
        #: The tables this instance owns, in ``schema``.
        self.holes_table = tables.holes
        self.mark_table = tables.mark
        self.proofs_table = tables.proofs
        fmt = {"events": events, "col": col, "holes": holes, "marks": marks}

        def q(text: str) -> sql.Composed:
            return sql.SQL(text).format(**fmt)

        # One snapshot: how many ids follow the mark (up to a batch), the largest,
        # and the rank of the first id that is not mark + rank (the first hole).
        self._q_scan = q(
            "SELECT count(*), max(id), min(rn) FILTER (WHERE id <> %(after)s::bigint + rn), "
            "clock_timestamp() "
            "FROM (SELECT id, row_number() OVER (ORDER BY id) AS rn FROM "
            "(SELECT {col} AS id FROM {events} WHERE {col} > %(after)s::bigint "
            "ORDER BY {col} LIMIT %(limit)s) AS s) AS r"
        )
        self._q_range = q(
            "SELECT {col} FROM {events} WHERE {col} > %s::bigint AND {col} <= %s::bigint "
            "ORDER BY {col}"
        )
        # Positions in (a, b] that are committed or recorded holes, each once. Holes
        # force-skipped by another instance count only if this one may force too.
        self._q_accounted = q(
            "SELECT count(*) FROM (SELECT {col} AS p FROM {events} WHERE {col} > %(a)s "
            "AND {col} <= %(b)s UNION SELECT position FROM {holes} WHERE position > %(a)s "
            "AND position <= %(b)s AND (NOT forced OR %(forcing)s)) AS u"
        )
        self._q_read_mark = q("SELECT position FROM {marks}")
        self._q_write_mark = q(
            "INSERT INTO {marks} AS m (singleton, position) VALUES (true, %s) "
            "ON CONFLICT (singleton) DO UPDATE SET position = EXCLUDED.position, "
            "updated_at = now() WHERE m.position < EXCLUDED.position"
        )
        self._q_insert_holes = q(
            "INSERT INTO {holes} (position, detected_at, reason, forced) "
            "SELECT p, d, %s, %s FROM unnest(%s::bigint[], %s::timestamptz[]) AS u (p, d) "
            "ON CONFLICT (position) DO NOTHING"
        )
        self._q_holes = q(
            "SELECT position, detected_at, skipped_at, reason FROM {holes} "
            "WHERE position > %s AND (%s::bigint IS NULL OR position <= %s) ORDER BY position"
        )
        self._q_filled = q(
            "SELECT h.position FROM {holes} AS h JOIN {events} AS e ON e.{col} = h.position "
            "WHERE h.position > %s AND (%s::bigint IS NULL OR h.position <= %s) "
            "ORDER BY h.position"
        )
        # Writers that may hold an id: granted RowExclusiveLock on the events
        # table, any backend but ours (pid IS NULL for prepared transactions).
        # Readers (AccessShareLock) and autovacuum (ShareUpdateExclusiveLock)
        # never insert, so they do not hold a proof up.
        self._q_writers = sql.SQL(
            "SELECT l.virtualtransaction, l.pid FROM pg_locks AS l "
            "WHERE l.locktype = 'relation' AND l.mode = 'RowExclusiveLock' AND l.granted "
            "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND l.relation = (SELECT c.oid FROM pg_class AS c JOIN pg_namespace AS n "
            "ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s) "
            "AND l.pid IS DISTINCT FROM pg_backend_pid()"
        )

    # -- public API -------------------------------------------------------------------

    def advance(self) -> int:
        with self._lock:
            return self._retrying(self._advance)

    def skipped_holes(self, *, after: int = 0, upto: int | None = None) -> list[SkippedHole]:
        with self._lock:
            rows = self._retrying(lambda c: self._rows_if_tables(c, self._q_holes, after, upto))
        return [SkippedHole(int(p), d, s, str(r)) for p, d, s, r in rows]

    def filled_holes(self, *, after: int = 0, upto: int | None = None) -> list[int]:
        """Recorded holes that now hold a committed event: lost to readers.

        Empty unless a hole was force-skipped (the escape hatch) or an assumption
        of the proof was broken (ids written explicitly, sequence reset). A
        completeness check should require it to be empty.
        """
        with self._lock:
            rows = self._retrying(lambda c: self._rows_if_tables(c, self._q_filled, after, upto))
        return [int(r[0]) for r in rows]

    def status(self) -> WatermarkStatus:
        """The mark and, if it is held by a hole, since when and by whom (no I/O)."""
        with self._lock:
            return self._held or WatermarkStatus(self._mark, None, None, ())

    def held_since(self) -> datetime | None:
        return self.status().holding_since

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is None:
                return
            try:
                if self._table_exists and self._mark > self._persisted:
                    self._write_mark(conn)
            except psycopg.Error:
                logger.debug("could not persist the high-water mark on close", exc_info=True)
            finally:
                conn.close()

    def __enter__(self) -> PostgresHighWaterMark:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- connection handling ------------------------------------------------------------

    def _retrying(self, operation: Callable[[psycopg.Connection[Any]], T]) -> T:
        deadline = time.monotonic() + self._reconnect_for
        attempt = 0
        while True:
            try:
                return operation(self._connection())
            except psycopg.OperationalError as exc:
                self._drop_connection()
                attempt += 1
                delay = min(2.0, 0.05 * 2**attempt) * (0.5 + random.random() / 2)  # noqa: S311
                if time.monotonic() + delay > deadline:
                    raise WatermarkError(
                        f"PostgreSQL unreachable for {self._reconnect_for:g}s while computing "
                        f"the high-water mark of {self._schema}.{self._table}: "
                        f"{type(exc).__name__}: {_first_line(exc)}"
                    ) from exc
                logger.warning(
                    "high-water mark: %s; reconnecting in %.2fs", _first_line(exc), delay
                )
                time.sleep(delay)
            except psycopg.Error as exc:
                if self._conn is not None and self._conn.info.transaction_status not in (
                    psycopg.pq.TransactionStatus.IDLE,
                ):
                    self._drop_connection()
                raise WatermarkError(
                    f"high-water mark of {self._schema}.{self._table}: "
                    f"{type(exc).__name__}: {_first_line(exc)}"
                ) from exc

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        conn = psycopg.connect(
            self._conninfo,
            autocommit=True,
            connect_timeout=max(1, round(self._connect_timeout)),
        )
        try:
            conn.execute(
                "SELECT set_config('statement_timeout', %s, false), "
                "set_config('application_name', "
                "coalesce(nullif(current_setting('application_name'), ''), "
                "'safereplay-watermark'), false)",
                (str(self._statement_timeout_ms),),
            )
            row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
            if row is not None and row[0]:
                raise WatermarkError(
                    "the high-water mark must be computed on the primary: a standby's "
                    "pg_locks does not show the primary's writers"
                )
            self._table_exists = False
            self._conn = conn
            self._prepare(conn)
        except BaseException:
            self._conn = None
            conn.close()
            raise
        return conn

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    def _prepare(self, conn: psycopg.Connection[Any]) -> None:
        """Once per connection, when the events table exists: check the sequence,
        create our tables, adopt the persisted mark."""
        if self._table_exists:
            return
        row = conn.execute(
            "SELECT c.oid FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = %s",
            (self._schema, self._table),
        ).fetchone()
        if row is None:
            return
        self._check_sequence(conn)
        self.ensure_schema(conn)
        started = conn.execute("SELECT pg_postmaster_start_time()").fetchone()
        assert started is not None
        self._relid, self._server_started = int(row[0]), started[0]
        self._table_exists = True
        self._adopt_persisted(conn, startup=True)

    def ensure_schema(self, conn: psycopg.Connection[Any] | None = None) -> None:
        """Check the catalog for this mark's tables; set them up if missing and allowed.

        Read first, DDL only when the catalog says the tables are missing (see
        :mod:`safereplay.domain.schema`); with ``create_tables=False`` a missing
        table is :class:`~safereplay.domain.errors.DatabaseSchemaOutdated`.
        """
        if conn is None:
            with self._lock:
                self._retrying(lambda c: self._prepare(c))
            return

        @contextlib.contextmanager
        def lend() -> Iterator[psycopg.Connection[Any]]:
            yield conn

        ensure_schema(
            PostgresSchema(lend, self._schema),
            [self.schema_step()],
            migrate=self._create_tables,
        )

    def schema_step(self) -> SchemaStep:
        """The ``watermark:<table>`` component: :func:`create_watermark_tables`."""
        tables = self.tables

        def apply(cursor: Any, from_version: int) -> None:
            # Every table is created if missing: the same statements bring any
            # earlier version (or none) up to this one.
            create_watermark_tables(
                cursor,
                schema=tables.schema,
                table=tables.table,
                holes_table=tables.holes,
                mark_table=tables.mark,
                proofs_table=tables.proofs,
            )

        return SchemaStep(
            f"watermark:{tables.table}",
            WATERMARK_SCHEMA_VERSION,
            apply,
            "the high-water mark's tables",
        )

    def _check_sequence(self, conn: psycopg.Connection[Any]) -> None:
        row = conn.execute(
            "SELECT s.seqcache, s.seqincrement FROM pg_sequence AS s "
            "WHERE s.seqrelid = pg_get_serial_sequence(format('%%I.%%I', %s::text, %s::text), "
            "%s)::regclass",
            (self._schema, self._table, self._column),
        ).fetchone()
        where = f"{self._schema}.{self._table}.{self._column}"
        if row is None:
            raise WatermarkError(f"{where} is not filled from a sequence: cannot prove holes dead")
        cache, increment = int(row[0]), int(row[1])
        if cache != 1 or increment != 1:
            raise WatermarkError(
                f"the sequence behind {where} has CACHE {cache} INCREMENT {increment}: holes "
                "can only be proven dead with CACHE 1 INCREMENT 1 (ids handed out in order)"
            )

    # -- the algorithm ------------------------------------------------------------------

    def _advance(self, conn: psycopg.Connection[Any]) -> int:
        if not self._table_exists:
            self._prepare(conn)
            if not self._table_exists:
                return self._mark
        self._adopt_persisted(conn, startup=False)
        deadline = time.monotonic() + self._hole_wait
        moved_over_holes = False
        self._held = None
        while True:
            row = conn.execute(self._q_scan, {"after": self._mark, "limit": self._batch}).fetchone()
            assert row is not None
            count, last, first_gap_rank, now = int(row[0]), row[1], row[2], row[3]
            if count == 0:
                break
            if first_gap_rank is None:
                self._mark = int(last)
                if count < self._batch:
                    break
                continue
            self._mark += int(first_gap_rank) - 1
            decision = self._prove(conn, cover=int(last), now=now, deadline=deadline)
            if decision is None:
                break
            self._settle(conn, decision)
            moved_over_holes = True
        if self._mark > self._persisted and (
            moved_over_holes or time.monotonic() - self._persisted_at >= self._persist_interval
        ):
            self._write_mark(conn)
        return self._mark

    def _prove(
        self, conn: psycopg.Connection[Any], *, cover: int, now: datetime, deadline: float
    ) -> _Decision | None:
        """How to move past the hole at ``mark + 1``, or None when ``deadline`` passed.

        Continues the proofs other
        processes (or earlier calls) began; begins a new one if there is none, or
        if the newest is older than ``hole_proof_refresh`` and this scan saw more.
        """
        hole = self._mark + 1
        proofs = self._proofs.pending(conn, after=self._mark, relid=self._relid)
        # Read after the scan that saw ``cover``: every transaction that may still
        # commit a position <= cover has ended by now, or it is among these.
        current = self._writers(conn)
        done = decided(proofs, current, self._server_started)
        newest = proofs[-1] if proofs else None
        if done is None and (
            newest is None or (cover > newest.cover and newest.age(now) >= self._refresh)
        ):
            proof = HoleProof.made(
                hole=hole,
                cover=cover,
                writers=current,
                detected_at=now,
                server=self._server_started,
            )
            self._proofs.record(conn, proof, relid=self._relid, pending=proofs)
            proofs = [*(proofs[:-1] if len(proofs) >= MAX_PENDING else proofs), proof]
        pause = self._poll
        started = time.monotonic()
        while True:
            done = decided(proofs, current, self._server_started)
            if done is not None:
                return _Decision(done, proofs, {}, done.age(now))
            # The lowest cover completes first: its writers are what holds the mark.
            waiting = proofs[0].running(current, self._server_started)
            self._held = WatermarkStatus(
                self._mark,
                hole,
                min(p.detected_at for p in proofs),
                tuple(sorted(waiting.values(), key=lambda p: -1 if p is None else p)),
            )
            elapsed = now + timedelta(seconds=time.monotonic() - started)
            if self._force_after is not None:
                due = [p for p in proofs if p.age(elapsed).total_seconds() >= self._force_after]
                if due:
                    forced = max(due, key=lambda p: p.cover)
                    running = forced.running(current, self._server_started)
                    return _Decision(forced, proofs, running, forced.age(elapsed))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._warn_if_long(proofs[0], elapsed, waiting)
                return None
            time.sleep(min(pause, remaining))
            pause = min(pause * 2, 0.1)
            current = self._writers(conn)

    def _writers(self, conn: psycopg.Connection[Any]) -> dict[str, int | None]:
        rows = conn.execute(self._q_writers, (self._schema, self._table)).fetchall()
        return {str(vxid): (None if pid is None else int(pid)) for vxid, pid in rows}

    def _settle(self, conn: psycopg.Connection[Any], decision: _Decision) -> None:
        """Move the mark over every position ``<= cover``, a batch per transaction.

        With no writer of the proof ``running``, every position <= cover is
        decided, so a fresh read shows exactly the committed ones; the others are
        dead. Holes and the new mark commit together, before the mark is handed
        out; the proofs that are done go in the same transaction. A forced move
        (``running`` writers) leaves the proofs to instances that do not force.
        """
        proof, running = decision.proof, decision.running
        forced = bool(running)
        if forced:
            pids = ", ".join(
                "prepared" if p is None else str(p) for p in sorted(running.values(), key=str)
            )
            reason = (
                f"FORCED: skipped after {decision.held_for.total_seconds():.0f}s although "
                f"{len(running)} writer transaction(s) that may fill it were still "
                f"running (pids {pids}); skip_stale_holes_despite_live_transactions_after="
                f"{self._force_after:g}. The event may be missing: check filled_holes()"
            )
        elif proof.writers:
            reason = (
                f"dead: still empty after all {len(proof.writers)} writer transaction(s) in "
                "flight when the hole was seen had ended (rolled back, failed insert, or "
                "id taken without insert)"
            )
        else:
            reason = (
                "dead: no writer transaction was in flight when the hole was seen (rolled "
                "back, failed insert, or id taken without insert)"
            )
        while self._mark < proof.cover:
            low = self._mark
            high = min(proof.cover, low + self._batch)
            present = {int(r[0]) for r in conn.execute(self._q_range, (low, high)).fetchall()}
            dead = [p for p in range(low + 1, high + 1) if p not in present]
            seen = [first_seen(p, decision.proofs, proof.detected_at) for p in dead]
            with conn.transaction():
                if dead:
                    conn.execute(self._q_insert_holes, (reason, forced, dead, seen))
                conn.execute(self._q_write_mark, (high,))
                if not forced:
                    self._proofs.prune(conn, upto=high, relid=self._relid)
            self._mark = high
            self._persisted = max(self._persisted, high)
            self._persisted_at = time.monotonic()
            if dead:
                log = logger.warning if forced else logger.info
                log(
                    "high-water mark of %s.%s moved past %d hole(s) %s: %s",
                    self._schema,
                    self._table,
                    len(dead),
                    _ranges(dead),
                    reason,
                )

    def _warn_if_long(self, proof: HoleProof, now: datetime, waiting: Writers) -> None:
        held = proof.age(now).total_seconds()
        if self._warned_at_hole != self._mark + 1 and held >= _LONG_HOLD_SECONDS:
            self._warned_at_hole = self._mark + 1
            logger.warning(
                "high-water mark of %s.%s held at %d for %.0fs: waiting for writer "
                "transaction(s) %s that may still commit it",
                self._schema,
                self._table,
                self._mark,
                held,
                sorted(waiting.values(), key=str),
            )

    # -- the persisted mark -------------------------------------------------------------

    def _adopt_persisted(self, conn: psycopg.Connection[Any], *, startup: bool) -> None:
        """Start from the mark another process (or our last run) proved, if it checks out.

        Not trusted blindly: every position between our mark and the persisted one
        must be a committed event or a recorded hole, which is what readers rely on
        anyway. If it does not check out, the proof is redone from our own mark.
        """
        row = conn.execute(self._q_read_mark).fetchone()
        persisted = 0 if row is None else int(row[0])
        if persisted <= self._mark:
            self._persisted = max(self._persisted, persisted)
            return
        accounted = conn.execute(
            self._q_accounted,
            {"a": self._mark, "b": persisted, "forcing": self._force_after is not None},
        ).fetchone()
        if accounted is None or int(accounted[0]) != persisted - self._mark:
            if startup or persisted != self._persisted:
                logger.warning(
                    "persisted high-water mark %d of %s.%s is not backed by committed "
                    "events and recorded holes (force-skipped holes count only where "
                    "forcing is enabled); recomputing from %d",
                    persisted,
                    self._schema,
                    self._table,
                    self._mark,
                )
            self._persisted = persisted
            return
        self._mark = persisted
        self._persisted = persisted
        self._persisted_at = time.monotonic()

    def _write_mark(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute(self._q_write_mark, (self._mark,))
        self._persisted = self._mark
        self._persisted_at = time.monotonic()

    def _rows_if_tables(
        self, conn: psycopg.Connection[Any], query: sql.Composed, after: int, upto: int | None
    ) -> list[tuple[Any, ...]]:
        if not self._table_exists:
            self._prepare(conn)
            if not self._table_exists:
                return []
        return conn.execute(query, (after, upto, upto)).fetchall()


def create_watermark_tables(
    conn: psycopg.Connection[Any] | psycopg.Cursor[Any],
    *,
    schema: str,
    table: str,
    holes_table: str | None = None,
    mark_table: str | None = None,
    proofs_table: str | None = None,
) -> tuple[str, ...]:
    """Create the tables of the high-water mark of ``schema.table`` if they are missing;
    returns their names (skipped holes, mark, hole proofs).

    The one place they are set up, idempotent (their DDL is
    :meth:`WatermarkTables.create_statements
    <safereplay.projections.watermark_tables.WatermarkTables.create_statements>`);
    the ``watermark:<table>`` schema step (:meth:`PostgresHighWaterMark.schema_step`)
    runs it inside a migration, which holds the schema's migration lock.
    """
    tables = WatermarkTables.of(
        schema, table, holes=holes_table, mark=mark_table, proofs=proofs_table
    )
    for statement in tables.create_statements():
        conn.execute(statement)
    return tables.names


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def _ranges(positions: Iterable[int]) -> str:
    """``[3, 4, 5, 9]`` -> ``"3-5, 9"`` for log lines."""
    parts: list[str] = []
    start = prev = None
    for p in positions:
        if start is None:
            start = prev = p
        elif prev is not None and p == prev + 1:
            prev = p
        else:
            parts.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = prev = p
    if start is not None:
        parts.append(f"{start}" if start == prev else f"{start}-{prev}")
    return ", ".join(parts)

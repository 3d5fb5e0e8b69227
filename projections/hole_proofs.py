"""Proofs that positions below a hole are decided, kept in the database across processes.

A **proof** is made right after a scan of the events table that saw a committed
position ``cover`` above the first position in doubt (``hole``): it names the
writers in flight at that moment, by virtual transaction id (``pg_locks``:
``RowExclusiveLock`` holders on the events table). Every transaction that may
still commit a position ``<= cover`` is among them (``docs/gaps.md`` has the
argument), so once none of them holds the lock any more, every position
``<= cover`` is decided: committed, or dead for ever.

That is a fact about the past, true for ever once made; it does not depend on
which process made it or on writers that started later. So proofs are kept in
``{table}_hole_proofs`` and any process continues them: a command that lives
for less than the longest writer transaction (``safereplay status``, a
``catch-up`` that plans and exits) still moves the mark, because the next one
finds the proof its predecessor began, instead of starting a new proof that the
next overlapping writer would hold up again.

Under writers that always overlap, one proof per hole is not enough either: by
the time the writers a proof names have ended, newer positions are in doubt and
a new proof must wait for the writers in flight then. So while proofs are
pending, a newer one (larger ``cover``) is begun at most every ``refresh``
seconds; the mark then trails every committed position by about ``refresh``
plus the longest writer transaction. At most :data:`MAX_PENDING` are kept.

Virtual transaction ids are not reused while the server runs: a backend slot's
local transaction counter only increases, and a new backend in the slot goes on
from where the last one stopped (PostgreSQL 15 ``src/backend/storage/ipc/
sinvaladt.c``: ``SharedInvalBackendInit`` starts ``nextLocalTransactionId`` at
``stateP->nextLXID``, which ``CleanupInvalidationState`` saved on exit). Reuse
could only keep a proof waiting, never end it early: an id that is gone from
``pg_locks`` has ended. The counters start over when the server restarts, which
ends every writer a proof names, so each proof records
``pg_postmaster_start_time()`` and one from an earlier server run waits for
nobody (prepared transactions, which survive a restart, are always waited for).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

from safereplay.projections.watermark_tables import WatermarkTables

__all__ = ["MAX_PENDING", "HoleProof", "HoleProofs", "Writers", "decided", "first_seen"]

#: Pending proofs kept per events table. When full, the newest is replaced by the
#: next one: the oldest keep the earliest completions, the newest the latest cover.
MAX_PENDING = 8

#: The writers in flight: virtual transaction id -> backend pid (None: prepared).
Writers = Mapping[str, int | None]


@dataclass(frozen=True)
class HoleProof:
    """Every position ``<= cover`` is decided once each of ``writers`` has ended.

    ``hole`` was the first position in doubt when the proof was made, at
    ``detected_at`` (the database's clock); ``writers`` are ``(virtual
    transaction id, pid)`` pairs, sorted, of the writers in flight then;
    ``server_started`` the server run they belong to.
    """

    hole: int
    cover: int
    writers: tuple[tuple[str, int | None], ...]
    detected_at: datetime
    server_started: datetime

    @classmethod
    def made(
        cls, *, hole: int, cover: int, writers: Writers, detected_at: datetime, server: datetime
    ) -> HoleProof:
        return cls(
            hole=hole,
            cover=cover,
            writers=tuple(sorted(writers.items())),
            detected_at=detected_at,
            server_started=server,
        )

    def running(self, current: Writers, server_started: datetime) -> dict[str, int | None]:
        """Of the writers this proof waits for, those still in flight.

        A named writer that holds the lock no more has ended (or the subtransaction
        that inserted has aborted, killing its rows): it cannot fill a position now.
        Prepared transactions (no pid) are always waited for: ``PREPARE
        TRANSACTION`` hands a writer's locks to a new virtual id, so a named writer
        may live on under one.
        """
        named = {v for v, _ in self.writers} if server_started == self.server_started else set()
        return {v: p for v, p in current.items() if v in named or p is None}

    def age(self, now: datetime) -> timedelta:
        return now - self.detected_at


class HoleProofs:
    """The pending proofs of one events table, in ``tables.proofs``.

    Every method runs one statement on the caller's connection (the mark's), so
    :meth:`prune` joins the transaction that moves the mark.
    """

    def __init__(self, tables: WatermarkTables) -> None:
        proofs = tables.qualified(tables.proofs)
        self._q_pending = sql.SQL(
            "SELECT hole, cover, writers, writer_pids, detected_at, server_started FROM {} "
            "WHERE cover > %s AND relid = %s ORDER BY cover"
        ).format(proofs)
        self._q_insert = sql.SQL(
            "INSERT INTO {} (cover, hole, relid, server_started, writers, writer_pids, "
            "detected_at) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (cover) DO NOTHING"
        ).format(proofs)
        self._q_drop = sql.SQL("DELETE FROM {} WHERE cover = %s").format(proofs)
        # Proofs the mark has passed are done; those of another table (dropped and
        # re-created under the same name) can never apply.
        self._q_prune = sql.SQL("DELETE FROM {} WHERE cover <= %s OR relid <> %s").format(proofs)

    def pending(self, conn: psycopg.Connection[Any], *, after: int, relid: int) -> list[HoleProof]:
        """Proofs covering positions above ``after``, lowest cover first."""
        rows = conn.execute(self._q_pending, (after, relid)).fetchall()
        return [
            HoleProof(
                hole=int(hole),
                cover=int(cover),
                writers=tuple(
                    (str(v), None if p is None else int(p))
                    for v, p in zip(vxids, pids, strict=True)
                ),
                detected_at=detected_at,
                server_started=started,
            )
            for hole, cover, vxids, pids, detected_at, started in rows
        ]

    def record(
        self,
        conn: psycopg.Connection[Any],
        proof: HoleProof,
        *,
        relid: int,
        pending: Sequence[HoleProof],
    ) -> None:
        """Keep ``proof`` for other processes (``pending``: those already kept).

        Two processes may make a proof of the same cover at once: the first one
        kept stays, and both are valid, so the loser simply goes on with its own.
        """
        if len(pending) >= MAX_PENDING:
            conn.execute(self._q_drop, (max(p.cover for p in pending),))
        conn.execute(
            self._q_insert,
            (
                proof.cover,
                proof.hole,
                relid,
                proof.server_started,
                [v for v, _ in proof.writers],
                [p for _, p in proof.writers],
                proof.detected_at,
            ),
        )

    def prune(self, conn: psycopg.Connection[Any], *, upto: int, relid: int) -> None:
        conn.execute(self._q_prune, (upto, relid))


def decided(
    proofs: Iterable[HoleProof], current: Writers, server_started: datetime
) -> HoleProof | None:
    """The complete proof of the largest cover (None if none is complete)."""
    done = [p for p in proofs if not p.running(current, server_started)]
    return max(done, key=lambda p: p.cover, default=None)


def first_seen(position: int, proofs: Iterable[HoleProof], default: datetime) -> datetime:
    """When ``position`` was first seen in doubt: the earliest proof that had it
    between its hole and its cover (``default`` if none did)."""
    return min(
        (p.detected_at for p in proofs if p.hole <= position <= p.cover),
        default=default,
    )

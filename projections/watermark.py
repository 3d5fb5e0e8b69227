"""The high-water mark: how far a reader of the notification log may safely go.

A reader must never pass a position that a still-running transaction may yet
fill. The high-water mark is the highest position ``H`` such that every position
``<= H`` is either committed (visible) or provably dead (a hole no transaction in
flight can fill). Readers read events with ``position <= H`` only, whatever
topics or partitions they filter on: the mark is a property of the whole log.

Backends:

- SQLite serialises writers on the database lock and assigns ``rowid`` inside
  the writing transaction, so every committed position below ``max(rowid)`` is
  visible once ``max(rowid)`` is: ``H = max(rowid)``.
- PostgreSQL assigns ``notification_id`` from a sequence before commit, so ids
  commit out of order and rolled-back inserts leave permanent holes. See
  :mod:`safereplay.projections.postgres_watermark`.
"""

from __future__ import annotations

import contextlib
import sqlite3
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

__all__ = ["HighWaterMark", "SQLiteHighWaterMark", "SkippedHole"]


@dataclass(frozen=True)
class SkippedHole:
    """A position the log will never fill, recorded when the mark moved past it."""

    position: int
    detected_at: datetime
    skipped_at: datetime
    reason: str


class HighWaterMark(ABC):
    """Computes the safe head of one application's notification log."""

    @abstractmethod
    def advance(self) -> int:
        """The current safe head (0 for an empty log). Never decreases.

        May block briefly (bounded) while it proves holes dead; records every
        hole it moves past as a :class:`SkippedHole`.
        """

    @abstractmethod
    def skipped_holes(self, *, after: int = 0, upto: int | None = None) -> list[SkippedHole]:
        """Holes recorded with ``after < position <= upto``, in position order."""

    def held_since(self) -> datetime | None:
        """When the oldest position above the mark still in doubt was first seen, as
        of the last :meth:`advance` (None when nothing holds the mark back). A
        position in doubt may yet commit: events above it are a backlog, held back."""
        return None

    def filled_holes(self, *, after: int = 0, upto: int | None = None) -> list[int]:
        """Recorded holes that now hold a committed event (lost to readers): none
        unless the log breaks the mark's assumptions; a completeness check
        requires it to be empty."""
        return []

    def ensure_schema(self) -> None:  # noqa: B027 - optional hook
        """Check (and set up, if allowed) the tables the mark keeps; none by default."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


class SQLiteHighWaterMark(HighWaterMark):
    """``max(rowid)``: SQLite's single writer commits positions in order, without holes."""

    def __init__(self, path: Path | str, *, table: str = "stored_events") -> None:
        self._path = str(path)
        self._table = table
        self._last = 0

    def advance(self) -> int:
        # A short-lived read-only connection: cheap for SQLite, and never holds a
        # read transaction open across calls (which would pin the WAL). Closed here:
        # ``with`` on a sqlite3 connection only ends its transaction, and an unclosed
        # connection lives on (with its file descriptor and page cache) until the
        # cyclic garbage collector finds it, which a replay process runs rarely.
        with contextlib.closing(
            sqlite3.connect(f"file:{self._path}?mode=ro", uri=True, timeout=30)
        ) as conn:
            try:
                row = conn.execute(f'SELECT MAX(rowid) FROM "{self._table}"').fetchone()
            except sqlite3.OperationalError as exc:
                if "no such table" in str(exc):
                    return self._last
                raise
        head = int(row[0] or 0)
        self._last = max(self._last, head)
        return self._last

    def skipped_holes(self, *, after: int = 0, upto: int | None = None) -> list[SkippedHole]:
        return []

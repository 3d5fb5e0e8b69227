"""Reading (and decoding) the next batch while this one commits.

Why: on PostgreSQL a batch's commit is mostly waiting for the server (the upsert,
then the WAL flush of ``COMMIT``), and psycopg releases the GIL while it waits. A
catch-up that knows it is behind (its batch was full) can read the next batch in
a thread during that wait, and decrypt and decode it too, so the wait overlaps
Python work instead of adding to it.

Why it is safe:

- only the event log is read ahead, never the projection's rows: handlers still
  run in the runner's thread, after the previous batch committed, so a handler
  that reads a row sees every write before it;
- the next batch is read from the position this batch will commit (``after``) up
  to this batch's high-water mark (every event below it is committed and
  visible, so the range is complete however late it is read);
- the runner takes it only when its committed position is that ``after`` and the
  build is the same. A commit that failed (a lost connection, a position
  conflict, a fence) leaves the position where it was, so the read-ahead is
  dropped and the batch read again: nothing is applied twice or skipped;
- errors in the thread are never raised from there: a failed read is dropped
  (the runner reads again and meets the error on its own path); a failed decode
  is kept with its event and raised where the runner would have decoded it.

The thread uses the source's connection, never the store's, and the runner
joins it before it touches the source again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from eventsourcing.persistence import Notification

from safereplay.domain.envelope import Envelope
from safereplay.projections.source import EventSource, Partition

__all__ = ["DecodeFailed", "Prefetched", "ReadAhead"]


@dataclass(frozen=True)
class DecodeFailed:
    """Decoding this event raised ``error`` (raised again where it is applied)."""

    error: Exception


@dataclass(frozen=True)
class Prefetched:
    """The notifications of ``(after, upto]`` (at most ``limit``) and, when decoded,
    one envelope (or :class:`DecodeFailed`, or None: no handler) per notification."""

    build: int
    after: int
    upto: int
    limit: int
    notifications: list[Notification]
    envelopes: list[Envelope | DecodeFailed | None] | None


class ReadAhead:
    """One batch read in a background thread; :meth:`take` joins it."""

    def __init__(
        self,
        source: EventSource,
        *,
        topics: Sequence[str],
        partition: Partition,
        handlers: Mapping[str, Callable[..., Any]],
        decode: bool,
    ) -> None:
        self._source = source
        self._topics = list(topics)
        self._partition = partition
        self._handlers = handlers
        self._decode = decode
        self._thread: threading.Thread | None = None
        self._result: Prefetched | None = None

    def start(self, *, build: int, after: int, upto: int, limit: int) -> None:
        """Read ``(after, upto]`` in a thread (after any earlier read is taken)."""
        self.discard()

        def read() -> None:
            try:
                notifications = self._source.read(
                    after=after,
                    upto=upto,
                    limit=limit,
                    topics=self._topics,
                    partition=self._partition,
                )
                envelopes = self._decoded(notifications) if self._decode else None
            except Exception:  # dropped: the runner reads again, and meets it on its path
                return
            self._result = Prefetched(build, after, upto, limit, notifications, envelopes)

        self._thread = threading.Thread(target=read, name="safereplay-read-ahead", daemon=True)
        self._thread.start()

    def take(self, *, build: int, after: int, limit: int) -> Prefetched | None:
        """The batch read ahead if it starts at ``after`` in ``build`` (with this
        ``limit``), else None."""
        result = self._join()
        if result is None or (result.build, result.after, result.limit) != (build, after, limit):
            return None
        return result

    def discard(self) -> None:
        """Wait for the thread and drop what it read."""
        self._join()

    def _join(self) -> Prefetched | None:
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()
        result, self._result = self._result, None
        return result

    def _decoded(
        self, notifications: Sequence[Notification]
    ) -> list[Envelope | DecodeFailed | None]:
        decode = self._source.decode
        handlers = self._handlers
        envelopes: list[Envelope | DecodeFailed | None] = []
        append = envelopes.append
        for notification in notifications:
            if notification.topic not in handlers:
                append(None)
                continue
            try:
                append(decode(notification))
            except Exception as exc:  # raised again where the runner applies it
                append(DecodeFailed(exc))
        return envelopes

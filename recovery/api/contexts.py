"""A few recovery contexts (connections, stores) shared by the server's requests.

Opening a context per request would open a PostgreSQL pool per request; sharing
one would serialise every request on one connection. A request borrows a whole
context for its duration instead, so nothing in it is used by two threads at
once, and gives it back. A context whose database failed is closed, not given
back: the next request opens a fresh one.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from safereplay.domain import DomainError
from safereplay.projections import ProjectionError
from safereplay.reactions.errors import ReactionError
from safereplay.recovery.errors import RecoveryError
from safereplay.recovery.operations.context import RecoveryContext
from safereplay.recovery.operations.shapes import error_code

__all__ = ["ContextPool", "PoolExhausted"]


class PoolExhausted(RecoveryError):
    """Every context was borrowed for longer than the wait: the server is overloaded."""


class ContextPool:
    """Up to ``size`` contexts made by ``new_context``, each used by one request at a time.

    ``wait_seconds`` (default 30): how long a request waits for a free context
    before it is refused with :class:`PoolExhausted`.
    """

    def __init__(
        self,
        new_context: Callable[[], RecoveryContext],
        *,
        size: int = 4,
        wait_seconds: float = 30.0,
    ) -> None:
        if size < 1:
            raise ValueError("a context pool needs at least one context")
        self._new_context = new_context
        self._free: queue.LifoQueue[RecoveryContext] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(size)
        self._wait_seconds = wait_seconds
        self._closed = False

    @contextmanager
    def borrowed(self) -> Iterator[RecoveryContext]:
        if not self._slots.acquire(timeout=self._wait_seconds):
            raise PoolExhausted(
                f"the server is busy: no connection was free within {self._wait_seconds:g}s"
            )
        try:
            try:
                context = self._free.get_nowait()
            except queue.Empty:
                context = self._new_context()
            try:
                yield context
            except BaseException as exc:
                if _healthy_after(exc) and not self._closed:
                    self._free.put(context)
                else:
                    context.close()
                raise
            if self._closed:
                context.close()
            else:
                self._free.put(context)
        finally:
            self._slots.release()

    def close(self) -> None:
        self._closed = True
        while True:
            try:
                self._free.get_nowait().close()
            except queue.Empty:
                return


def _healthy_after(exc: BaseException) -> bool:
    """Did the request fail for a reason of its own (bad input, a denial), leaving
    the context's connections as they were?"""
    if not isinstance(exc, DomainError | ProjectionError | ReactionError | RecoveryError):
        return False
    return error_code(exc) != "unavailable"

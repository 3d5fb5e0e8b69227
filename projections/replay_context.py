"""Why a handler runs: live, catching up, in a rebuild, a replay, a re-delivery.

A projection's handler or a reaction's destination sometimes needs to know whether
it sees an event for the first time (send the welcome mail) or again (a rebuild
must not send it twice; a re-delivery an operator forced may be marked so). The
code that runs them sets a :class:`ReplayContext` around the work, and the handler
reads it with :func:`current_replay_context`::

    context = current_replay_context()
    if context is None or context.reason == "live":
        ...

It is a :class:`~contextvars.ContextVar`: it follows the code that set it, not
other threads (a runner that hands work to a thread pool sets it in each thread;
:func:`replaying` is what it uses). None means nobody said (a handler called
directly, a test).

Reasons: ``live`` (a follower or a reaction's cycle, as events arrive),
``catch-up`` (a job bringing a projection up to the log's head), ``rebuild`` (a
projection built again from the start, into a new version), ``replay`` (a range
replayed on purpose), ``redelivery`` (an operator sent a reaction's deliveries
again; ``forced`` when they had been acknowledged).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Literal, get_args

__all__ = [
    "REPLAY_REASONS",
    "ReplayContext",
    "ReplayReason",
    "current_replay_context",
    "replaying",
]

ReplayReason = Literal["live", "catch-up", "rebuild", "replay", "redelivery"]
REPLAY_REASONS: tuple[ReplayReason, ...] = get_args(ReplayReason)


@dataclass(frozen=True)
class ReplayContext:
    """Why ``consumer`` (a projection or reaction name) handles events now; ``job_id``
    when a recovery job runs it; ``forced``: an operator re-sent what was acknowledged."""

    reason: ReplayReason
    consumer: str
    job_id: str | None = None
    forced: bool = False

    def __post_init__(self) -> None:
        if self.reason not in REPLAY_REASONS:
            raise ValueError(f"unknown replay reason {self.reason!r}; one of {REPLAY_REASONS}")


_current: ContextVar[ReplayContext | None] = ContextVar("safereplay_replay_context", default=None)


def current_replay_context() -> ReplayContext | None:
    """The context the running code was given (None: none was set)."""
    return _current.get()


@contextmanager
def replaying(context: ReplayContext) -> Iterator[ReplayContext]:
    """Set ``context`` for the code inside (restored on the way out, even nested)."""
    token = _current.set(context)
    try:
        yield context
    finally:
        _current.reset(token)

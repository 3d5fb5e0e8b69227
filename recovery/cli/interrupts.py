"""Ctrl-C, SIGTERM and SIGHUP on a command that drives a job: stop, don't strand it.

``rebuild`` and ``catch-up`` start local worker processes and watch them. Killed
by a signal's default action, the command left its workers to die with the
terminal (SIGHUP) or the process group (Ctrl-C) holding their leases: the job
stayed ``running`` with no process until the leases expired, and nothing said
how to go on. Inside :func:`interruptible`, the first of those signals raises
:class:`Interrupted` in the main thread instead; the command then stops its
workers with SIGTERM (each gives its partition back), says how to resume and
exits with ``128 + signal`` (130 for Ctrl-C).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["STOP_SIGNALS", "Interrupted", "interruptible"]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(BaseException):  # like KeyboardInterrupt: not an error
    """A stop signal arrived; ``signum`` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


@contextmanager
def interruptible() -> Iterator[None]:
    """Turn the stop signals into :class:`Interrupted` (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}

    def handle(signum: int, frame: object) -> None:
        # Once is enough: the clean-up that follows must not be interrupted again.
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        raise Interrupted(signum)

    for sig in STOP_SIGNALS:
        signal.signal(sig, handle)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

"""Exponential back-off with jitter, as a value."""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["Backoff"]


@dataclass(frozen=True)
class Backoff:
    """``initial * multiplier ** (attempt - 1)``, capped at ``maximum``, with jitter.

    ``jitter`` is the fraction of the delay that is randomised ("equal jitter"
    when 0.5): with many workers retrying at once, jitter spreads the retries so
    that a recovering dependency is not hit by a synchronised storm.
    """

    initial: float = 0.1
    multiplier: float = 2.0
    maximum: float = 30.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if self.initial < 0 or self.maximum < 0:
            raise ValueError("back-off delays must not be negative")
        if self.multiplier < 1:
            raise ValueError("back-off multiplier must be >= 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("back-off jitter must be between 0 and 1")

    def ceiling(self, attempt: int) -> float:
        """The delay before retry number ``attempt`` (1-based) without jitter."""
        if attempt < 1:
            raise ValueError("attempt numbers start at 1")
        # Cap the exponent first so huge attempt numbers cannot overflow.
        exponent = min(attempt - 1, 64)
        return float(min(self.maximum, self.initial * self.multiplier**exponent))

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """A jittered delay in ``[ceiling * (1 - jitter), ceiling]``."""
        ceiling = self.ceiling(attempt)
        spread = ceiling * self.jitter
        draw = (rng or _rng).random()
        return ceiling - spread + spread * draw


_rng = random.Random()  # noqa: S311 - jitter, not cryptography

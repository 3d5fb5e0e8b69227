"""A reaction's runner as recovery wires it: webhook destinations, retries, breakers.

:func:`open_runner` builds the :class:`~safereplay.reactions.ReactionRunner` that
``safereplay react`` and ``safereplay redeliver`` use: each destination a webhook
configured by its ``SAFEREPLAY_WEBHOOK_<DEST>_*`` variables
(:mod:`safereplay.reactions.settings`), the failure handling from the recovery
settings (``SAFEREPLAY_REACTION_*``, see docs/configuration.md):

- retry then park: ``reaction_attempts`` attempts [5], exponential back-off with
  jitter from ``reaction_backoff_initial`` [0.5 s] doubling up to
  ``reaction_backoff_max`` [30 s];
- a circuit breaker per destination, opened by ``reaction_breaker_failures``
  failures in a row [5], probing again after ``reaction_breaker_cool_down`` [10 s];
- a throttle per destination at ``reaction_rate`` calls per second [none];
- a retry budget per destination: retries at most ``reaction_retry_budget_ratio``
  [0.2] of the calls made in the last 10 s, plus ``reaction_retry_budget_floor``
  [1.0] per second (a refused retry waits for the next cycle, still owed);
- calls in flight: the largest ``_CONCURRENCY`` of its destinations [4].

:func:`parse_since` reads the ``since`` of a re-delivery: seconds since the epoch,
a duration back from now (``40m``, ``2h``, ``1d``) or an ISO 8601 time.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from safereplay.reactions import Reaction, ReactionOptions, ReactionRunner
from safereplay.reactions.settings import webhook_destination, webhook_settings
from safereplay.reactions.webhook import WebhookDestination
from safereplay.recovery.errors import InvalidRequest
from safereplay.recovery.resilience.backoff import Backoff
from safereplay.recovery.resilience.breaker import BreakerSettings, CircuitBreaker
from safereplay.recovery.resilience.budget import RetryBudget
from safereplay.recovery.resilience.policies import RetryThenPark
from safereplay.recovery.resilience.throttle import Throttle

if TYPE_CHECKING:
    from safereplay.recovery.operations.context import RecoveryContext

__all__ = ["open_runner", "parse_since", "running"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")
_UNIT = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0}


def parse_since(value: Any, *, now: float | None = None) -> float | None:
    """``value`` as seconds since the epoch (None stays None); see the module."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise InvalidRequest(f"since must be a time, not {value!r}")
    if isinstance(value, int | float):
        return float(value)
    text = str(value)
    found = _DURATION.match(text)
    if found:
        current = time.time() if now is None else now
        return current - float(found[1]) * _UNIT[found[2]]
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidRequest(
            f"since {text!r} is neither a duration (40m, 2h, 1d) nor an ISO 8601 time"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


@contextmanager
def running(context: RecoveryContext, reaction: Reaction) -> Iterator[ReactionRunner]:
    """:func:`open_runner`, closed afterwards with its destinations' connections."""
    destinations = [webhook_destination(name) for name in reaction.destinations]
    try:
        runner = open_runner(context, reaction, destinations=destinations)
        with runner:
            yield runner
    finally:
        for destination in destinations:
            destination.close()


def open_runner(
    context: RecoveryContext,
    reaction: Reaction,
    *,
    destinations: list[WebhookDestination] | None = None,
) -> ReactionRunner:
    """A runner of ``reaction`` over the context's source (decoding) and ledger
    (``destinations``: its webhooks, already built; default: built here)."""
    settings = context.recovery
    if destinations is None:
        destinations = [webhook_destination(name) for name in reaction.destinations]
    concurrency = max(webhook_settings(name).concurrency for name in reaction.destinations)
    backoff = Backoff(
        initial=settings.reaction_backoff_initial,
        maximum=max(settings.reaction_backoff_max, settings.reaction_backoff_initial),
    )
    breaker = BreakerSettings(
        failure_threshold=settings.reaction_breaker_failures,
        cool_down=settings.reaction_breaker_cool_down,
    )
    rate = settings.reaction_rate
    return ReactionRunner(
        reaction,
        source=context.source,
        ledger=context.ledger,
        destinations=destinations,
        policy=RetryThenPark(attempts=settings.reaction_attempts, backoff=backoff),
        breakers=lambda name: CircuitBreaker(breaker),
        throttles=(lambda name: Throttle(rate)) if rate is not None else None,
        budgets=lambda name: RetryBudget(
            ratio=settings.reaction_retry_budget_ratio,
            min_retries_per_second=settings.reaction_retry_budget_floor,
        ),
        options=ReactionOptions(concurrency=concurrency),
    )

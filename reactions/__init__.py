"""Reactions: deliver events to other systems at least once, with a ledger of every delivery.

The third kind of consumer, beside projections (read models in the same database)
and the recovery tools: a reaction turns events into calls to *external* systems,
so it is never replayed by accident (nothing in the projections or in their
rebuild paths imports this package: ``tests/test_architecture.py`` checks it).

- :mod:`safereplay.reactions.reaction`: :class:`Reaction` (what it reacts to, the
  pure mapping of an event to its deliveries) and the :class:`Destination` protocol;
- :mod:`safereplay.reactions.delivery`: :class:`Delivery` (with its idempotency
  key), :class:`DeliveryOutcome`, the event's public form;
- :mod:`safereplay.reactions.ledger`: the delivery ledger's interface and the
  guarantee it gives; :mod:`safereplay.reactions.sqlite` and
  :mod:`safereplay.reactions.postgres` implement it, their SQL and logic written
  once in :mod:`safereplay.reactions.ledger_sql`;
- :mod:`safereplay.reactions.runner`: :class:`ReactionRunner`, record then deliver,
  with retries, a breaker per destination, parking in per-aggregate order;
- :mod:`safereplay.reactions.resilience`: the shapes of the policy, breaker,
  throttle and retry-budget values the runner is given, which
  :mod:`safereplay.reactions.guard` holds per destination;
- :mod:`safereplay.reactions.webhook`: the HTTP webhook destination (signed JSON);
- :mod:`safereplay.reactions.memory`: a recording destination for tests and drills.
"""

from safereplay.reactions.backends import open_ledger
from safereplay.reactions.delivery import (
    IDEMPOTENCY_NAMESPACE,
    Delivery,
    DeliveryOutcome,
    idempotency_key,
    public_form,
)
from safereplay.reactions.errors import (
    DeliveryMappingFailed,
    LedgerConflict,
    ReactionBusy,
    ReactionDefinitionError,
    ReactionError,
)
from safereplay.reactions.ledger import (
    DELIVERY_STATES,
    BreakerRecord,
    DeliveryLedger,
    DeliveryState,
    DestinationSummary,
    Lease,
    LedgerEntry,
)
from safereplay.reactions.memory import RecordingDestination, always, failing_times
from safereplay.reactions.postgres import PostgresDeliveryLedger
from safereplay.reactions.reaction import Destination, Reaction
from safereplay.reactions.resilience import Breaker, NoBreaker, RetryBudget, RetryPolicy, Throttle
from safereplay.reactions.runner import CycleResult, ReactionOptions, ReactionRunner
from safereplay.reactions.sqlite import SQLiteDeliveryLedger
from safereplay.reactions.webhook import WebhookDestination, WebhookSecret, verify_signature

__all__ = [
    "DELIVERY_STATES",
    "IDEMPOTENCY_NAMESPACE",
    "Breaker",
    "BreakerRecord",
    "CycleResult",
    "Delivery",
    "DeliveryLedger",
    "DeliveryMappingFailed",
    "DeliveryOutcome",
    "DeliveryState",
    "Destination",
    "DestinationSummary",
    "Lease",
    "LedgerConflict",
    "LedgerEntry",
    "NoBreaker",
    "PostgresDeliveryLedger",
    "Reaction",
    "ReactionBusy",
    "ReactionDefinitionError",
    "ReactionError",
    "ReactionOptions",
    "ReactionRunner",
    "RecordingDestination",
    "RetryBudget",
    "RetryPolicy",
    "SQLiteDeliveryLedger",
    "Throttle",
    "WebhookDestination",
    "WebhookSecret",
    "always",
    "failing_times",
    "idempotency_key",
    "open_ledger",
    "public_form",
    "verify_signature",
]

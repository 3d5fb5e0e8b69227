"""Errors raised by the reactions layer.

Every error :mod:`safereplay.reactions` raises derives from :class:`ReactionError`;
the ledger's database failures are the projections layer's own store errors
(translated at the same edge, with the same transient / permanent split), so a
caller that already retries :class:`~safereplay.projections.errors.DatabaseUnavailable`
needs nothing new::

    ReactionError
    ├── ReactionDefinitionError   a reaction or its destinations are invalid (name,
    │                             version, topics, a destination it names is missing)
    ├── LedgerConflict            the reaction's position is not the one this runner
    │                             read: another runner recorded meanwhile (rolled back)
    ├── ReactionBusy              another runner holds the reaction's lease
    └── DeliveryMappingFailed     a reaction's ``deliveries(envelope)`` raised, or the
                                  event could not be decoded: the position does not move

    projections' StoreError       the ledger's database failed
    └── DatabaseUnavailable       transient: retry later

Messages name reactions, destinations, positions, event ids and event types;
never payloads, idempotency secrets, URLs with credentials or connection strings.
"""

from __future__ import annotations

__all__ = [
    "DeliveryMappingFailed",
    "LedgerConflict",
    "ReactionBusy",
    "ReactionDefinitionError",
    "ReactionError",
]


class ReactionError(Exception):
    """Base class of every error raised by :mod:`safereplay.reactions`."""


class ReactionDefinitionError(ReactionError):
    """A reaction (or the destinations it is run with) is invalid; the message says what."""


class LedgerConflict(ReactionError):
    """The reaction's stored position moved under this runner; nothing was recorded.

    Two runners of one reaction would each owe the same events: the optimistic
    position check makes the second one's commit fail instead.
    """

    def __init__(self, reaction: str, *, expected: int, found: int | None) -> None:
        self.reaction = reaction
        self.expected = expected
        self.found = found
        now = "is missing" if found is None else f"is now {found}"
        super().__init__(
            f"reaction {reaction!r}: expected position {expected} but it {now}; another "
            "runner recorded deliveries meanwhile, this batch was rolled back"
        )


class ReactionBusy(ReactionError):
    """Another runner holds the reaction's lease (one runner per reaction at a time:
    two would send an aggregate's events out of order). Names the holder (a host
    and process, never a secret) and when its lease runs out unless renewed."""

    def __init__(self, reaction: str, *, holder: str, expires_at: float) -> None:
        self.reaction = reaction
        self.holder = holder
        self.expires_at = expires_at
        super().__init__(
            f"reaction {reaction!r} is being run by {holder} (its lease runs until "
            f"{expires_at:.0f}, seconds since the epoch, unless renewed); stop that runner "
            "or wait for its lease to run out"
        )


class DeliveryMappingFailed(ReactionError):
    """An event could not be turned into deliveries; the reaction's position stays put.

    Names the reaction, the position, the event type and the error's type (never the
    payload); the original exception is the ``__cause__``.
    """

    def __init__(self, reaction: str, *, position: int, event_type: str, error: BaseException):
        self.reaction = reaction
        self.position = position
        self.event_type = event_type
        self.error_type = type(error).__name__
        super().__init__(
            f"reaction {reaction!r} cannot map position {position} ({event_type}) to its "
            f"deliveries: {self.error_type}; fix the reaction and run it again"
        )

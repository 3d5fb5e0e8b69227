"""A reaction: the third kind of consumer, turning events into calls to other systems.

A projection folds events into tables in the same database, so replaying it is
safe; a reaction has *side effects* elsewhere (an e-mail, a CRM update, a
webhook), so it is never replayed by accident. It is a class with a ``name``, a
``version``, the event types it ``reacts_to`` and, per instance, the names of the
destinations it delivers to; its :meth:`Reaction.deliveries` maps one decoded event
to what is owed to each destination. That mapping must be *pure* (no I/O, no clock,
no randomness): the runner calls it again to rebuild a delivery it owes after a
restart, since the ledger never stores payloads, and must get the same answer::

    class RunCompletions(Reaction):
        name = "run_completions"
        reacts_to = (Run.Completed,)

    RunCompletions(destinations=("crm",))      # one delivery per event, public form

A :class:`Destination` is anything with a ``name`` and a ``send(delivery)`` that
returns a :class:`~safereplay.reactions.delivery.DeliveryOutcome`; it should raise
only on a bug (the runner counts an exception as a retryable failure and records
its type, never its message).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

from eventsourcing.utils import get_topic

from safereplay.domain.envelope import Envelope
from safereplay.reactions.delivery import Delivery, DeliveryOutcome
from safereplay.reactions.errors import ReactionDefinitionError

__all__ = ["Destination", "Reaction", "check_destination_name"]

_REACTION_NAME = re.compile(r"^[a-z](?:[a-z0-9]|_(?!_)){0,29}$")
_DESTINATION_NAME = re.compile(r"^[a-z][a-z0-9_.-]{0,62}$")


def check_destination_name(name: str) -> str:
    """``name`` if it is a valid destination name (lower case, digits, ``_.-``)."""
    if not isinstance(name, str) or not _DESTINATION_NAME.match(name):
        raise ReactionDefinitionError(
            f"destination name {name!r} must be 1-63 characters: lower-case letters, "
            "digits, '_', '.' or '-', starting with a letter"
        )
    return name


@runtime_checkable
class Destination(Protocol):
    """Where deliveries go: one external system (a webhook URL, a mail relay...)."""

    @property
    def name(self) -> str: ...

    def send(self, delivery: Delivery) -> DeliveryOutcome:
        """Send ``delivery`` once, carrying its idempotency key; say what came of it."""
        ...


class Reaction:
    """Base class of reactions; see the module's docstring.

    Class attributes: ``name`` (like a projection's: lower case, digits and single
    underscores, at most 30 characters), ``version`` (default 1), ``reacts_to`` (the
    event classes, or their topics, whose events it maps; the source filters on
    them in the database). Instances name their ``destinations``.
    """

    name: ClassVar[str] = ""
    version: ClassVar[int] = 1
    reacts_to: ClassVar[tuple[type[Any] | str, ...]] = ()
    #: The topics of ``reacts_to``, sorted (set when the class is defined).
    topics: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not _REACTION_NAME.match(cls.name or ""):
            raise ReactionDefinitionError(
                f"{cls.__qualname__}.name {cls.name!r} must be 1-30 characters: lower-case "
                "letters, digits and single underscores, starting with a letter"
            )
        if not isinstance(cls.version, int) or cls.version < 1:
            raise ReactionDefinitionError(f"reaction {cls.name!r}: version must be an int >= 1")
        if not cls.reacts_to:
            raise ReactionDefinitionError(
                f"reaction {cls.name!r} reacts to nothing: set reacts_to to its event classes"
            )
        cls.topics = tuple(
            sorted({t if isinstance(t, str) else get_topic(t) for t in cls.reacts_to})
        )

    def __init__(self, *, destinations: Sequence[str]) -> None:
        names = tuple(check_destination_name(d) for d in destinations)
        if not names:
            raise ReactionDefinitionError(f"reaction {self.name!r} needs at least one destination")
        if len(set(names)) != len(names):
            raise ReactionDefinitionError(f"reaction {self.name!r} names a destination twice")
        self.destinations = names

    def deliveries(self, envelope: Envelope) -> Sequence[Delivery]:
        """What ``envelope`` owes each destination (pure; see the module's docstring).

        The default: one delivery per destination, the event's public form. Override
        to send something else (:meth:`delivery` with a ``payload``), or to skip
        destinations for some events (return fewer).
        """
        return [self.delivery(destination, envelope) for destination in self.destinations]

    def delivery(
        self, destination: str, envelope: Envelope, payload: dict[str, Any] | None = None
    ) -> Delivery:
        """``envelope`` owed to ``destination`` (one of this reaction's), with its key."""
        if destination not in self.destinations:
            raise ReactionDefinitionError(
                f"reaction {self.name!r} has no destination {destination!r}"
            )
        return Delivery.of(self.name, destination, envelope, payload)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(destinations={self.destinations!r})"

"""The projection API: tables a projection owns, and one handler per event type.

A projection is a class::

    class RunStatusBoard(Projection):
        name = "run_status"
        version = 1
        tables = (
            Table("runs", key={"run_id": "text"}, values={"status": "text", "steps": "integer"}),
        )

        @handles(Run.Started)
        def started(self, envelope: Envelope, state: BatchState) -> None:
            state.put("runs", envelope.aggregate_id, {"status": "running", "steps": 0})

Handlers are deterministic: they read only the envelope and the batch state
(never the clock, random numbers or other I/O), so the same events always give
the same state. The event types a projection handles give its ``topics``, which
the event source filters on in the database. The tables (:class:`Table`, with
columns of portable types) are declared in :mod:`safereplay.projections.tables`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from eventsourcing.utils import get_topic

from safereplay.domain.envelope import Envelope
from safereplay.projections.errors import InvalidWrite, ProjectionDefinitionError

# Re-exported: the projection API declares its tables with these (and code imports them from here).
from safereplay.projections.tables import Column, ColumnType, Table, physical_table_name

if TYPE_CHECKING:
    from safereplay.projections.batch import BatchState

__all__ = [
    "Column",
    "ColumnType",
    "Handler",
    "Projection",
    "Table",
    "handles",
    "physical_table_name",
]

_PROJECTION_NAME = re.compile(r"^[a-z](?:[a-z0-9]|_(?!_)){0,29}$")
_HANDLES_ATTRIBUTE = "__safereplay_handles__"

Handler = Callable[[Envelope, "BatchState"], None]
F = TypeVar("F", bound=Callable[..., Any])


def handles(*event_classes: type[Any]) -> Callable[[F], F]:
    """Register the decorated method as the handler of ``event_classes``.

    The method is called as ``method(envelope, state)``.
    """
    if not event_classes:
        raise ProjectionDefinitionError("@handles needs at least one event class")

    def decorate(method: F) -> F:
        registered: tuple[type[Any], ...] = getattr(method, _HANDLES_ATTRIBUTE, ())
        setattr(method, _HANDLES_ATTRIBUTE, registered + tuple(event_classes))
        return method

    return decorate


class Projection:
    """Base class of projections. Subclasses set ``name``, ``version`` and ``tables``.

    - ``name``: lower-case identifier (at most 30 characters, no ``__``), unique
      within a projection store;
    - ``version``: bump it when the handlers or tables change meaning; a build is
      made by one version, and a different version needs a new build;
    - ``tables``: the tables it owns (see :class:`Table`);
    - ``partitionable``: whether the projection stays correct when partitions of
      the log (by aggregate) are applied concurrently. True when every row is
      written by one aggregate only, or is written with commutative
      :meth:`~safereplay.projections.batch.BatchState.merge` operations.
    - ``replay_safe``: whether applying an event a second time leaves the state
      as it was (handlers only ``put`` rows keyed by the event, or ``delete``).
      Only such projections may have a range of positions replayed into their
      live build; any other replay goes into a sandbox build.

    A subclass without ``name`` is abstract (a base for other projections).
    """

    name: ClassVar[str]
    version: ClassVar[int] = 1
    tables: ClassVar[tuple[Table, ...]] = ()
    partitionable: ClassVar[bool] = True
    replay_safe: ClassVar[bool] = False

    #: topic -> name of the handler method, collected from ``@handles``.
    handler_names: ClassVar[Mapping[str, str]] = {}
    #: The topics handled, sorted: the event source filters on them in the database.
    topics: ClassVar[tuple[str, ...]] = ()
    #: table name -> Table.
    table_map: ClassVar[Mapping[str, Table]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        handler_names: dict[str, str] = {}
        for klass in reversed(cls.__mro__):
            own: dict[str, str] = {}
            for attribute, member in vars(klass).items():
                for event_class in getattr(member, _HANDLES_ATTRIBUTE, ()):
                    topic = get_topic(event_class)
                    if topic in own:
                        raise ProjectionDefinitionError(
                            f"{klass.__qualname__} handles {event_class.__qualname__} twice "
                            f"({own[topic]} and {attribute})"
                        )
                    own[topic] = attribute
            handler_names.update(own)
        cls.handler_names = handler_names
        cls.topics = tuple(sorted(handler_names))
        if hasattr(cls, "name"):
            cls._validate()
        cls.table_map = {t.name: t for t in cls.tables}

    @classmethod
    def _validate(cls) -> None:
        where = f"projection {cls.__qualname__}"
        if not isinstance(cls.name, str) or not _PROJECTION_NAME.match(cls.name):
            raise ProjectionDefinitionError(
                f"{where}: name {cls.name!r} must be lower-case letters, digits and single "
                "'_' (at most 30, starting with a letter)"
            )
        if isinstance(cls.version, bool) or not isinstance(cls.version, int) or cls.version < 1:
            raise ProjectionDefinitionError(f"{where}: version must be an integer >= 1")
        if not isinstance(cls.tables, tuple) or not all(isinstance(t, Table) for t in cls.tables):
            raise ProjectionDefinitionError(f"{where}: tables must be a tuple of Table")
        names = [t.name for t in cls.tables]
        if len(set(names)) != len(names):
            raise ProjectionDefinitionError(f"{where}: two tables share a name")
        if not cls.handler_names:
            raise ProjectionDefinitionError(
                f"{where} handles no event type: decorate methods with @handles(EventClass)"
            )

    def handlers(self) -> dict[str, Handler]:
        """topic -> bound handler."""
        return {topic: getattr(self, method) for topic, method in self.handler_names.items()}

    @classmethod
    def table(cls, name: str) -> Table:
        try:
            return cls.table_map[name]
        except KeyError:
            raise InvalidWrite(
                f"projection {cls.name!r} has no table {name!r} "
                f"(it has {', '.join(sorted(cls.table_map)) or 'none'})"
            ) from None

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
the event source filters on in the database.

Column types are a small portable set, the same on SQLite and PostgreSQL:

=========== ======================= ===================== =====================
type        Python value            SQLite                PostgreSQL
=========== ======================= ===================== =====================
text        ``str`` (UUIDs accepted) TEXT                 text
integer     ``int``                 INTEGER               bigint
real        ``float``               REAL                  double precision
boolean     ``bool``                INTEGER (0/1)         boolean
json        JSON value              TEXT (JSON)           jsonb
timestamp   aware ``datetime`` UTC  TEXT (ISO 8601, UTC)  timestamptz
=========== ======================= ===================== =====================
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar, cast, get_args
from uuid import UUID

import orjson
from eventsourcing.utils import get_topic

from safereplay.domain.envelope import Envelope
from safereplay.projections.errors import InvalidWrite, ProjectionDefinitionError

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

ColumnType = Literal["text", "integer", "real", "boolean", "json", "timestamp"]
COLUMN_TYPES: frozenset[str] = frozenset(get_args(ColumnType))
#: Types a key column may have (exact equality, stable ordering on both backends).
KEY_TYPES = frozenset({"text", "integer", "boolean", "timestamp"})

_PROJECTION_NAME = re.compile(r"^[a-z](?:[a-z0-9]|_(?!_)){0,29}$")
_TABLE_NAME = re.compile(r"^[a-z](?:[a-z0-9]|_(?!_)){0,22}$")
_COLUMN_NAME = re.compile(r"^[a-z][a-z0-9_]{0,47}$")
_HANDLES_ATTRIBUTE = "__safereplay_handles__"

Handler = Callable[[Envelope, "BatchState"], None]
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Column:
    """One column: a name and a portable type."""

    name: str
    type: ColumnType

    def __post_init__(self) -> None:
        if not _COLUMN_NAME.match(self.name):
            raise ProjectionDefinitionError(
                f"column name {self.name!r} must be lower-case letters, digits and '_' "
                "(at most 48, starting with a letter)"
            )
        if self.type not in COLUMN_TYPES:
            raise ProjectionDefinitionError(
                f"column {self.name!r} has type {self.type!r}; use one of "
                f"{', '.join(sorted(COLUMN_TYPES))}"
            )

    def normalise(self, value: Any, *, where: str) -> Any:
        """``value`` in this column's canonical Python form (what a read returns)."""
        if value is None:
            return None
        kind = self.type
        if kind == "text":
            if isinstance(value, str):
                return value
            if isinstance(value, UUID):
                return str(value)
        elif kind == "integer":
            if isinstance(value, int) and not isinstance(value, bool):
                if -(2**63) <= value < 2**63:
                    return value
                raise InvalidWrite(f"{where}: {self.name} = {value} does not fit 64 bits")
        elif kind == "real":
            if isinstance(value, int | float) and not isinstance(value, bool):
                return float(value)
        elif kind == "boolean":
            if isinstance(value, bool):
                return value
        elif kind == "timestamp":
            if isinstance(value, datetime):
                if value.tzinfo is None:
                    raise InvalidWrite(
                        f"{where}: {self.name} is a naive datetime; timestamps must be "
                        "timezone-aware (e.g. envelope.occurred_at)"
                    )
                return value.astimezone(UTC)
        else:  # json
            try:
                # A round trip gives the form a later read returns (lists, not tuples...).
                return orjson.loads(orjson.dumps(value))
            except TypeError as exc:
                raise InvalidWrite(f"{where}: {self.name} is not JSON ({exc})") from None
        raise InvalidWrite(f"{where}: {self.name} is a {kind} column, not {type(value).__name__}")


def _columns(spec: Mapping[str, str] | Sequence[Column], what: str) -> tuple[Column, ...]:
    if isinstance(spec, Mapping):
        return tuple(Column(name, cast(ColumnType, kind)) for name, kind in spec.items())
    columns = tuple(spec)
    for column in columns:
        if not isinstance(column, Column):
            raise ProjectionDefinitionError(f"{what} must be Columns or a name->type mapping")
    return columns


@dataclass(frozen=True, init=False)
class Table:
    """A table a projection owns: key columns (the primary key) and value columns."""

    name: str
    key: tuple[Column, ...]
    values: tuple[Column, ...]
    columns: tuple[Column, ...] = field(repr=False, compare=False)
    by_name: Mapping[str, Column] = field(repr=False, compare=False)

    def __init__(
        self,
        name: str,
        *,
        key: Mapping[str, str] | Sequence[Column],
        values: Mapping[str, str] | Sequence[Column] = (),
    ) -> None:
        if not _TABLE_NAME.match(name):
            raise ProjectionDefinitionError(
                f"table name {name!r} must be lower-case letters, digits and single '_' "
                "(at most 23, starting with a letter)"
            )
        key_columns = _columns(key, f"table {name!r} key")
        value_columns = _columns(values, f"table {name!r} values")
        if not key_columns:
            raise ProjectionDefinitionError(f"table {name!r} needs at least one key column")
        for column in key_columns:
            if column.type not in KEY_TYPES:
                raise ProjectionDefinitionError(
                    f"table {name!r}: key column {column.name!r} cannot be {column.type}; "
                    f"key columns are {', '.join(sorted(KEY_TYPES))}"
                )
        columns = key_columns + value_columns
        names = [c.name for c in columns]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ProjectionDefinitionError(
                f"table {name!r} declares {', '.join(duplicates)} more than once"
            )
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "key", key_columns)
        object.__setattr__(self, "values", value_columns)
        object.__setattr__(self, "columns", columns)
        object.__setattr__(self, "by_name", {c.name: c for c in columns})

    @property
    def key_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.key)

    @property
    def value_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.values)

    def normalise_key(self, key: Any, *, where: str) -> tuple[Any, ...]:
        """A key as a tuple of canonical values (a scalar is accepted for one column)."""
        parts = key if isinstance(key, tuple) else (key,)
        if len(parts) != len(self.key):
            raise InvalidWrite(
                f"{where}: table {self.name!r} has key ({', '.join(self.key_names)}), "
                f"got {len(parts)} value(s)"
            )
        normalised = tuple(
            c.normalise(v, where=where) for c, v in zip(self.key, parts, strict=True)
        )
        if any(v is None for v in normalised):
            raise InvalidWrite(f"{where}: key of table {self.name!r} must not be null")
        return normalised


def physical_table_name(projection: str, table: str, build: int) -> str:
    """The table's name in the database: ``{projection}__{table}__b{build}``.

    At most 63 bytes (PostgreSQL's limit): names of at most 30 and 23 characters,
    builds up to 99999.
    """
    if not 1 <= build <= 99_999:
        raise ProjectionDefinitionError(f"build numbers run from 1 to 99999, not {build}")
    return f"{projection}__{table}__b{build}"


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

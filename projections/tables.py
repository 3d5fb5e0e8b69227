"""The tables a projection declares: columns of portable types, keys, physical names.

A :class:`Table` is a value: its name, its key columns (the primary key) and its
value columns, each a :class:`Column` of one portable type. Names are checked
here, when the projection class is defined, so the stores can put them into SQL
as identifiers. Column types are a small portable set, the same on SQLite and
PostgreSQL (the stores' type names: :mod:`safereplay.projections.store_sql`):

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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, cast, get_args
from uuid import UUID

import orjson

from safereplay.projections.errors import InvalidWrite, ProjectionDefinitionError

__all__ = ["COLUMN_TYPES", "KEY_TYPES", "Column", "ColumnType", "Table", "physical_table_name"]

ColumnType = Literal["text", "integer", "real", "boolean", "json", "timestamp"]
COLUMN_TYPES: frozenset[str] = frozenset(get_args(ColumnType))
#: Types a key column may have (exact equality, stable ordering on both backends).
KEY_TYPES = frozenset({"text", "integer", "boolean", "timestamp"})

_TABLE_NAME = re.compile(r"^[a-z](?:[a-z0-9]|_(?!_)){0,22}$")
_COLUMN_NAME = re.compile(r"^[a-z][a-z0-9_]{0,47}$")


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

"""The batch state: handlers write here, and a batch's writes reach the database folded.

One :class:`BatchState` lives for one batch. Handlers never see SQL: they read
rows with :meth:`~BatchState.get` and write with :meth:`~BatchState.put`,
:meth:`~BatchState.merge` and :meth:`~BatchState.delete`. Writes to the same row
are folded in memory, so a batch of 500 events that touch 40 rows ends as 40 row
writes, flushed by the store as a few set-based statements per table, in the same
transaction as the projection's new position.

Two kinds of pending row change:

- **absolute** (:meth:`put`, :meth:`delete`): the row's whole new value, last write
  wins. For rows one aggregate owns (one row per run...).
- **relative** (:meth:`merge`): commutative operations on columns — ``add`` a
  delta, keep the ``maximum`` or ``minimum``, ``set`` a value — flushed as
  ``INSERT ... ON CONFLICT DO UPDATE SET c = c + excluded.c``... For rows that
  many aggregates write (per-workflow statistics over many runs): merges from
  different partitions, committed concurrently in any order, give the same row.

A merge stays relative even after :meth:`get` read the row, so a partition never
overwrites another partition's contribution with a value it read earlier. Mixing
``add`` with ``maximum``/``minimum`` on one column within one batch cannot be
folded into one operation; the row is then read and written absolutely (correct,
but no longer commutative: avoid it in partitionable projections).

Why this module is long (about 670 lines): the fold rules above
are one concept, and their private helpers (pending rows, quick value checks,
the add/set fold) are the per-event hot path of every catch-up, tuned together
and property-tested together against the calls applied one by one. Kept in one
module, the rules and the code that implements them read side by side.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from safereplay.projections.errors import InvalidWrite
from safereplay.projections.tables import Column, Table

__all__ = ["BatchState", "MergeShape", "RowReader", "TableWrites"]

#: Reads one committed row: ``(table, key) -> row or None``.
RowReader = Callable[[Table, tuple[Any, ...]], dict[str, Any] | None]

_ADDABLE = frozenset({"integer", "real"})
_ORDERED = frozenset({"integer", "real", "timestamp"})


@dataclass(frozen=True)
class MergeShape:
    """Which columns a merge adds to, maximises, minimises and sets (one statement each)."""

    add: tuple[str, ...] = ()
    maximum: tuple[str, ...] = ()
    minimum: tuple[str, ...] = ()
    set: tuple[str, ...] = ()

    @property
    def columns(self) -> tuple[str, ...]:
        return self.add + self.maximum + self.minimum + self.set


@dataclass
class TableWrites:
    """A batch's folded writes to one table, ready to flush.

    Rows are dicts holding the key columns plus the written columns.
    """

    table: Table
    deletes: list[tuple[Any, ...]] = field(default_factory=list)
    upserts: list[dict[str, Any]] = field(default_factory=list)
    merges: dict[MergeShape, list[dict[str, Any]]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.deletes) + len(self.upserts) + sum(len(r) for r in self.merges.values())


class _Merge:
    __slots__ = ("add", "maximum", "minimum", "set")

    def __init__(self) -> None:
        self.add: dict[str, Any] = {}
        self.maximum: dict[str, Any] = {}
        self.minimum: dict[str, Any] = {}
        self.set: dict[str, Any] = {}

    def shape(self) -> MergeShape:
        return MergeShape(
            tuple(sorted(self.add)),
            tuple(sorted(self.maximum)),
            tuple(sorted(self.minimum)),
            tuple(sorted(self.set)),
        )

    def values(self) -> dict[str, Any]:
        return {**self.add, **self.maximum, **self.minimum, **self.set}


class _Absolute:
    __slots__ = ("row",)

    def __init__(self, row: dict[str, Any] | None) -> None:
        self.row = row  # None: deleted


class _Unread:
    pass


_UNREAD: Any = _Unread()


class _Row:
    __slots__ = ("base", "pending")

    def __init__(self) -> None:
        self.base: dict[str, Any] | _Unread | None = _UNREAD
        self.pending: _Absolute | _Merge | None = None


def _apply(row: dict[str, Any], merge: _Merge) -> None:
    for name, delta in merge.add.items():
        row[name] = (row.get(name) or 0) + delta
    for name, value in merge.maximum.items():
        current = row.get(name)
        row[name] = value if current is None else max(current, value)
    for name, value in merge.minimum.items():
        current = row.get(name)
        row[name] = value if current is None else min(current, value)
    row.update(merge.set)


# -- fast paths ---------------------------------------------------------------------------
#
# A catch-up calls put/merge once or twice per event. The checks and normalisation of
# Column.normalise / Table.normalise_key build their error context (``where``) on
# every call; here the common, valid cases are recognised first, with the value
# they would give, and anything else (an error included) takes the general path,
# which then gives the same result or raises the same error.

_SLOW: Any = object()
_MIN_INT = -(2**63)
_MAX_INT = 2**63


def _quick(kind: str, value: Any) -> Any:
    """``Column.normalise(value)`` for exact common types, else ``_SLOW``."""
    if value is None:
        return None
    cls = type(value)
    if kind == "text":
        if cls is str:
            return value
        if cls is UUID:
            return str(value)
    elif kind == "integer":
        if cls is int and _MIN_INT <= value < _MAX_INT:
            return value
    elif kind == "timestamp":
        # astimezone(UTC) returns a UTC datetime itself.
        if cls is datetime and value.tzinfo is UTC:
            return value
    elif kind == "boolean":
        if cls is bool:
            return value
    elif kind == "real" and cls is float:
        return value
    return _SLOW


class _TableInfo:
    """What the fast paths need of one table, computed once per table."""

    __slots__ = ("key_kinds", "key_names", "null_values", "single_key", "value_kinds")

    def __init__(self, spec: Table) -> None:
        self.key_names: tuple[str, ...] = spec.key_names
        self.key_kinds: tuple[str, ...] = tuple(c.type for c in spec.key)
        self.single_key: str | None = self.key_kinds[0] if len(self.key_kinds) == 1 else None
        self.value_kinds: dict[str, str] = {c.name: c.type for c in spec.values}
        self.null_values: dict[str, None] = dict.fromkeys(c.name for c in spec.values)

    def key(self, key: Any) -> tuple[Any, ...] | None:
        """``Table.normalise_key(key)`` when it is quick and valid, else None."""
        if self.single_key == "text":  # the common case: one id
            cls = type(key)
            if cls is UUID:
                return (str(key),)
            if cls is str:
                return (key,)
        if type(key) is tuple:
            kinds = self.key_kinds
            if len(key) != len(kinds):
                return None
            parts = []
            for kind, value in zip(kinds, key, strict=True):
                normalised = _quick(kind, value)
                if normalised is None or normalised is _SLOW:
                    return None
                parts.append(normalised)
            return tuple(parts)
        single = self.single_key
        if single is None or isinstance(key, tuple):
            return None
        normalised = _quick(single, key)
        if normalised is None or normalised is _SLOW:
            return None
        return (normalised,)

    def empty(self, key: tuple[Any, ...]) -> dict[str, Any]:
        row: dict[str, Any] = dict(zip(self.key_names, key, strict=True))
        row.update(self.null_values)
        return row


def _quick_ordered(
    kinds: Mapping[str, str], given: Mapping[str, Any], target: dict[str, Any]
) -> bool:
    """``maximum`` / ``minimum`` values into ``target`` if all quickly valid."""
    for name, value in given.items():
        kind = kinds.get(name)
        if kind is None or kind not in _ORDERED:
            return False
        normalised = _quick(kind, value)
        if normalised is _SLOW or normalised is None:
            return False
        target[name] = normalised
    return True


def _quick_delta(kind: str | None, value: Any) -> bool:
    """True when ``value`` is a valid ``add`` delta for a column of ``kind`` as it is."""
    return (kind == "integer" and type(value) is int and _MIN_INT <= value < _MAX_INT) or (
        kind == "real" and type(value) is float
    )


def _fold_add_set(into: _Merge, add: Mapping[str, Any], set: Mapping[str, Any]) -> None:
    """Fold checked, normalised ``add`` and ``set`` operations into ``into`` (which has
    no maximum or minimum): a delta adds to a value already set, a set replaces a delta."""
    into_add, into_set = into.add, into.set
    for name, delta in add.items():
        if name in into_set:
            into_set[name] = (into_set[name] or 0) + delta
        else:
            into_add[name] = into_add.get(name, 0) + delta
    for name, value in set.items():
        into_add.pop(name, None)
        into_set[name] = value


def _fold_counters(
    info: _TableInfo,
    into: _Merge | _Absolute,
    add: Mapping[str, int | float] | None,
    set: Mapping[str, Any] | None,
) -> bool:
    """Fold an add/set merge straight into the row's pending write: an add/set merge,
    or a whole row (``into.row`` not None).

    The most common write of a catch-up (counters and last values of a row written
    earlier in the batch), without building a :class:`_Merge` first: the same
    result as ``_quick_merge`` then ``BatchState._merge``. Every value is checked
    before anything is folded; False (nothing changed) sends the call to the
    general path, errors included.
    """
    if not add and not set:
        return False
    kinds = info.value_kinds
    add = add or {}
    for name, value in add.items():
        if not _quick_delta(kinds.get(name), value):
            return False
    values: dict[str, Any] = {}
    for name, value in (set or {}).items():
        kind = kinds.get(name)
        if kind is None or name in add:
            return False
        normalised = _quick(kind, value)
        if normalised is _SLOW:
            return False
        values[name] = normalised
    if type(into) is _Absolute:
        row = into.row
        assert row is not None
        for name, delta in add.items():
            row[name] = (row.get(name) or 0) + delta
        row.update(values)
    else:
        assert type(into) is _Merge
        _fold_add_set(into, add, values)
    return True


_INFO: dict[Table, _TableInfo] = {}


def _info(spec: Table) -> _TableInfo:
    info = _INFO.get(spec)
    if info is None:
        info = _INFO[spec] = _TableInfo(spec)
    return info


class BatchState:
    """In-memory write buffer of one batch; see the module docstring.

    ``key`` arguments are a tuple of the key columns' values in declared order, or
    a single value for a one-column key. Rows returned by :meth:`get` are dicts of
    every column (key columns included), copies the caller may modify.
    """

    def __init__(self, tables: Mapping[str, Table], reader: RowReader) -> None:
        self._tables = tables
        self._reader = reader
        self._rows: dict[str, dict[tuple[Any, ...], _Row]] = {name: {} for name in tables}
        self._info = {name: _info(spec) for name, spec in tables.items()}
        # str(UUID) is ~0.4 µs and most rows of a batch are written several times by
        # different events (each with its own UUID object): the normalised one-text-
        # column key of a UUID, by its 128-bit value (an int hashes and compares in C).
        self._uuid_keys: dict[int, tuple[Any, ...]] = {}
        #: Rows read through to the store (a round trip each).
        self.reads = 0

    # -- reading ------------------------------------------------------------------------

    def get(self, table: str, key: Any) -> dict[str, Any] | None:
        """The row as this batch would leave it: in-batch writes over the committed row."""
        spec, normalised = self._key(table, key, "get")
        row = self._rows[table].get(normalised)
        if row is None:
            row = self._rows[table][normalised] = _Row()
        pending = row.pending
        if isinstance(pending, _Absolute):
            return None if pending.row is None else dict(pending.row)
        base = self._base(spec, normalised, row)
        if pending is None:
            return None if base is None else dict(base)
        current = dict(base) if base is not None else self._empty(spec, normalised)
        _apply(current, pending)
        return current

    # -- writing ------------------------------------------------------------------------

    def put(self, table: str, key: Any, values: Mapping[str, Any]) -> None:
        """Replace the whole row (value columns not given become null)."""
        info = self._info.get(table)
        if info is not None:
            quick_key = self._quick_key(info, key)
            if quick_key is not None:
                row = info.empty(quick_key)
                kinds = info.value_kinds
                for name, value in values.items():
                    kind = kinds.get(name)
                    if kind is None:
                        break  # a key column, or no such column
                    normalised_value = _quick(kind, value)
                    if normalised_value is _SLOW:
                        break
                    row[name] = normalised_value
                else:
                    self._slot(table, quick_key).pending = _Absolute(row)
                    return
        spec, normalised = self._key(table, key, "put")
        where = f"put({table!r})"
        row = self._empty(spec, normalised)
        for name, value in values.items():
            column = self._column(spec, name, where)
            normalised_value = column.normalise(value, where=where)
            if column in spec.key:
                if normalised_value != row[name]:
                    raise InvalidWrite(f"{where}: {name} differs from the row's key")
                continue
            row[name] = normalised_value
        self._slot(table, normalised).pending = _Absolute(row)

    def delete(self, table: str, key: Any) -> None:
        """Delete the row (a no-op if it does not exist)."""
        _, normalised = self._key(table, key, "delete")
        self._slot(table, normalised).pending = _Absolute(None)

    def merge(
        self,
        table: str,
        key: Any,
        *,
        add: Mapping[str, int | float] | None = None,
        maximum: Mapping[str, Any] | None = None,
        minimum: Mapping[str, Any] | None = None,
        set: Mapping[str, Any] | None = None,
    ) -> None:
        """Merge into the row, creating it if missing (other columns null).

        ``add``: add a delta (null counts as 0; integer and real columns);
        ``maximum`` / ``minimum``: keep the larger / smaller value (integer, real,
        timestamp); ``set``: overwrite. Each column appears in one operation per call.
        """
        info = self._info.get(table)
        quick_key = self._quick_key(info, key) if info is not None else None
        if quick_key is not None:
            assert info is not None
            if maximum is None and minimum is None:
                row = self._rows[table].get(quick_key)
                if row is not None:
                    pending = row.pending
                    if type(pending) is _Absolute:
                        if pending.row is not None and _fold_counters(info, pending, add, set):
                            return
                    elif (
                        type(pending) is _Merge
                        and not pending.maximum
                        and not pending.minimum
                        and _fold_counters(info, pending, add, set)
                    ):
                        return
            quick = self._quick_merge(info, add, maximum, minimum, set)
            if quick is not None:
                self._merge(table, self._tables[table], quick_key, quick)
                return
        spec, normalised = self._key(table, key, "merge")
        where = f"merge({table!r})"
        ops = _Merge()
        seen: builtins.set[str] = builtins.set()
        for target, given, allowed in (
            (ops.add, add, _ADDABLE),
            (ops.maximum, maximum, _ORDERED),
            (ops.minimum, minimum, _ORDERED),
            (ops.set, set, None),
        ):
            for name, value in (given or {}).items():
                column = self._column(spec, name, where)
                if column in spec.key:
                    raise InvalidWrite(f"{where}: {name} is a key column")
                if name in seen:
                    raise InvalidWrite(f"{where}: {name} appears in two operations")
                seen.add(name)
                if allowed is not None:
                    if column.type not in allowed:
                        raise InvalidWrite(
                            f"{where}: cannot use that operation on {column.type} column {name}"
                        )
                    if value is None:
                        raise InvalidWrite(f"{where}: {name} needs a value, not null")
                target[name] = column.normalise(value, where=where)
        if not seen:
            raise InvalidWrite(f"{where}: nothing to merge")
        self._merge(table, spec, normalised, ops)

    def _quick_key(self, info: _TableInfo, key: Any) -> tuple[Any, ...] | None:
        """``info.key(key)``, remembered for UUID keys of one text column."""
        if type(key) is UUID and info.single_key == "text":
            number = key.int
            found = self._uuid_keys.get(number)
            if found is None:
                found = self._uuid_keys[number] = (str(key),)
            return found
        return info.key(key)

    @staticmethod
    def _quick_merge(
        info: _TableInfo,
        add: Mapping[str, int | float] | None,
        maximum: Mapping[str, Any] | None,
        minimum: Mapping[str, Any] | None,
        set: Mapping[str, Any] | None,
    ) -> _Merge | None:
        """The merge's operations when every column is quickly valid, else None."""
        ops = _Merge()
        kinds = info.value_kinds
        filled = 0
        if add:
            target = ops.add
            for name, value in add.items():
                if not _quick_delta(kinds.get(name), value):
                    return None
                target[name] = value
            filled += 1
        if maximum:
            if not _quick_ordered(kinds, maximum, ops.maximum):
                return None
            filled += 1
        if minimum:
            if not _quick_ordered(kinds, minimum, ops.minimum):
                return None
            filled += 1
        if set:
            target, added = ops.set, ops.add
            for name, value in set.items():
                kind = kinds.get(name)
                if kind is None or name in added:
                    return None  # no such column, or in two operations: the general path
                normalised = _quick(kind, value)
                if normalised is _SLOW:
                    return None
                target[name] = normalised
            filled += 1
        if not filled:
            return None  # nothing to merge: the general path says so
        if filled > 1 and (maximum or minimum):  # (add and set checked above)
            every = {**ops.add, **ops.maximum, **ops.minimum, **ops.set}
            if len(every) != len(ops.add) + len(ops.maximum) + len(ops.minimum) + len(ops.set):
                return None  # a column in two operations: the general path says so
        return ops

    def _merge(self, table: str, spec: Table, normalised: tuple[Any, ...], ops: _Merge) -> None:
        rows = self._rows[table]
        row = rows.get(normalised)
        if row is None:
            row = rows[normalised] = _Row()
        pending = row.pending
        if isinstance(pending, _Absolute):
            current = pending.row if pending.row is not None else self._empty(spec, normalised)
            _apply(current, ops)
            pending.row = current
        elif pending is None:
            row.pending = ops
        elif not self._fold(pending, ops):
            # Not foldable into one operation per column: resolve against the row.
            base = self._base(spec, normalised, row)
            current = dict(base) if base is not None else self._empty(spec, normalised)
            _apply(current, pending)
            _apply(current, ops)
            row.pending = _Absolute(current)

    # -- flushing -----------------------------------------------------------------------

    def writes(self) -> list[TableWrites]:
        """The folded writes, per table in declaration order (tables without writes omitted)."""
        result: list[TableWrites] = []
        # Merge shapes by their columns in operation order; one MergeShape object per
        # distinct shape, so rows group by identity in first-seen order.
        shapes: dict[tuple[tuple[str, ...], ...], MergeShape] = {}
        canonical: dict[MergeShape, MergeShape] = {}
        for name, rows in self._rows.items():
            spec = self._tables[name]
            key_names = self._info[name].key_names
            writes = TableWrites(spec)
            grouped: dict[int, list[dict[str, Any]]] = {}
            order: list[MergeShape] = []
            for key, row in rows.items():
                pending = row.pending
                if pending is None:
                    continue
                if isinstance(pending, _Absolute):
                    if pending.row is None:
                        writes.deletes.append(key)
                    else:
                        writes.upserts.append(pending.row)
                    continue
                values = dict(zip(key_names, key, strict=True))
                values.update(pending.add)
                values.update(pending.maximum)
                values.update(pending.minimum)
                values.update(pending.set)
                columns = (
                    tuple(pending.add),
                    tuple(pending.maximum),
                    tuple(pending.minimum),
                    tuple(pending.set),
                )
                shape = shapes.get(columns)
                if shape is None:
                    shape = pending.shape()
                    shape = shapes[columns] = canonical.setdefault(shape, shape)
                bucket = grouped.get(id(shape))
                if bucket is None:
                    bucket = grouped[id(shape)] = []
                    order.append(shape)
                bucket.append(values)
            writes.merges = {shape: grouped[id(shape)] for shape in order}
            if len(writes):
                result.append(writes)
        return result

    def __len__(self) -> int:
        """Number of rows with a pending write."""
        return sum(
            1 for rows in self._rows.values() for row in rows.values() if row.pending is not None
        )

    def __iter__(self) -> Iterator[str]:
        return iter(self._tables)

    # -- internals ----------------------------------------------------------------------

    def _key(self, table: str, key: Any, action: str) -> tuple[Table, tuple[Any, ...]]:
        spec = self._tables.get(table)
        if spec is None:
            raise InvalidWrite(
                f"{action}: no table {table!r} (this projection has "
                f"{', '.join(sorted(self._tables)) or 'none'})"
            )
        return spec, spec.normalise_key(key, where=f"{action}({table!r})")

    @staticmethod
    def _column(spec: Table, name: str, where: str) -> Column:
        column = spec.by_name.get(name)
        if column is None:
            raise InvalidWrite(f"{where}: table {spec.name!r} has no column {name!r}")
        return column

    @staticmethod
    def _empty(spec: Table, key: tuple[Any, ...]) -> dict[str, Any]:
        row: dict[str, Any] = dict(zip(spec.key_names, key, strict=True))
        for column in spec.values:
            row[column.name] = None
        return row

    def _slot(self, table: str, key: tuple[Any, ...]) -> _Row:
        rows = self._rows[table]
        row = rows.get(key)
        if row is None:
            row = rows[key] = _Row()
        return row

    def _base(self, spec: Table, key: tuple[Any, ...], row: _Row) -> dict[str, Any] | None:
        if isinstance(row.base, _Unread):
            self.reads += 1
            row.base = self._reader(spec, key)
        return row.base

    @staticmethod
    def _fold(into: _Merge, ops: _Merge) -> bool:
        """Fold ``ops`` into ``into`` column by column; False if some column cannot fold."""
        if not (into.maximum or into.minimum or ops.maximum or ops.minimum):
            # The common case (counters and last values): only add and set, which
            # always fold; the same steps as below without the empty ones.
            _fold_add_set(into, ops.add, ops.set)
            return True
        for name in ops.add:
            if name in into.maximum or name in into.minimum:
                return False
        for name in (*ops.maximum, *ops.minimum):
            if name in into.add:
                return False
        for name in ops.maximum:
            if name in into.minimum:
                return False
        for name in ops.minimum:
            if name in into.maximum:
                return False
        for name, delta in ops.add.items():
            if name in into.set:
                into.set[name] = (into.set[name] or 0) + delta
            else:
                into.add[name] = into.add.get(name, 0) + delta
        for name, value in ops.maximum.items():
            if name in into.set:
                current = into.set[name]
                into.set[name] = value if current is None else max(current, value)
            else:
                current = into.maximum.get(name)
                into.maximum[name] = value if current is None else max(current, value)
        for name, value in ops.minimum.items():
            if name in into.set:
                current = into.set[name]
                into.set[name] = value if current is None else min(current, value)
            else:
                current = into.minimum.get(name)
                into.minimum[name] = value if current is None else min(current, value)
        for name, value in ops.set.items():
            into.add.pop(name, None)
            into.maximum.pop(name, None)
            into.minimum.pop(name, None)
            into.set[name] = value
        return True

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
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from projections.errors import InvalidWrite
from projections.projection import Column, Table

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
        row = self._slot(table, normalised)
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
        for name, rows in self._rows.items():
            spec = self._tables[name]
            writes = TableWrites(spec)
            for key, row in rows.items():
                pending = row.pending
                if pending is None:
                    continue
                if isinstance(pending, _Absolute):
                    if pending.row is None:
                        writes.deletes.append(key)
                    else:
                        writes.upserts.append(pending.row)
                else:
                    values = dict(zip(spec.key_names, key, strict=True))
                    values.update(pending.values())
                    writes.merges.setdefault(pending.shape(), []).append(values)
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

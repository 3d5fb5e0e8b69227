"""The projection store's SQL, written once for both backends (see :mod:`~.sqltemplate`).

Templates for the registry tables (builds, positions, parked events: see
:mod:`safereplay.projections.store`), for a commit's fence, and for the rows of a
projection's tables. The slots ``{builds}``, ``{positions}`` and ``{parked}`` are
the registry tables, ``{table}`` a projection's table; type slots (``{text}``,
``{int}``, ``{bigint}``...) are filled from :data:`TYPES`.

Where the backends really differ, both spellings sit side by side in one
mapping per difference (:data:`TYPES`, :data:`ROW_SOURCE`, :data:`KEEP`,
:data:`RESOLVE_PARKED`, :data:`REGISTRY_EXISTS`), with the reason. Everything
else is one text. The stores render these once, when they are opened
(:func:`store_statements`) or first write a table in a given shape
(:func:`table_statements`, :func:`merge_statement`), and keep the result.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal

from safereplay.domain.schema import SchemaStep
from safereplay.projections.batch import MergeShape
from safereplay.projections.sqltemplate import Q, Renderer
from safereplay.projections.tables import Table

__all__ = [
    "KEEP",
    "MATCH_ALL",
    "PROJECTIONS_COMPONENT",
    "PROJECTIONS_SCHEMA_VERSION",
    "REGISTRY_EXISTS",
    "RESOLVE_PARKED",
    "ROW_SOURCE",
    "SELECT_MATCHING",
    "TYPES",
    "StoreStatements",
    "TableStatements",
    "fence_statement",
    "fence_tally_statement",
    "merge_statement",
    "registry_schema_step",
    "store_statements",
    "table_statements",
]

#: The registry's component in the schema catalog (:mod:`safereplay.domain.schema`)
#: and its version: raise it with any change to the registry tables, and make
#: :func:`registry_schema_step` bring the previous version up to it.
PROJECTIONS_COMPONENT = "projections"
PROJECTIONS_SCHEMA_VERSION = 2
# Versions: 1, the first registry; 2, a parked event can be skipped (``skipped_reason``:
# resolved without being applied, because it can never apply).

Dialect = Literal["sqlite", "postgres"]

# -- where the backends differ ----------------------------------------------------------

#: Type names, by portable column type (see :mod:`~.tables`) and, for the registry,
#: ``int`` / ``bigint`` / ``uuid``. SQLite stores a value in one of a few storage
#: classes (timestamps as ISO 8601 text, JSON as text, booleans as 0/1); PostgreSQL
#: has a type for each.
TYPES: Mapping[Dialect, Mapping[str, str]] = {
    "sqlite": {
        "text": "TEXT",
        "integer": "INTEGER",
        "real": "REAL",
        "boolean": "INTEGER",
        "json": "TEXT",
        "timestamp": "TEXT",
        "int": "INTEGER",
        "bigint": "INTEGER",
        "uuid": "TEXT",
    },
    "postgres": {
        "text": "text",
        "integer": "bigint",
        "real": "double precision",
        "boolean": "boolean",
        "json": "jsonb",
        "timestamp": "timestamptz",
        "int": "integer",
        "bigint": "bigint",
        "uuid": "uuid",
    },
}

#: Where a batch's rows come from in :data:`WRITE_ROWS`. PostgreSQL: every row of
#: the batch in one statement, one array per column unnested server-side (one round
#: trip; a batch holds each key once, so ON CONFLICT never meets a row twice).
#: SQLite has no arrays, and no round trips either (it runs in this process): one
#: row of placeholders, bound once per row with ``executemany``.
ROW_SOURCE: Mapping[Dialect, tuple[str, str]] = {
    # (the whole source with slot {columns}, the piece repeated for each column)
    "postgres": ("SELECT * FROM unnest({columns})", "%s::{type}[]"),
    "sqlite": ("VALUES ({columns})", "%s"),
}

#: A merge keeping the larger / smaller of the stored and the written value.
#: PostgreSQL's GREATEST and LEAST skip NULLs; SQLite's two-argument max() and
#: min() return NULL when either is NULL, hence the COALESCE (a new row's stored
#: value is NULL).
KEEP: Mapping[Dialect, Mapping[str, str]] = {
    "postgres": {
        "maximum": "{column} = GREATEST(t.{column}, EXCLUDED.{column})",
        "minimum": "{column} = LEAST(t.{column}, EXCLUDED.{column})",
    },
    "sqlite": {
        "maximum": "{column} = max(COALESCE(t.{column}, EXCLUDED.{column}), EXCLUDED.{column})",
        "minimum": "{column} = min(COALESCE(t.{column}, EXCLUDED.{column}), EXCLUDED.{column})",
    },
}

#: A redrive resolving parked positions. PostgreSQL: all in one statement, the
#: positions as one array; SQLite has no arrays: one statement per position (the
#: store adds up the changed rows, to detect a concurrent redrive either way).
RESOLVE_PARKED: Mapping[Dialect, str] = {
    "postgres": (
        "UPDATE {parked} SET resolved_at = %(now)s WHERE projection = %(projection)s "
        "AND build = %(build)s AND position = ANY(%(positions)s) AND resolved_at IS NULL"
    ),
    "sqlite": (
        "UPDATE {parked} SET resolved_at = %(now)s WHERE projection = %(projection)s "
        "AND build = %(build)s AND position = %(position)s AND resolved_at IS NULL"
    ),
}

#: Whether the registry exists yet: each database's own catalog.
REGISTRY_EXISTS: Mapping[Dialect, str] = {
    "postgres": "SELECT to_regclass(%(table)s) IS NOT NULL",
    "sqlite": "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = %(table)s",
}

# -- the registry -----------------------------------------------------------------------

CREATE_BUILDS = (
    "CREATE TABLE IF NOT EXISTS {builds} ("
    "projection {text} NOT NULL, build {int} NOT NULL, version {int} NOT NULL, "
    "status {text} NOT NULL CHECK (status IN ('building', 'live', 'retired')), "
    "created_at {timestamp} NOT NULL, tables {json} NOT NULL, "
    "PRIMARY KEY (projection, build))"
)
# One live build per projection.
CREATE_ONE_LIVE_BUILD = (
    "CREATE UNIQUE INDEX IF NOT EXISTS {builds_live} ON {builds} (projection) WHERE status = 'live'"
)
CREATE_POSITIONS = (
    "CREATE TABLE IF NOT EXISTS {positions} ("
    "projection {text} NOT NULL, build {int} NOT NULL, "
    "partition_index {int} NOT NULL, partition_count {int} NOT NULL, "
    "position {bigint} NOT NULL DEFAULT 0, events_applied {bigint} NOT NULL DEFAULT 0, "
    "events_parked {bigint} NOT NULL DEFAULT 0, committed_at {timestamp}, "
    "PRIMARY KEY (projection, build, partition_index, partition_count))"
)
CREATE_PARKED = (
    "CREATE TABLE IF NOT EXISTS {parked} ("
    "projection {text} NOT NULL, build {int} NOT NULL, position {bigint} NOT NULL, "
    "partition_index {int} NOT NULL, partition_count {int} NOT NULL, "
    "aggregate_id {uuid} NOT NULL, aggregate_version {bigint} NOT NULL, "
    "topic {text} NOT NULL, event_type {text} NOT NULL, error_type {text} NOT NULL, "
    "error_message {text} NOT NULL, attempts {int} NOT NULL, "
    "first_seen_at {timestamp} NOT NULL, last_seen_at {timestamp} NOT NULL, "
    "reason {text} NOT NULL, blocked_by {bigint}, resolved_at {timestamp}, "
    "skipped_reason {text}, "
    "PRIMARY KEY (projection, build, position))"
)
#: Version 2 on a version 1 registry. SQLite has no ADD COLUMN IF NOT EXISTS: the
#: step absorbs its "duplicate column" error instead.
ADD_SKIPPED_REASON: Mapping[Dialect, str] = {
    "postgres": "ALTER TABLE {parked} ADD COLUMN IF NOT EXISTS skipped_reason {text}",
    "sqlite": "ALTER TABLE {parked} ADD COLUMN skipped_reason {text}",
}

BUILDS = (
    "SELECT build, version, status, created_at, tables FROM {builds} "
    "WHERE projection = %(projection)s ORDER BY build"
)
REGISTER_BUILD = (
    "INSERT INTO {builds} (projection, build, version, status, created_at, tables) "
    "VALUES (%(projection)s, %(build)s, %(version)s, %(status)s, %(created_at)s, %(tables)s)"
)
NEXT_BUILD = "SELECT COALESCE(MAX(build), 0) + 1 FROM {builds} WHERE projection = %(projection)s"
BUILD_STATUSES = (
    "SELECT build, status FROM {builds} WHERE projection = %(projection)s ORDER BY build"
)
RETIRE_LIVE_BUILD = (
    "UPDATE {builds} SET status = 'retired' "
    "WHERE projection = %(projection)s AND status = 'live' AND build <> %(build)s"
)
SET_LIVE = (
    "UPDATE {builds} SET status = 'live' WHERE projection = %(projection)s AND build = %(build)s"
)
DROP_TABLE = "DROP TABLE IF EXISTS {table}"
# A build's rows in one registry table ({registry}: positions, parked or builds).
DELETE_BUILD_ROWS = "DELETE FROM {registry} WHERE projection = %(projection)s AND build = %(build)s"
PROJECTION_NAMES = "SELECT DISTINCT projection FROM {builds} ORDER BY projection"

_CHECKPOINTS = (
    "SELECT partition_index, partition_count, position, events_applied, events_parked, "
    "committed_at FROM {positions} WHERE projection = %(projection)s AND build = %(build)s"
)
_OF_PARTITION = " AND partition_index = %(index)s AND partition_count = %(count)s"
CHECKPOINT = _CHECKPOINTS + _OF_PARTITION
CHECKPOINTS = _CHECKPOINTS + " ORDER BY partition_count, partition_index"
# The rows a repartition regroups (locked on PostgreSQL).
BUILD_CHECKPOINTS = _CHECKPOINTS
PARTITION_COUNTS = (
    "SELECT DISTINCT partition_count FROM {positions} "
    "WHERE projection = %(projection)s AND build = %(build)s"
)
CREATE_POSITION = (
    "INSERT INTO {positions} (projection, build, partition_index, partition_count) "
    "VALUES (%(projection)s, %(build)s, %(index)s, %(count)s) ON CONFLICT DO NOTHING"
)
INSERT_POSITION = (
    "INSERT INTO {positions} (projection, build, partition_index, partition_count, position, "
    "events_applied, events_parked, committed_at) VALUES (%(projection)s, %(build)s, "
    "%(index)s, %(count)s, %(position)s, %(applied)s, %(parked)s, %(committed_at)s)"
)
# The optimistic check: the row moves only from the position the batch started from.
MOVE_POSITION = (
    "UPDATE {positions} SET position = %(position)s, "
    "events_applied = events_applied + %(applied)s, events_parked = events_parked + %(parked)s, "
    "committed_at = %(committed_at)s WHERE projection = %(projection)s AND build = %(build)s"
    + _OF_PARTITION
    + " AND position = %(expected)s"
)
# PostgreSQL returns the moved row with the update; the SQLite store reads it back
# with CHECKPOINT in the same transaction (RETURNING needs SQLite 3.35 or later).
MOVED_CHECKPOINT = (
    " RETURNING partition_index, partition_count, position, events_applied, events_parked, "
    "committed_at"
)
POSITION = (
    "SELECT position FROM {positions} WHERE projection = %(projection)s AND build = %(build)s"
    + _OF_PARTITION
)

PARK = (
    "INSERT INTO {parked} (projection, build, position, partition_index, partition_count, "
    "aggregate_id, aggregate_version, topic, event_type, error_type, error_message, attempts, "
    "first_seen_at, last_seen_at, reason, blocked_by) VALUES (%(projection)s, %(build)s, "
    "%(position)s, %(index)s, %(count)s, %(aggregate_id)s, %(aggregate_version)s, %(topic)s, "
    "%(event_type)s, %(error_type)s, %(error_message)s, %(attempts)s, %(first_seen_at)s, "
    "%(last_seen_at)s, %(reason)s, %(blocked_by)s)"
)
_PARKED = (
    "SELECT position, partition_index, partition_count, aggregate_id, aggregate_version, "
    "topic, event_type, error_type, error_message, attempts, first_seen_at, last_seen_at, "
    "reason, blocked_by, resolved_at, skipped_reason FROM {parked} "
    "WHERE projection = %(projection)s AND build = %(build)s"
)
PARKED = _PARKED + " ORDER BY position"
UNRESOLVED_PARKED = _PARKED + " AND resolved_at IS NULL ORDER BY position"
BLOCKED_AGGREGATES = (
    "SELECT aggregate_id, MIN(position) FROM {parked} WHERE projection = %(projection)s "
    "AND build = %(build)s AND resolved_at IS NULL GROUP BY aggregate_id"
)
# An event that can never apply, skipped by an operator: resolved, not applied.
SKIP_PARKED = (
    "UPDATE {parked} SET resolved_at = %(now)s, skipped_reason = %(reason)s "
    "WHERE projection = %(projection)s AND build = %(build)s AND position = %(position)s "
    "AND resolved_at IS NULL"
)
# A redriven event that failed again stays parked, updated in place.
PARKED_AGAIN = (
    "UPDATE {parked} SET attempts = %(attempts)s, last_seen_at = %(last_seen_at)s, "
    "error_type = %(error_type)s, error_message = %(error_message)s, reason = %(reason)s, "
    "blocked_by = %(blocked_by)s WHERE projection = %(projection)s AND build = %(build)s "
    "AND position = %(position)s AND resolved_at IS NULL"
)

# A commit's fence: the lease row must still be there (see store.Fence); locked
# FOR SHARE on PostgreSQL so it cannot be taken over until the commit ends.
FENCE = "SELECT 1 FROM {table} WHERE {match}"
# A fence with a tally (see store.Tally): its row counts the commits it guards, moved
# in the commit's transaction (the update locks the row until the commit ends).
FENCE_TALLY = (
    "UPDATE {table} SET {position} = %s, {applied} = {applied} + %s, "
    "{parked} = {parked} + %s WHERE {match}"
)

# -- a projection's tables --------------------------------------------------------------

CREATE_TABLE = "CREATE TABLE IF NOT EXISTS {table} ({columns}, PRIMARY KEY ({keys}))"
KEY_COLUMN = "{column} {type} NOT NULL"
VALUE_COLUMN = "{column} {type}"
SELECT_ROW = "SELECT {columns} FROM {table} WHERE {key}"
SELECT_ROWS = "SELECT {columns} FROM {table} ORDER BY {keys}"
# Some rows: declared columns equal to bound values (``match``, or TRUE), in key order.
SELECT_MATCHING = "SELECT {columns} FROM {table} WHERE {match} ORDER BY {keys} LIMIT %s"
MATCH_ALL = "1 = 1"
DELETE_ROW = "DELETE FROM {table} WHERE {key}"
IS_PARAMETER = "{column} = %s"
# A batch's rows (ROW_SOURCE), written whole (upserts) or merged into the stored row.
WRITE_ROWS = "INSERT INTO {table} AS t ({columns}) {rows} ON CONFLICT ({keys}) {action}"
REPLACE = "DO UPDATE SET {sets}"
KEEP_STORED = "DO NOTHING"
SET = "{column} = EXCLUDED.{column}"
ADD = "{column} = COALESCE(t.{column}, 0) + EXCLUDED.{column}"


@dataclass(frozen=True)
class StoreStatements(Generic[Q]):
    """The registry's statements, rendered for one store."""

    create_registry: tuple[Q, ...]
    #: Version 1 -> 2 of the registry (see ADD_SKIPPED_REASON).
    upgrade_registry: tuple[Q, ...]
    registry_exists: Q
    builds: Q
    register_build: Q
    next_build: Q
    build_statuses_for_update: Q
    retire_live_build: Q
    set_live: Q
    #: Deletes of a build's rows: positions, parked events, then the build.
    delete_build: tuple[Q, ...]
    projection_names: Q
    checkpoint: Q
    checkpoints: Q
    build_checkpoints_for_update: Q
    partition_counts: Q
    create_position: Q
    insert_position: Q
    delete_positions: Q
    move_position: Q
    move_position_returning: Q
    position: Q
    park: Q
    parked: Q
    unresolved_parked: Q
    blocked_aggregates: Q
    resolve_parked: Q
    parked_again: Q
    skip_parked: Q


def store_statements(
    r: Renderer[Q], *, builds: str, positions: str, parked: str
) -> StoreStatements[Q]:
    """Every registry statement for ``r``'s backend, tables named as given."""
    tables = {"builds": r.table(builds), "positions": r.table(positions), "parked": r.table(parked)}
    types = {kind: r.text(name) for kind, name in TYPES[r.dialect].items()}

    def q(template: str) -> Q:
        return r.render(template, **tables)

    move = q(MOVE_POSITION)
    return StoreStatements(
        create_registry=(
            r.render(CREATE_BUILDS, **tables, **types),
            r.render(CREATE_ONE_LIVE_BUILD, builds_live=r.name(f"{builds}_live"), **tables),
            r.render(CREATE_POSITIONS, **tables, **types),
            r.render(CREATE_PARKED, **tables, **types),
        ),
        upgrade_registry=(r.render(ADD_SKIPPED_REASON[r.dialect], **tables, **types),),
        registry_exists=r.render(REGISTRY_EXISTS[r.dialect]),
        builds=q(BUILDS),
        register_build=q(REGISTER_BUILD),
        next_build=q(NEXT_BUILD),
        # Two set_live calls of one projection on PostgreSQL serialise on its build
        # rows (all of them, in build order: a swap and a rollback name different ones).
        build_statuses_for_update=r.locked(q(BUILD_STATUSES), "update"),
        retire_live_build=q(RETIRE_LIVE_BUILD),
        set_live=q(SET_LIVE),
        delete_build=tuple(
            r.render(DELETE_BUILD_ROWS, registry=tables[t])
            for t in ("positions", "parked", "builds")
        ),
        projection_names=q(PROJECTION_NAMES),
        checkpoint=q(CHECKPOINT),
        checkpoints=q(CHECKPOINTS),
        # A runner's commit of the old partitioning waits, then finds its row gone
        # (PositionConflict) instead of moving a stale position.
        build_checkpoints_for_update=r.locked(q(BUILD_CHECKPOINTS), "update"),
        partition_counts=q(PARTITION_COUNTS),
        create_position=q(CREATE_POSITION),
        insert_position=q(INSERT_POSITION),
        delete_positions=r.render(DELETE_BUILD_ROWS, registry=tables["positions"]),
        move_position=move,
        move_position_returning=r.join((move, r.text(MOVED_CHECKPOINT)), ""),
        position=q(POSITION),
        park=q(PARK),
        parked=q(PARKED),
        unresolved_parked=q(UNRESOLVED_PARKED),
        blocked_aggregates=q(BLOCKED_AGGREGATES),
        resolve_parked=q(RESOLVE_PARKED[r.dialect]),
        parked_again=q(PARKED_AGAIN),
        skip_parked=q(SKIP_PARKED),
    )


def fence_statement(r: Renderer[Q], table: str, columns: tuple[str, ...]) -> Q:
    """Whether a fence holds: its values bound in ``columns`` order."""
    match = r.each(IS_PARAMETER, columns, " AND ")
    return r.locked(r.render(FENCE, table=r.table(table), match=match), "share")


def fence_tally_statement(
    r: Renderer[Q], table: str, columns: tuple[str, ...], tally: tuple[str, str, str]
) -> Q:
    """Move a fence's tally (position, applied, parked: bound first, in that order)
    where its row holds (its values bound next, in ``columns`` order)."""
    position, applied, parked = (r.name(c) for c in tally)
    match = r.each(IS_PARAMETER, columns, " AND ")
    return r.render(
        FENCE_TALLY,
        table=r.table(table),
        position=position,
        applied=applied,
        parked=parked,
        match=match,
    )


@dataclass(frozen=True)
class TableStatements(Generic[Q]):
    """The statements of one physical table; values bound in column order."""

    create: Q
    #: One row by key (key columns' values).
    select_row: Q
    #: Every row, in key order.
    select_rows: Q
    #: One row by key (key columns' values).
    delete_row: Q
    #: Whole rows (every column, in order): inserted, or replacing the stored row.
    upsert: Q


def table_statements(r: Renderer[Q], table: Table, physical: str) -> TableStatements[Q]:
    name = r.table(physical)
    columns = r.names(c.name for c in table.columns)
    keys = r.names(table.key_names)
    key = r.each(IS_PARAMETER, table.key_names, " AND ")
    types = TYPES[r.dialect]
    definitions = r.join(
        [r.render(KEY_COLUMN, column=r.name(c.name), type=r.text(types[c.type])) for c in table.key]
        + [
            r.render(VALUE_COLUMN, column=r.name(c.name), type=r.text(types[c.type]))
            for c in table.values
        ],
        ", ",
    )
    if table.values:
        action = r.render(REPLACE, sets=r.each(SET, table.value_names, ", "))
    else:
        action = r.text(KEEP_STORED)
    return TableStatements(
        create=r.render(CREATE_TABLE, table=name, columns=definitions, keys=keys),
        select_row=r.render(SELECT_ROW, columns=columns, table=name, key=key),
        select_rows=r.render(SELECT_ROWS, columns=columns, table=name, keys=keys),
        delete_row=r.render(DELETE_ROW, table=name, key=key),
        upsert=_write_rows(r, table, name, [c.name for c in table.columns], action),
    )


def merge_statement(r: Renderer[Q], table: Table, physical: str, shape: MergeShape) -> Q:
    """Rows of ``shape`` (key columns, then ``shape.columns``) merged into the stored rows."""
    keep = KEEP[r.dialect]
    parts = (
        (ADD, shape.add),
        (keep["maximum"], shape.maximum),
        (keep["minimum"], shape.minimum),
        (SET, shape.set),
    )
    sets = r.join([r.each(template, names, ", ") for template, names in parts if names], ", ")
    action = r.render(REPLACE, sets=sets)
    names = list(table.key_names + shape.columns)
    return _write_rows(r, table, r.table(physical), names, action)


def _write_rows(r: Renderer[Q], table: Table, name: Q, names: list[str], action: Q) -> Q:
    source, each = ROW_SOURCE[r.dialect]
    types = TYPES[r.dialect]
    rows = r.render(
        source,
        columns=r.join(
            (r.render(each, type=r.text(types[table.by_name[n].type])) for n in names), ", "
        ),
    )
    return r.render(
        WRITE_ROWS,
        table=name,
        columns=r.names(names),
        rows=rows,
        keys=r.names(table.key_names),
        action=action,
    )


def registry_schema_step(
    create_registry: Sequence[Any], upgrade_registry: Sequence[Any] = ()
) -> SchemaStep:
    """The ``projections`` step: a store's rendered ``create_registry`` statements,
    after ``upgrade_registry`` when the registry is at version 1."""
    statements = list(create_registry)
    upgrades = list(upgrade_registry)

    def apply(cursor: Any, from_version: int) -> None:
        if 0 < from_version < 2:
            for statement in upgrades:
                try:
                    cursor.execute(statement)
                except sqlite3.OperationalError as exc:
                    if "duplicate column" not in str(exc):
                        raise
        for statement in statements:
            cursor.execute(statement)

    return SchemaStep(
        PROJECTIONS_COMPONENT,
        PROJECTIONS_SCHEMA_VERSION,
        apply,
        "the projection store's registry: builds, positions, parked events",
    )

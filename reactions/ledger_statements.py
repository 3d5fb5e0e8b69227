"""The delivery ledger's tables and statements, written once for SQLite and PostgreSQL.

Templates use the notation of :mod:`safereplay.projections.sqltemplate`: a slot
``{reaction_deliveries}`` is the table ``safereplay_reaction_deliveries``, values are
always bound parameters. The table definitions fill type slots from :data:`TYPES`
(the one place the backends differ in text). The tables are set up by one schema
step (:func:`ledger_schema_step`), the ``reactions`` component of the schema catalog
(:mod:`safereplay.domain.schema`), never created ad hoc. The logic that runs these
statements is :mod:`safereplay.reactions.ledger_sql`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from safereplay.domain.schema import SchemaStep
from safereplay.projections.sqltemplate import Renderer

__all__ = [
    "REACTIONS_COMPONENT",
    "REACTIONS_SCHEMA_VERSION",
    "ledger_schema_step",
    "render_ddl",
    "render_upgrades",
]

#: The ledger's component in the schema catalog and its version: raise it with any
#: change to the tables below, and make :func:`ledger_schema_step` upgrade to it.
REACTIONS_COMPONENT = "reactions"
REACTIONS_SCHEMA_VERSION = 2

#: Type names per backend (SQLite keeps ids as text and times as REAL seconds).
TYPES: Mapping[str, Mapping[str, str]] = {
    "sqlite": {"text": "TEXT", "int": "INTEGER", "bigint": "INTEGER", "uuid": "TEXT"},
    "postgres": {"text": "text", "int": "integer", "bigint": "bigint", "uuid": "uuid"},
}

CREATE_POSITIONS = """
CREATE TABLE IF NOT EXISTS {reaction_positions} (
    reaction {text} PRIMARY KEY,
    position {bigint} NOT NULL,
    updated_at double precision NOT NULL,
    lease_holder {text},
    lease_expires_at double precision
)"""

CREATE_DELIVERIES = """
CREATE TABLE IF NOT EXISTS {reaction_deliveries} (
    reaction {text} NOT NULL,
    event_id {uuid} NOT NULL,
    destination {text} NOT NULL,
    position {bigint} NOT NULL,
    aggregate_id {uuid} NOT NULL,
    aggregate_version {bigint} NOT NULL,
    event_type {text} NOT NULL,
    idempotency_key {text} NOT NULL,
    state {text} NOT NULL,
    attempts {int} NOT NULL DEFAULT 0,
    last_status {int},
    last_detail {text},
    recorded_at double precision NOT NULL,
    first_attempt_at double precision,
    last_attempt_at double precision,
    delivered_at double precision,
    acknowledgements {int} NOT NULL DEFAULT 0,
    redeliveries {int} NOT NULL DEFAULT 0,
    forced_redeliveries {int} NOT NULL DEFAULT 0,
    PRIMARY KEY (reaction, event_id, destination)
)"""

# A destination's breaker, as the runner holding the reaction's lease last saw it:
# what status shows for a destination (a breaker lives in a runner's memory).
CREATE_DESTINATIONS = """
CREATE TABLE IF NOT EXISTS {reaction_destinations} (
    reaction {text} NOT NULL,
    destination {text} NOT NULL,
    breaker_state {text} NOT NULL,
    breaker_changed_at double precision NOT NULL,
    updated_at double precision NOT NULL,
    PRIMARY KEY (reaction, destination)
)"""

# What a runner looks for at every cycle: a reaction's owed rows, in position order.
CREATE_OWED_INDEX = """
CREATE INDEX IF NOT EXISTS {idx_reaction_deliveries_state}
ON {reaction_deliveries} (reaction, state, position)"""

DDL = (CREATE_POSITIONS, CREATE_DELIVERIES, CREATE_OWED_INDEX, CREATE_DESTINATIONS)

# From version 1 (before leases, acknowledgement counts, re-delivery counts and
# breaker states): the columns the tables above have since.
UPGRADE_FROM_1 = (
    "ALTER TABLE {reaction_positions} ADD COLUMN lease_holder {text}",
    "ALTER TABLE {reaction_positions} ADD COLUMN lease_expires_at double precision",
    "ALTER TABLE {reaction_deliveries} ADD COLUMN acknowledgements {int} NOT NULL DEFAULT 0",
    "ALTER TABLE {reaction_deliveries} ADD COLUMN redeliveries {int} NOT NULL DEFAULT 0",
    "ALTER TABLE {reaction_deliveries} ADD COLUMN forced_redeliveries {int} NOT NULL DEFAULT 0",
    # Rows delivered under version 1 were acknowledged once.
    "UPDATE {reaction_deliveries} SET acknowledgements = 1 WHERE state = 'delivered'",
)

_COLUMNS = (
    "reaction, event_id, destination, position, aggregate_id, aggregate_version, event_type, "
    "idempotency_key, state, attempts, last_status, last_detail, recorded_at, "
    "first_attempt_at, last_attempt_at, delivered_at, acknowledgements, redeliveries, "
    "forced_redeliveries"
)

SELECT_POSITION = "SELECT position FROM {reaction_positions} WHERE reaction = %(reaction)s"
INSERT_POSITION = (
    "INSERT INTO {reaction_positions} (reaction, position, updated_at) "
    "VALUES (%(reaction)s, 0, %(now)s) ON CONFLICT (reaction) DO NOTHING"
)
MOVE_POSITION = (
    "UPDATE {reaction_positions} SET position = %(position)s, updated_at = %(now)s "
    "WHERE reaction = %(reaction)s AND position = %(expected)s"
)
INSERT_DELIVERY = (
    "INSERT INTO {reaction_deliveries} (reaction, event_id, destination, position, "
    "aggregate_id, aggregate_version, event_type, idempotency_key, state, attempts, "
    "recorded_at) VALUES (%(reaction)s, %(event_id)s, %(destination)s, %(position)s, "
    "%(aggregate_id)s, %(aggregate_version)s, %(event_type)s, %(idempotency_key)s, "
    "'pending', 0, %(now)s) ON CONFLICT (reaction, event_id, destination) DO NOTHING"
)
_KEY = "reaction = %(reaction)s AND event_id = %(event_id)s AND destination = %(destination)s"
SELECT_ENTRY = f"SELECT {_COLUMNS} FROM {{reaction_deliveries}} WHERE {_KEY}"
# Optionally one destination's, up to a position (a re-delivery's selection); CAST:
# PostgreSQL cannot tell a bare NULL parameter's type.
SELECT_OWED = (
    f"SELECT {_COLUMNS} FROM {{reaction_deliveries}} WHERE reaction = %(reaction)s "
    "AND state IN ('pending', 'failed') "
    "AND (CAST(%(destination)s AS text) IS NULL OR destination = %(destination)s) "
    "AND (CAST(%(upto)s AS bigint) IS NULL OR position <= %(upto)s) "
    "ORDER BY position, destination LIMIT %(limit)s"
)
SELECT_PARKED_AGGREGATES = (
    "SELECT destination, aggregate_id, min(position) AS first_position "
    "FROM {reaction_deliveries} WHERE reaction = %(reaction)s AND state = 'parked' "
    "GROUP BY destination, aggregate_id"
)
# Only an owed row changes: an attempt recorded by a runner that lost a race with
# another one (or with an operator's park) changes nothing, and says so.
RECORD_ATTEMPT = (
    "UPDATE {reaction_deliveries} SET state = %(state)s, attempts = attempts + 1, "
    "last_status = %(status)s, last_detail = %(detail)s, "
    "first_attempt_at = COALESCE(first_attempt_at, %(now)s), last_attempt_at = %(now)s, "
    "delivered_at = %(delivered_at)s, acknowledgements = acknowledgements + %(acknowledged)s "
    f"WHERE {_KEY} AND state IN ('pending', 'failed')"
)
PARK = (
    "UPDATE {reaction_deliveries} SET state = 'parked', last_detail = %(detail)s "
    f"WHERE {_KEY} AND state IN ('pending', 'failed')"
)
SELECT_ENTRIES = (
    f"SELECT {_COLUMNS} FROM {{reaction_deliveries}} WHERE reaction = %(reaction)s "
    # CAST: PostgreSQL cannot tell a bare NULL parameter's type.
    "AND (CAST(%(destination)s AS text) IS NULL OR destination = %(destination)s) "
    "AND (CAST(%(state)s AS text) IS NULL OR state = %(state)s) "
    "ORDER BY position, destination LIMIT %(limit)s"
)
SELECT_COUNTS = (
    "SELECT destination, state, count(*) AS n FROM {reaction_deliveries} "
    "WHERE reaction = %(reaction)s GROUP BY destination, state"
)


# An operator's selection (re-delivery): every filter is optional. CAST: PostgreSQL
# cannot tell a bare NULL parameter's type.
SELECT_RANGE = (
    f"SELECT {_COLUMNS} FROM {{reaction_deliveries}} WHERE reaction = %(reaction)s "
    "AND (CAST(%(first)s AS bigint) IS NULL OR position >= %(first)s) "
    "AND (CAST(%(last)s AS bigint) IS NULL OR position <= %(last)s) "
    "AND (CAST(%(since)s AS double precision) IS NULL OR recorded_at >= %(since)s) "
    "AND (CAST(%(destination)s AS text) IS NULL OR destination = %(destination)s) "
    "ORDER BY position, destination LIMIT %(limit)s"
)
# Back to pending for another round of attempts; a delivered row only when forced.
# The attempts count stays: it is the row's history (and what the retry policy reads).
REOPEN = (
    "UPDATE {reaction_deliveries} SET state = 'pending', "
    "redeliveries = redeliveries + 1, "
    "forced_redeliveries = forced_redeliveries "
    "+ CASE WHEN state = 'delivered' THEN 1 ELSE 0 END "
    f"WHERE {_KEY} AND (state IN ('pending', 'failed', 'parked') "
    "OR (state = 'delivered' AND %(forced)s = 1))"
)


SELECT_SUMMARY = (
    "SELECT destination, "
    "sum(CASE WHEN state = 'pending' THEN 1 ELSE 0 END) AS pending, "
    "sum(CASE WHEN state = 'failed' THEN 1 ELSE 0 END) AS failed, "
    "sum(CASE WHEN state = 'parked' THEN 1 ELSE 0 END) AS parked, "
    "sum(CASE WHEN state = 'delivered' THEN 1 ELSE 0 END) AS delivered, "
    "min(CASE WHEN state IN ('pending', 'failed') THEN recorded_at END) AS oldest_owed_at "
    "FROM {reaction_deliveries} WHERE reaction = %(reaction)s "
    "GROUP BY destination ORDER BY destination"
)

# -- leases and breakers ---------------------------------------------------------------

# One statement decides: a lease that is free, ran out, or is the holder's own is
# taken (renewed); another holder's live lease leaves the row as it is (0 rows).
ACQUIRE_LEASE = (
    "UPDATE {reaction_positions} SET lease_holder = %(holder)s, "
    "lease_expires_at = %(expires_at)s WHERE reaction = %(reaction)s AND "
    "(lease_holder IS NULL OR lease_expires_at IS NULL OR lease_expires_at <= %(now)s "
    "OR lease_holder = %(holder)s)"
)
RELEASE_LEASE = (
    "UPDATE {reaction_positions} SET lease_holder = NULL, lease_expires_at = NULL "
    "WHERE reaction = %(reaction)s AND lease_holder = %(holder)s"
)
SELECT_LEASE = (
    "SELECT lease_holder, lease_expires_at FROM {reaction_positions} WHERE reaction = %(reaction)s"
)
# changed_at moves only with the state: the CASE reads the row as it was (``old``;
# the SET expressions all see the old row, on both backends).
RECORD_BREAKER = (
    "INSERT INTO {reaction_destinations} AS old (reaction, destination, breaker_state, "
    "breaker_changed_at, updated_at) VALUES (%(reaction)s, %(destination)s, %(state)s, "
    "%(now)s, %(now)s) ON CONFLICT (reaction, destination) DO UPDATE SET "
    "breaker_changed_at = CASE WHEN old.breaker_state = excluded.breaker_state "
    "THEN old.breaker_changed_at ELSE excluded.breaker_changed_at END, "
    "breaker_state = excluded.breaker_state, updated_at = excluded.updated_at"
)
SELECT_BREAKERS = (
    "SELECT destination, breaker_state, breaker_changed_at, updated_at "
    "FROM {reaction_destinations} WHERE reaction = %(reaction)s ORDER BY destination"
)


def ledger_schema_step(statements: Sequence[Any], upgrades: Sequence[Any] = ()) -> SchemaStep:
    """The ``reactions`` step: a backend's rendered :data:`DDL` statements, and
    :data:`UPGRADE_FROM_1` (rendered) for a database at version 1."""
    rendered = list(statements)
    from_1 = list(upgrades)

    def apply(cursor: Any, from_version: int) -> None:
        if from_version == 1:
            for statement in from_1:
                cursor.execute(statement)
        for statement in rendered:
            cursor.execute(statement)

    return SchemaStep(
        REACTIONS_COMPONENT,
        REACTIONS_SCHEMA_VERSION,
        apply,
        "the reactions' delivery ledger: deliveries, positions and leases, breaker states",
    )


def render_ddl(renderer: Renderer[Any]) -> list[Any]:
    """:data:`DDL` for ``renderer``'s backend, type slots filled from :data:`TYPES`."""
    return _render(renderer, DDL)


def render_upgrades(renderer: Renderer[Any]) -> list[Any]:
    """:data:`UPGRADE_FROM_1` for ``renderer``'s backend."""
    return _render(renderer, UPGRADE_FROM_1)


def _render(renderer: Renderer[Any], templates: Sequence[str]) -> list[Any]:
    types = {k: renderer.text(v) for k, v in TYPES[renderer.dialect].items()}
    return [renderer.render(template, **types) for template in templates]

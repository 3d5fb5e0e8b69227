"""SQL templates: one text per statement, rendered for SQLite and for PostgreSQL.

A template holds psycopg's placeholders and ``{slots}``; SQLite gets quoted names
and ``:name`` / ``?`` placeholders, PostgreSQL a ``psycopg.sql`` composition with
tables in its schema. Where the backends differ, the difference is a piece of
the statement, not a second statement.
"""

from __future__ import annotations

from safereplay.projections.batch import MergeShape
from safereplay.projections.sqltemplate import (
    PostgresRenderer,
    SQLiteRenderer,
    postgres_statement,
    sqlite_statement,
)
from safereplay.projections.store_sql import fence_statement, merge_statement
from safereplay.projections.tables import Table

NAMED = "SELECT state FROM {jobs} WHERE job_id = %(job_id)s AND attempts %% 2 = 0"
INDEX = "CREATE INDEX IF NOT EXISTS {idx_jobs_state} ON {jobs} (state)"
TOTALS = Table("totals", key={"day": "timestamp"}, values={"runs": "integer", "last": "timestamp"})


def test_a_recovery_template_renders_for_sqlite() -> None:
    assert sqlite_statement(NAMED) == (
        'SELECT state FROM "safereplay_jobs" WHERE job_id = :job_id AND attempts % 2 = 0'
    )
    assert sqlite_statement(INDEX) == (
        'CREATE INDEX IF NOT EXISTS "safereplay_jobs_state" ON "safereplay_jobs" (state)'
    )


def test_a_recovery_template_renders_for_postgres_in_its_schema() -> None:
    assert postgres_statement(NAMED, "tenant").as_string(None) == (
        'SELECT state FROM "tenant"."safereplay_jobs" WHERE job_id = %(job_id)s '
        "AND attempts %% 2 = 0"
    )
    # An index is named without its schema: it lives in its table's.
    assert postgres_statement(INDEX, "tenant").as_string(None) == (
        'CREATE INDEX IF NOT EXISTS "safereplay_jobs_state" ON "tenant"."safereplay_jobs" (state)'
    )


def test_a_template_is_rendered_once() -> None:
    assert sqlite_statement(NAMED) is sqlite_statement(NAMED)
    assert postgres_statement(NAMED, "tenant") is postgres_statement(NAMED, "tenant")


def test_a_merge_is_one_text_with_the_backends_differences_as_pieces() -> None:
    shape = MergeShape(add=("runs",), maximum=("last",))

    assert merge_statement(SQLiteRenderer(), TOTALS, "p__totals__b1", shape) == (
        'INSERT INTO "p__totals__b1" AS t ("day", "runs", "last") VALUES (?, ?, ?) '
        'ON CONFLICT ("day") DO UPDATE SET "runs" = COALESCE(t."runs", 0) + EXCLUDED."runs", '
        '"last" = max(COALESCE(t."last", EXCLUDED."last"), EXCLUDED."last")'
    )
    postgres = merge_statement(PostgresRenderer("views"), TOTALS, "p__totals__b1", shape)
    assert postgres.as_string(None) == (
        'INSERT INTO "views"."p__totals__b1" AS t ("day", "runs", "last") '
        "SELECT * FROM unnest(%s::timestamptz[], %s::bigint[], %s::timestamptz[]) "
        'ON CONFLICT ("day") DO UPDATE SET "runs" = COALESCE(t."runs", 0) + EXCLUDED."runs", '
        '"last" = GREATEST(t."last", EXCLUDED."last")'
    )


def test_a_fence_locks_its_row_on_postgres_only() -> None:
    columns = ("job_id", "partition_index")

    assert fence_statement(SQLiteRenderer(), "safereplay_leases", columns) == (
        'SELECT 1 FROM "safereplay_leases" WHERE "job_id" = ? AND "partition_index" = ?'
    )
    assert fence_statement(PostgresRenderer("ops"), "safereplay_leases", columns).as_string(
        None
    ) == (
        'SELECT 1 FROM "ops"."safereplay_leases" WHERE "job_id" = %s AND "partition_index" = %s '
        "FOR SHARE"
    )

"""The job store's SQL, written once for both backends (see :mod:`safereplay.recovery.database`).

``{jobs}`` and ``{job_partitions}`` name the tables ``safereplay_jobs`` and
``safereplay_job_partitions``; ``%(name)s`` are bound parameters.
"""

from __future__ import annotations

__all__ = [
    "ADD_PART_COLUMNS",
    "CLAIM_PART",
    "COUNT_LIVE_LEASES",
    "CREATE_JOBS",
    "CREATE_ONE_ACTIVE_JOB_INDEX",
    "CREATE_PARTS",
    "FINISH_PART",
    "INSERT_JOB",
    "INSERT_PART",
    "PART_COLUMNS",
    "RELEASE_EXPIRED_PARTS",
    "RELEASE_HELD_PARTS",
    "RENEW_LEASE",
    "REPORT_PROGRESS",
    "RETRY_PART",
    "SELECT_CLAIMABLE_JOBS",
    "SELECT_CLAIMABLE_PARTS",
    "SELECT_JOB",
    "SELECT_PARTS",
    "SET_BREAKER",
    "UPDATE_JOB_STATE",
]

#
# Statements are written once with psycopg-style named placeholders (%(name)s) and
# {jobs}/{job_partitions} table slots; each backend turns them into its own statements
# (psycopg.sql.Identifier on PostgreSQL, :name placeholders on SQLite).

CREATE_JOBS = """
CREATE TABLE IF NOT EXISTS {jobs} (
    job_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    projection TEXT NOT NULL,
    build INTEGER NOT NULL,
    partition_count INTEGER NOT NULL,
    state TEXT NOT NULL,
    principal TEXT NOT NULL,
    reason TEXT NOT NULL,
    parameters TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    target_position BIGINT,
    range_start BIGINT,
    range_end BIGINT,
    max_concurrent_partitions INTEGER,
    events_per_second DOUBLE PRECISION,
    error TEXT,
    breaker TEXT NOT NULL DEFAULT '{{}}'
)"""

# At most one active job per projection, enforced by the database itself.
CREATE_ONE_ACTIVE_JOB_INDEX = """
CREATE UNIQUE INDEX IF NOT EXISTS {idx_jobs_one_active} ON {jobs} (projection)
WHERE state IN ('planned', 'running', 'paused', 'aborting')"""

CREATE_PARTS = """
CREATE TABLE IF NOT EXISTS {job_partitions} (
    job_id TEXT NOT NULL,
    partition_index INTEGER NOT NULL,
    status TEXT NOT NULL,
    start_position BIGINT NOT NULL,
    position BIGINT NOT NULL,
    target_position BIGINT,
    events_applied BIGINT NOT NULL DEFAULT 0,
    parked BIGINT NOT NULL DEFAULT 0,
    retries BIGINT NOT NULL DEFAULT 0,
    conflicts BIGINT NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_token BIGINT NOT NULL DEFAULT 0,
    lease_expires_at DOUBLE PRECISION,
    started_at DOUBLE PRECISION,
    updated_at DOUBLE PRECISION NOT NULL,
    last_error TEXT,
    events_in_scope BIGINT,
    recent_rate DOUBLE PRECISION,
    advanced_at DOUBLE PRECISION,
    PRIMARY KEY (job_id, partition_index)
)"""

# Version 3 of the recovery schema: a partition's events in scope (counted once,
# when the job is planned) and its worker's recent events/s (see JobStore.report).
# Version 4: when its position last moved forward (``advanced_at``), beside
# ``updated_at``, which every renewal and report moves (the worker's heartbeat):
# a worker that heartbeats but has not advanced is stalled (recovery.alerts).
PART_COLUMNS = "PRAGMA table_info({job_partitions})"  # SQLite: row[1] is the name
# SQLite has no ADD COLUMN IF NOT EXISTS: the step looks at PART_COLUMNS first.
ADD_PART_COLUMNS = {
    "sqlite": {
        "events_in_scope": "ALTER TABLE {job_partitions} ADD COLUMN events_in_scope BIGINT",
        "recent_rate": "ALTER TABLE {job_partitions} ADD COLUMN recent_rate DOUBLE PRECISION",
        "advanced_at": "ALTER TABLE {job_partitions} ADD COLUMN advanced_at DOUBLE PRECISION",
    },
    "postgres": {
        "events_in_scope": (
            "ALTER TABLE {job_partitions} ADD COLUMN IF NOT EXISTS events_in_scope BIGINT"
        ),
        "recent_rate": (
            "ALTER TABLE {job_partitions} ADD COLUMN IF NOT EXISTS recent_rate DOUBLE PRECISION"
        ),
        "advanced_at": (
            "ALTER TABLE {job_partitions} ADD COLUMN IF NOT EXISTS advanced_at DOUBLE PRECISION"
        ),
    },
}

INSERT_JOB = """
INSERT INTO {jobs} (job_id, kind, projection, build, partition_count, state, principal, reason,
    parameters, created_at, updated_at, target_position, range_start, range_end,
    max_concurrent_partitions, events_per_second)
VALUES (%(job_id)s, %(kind)s, %(projection)s, %(build)s, %(partition_count)s, 'planned',
    %(principal)s, %(reason)s, %(parameters)s, %(now)s, %(now)s, %(target_position)s,
    %(range_start)s, %(range_end)s, %(max_concurrent_partitions)s, %(events_per_second)s)"""

INSERT_PART = """
INSERT INTO {job_partitions} (job_id, partition_index, status, start_position, position,
    target_position, updated_at, events_in_scope)
VALUES (%(job_id)s, %(partition_index)s, %(status)s, %(position)s, %(position)s,
    %(target_position)s, %(now)s, %(events_in_scope)s)"""
# A staged rollout's later partitions wait as 'held' until the canary verified.
RELEASE_HELD_PARTS = """
UPDATE {job_partitions} SET status = 'pending', updated_at = %(now)s
WHERE job_id = %(job_id)s AND status = 'held'"""

SELECT_JOB = "SELECT * FROM {jobs} WHERE job_id = %(job_id)s"
SELECT_PARTS = "SELECT * FROM {job_partitions} WHERE job_id = %(job_id)s ORDER BY partition_index"
SELECT_CLAIMABLE_JOBS = """
SELECT * FROM {jobs} WHERE state IN ('planned', 'running')
ORDER BY created_at, job_id"""
SELECT_CLAIMABLE_PARTS = """
SELECT * FROM {job_partitions}
WHERE job_id = %(job_id)s
  AND (status = 'pending' OR (status = 'running' AND lease_expires_at < %(now)s))
ORDER BY partition_index"""
COUNT_LIVE_LEASES = """
SELECT COUNT(*) AS n FROM {job_partitions}
WHERE job_id = %(job_id)s AND status = 'running' AND lease_expires_at >= %(now)s"""
UPDATE_JOB_STATE = """
UPDATE {jobs} SET state = %(state)s, updated_at = %(now)s, error = COALESCE(%(error)s, error)
WHERE job_id = %(job_id)s"""
CLAIM_PART = """
UPDATE {job_partitions} SET status = 'running', lease_owner = %(worker_id)s,
    lease_token = lease_token + 1, lease_expires_at = %(expires_at)s,
    started_at = COALESCE(started_at, %(now)s), updated_at = %(now)s, advanced_at = %(now)s
WHERE job_id = %(job_id)s AND partition_index = %(partition_index)s
  AND lease_token = %(seen_token)s"""
RENEW_LEASE = """
UPDATE {job_partitions} SET lease_expires_at = %(expires_at)s, updated_at = %(now)s
WHERE job_id = %(job_id)s AND partition_index = %(partition_index)s
  AND lease_token = %(token)s AND status = 'running'"""
# A claim starts the stall clock afresh (advanced_at); a report moves it only when
# the position moved forward. Right-hand sides read the row as it was (both backends).
REPORT_PROGRESS = """
UPDATE {job_partitions} SET position = %(position)s,
    advanced_at = CASE WHEN %(position)s > position THEN %(now)s ELSE advanced_at END,
    events_applied = events_applied + %(events_applied)s, parked = parked + %(parked)s,
    retries = retries + %(retries)s, conflicts = conflicts + %(conflicts)s,
    target_position = COALESCE(%(target_position)s, target_position),
    last_error = COALESCE(%(last_error)s, last_error),
    recent_rate = COALESCE(%(recent_rate)s, recent_rate), updated_at = %(now)s
WHERE job_id = %(job_id)s AND partition_index = %(partition_index)s
  AND lease_token = %(token)s AND status = 'running'"""
FINISH_PART = """
UPDATE {job_partitions} SET status = %(status)s, lease_owner = NULL, lease_expires_at = NULL,
    last_error = COALESCE(%(error)s, last_error), updated_at = %(now)s
WHERE job_id = %(job_id)s AND partition_index = %(partition_index)s
  AND lease_token = %(token)s AND status = 'running'"""
# An aborting job's partition whose lease expired (its worker died) is given back,
# so that the abort can end; a stalled worker that wakes is fenced off (status).
RELEASE_EXPIRED_PARTS = """
UPDATE {job_partitions} SET status = 'pending', lease_owner = NULL, lease_expires_at = NULL,
    updated_at = %(now)s
WHERE job_id = %(job_id)s AND status = 'running' AND lease_expires_at < %(now)s"""
RETRY_PART = """
UPDATE {job_partitions} SET status = 'pending', updated_at = %(now)s
WHERE job_id = %(job_id)s AND partition_index = %(partition_index)s AND status = 'failed'"""
SET_BREAKER = (
    "UPDATE {jobs} SET breaker = %(breaker)s, updated_at = %(now)s WHERE job_id = %(job_id)s"
)

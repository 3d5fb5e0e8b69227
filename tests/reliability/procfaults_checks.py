"""Invariants of the process-fault scenarios, checked directly in the database.

Everything here reads the tables with plain SQL (``sqlite3`` or ``psycopg``, never
the stores under test), and compares them with what the stored events say:

- :func:`account` — per-position accounting of one build: every handled event up to
  the head is covered by a checkpoint of its partition and counted there as applied
  or parked (never both, never twice), every missing position of the log is a
  recorded hole, and the build is caught up;
- :func:`projection_mismatches` — the build's rows against a clean fold of the stored
  events (the ``fold_*`` of ``tests/projection_fixtures.py``): the plain columns
  compared raw, every column once more decoded;
- :func:`unsettled_jobs` / :func:`dead_leases` — no job stuck in a running state, no
  lease held by a dead process past its expiry;
- :func:`sealed_rows` / :func:`reencryption_problems` — every stored row decrypts
  under the ring's active key to the content it had before, none lost or added;
- :class:`LeasePoller` — samples the lease rows while a killed worker's lease
  expires and another worker takes over.

Other areas of the suite may reuse these (they take a ``Log`` of
``tests/projection_fixtures.py``).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import closing, suppress
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from projection_fixtures import EXPECTED, Log, PostgresBackend, table_state
from psycopg import sql
from psycopg.rows import dict_row
from recovery_fixtures import wait_until

from safereplay.domain import Envelope, KeyRing
from safereplay.domain.keyring import is_sealed, sealed_key_id
from safereplay.domain.mapper import associated_data
from safereplay.projections import Partition, Projection, ProjectionStore

Row = dict[str, Any]

#: Job states in which a job is still meant to move (a job left in one of these
#: after the work has ended is stuck).
ACTIVE_JOB_STATES = ("planned", "running", "paused", "aborting")
#: Column types compared raw (as stored, without the store's decoding).
PLAIN_TYPES = frozenset({"integer", "bigint", "text", "real"})


# -- plain SQL on either backend -------------------------------------------------------------


def is_postgres(log: Log) -> bool:
    return isinstance(log.backend, PostgresBackend)


_connections = threading.local()


def _postgres(dsn: str) -> psycopg.Connection[Row]:
    """This thread's connection to ``dsn`` (one, kept: the checks poll often, and the
    shared server's connection slots are few)."""
    cache: dict[str, psycopg.Connection[Row]] = _connections.__dict__.setdefault("by_dsn", {})
    conn = cache.get(dsn)
    if conn is None or conn.closed or conn.broken:
        conn = psycopg.connect(dsn, autocommit=True, row_factory=dict_row)
        cache[dsn] = conn
    return conn


def query(log: Log, statement: str, params: Sequence[Any] = ()) -> list[Row]:
    """Rows of ``statement`` on the log's database. ``{s}`` in the statement is the
    PostgreSQL schema qualifier (``"schema".``), nothing on SQLite; ``?`` are the
    parameters on both."""
    if is_postgres(log):
        assert isinstance(log.backend, PostgresBackend)
        schema = sql.Identifier(log.settings.postgres_schema).as_string(None)
        text = statement.replace("{s}", schema + ".").replace("?", "%s")
        try:
            return list(_postgres(log.backend.dsn).execute(text.encode(), tuple(params)))
        except psycopg.OperationalError:  # a connection lost meanwhile: once more
            return list(_postgres(log.backend.dsn).execute(text.encode(), tuple(params)))
    with closing(sqlite3.connect(log.settings.sqlite_path, timeout=60)) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute(statement.replace("{s}", ""), tuple(params))]


def events_table(log: Log) -> tuple[str, str]:
    """The events table's name and its position column."""
    if is_postgres(log):
        return f"{log.settings.application_name}_events", "notification_id"
    return "stored_events", "rowid"


def table_exists(log: Log, name: str) -> bool:
    if is_postgres(log):
        found = query(
            log,
            "SELECT 1 AS x FROM information_schema.tables WHERE table_schema = ? "
            "AND table_name = ?",
            (log.settings.postgres_schema, name),
        )
    else:
        found = query(
            log, "SELECT 1 AS x FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
        )
    return bool(found)


def stored_rows(log: Log) -> list[Row]:
    """Every stored event row, raw: position, originator, version, topic, state."""
    table, position = events_table(log)
    return query(
        log,
        f"SELECT {position} AS position, originator_id, originator_version, topic, state "
        f"FROM {{s}}{table} ORDER BY {position}",
    )


def recorded_holes(log: Log) -> set[int]:
    """Positions the high-water mark recorded as holes (PostgreSQL keeps them)."""
    table = f"{events_table(log)[0]}_skipped_holes"
    if not table_exists(log, table):
        return set()
    return {int(r["position"]) for r in query(log, f"SELECT position FROM {{s}}{table}")}


# -- per-position accounting of a build ------------------------------------------------------


@dataclass
class Accounting:
    """What :func:`account` found for one build."""

    checked: int = 0
    losses: int = 0
    duplicates: int = 0
    problems: list[str] = field(default_factory=list)
    parked: set[int] = field(default_factory=set)
    unresolved: set[int] = field(default_factory=set)

    def ok(self) -> bool:
        return not self.problems and not self.losses and not self.duplicates


def checkpoints(log: Log, projection: str, build: int) -> list[Row]:
    if not table_exists(log, "safereplay_projection_positions"):
        return []  # nothing was ever projected
    return query(
        log,
        "SELECT partition_index, partition_count, position, events_applied, events_parked "
        "FROM {s}safereplay_projection_positions WHERE projection = ? AND build = ? "
        "ORDER BY partition_count, partition_index",
        (projection, build),
    )


def parked_rows(log: Log, projection: str, build: int) -> list[Row]:
    if not table_exists(log, "safereplay_projection_parked"):
        return []
    return query(
        log,
        "SELECT position, partition_index, partition_count, resolved_at, reason "
        "FROM {s}safereplay_projection_parked WHERE projection = ? AND build = ? "
        "ORDER BY position",
        (projection, build),
    )


def account(
    log: Log,
    projection: type[Projection],
    build: int,
    envelopes: Sequence[Envelope],
    *,
    head: int | None = None,
) -> Accounting:
    """Per-position accounting of ``build``: each event of ``envelopes`` (the stored
    events, read independently) that the projection handles, up to ``head`` (the
    log's last position by default), must be covered by its partition's checkpoint and
    counted there once, as applied or as parked; every position of the log that holds
    no event must be a recorded hole."""
    found = Accounting()
    rows = stored_rows(log)
    stored = {int(r["position"]) for r in rows}
    head = max(stored, default=0) if head is None else head
    holes = recorded_holes(log)
    for missing in sorted(set(range(1, head + 1)) - stored - holes):
        found.problems.append(f"position {missing} holds no event and is no recorded hole")
    parked = parked_rows(log, projection.name, build)
    found.parked = {int(p["position"]) for p in parked}
    found.unresolved = {int(p["position"]) for p in parked if p["resolved_at"] is None}
    marks = checkpoints(log, projection.name, build)
    if not marks:
        found.problems.append(f"{projection.name} build {build} has no checkpoint")
        return found
    counts = {m["partition_count"] for m in marks}
    if len(counts) != 1:
        found.problems.append(f"checkpoints of several splits at once: {marks}")
        return found
    [count] = counts
    if sorted(m["partition_index"] for m in marks) != list(range(count)):
        found.problems.append(f"checkpoints do not cover every partition: {marks}")
    handled = [e for e in envelopes if e.topic in projection.topics]
    for mark in marks:
        part = Partition(int(mark["partition_index"]), int(count))
        upto = int(mark["position"])
        if upto < head:
            found.problems.append(f"partition {part} of build {build} is at {upto}, head {head}")
        mine = [e for e in handled if part.contains(e.aggregate_id)]
        covered = {e.position for e in mine if e.position is not None and e.position <= upto}
        parked_here = {p for p in found.parked if p in covered}
        strays = {
            int(p["position"])
            for p in parked
            if int(p["position"]) not in covered
            and Partition(int(p["partition_index"]), int(p["partition_count"])) == part
        }
        if strays:
            found.problems.append(f"parked positions past or outside partition {part}: {strays}")
        counted = int(mark["events_applied"]) + int(mark["events_parked"])
        found.checked += len(covered)
        if counted < len(covered):
            found.losses += len(covered) - counted
        elif counted > len(covered):
            found.duplicates += counted - len(covered)
        if int(mark["events_parked"]) < len(parked_here):
            found.problems.append(
                f"partition {part}: {len(parked_here)} parked rows, "
                f"{mark['events_parked']} counted parked"
            )
    return found


# -- the build's rows against a clean fold ---------------------------------------------------


def _plain(value: Any) -> Any:
    """A raw column value as the fold writes it (SQLite keeps booleans as integers)."""
    if isinstance(value, bool):
        return int(value)
    return value


def projection_mismatches(
    log: Log,
    store: ProjectionStore,
    projection: type[Projection],
    build: int,
    envelopes: Sequence[Envelope],
) -> list[str]:
    """Where ``build``'s rows differ from the clean fold of ``envelopes``: each table
    read raw (row count, keys and the integer, text and real columns as stored), then
    every column once more as the store decodes it (timestamps, JSON)."""
    expected = EXPECTED[projection.name](envelopes)
    problems: list[str] = []
    for table in projection.tables:
        want = expected[table.name]
        name = f"{projection.name}__{table.name}__b{build}"
        raw = query(log, f"SELECT * FROM {{s}}{name}")
        got = {tuple(str(r[k]) for k in table.key_names): r for r in raw}
        if len(raw) != len(want) or set(got) != {tuple(str(k) for k in key) for key in want}:
            missing = len({tuple(str(k) for k in key) for key in want} - set(got))
            extra = len(set(got) - {tuple(str(k) for k in key) for key in want})
            problems.append(
                f"{name}: {len(raw)} rows, the fold has {len(want)} ({missing} missing, "
                f"{extra} extra)"
            )
            continue
        plain = [c.name for c in table.values if c.type in PLAIN_TYPES]
        for key, row in want.items():
            stored = got[tuple(str(k) for k in key)]
            for column in plain:
                if _plain(stored[column]) != _plain(row[column]):
                    problems.append(
                        f"{name} {key}: {column} = {stored[column]!r}, "
                        f"the fold says {row[column]!r}"
                    )
    if problems:
        return problems
    decoded = {t.name: store_rows(store, projection, t.name, build) for t in projection.tables}
    for table in projection.tables:
        if decoded[table.name] != expected[table.name]:
            differ = [
                k
                for k in expected[table.name]
                if decoded[table.name].get(k) != expected[table.name][k]
            ]
            problems.append(
                f"{projection.name}.{table.name} build {build}: rows {differ[:3]} differ"
            )
    return problems


def store_rows(
    store: ProjectionStore, projection: type[Projection], table: str, build: int
) -> dict[tuple[Any, ...], Row]:
    [spec] = [t for t in projection.tables if t.name == table]
    return {
        tuple(row[k] for k in spec.key_names): row
        for row in store.rows(projection, table, build=build)
    }


def live_build(log: Log, projection: str) -> int | None:
    rows = query(
        log,
        "SELECT build FROM {s}safereplay_projection_builds "
        "WHERE projection = ? AND status = 'live'",
        (projection,),
    )
    assert len(rows) <= 1, f"{projection} has {len(rows)} live builds"
    return int(rows[0]["build"]) if rows else None


# -- jobs and leases -----------------------------------------------------------------------


def pid_alive(pid: int) -> bool:
    """Whether a process runs with this pid (a zombie counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def owner_pid(owner: str | None) -> int | None:
    """The pid in a worker id (``host:pid:suffix``)."""
    if owner is None:
        return None
    return int(owner.split(":")[-2])


def partitions(log: Log) -> list[Row]:
    return query(
        log,
        "SELECT job_id, partition_index, status, position, lease_owner, lease_token, "
        "lease_expires_at FROM {s}safereplay_job_partitions ORDER BY job_id, partition_index",
    )


def unsettled_jobs(log: Log) -> list[str]:
    """Jobs still in a state meant to move, and partitions still marked running."""
    found = [
        f"job {r['job_id']} ({r['kind']} of {r['projection']}) is {r['state']}"
        for r in query(log, "SELECT job_id, kind, projection, state FROM {s}safereplay_jobs")
        if r["state"] in ACTIVE_JOB_STATES
    ]
    found += [
        f"partition {r['partition_index']} of job {r['job_id']} is running "
        f"(owner {r['lease_owner']})"
        for r in partitions(log)
        if r["status"] == "running"
    ]
    return found


def dead_leases(log: Log, *, now: float | None = None) -> list[str]:
    """Leases held by a dead process past their expiry (nobody took them over)."""
    now = time.time() if now is None else now
    return [
        f"partition {r['partition_index']} of job {r['job_id']}: lease of dead {r['lease_owner']} "
        f"expired {now - float(r['lease_expires_at']):.1f}s ago"
        for r in partitions(log)
        if r["lease_owner"] is not None
        and r["lease_expires_at"] is not None
        and float(r["lease_expires_at"]) < now
        and not pid_alive(owner_pid(r["lease_owner"]) or 0)
    ]


def job_rows(log: Log) -> list[Row]:
    return query(
        log,
        "SELECT job_id, kind, projection, build, state, error FROM {s}safereplay_jobs "
        "ORDER BY created_at",
    )


def open_conflicts(log: Log) -> list[Row]:
    if not table_exists(log, "safereplay_conflicts"):
        return []
    return query(
        log, "SELECT * FROM {s}safereplay_conflicts WHERE state = 'open' ORDER BY raised_at"
    )


# -- leases sampled during their expiry window ---------------------------------------------


@dataclass(frozen=True)
class LeaseSample:
    at: float
    job_id: str
    partition: int
    status: str
    owner: str | None
    token: int
    expires_at: float | None


class LeasePoller:
    """A thread sampling every lease row of the log's job store, as fast as it can
    (each sample stamped with this machine's clock once its read returned)."""

    def __init__(self, log: Log, *, interval: float = 0.02) -> None:
        self.log = log
        self.interval = interval
        self.samples: list[LeaseSample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LeasePoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.is_set():
            rows = partitions(self.log)
            at = time.time()
            self.samples += [
                LeaseSample(
                    at,
                    str(r["job_id"]),
                    int(r["partition_index"]),
                    str(r["status"]),
                    r["lease_owner"],
                    int(r["lease_token"]),
                    None if r["lease_expires_at"] is None else float(r["lease_expires_at"]),
                )
                for r in rows
            ]
            self._stop.wait(self.interval)


def lease_violations(
    samples: Sequence[LeaseSample], *, deaths: dict[int, float], lease_seconds: float
) -> tuple[int, list[str]]:
    """Check sampled lease rows against the workers' deaths (pid -> time of the kill).

    - no lease of a dead worker ends more than ``lease_seconds`` after its death
      (it cannot have been renewed after it, so a later expiry is a lease that
      outlives its holder);
    - a partition taken over from a dead worker is taken only after that worker's
      lease expired: the new holder's first sampled expiry, less ``lease_seconds``,
      is no earlier than the old one's last expiry (the first sampled expiry is at
      least the claim's, so this can only understate a violation);
    - a lease token only grows, and one token always names one owner.

    Returns the takeovers seen and the violations."""
    problems: list[str] = []
    takeovers = 0
    slack = 0.05  # float rounding of the stored seconds
    by_partition: dict[tuple[str, int], list[LeaseSample]] = {}
    for s in samples:
        by_partition.setdefault((s.job_id, s.partition), []).append(s)
    for (job, index), seen in by_partition.items():
        owners_of_token: dict[int, set[str]] = {}
        holder: LeaseSample | None = None  # the last sample naming an owner
        previous: LeaseSample | None = None
        for s in seen:
            if previous is not None and s.token < previous.token:
                problems.append(f"{job}/{index}: lease token went back {previous.token}->{s.token}")
            previous = s
            if s.owner is None or s.expires_at is None:
                continue
            owners_of_token.setdefault(s.token, set()).add(s.owner)
            pid = owner_pid(s.owner)
            if pid in deaths and s.expires_at > deaths[pid] + lease_seconds + slack:
                problems.append(
                    f"{job}/{index}: the lease of {s.owner}, killed at {deaths[pid]:.3f}, "
                    f"expires at {s.expires_at:.3f}: beyond its {lease_seconds}s"
                )
            if (
                holder is not None
                and holder.owner != s.owner
                and owner_pid(holder.owner) in deaths
                and holder.expires_at is not None
            ):
                takeovers += 1
                if s.expires_at - lease_seconds + slack < holder.expires_at:
                    problems.append(
                        f"{job}/{index}: {s.owner} took the lease (expiring at "
                        f"{s.expires_at:.3f}) before the one of dead {holder.owner} expired "
                        f"(at {holder.expires_at:.3f})"
                    )
            holder = s
        for token, owners in owners_of_token.items():
            if len(owners) > 1:
                problems.append(f"{job}/{index}: token {token} named {sorted(owners)}")
    return takeovers, problems


# -- re-encryption ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SealedRow:
    key: tuple[str, int]
    topic: str
    key_id: str | None
    plaintext: bytes


def sealed_rows(log: Log, ring: KeyRing) -> dict[tuple[str, int], SealedRow]:
    """Every stored event row opened with ``ring`` (the stored blob, decrypted here),
    keyed by (aggregate, version). A row that fails to open raises, naming it."""
    found: dict[tuple[str, int], SealedRow] = {}
    for r in stored_rows(log):
        originator = _uuid_text(r["originator_id"])
        key = (originator, int(r["originator_version"]))
        state = bytes(r["state"])
        aad = associated_data(_as_uuid(originator), key[1], r["topic"])
        plain = ring.open(state, aad, where=f"row {r['position']}") if is_sealed(state) else state
        assert key not in found, f"row {key} stored twice"
        found[key] = SealedRow(
            key, r["topic"], sealed_key_id(state) if is_sealed(state) else None, plain
        )
    return found


def _uuid_text(value: Any) -> str:
    from uuid import UUID

    if isinstance(value, UUID):
        return str(value)
    return str(UUID(str(value)))


def _as_uuid(value: str) -> Any:
    from uuid import UUID

    return UUID(value)


def reencryption_problems(
    before: dict[tuple[str, int], SealedRow], after: dict[tuple[str, int], SealedRow], active: str
) -> tuple[int, int, list[str]]:
    """Losses, duplicates and other problems of a re-encryption: every row of
    ``before`` still stored once, sealed under ``active``, with the same topic and
    content."""
    lost = len(set(before) - set(after))
    added = len(set(after) - set(before))
    problems = [
        f"row {k} is sealed under {row.key_id!r}, not {active!r}"
        for k, row in after.items()
        if row.key_id != active
    ]
    problems += [
        f"row {k} changed content or topic"
        for k in set(before) & set(after)
        if (before[k].plaintext, before[k].topic) != (after[k].plaintext, after[k].topic)
    ]
    return lost, added, problems


# -- processes -----------------------------------------------------------------------------


def wait_for(
    condition: Callable[[], Any], *, what: str, timeout: float = 120, interval: float = 0.02
) -> Any:
    """Poll ``condition`` until truthy (generous: the machine is shared and slow)."""
    return wait_until(condition, timeout=timeout, what=what, interval=interval)


def reap(pids: Iterable[int]) -> None:
    """Collect the zombies of killed children (so that /proc shows them gone)."""
    for pid in pids:
        with suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


def as_json(value: Any) -> str:
    return json.dumps(value, default=lambda v: v.isoformat() if isinstance(v, datetime) else str(v))


__all__ = [
    "ACTIVE_JOB_STATES",
    "Accounting",
    "LeasePoller",
    "LeaseSample",
    "SealedRow",
    "account",
    "as_json",
    "checkpoints",
    "dead_leases",
    "events_table",
    "is_postgres",
    "job_rows",
    "lease_violations",
    "live_build",
    "open_conflicts",
    "owner_pid",
    "parked_rows",
    "partitions",
    "pid_alive",
    "projection_mismatches",
    "query",
    "reap",
    "recorded_holes",
    "reencryption_problems",
    "sealed_rows",
    "stored_rows",
    "table_exists",
    "table_state",
    "unsettled_jobs",
    "wait_for",
]

"""Seeded event stores of the reference domain, reused across runs.

One generation pass builds workflows and runs in memory with the builder of
:mod:`safereplay.domain.workload` (``plan_workflow``/``build_workflow``,
``plan_run``/``RunBuilder``: ``safereplay.domain.automation`` aggregates inside
:func:`safereplay.domain.envelope.recording`) and saves
the *same* domain events, chunk by chunk (one ``app.save(*events)`` = one transaction per chunk),
into every store that is missing: SQLite and PostgreSQL, cipher on and off. So
all loops and both backends read identical payloads; only the nonces differ.

Runs are interleaved as on a busy platform: ``concurrency`` runs are in flight at
once and every chunk carries one event of each, so consecutive log positions
belong to different runs. Payloads are those of ``domain/workload.py`` (the same
plans as its edge submitter), ~240 bytes of payload per event plus the envelope.

Stores are kept in ``benchmarks/.data/`` (SQLite files, key ring) and in a
PostgreSQL schema (default ``bench``); a store is reused when its size, seed and
:data:`SEED_VERSION` match and it was completely written with the same key.
"""

from __future__ import annotations

import hashlib
import random
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
from psycopg import sql

from safereplay.domain import AutomationApp, DomainSettings, KeyRing, Workflow
from safereplay.domain.workload import (
    RunBuilder,
    WorkflowPlan,
    build_workflow,
    plan_run,
    plan_workflow,
)

__all__ = [
    "SEED_VERSION",
    "Store",
    "ensure_stores",
    "generate_chunks",
    "load_key_ring",
    "prepare_data_dir",
]

#: Bump when the generator changes, so that stale stores are re-seeded.
#: v2: runs planned by domain.workload.plan_run (the executor source of a step result
#: is drawn after its output, as on the edge path).
SEED_VERSION = "v2"
#: Source of workflow, run-start and run-completion events.
SOURCE = "workload"
DEFAULT_DATA_DIR = Path(__file__).resolve().parent / ".data"


@dataclass(frozen=True)
class Store:
    """One seeded event store: a backend, a cipher setting, a size."""

    backend: str  # "sqlite" | "postgres"
    cipher: bool
    events: int
    seed: int
    data_dir: Path
    postgres_dsn: str
    postgres_schema: str

    @property
    def name(self) -> str:
        """Application name (PostgreSQL table ``NAME_events``)."""
        return f"sr_{self.events}_{self.seed}_{SEED_VERSION}_{'enc' if self.cipher else 'plain'}"

    @property
    def sqlite_path(self) -> Path:
        return self.data_dir / f"{self.name}.db"

    @property
    def key_file(self) -> Path:
        return self.data_dir / "keyring.json"

    @property
    def table(self) -> str:
        """The events table (qualified on PostgreSQL)."""
        if self.backend == "sqlite":
            return "stored_events"
        return f'"{self.postgres_schema}"."{self.name}_events"'

    @property
    def label(self) -> str:
        return f"{self.backend}/{'cipher' if self.cipher else 'plain'}"

    def settings(self) -> DomainSettings:
        values: dict[str, Any] = {
            "backend": self.backend,
            "application_name": self.name,
            "encryption": self.cipher,
        }
        if self.cipher:
            values["key_file"] = self.key_file
        if self.backend == "sqlite":
            values["sqlite_path"] = self.sqlite_path
        else:
            values["postgres_dsn"] = self.postgres_dsn
            values["postgres_schema"] = self.postgres_schema
        return DomainSettings.from_env(**values)

    def key_ring(self) -> KeyRing | None:
        return load_key_ring(self.data_dir) if self.cipher else None

    def to_json(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "cipher": self.cipher,
            "events": self.events,
            "seed": self.seed,
            "data_dir": str(self.data_dir),
            "postgres_dsn": self.postgres_dsn,
            "postgres_schema": self.postgres_schema,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Store:
        return cls(**{**data, "data_dir": Path(data["data_dir"])})


def prepare_data_dir(data_dir: Path) -> None:
    """Create the data dir, ignored by git whatever the repository's .gitignore says."""
    data_dir.mkdir(parents=True, exist_ok=True)
    ignore = data_dir / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# Seeded benchmark stores and their key ring: never committed.\n*\n")


def load_key_ring(data_dir: Path) -> KeyRing:
    """The benchmark's key ring (created once, mode 0600, in the data dir)."""
    path = data_dir / "keyring.json"
    if not path.exists():
        prepare_data_dir(data_dir)
        KeyRing.generate("bench1").save(path)
    return KeyRing.load(path)


def _fingerprint(key_ring: KeyRing | None) -> str:
    if key_ring is None:
        return "plain"
    h = hashlib.sha256(b"safereplay-benchmark-key-fingerprint")
    for key_id in key_ring.key_ids:
        h.update(key_id.encode() + b"=" + key_ring.keys[key_id])
    return h.hexdigest()[:16]


# -- reuse bookkeeping -----------------------------------------------------------------


def _meta_wanted(store: Store) -> dict[str, str]:
    return {
        "events": str(store.events),
        "seed": str(store.seed),
        "version": SEED_VERSION,
        "key": _fingerprint(store.key_ring()),
        "complete": "yes",
    }


def _is_seeded(store: Store) -> bool:
    wanted = _meta_wanted(store)
    if store.backend == "sqlite":
        if not store.sqlite_path.exists():
            return False
        with sqlite3.connect(store.sqlite_path) as conn:
            try:
                meta = dict(conn.execute("SELECT key, value FROM bench_meta").fetchall())
            except sqlite3.OperationalError:
                return False
        return meta == wanted
    with psycopg.connect(store.postgres_dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT to_regclass(%s) IS NOT NULL", (f"{store.postgres_schema}.bench_meta",)
        ).fetchone()
        if not row or not row[0]:
            return False
        meta = dict(
            conn.execute(
                sql.SQL("SELECT key, value FROM {}.bench_meta WHERE name = %s").format(
                    sql.Identifier(store.postgres_schema)
                ),
                (store.name,),
            ).fetchall()
        )
    return meta == wanted


def _reset(store: Store) -> None:
    if store.backend == "sqlite":
        for suffix in ("", "-wal", "-shm"):
            Path(f"{store.sqlite_path}{suffix}").unlink(missing_ok=True)
        return
    schema = sql.Identifier(store.postgres_schema)
    with psycopg.connect(store.postgres_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(schema))
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {}.bench_meta "
                "(name text, key text, value text, PRIMARY KEY (name, key))"
            ).format(schema)
        )
        conn.execute(
            sql.SQL("DELETE FROM {}.bench_meta WHERE name = %s").format(schema), (store.name,)
        )
        # The events table and what readers keep beside it (e.g. the high-water mark's
        # "{table}_hwm" and "{table}_skipped_holes"): a stale mark must not survive.
        tables = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = %s AND starts_with(tablename, %s)",
            (store.postgres_schema, f"{store.name}_events"),
        ).fetchall()
        for (table,) in tables:
            conn.execute(
                sql.SQL("DROP TABLE IF EXISTS {}.{} CASCADE").format(schema, sql.Identifier(table))
            )


def _mark_seeded(store: Store) -> None:
    meta = list(_meta_wanted(store).items())
    if store.backend == "sqlite":
        with sqlite3.connect(store.sqlite_path) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS bench_meta (key TEXT PRIMARY KEY, value TEXT)")
            conn.executemany("INSERT OR REPLACE INTO bench_meta VALUES (?, ?)", meta)
        return
    with psycopg.connect(store.postgres_dsn, autocommit=True) as conn:
        conn.cursor().executemany(
            sql.SQL("INSERT INTO {}.bench_meta VALUES (%s, %s, %s)").format(
                sql.Identifier(store.postgres_schema)
            ),
            [(store.name, k, v) for k, v in meta],
        )
        conn.execute(
            sql.SQL("ANALYZE {}.{}").format(
                sql.Identifier(store.postgres_schema), sql.Identifier(f"{store.name}_events")
            )
        )


# -- generation --------------------------------------------------------------------------


def generate_chunks(
    events: int, *, seed: int, concurrency: int = 500, runs_per_workflow: int = 1000
) -> Iterator[list[Any]]:
    """Exactly ``events`` domain events, in chunks of about ``concurrency`` events.

    Workflows are created as they are needed (one per ``runs_per_workflow`` runs),
    each run is played one event per chunk; the log ends with some runs still in
    flight, as a live platform's would.
    """
    rng = random.Random(seed)
    produced = 0
    workflows: list[tuple[Workflow, WorkflowPlan]] = []
    runs_started = 0
    in_flight: list[RunBuilder] = []
    while produced < events:
        chunk: list[Any] = []
        budget = min(concurrency, events - produced)
        # Top up the runs in flight (a new workflow every runs_per_workflow runs).
        while len(in_flight) < concurrency:
            if runs_started % runs_per_workflow == 0:
                plan = plan_workflow(len(workflows), rng)
                workflow = build_workflow(plan, source=SOURCE)
                pending = workflow.collect_events()
                take = pending[: max(0, budget - len(chunk))]
                if len(take) < len(pending):
                    chunk.extend(take)
                    produced += len(chunk)
                    yield chunk
                    return
                chunk.extend(pending)
                workflows.append((workflow, plan))
            workflow, plan = workflows[rng.randrange(len(workflows))]
            in_flight.append(RunBuilder(workflow, plan_run(plan, rng, source=SOURCE)))
            runs_started += 1
        still: list[RunBuilder] = []
        for builder in in_flight:
            if len(chunk) >= budget:
                still.append(builder)
                continue
            run = builder.play()
            chunk.extend(run.collect_events())
            if not builder.done:
                still.append(builder)
        in_flight = still
        produced += len(chunk)
        yield chunk


def ensure_stores(stores: list[Store], *, log: Any = print) -> dict[str, float]:
    """Seed every store that is not already seeded (one generation pass for all).

    Returns seconds spent per store label (0 when reused).
    """
    timings = {store.label: 0.0 for store in stores}
    missing = [store for store in stores if not _is_seeded(store)]
    if not missing:
        return timings
    sizes = {store.events for store in missing}
    seeds = {store.seed for store in missing}
    assert len(sizes) == 1, "seed one size at a time"
    assert len(seeds) == 1, "seed one seed at a time"
    events, seed = sizes.pop(), seeds.pop()
    for store in missing:
        _reset(store)
    apps = [
        (store, AutomationApp(store.settings(), key_ring=store.key_ring())) for store in missing
    ]
    log(f"seeding {events:,} events into {', '.join(s.label for s, _ in apps)} ...")
    started = time.perf_counter()
    done = 0
    next_report = 50_000
    try:
        for chunk in generate_chunks(events, seed=seed):
            for store, app in apps:
                t0 = time.perf_counter()
                app.save(*chunk)
                timings[store.label] += time.perf_counter() - t0
            done += len(chunk)
            if done >= next_report:
                log(f"  {done:,} events ({time.perf_counter() - started:.0f} s)")
                next_report += 50_000
    finally:
        for _, app in apps:
            app.close()
    for store in missing:
        _mark_seeded(store)
    log(f"seeded in {time.perf_counter() - started:.1f} s")
    return timings


def head_position(store: Store) -> int:
    if store.backend == "sqlite":
        with sqlite3.connect(store.sqlite_path) as conn:
            return int(conn.execute("SELECT max(rowid) FROM stored_events").fetchone()[0] or 0)
    with psycopg.connect(store.postgres_dsn) as conn:
        row = conn.execute(f"SELECT max(notification_id) FROM {store.table}").fetchone()
        return int(row[0] or 0) if row else 0


def position_of_event(store: Store, count: int) -> int:
    """The position of the ``count``-th event of the log (the end of a prefix)."""
    if store.backend == "sqlite":
        query = "SELECT rowid FROM stored_events ORDER BY rowid LIMIT 1 OFFSET ?"
        with sqlite3.connect(store.sqlite_path) as conn:
            row = conn.execute(query, (count - 1,)).fetchone()
    else:
        query = (
            f"SELECT notification_id FROM {store.table} ORDER BY notification_id LIMIT 1 OFFSET %s"
        )
        with psycopg.connect(store.postgres_dsn) as conn:
            row = conn.execute(query, (count - 1,)).fetchone()
    return int(row[0]) if row else head_position(store)


def uuid_text(value: str) -> str:
    """A dashed UUID string from SQLite's 32-hex form."""
    return str(UUID(value))

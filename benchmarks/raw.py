"""The raw floor: the least a catch-up of the run-status projection can do.

No framework: a keyset read of the projection's topics (PostgreSQL: binary
cursor), AES-GCM decrypt with ``cryptography``'s ``AESGCM`` directly (header
parsed per ``domain/keyring.py``, associated data as in ``domain/mapper.py``),
``orjson`` decode, each batch folded per row in a dict, then one batched upsert
plus one position update per batch in one transaction (PostgreSQL:
``INSERT ... SELECT FROM unnest(...) ON CONFLICT DO UPDATE``; SQLite:
``executemany`` inside one transaction).

With ``workers`` > 1, one process per partition of the aggregates (the partition
function of safereplay's sources, filtered in the database the same way), released
together (:mod:`benchmarks.partitions`), each updating its own position row.

Also :func:`reference_fold`: the same read and decode with an in-memory table,
giving the expected final state of every loop for a range of the log.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import psycopg
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from psycopg import sql

from benchmarks import collector
from benchmarks.dataset import Store
from benchmarks.memory import peak_rss_kb
from benchmarks.partitions import child_handshake, release_together
from benchmarks.shape import TOPICS, apply_delta, digest, fold

__all__ = [
    "Opener",
    "catch_up",
    "partition_main",
    "partition_of_hex",
    "read_batches",
    "reference_fold",
    "run_raw_floor",
]

_MAGIC_V1 = b"\x00SR\x01"
_NONCE = 12

Row = tuple[int, str, int, str, bytes]


class Opener:
    """Decrypts key ring ciphertexts with ``AESGCM`` directly (or passes plaintext)."""

    def __init__(self, store: Store) -> None:
        ring = store.key_ring()
        self.aeads: dict[bytes, AESGCM] | None = (
            None if ring is None else {k.encode(): AESGCM(v) for k, v in ring.keys.items()}
        )

    def __call__(self, blob: bytes, aggregate_id: str, version: int, topic: str) -> bytes:
        aeads = self.aeads
        if aeads is None:
            return blob
        if blob[:4] != _MAGIC_V1:
            raise ValueError(f"not a key ring ciphertext at {aggregate_id} v{version}")
        header_len = 5 + blob[4]
        nonce_end = header_len + _NONCE
        return aeads[blob[5:header_len]].decrypt(
            blob[header_len:nonce_end],
            blob[nonce_end:],
            blob[:header_len] + f"{aggregate_id}\x1f{version}\x1f{topic}".encode(),
        )


def _dashed(hex32: str) -> str:
    return f"{hex32[:8]}-{hex32[8:12]}-{hex32[12:16]}-{hex32[16:20]}-{hex32[20:]}"


#: PostgreSQL: the partition of an aggregate in SQL, the expression of safereplay's
#: sources (``PARTITION_HASH`` and ``PARTITION_FILTER`` of
#: ``projections/source_sql.py``): the id's first 32 bits, modulo the count. Copied,
#: not imported, so the floor stays framework-free; ``tests/test_benchmarks_raw.py``
#: checks it against ``partition_of``.
PG_PARTITION_FILTER = (
    " AND (('x' || substr(originator_id::text, 1, 8))::bit(32)::bigint) %% %s = %s"
)
#: SQLite has no bit strings: a deterministic SQL function registered on the read
#: connection, as safereplay's SQLite source does (``safereplay_partition``).
SQLITE_PARTITION_FILTER = " AND bench_partition(originator_id, ?) = ?"


def partition_of_hex(originator_id: str, count: int) -> int:
    """The partition of an id stored as 32 hex digits (SQLite) or dashed text."""
    return int(originator_id.replace("-", "")[:8], 16) % count


def read_batches(
    store: Store,
    *,
    after: int,
    upto: int,
    batch_size: int,
    timer: list[int] | None = None,
    partition: tuple[int, int] = (0, 1),
) -> Iterator[list[Row]]:
    """Keyset-read (position, aggregate id, version, topic, state) of the projection's topics.

    ``partition`` = ``(index, count)``: only the aggregates of that partition, filtered in
    the database like safereplay's sources do (``(0, 1)``: the whole log, no filter).
    """
    index, count = partition
    whole = count == 1
    if store.backend == "postgres":
        with psycopg.connect(store.postgres_dsn, autocommit=True) as conn:
            cur = conn.cursor(binary=True)
            query = sql.SQL(
                "SELECT notification_id, originator_id::text, originator_version, topic, state "
                "FROM {} WHERE notification_id > %s AND notification_id <= %s "
                "AND topic = ANY(%s){} ORDER BY notification_id LIMIT %s"
            ).format(sql.SQL(store.table), sql.SQL("" if whole else PG_PARTITION_FILTER))
            topics = list(TOPICS)
            extra: tuple[int, ...] = () if whole else (count, index)
            while True:
                t0 = time.perf_counter_ns()
                cur.execute(query, (after, upto, topics, *extra, batch_size), prepare=True)
                rows = cur.fetchall()
                if timer is not None:
                    timer[0] += time.perf_counter_ns() - t0
                if not rows:
                    return
                yield rows
                after = rows[-1][0]
    else:
        lite = sqlite3.connect(store.sqlite_path, isolation_level=None)
        lite.create_function("bench_partition", 2, partition_of_hex, deterministic=True)
        try:
            lite_query = (
                "SELECT rowid, originator_id, originator_version, topic, state "
                "FROM stored_events WHERE rowid > ? AND rowid <= ? "
                f"AND topic IN ({','.join('?' * len(TOPICS))})"
                f"{'' if whole else SQLITE_PARTITION_FILTER} ORDER BY rowid LIMIT ?"
            )
            lite_extra = () if whole else (count, index)
            while True:
                t0 = time.perf_counter_ns()
                rows = lite.execute(
                    lite_query, (after, upto, *TOPICS, *lite_extra, batch_size)
                ).fetchall()
                rows = [(p, _dashed(a), v, t, s) for p, a, v, t, s in rows]
                if timer is not None:
                    timer[0] += time.perf_counter_ns() - t0
                if not rows:
                    return
                yield rows
                after = rows[-1][0]
        finally:
            lite.close()


def reference_fold(store: Store, *, upto: int, batch_size: int = 5000) -> dict[str, Any]:
    """Digest of the run-status table that a correct loop ends with at ``upto``."""
    opener = Opener(store)
    table: dict[str, list[Any]] = {}
    loads = orjson.loads
    for rows in read_batches(store, after=0, upto=upto, batch_size=batch_size):
        deltas: dict[str, list[Any]] = {}
        for _pos, run_id, version, topic, blob in rows:
            fold(deltas, run_id, topic, loads(opener(blob, run_id, version, topic)))
        for run_id, delta in deltas.items():
            apply_delta(table, run_id, delta)
    return digest((run_id, *row) for run_id, row in table.items())


# -- writers ---------------------------------------------------------------------------

PG_VIEW_DDL = """
CREATE TABLE {schema}.run_status (
    run_id uuid PRIMARY KEY,
    workflow_id uuid,
    status text,
    steps_succeeded integer NOT NULL,
    failures integer NOT NULL,
    last_error_code text,
    updated_at timestamptz
);
CREATE TABLE {schema}.run_status_position (
    projection text NOT NULL,
    partition integer NOT NULL,
    position bigint NOT NULL,
    PRIMARY KEY (projection, partition)
);
"""

PG_UPSERT = """
INSERT INTO {schema}.run_status AS t
SELECT * FROM unnest(%s::uuid[], %s::uuid[], %s::text[], %s::int[], %s::int[], %s::text[],
                     %s::timestamptz[])
ON CONFLICT (run_id) DO UPDATE SET
    workflow_id = COALESCE(EXCLUDED.workflow_id, t.workflow_id),
    status = COALESCE(EXCLUDED.status, t.status),
    steps_succeeded = t.steps_succeeded + EXCLUDED.steps_succeeded,
    failures = t.failures + EXCLUDED.failures,
    last_error_code = COALESCE(EXCLUDED.last_error_code, t.last_error_code),
    updated_at = EXCLUDED.updated_at
"""

PG_POSITION = (
    "UPDATE {schema}.run_status_position SET position = %s "
    "WHERE projection = 'run_status' AND partition = %s"
)

SQLITE_VIEW_DDL = """
CREATE TABLE run_status (
    run_id TEXT PRIMARY KEY,
    workflow_id TEXT,
    status TEXT,
    steps_succeeded INTEGER NOT NULL,
    failures INTEGER NOT NULL,
    last_error_code TEXT,
    updated_at TEXT
);
CREATE TABLE run_status_position (
    projection TEXT NOT NULL,
    partition INTEGER NOT NULL,
    position INTEGER NOT NULL,
    PRIMARY KEY (projection, partition)
);
"""

SQLITE_UPSERT = """
INSERT INTO run_status VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (run_id) DO UPDATE SET
    workflow_id = COALESCE(excluded.workflow_id, run_status.workflow_id),
    status = COALESCE(excluded.status, run_status.status),
    steps_succeeded = run_status.steps_succeeded + excluded.steps_succeeded,
    failures = run_status.failures + excluded.failures,
    last_error_code = COALESCE(excluded.last_error_code, run_status.last_error_code),
    updated_at = excluded.updated_at
"""

SQLITE_POSITION = (
    "UPDATE run_status_position SET position = ? WHERE projection = 'run_status' AND partition = ?"
)

RUN_STATUS_COLUMNS = (
    "run_id, workflow_id, status, steps_succeeded, failures, last_error_code, updated_at"
)


def prepare_pg_view(dsn: str, schema: str, *, partitions: int = 1) -> None:
    """An empty view, with one position row per partition (default 1: the whole log)."""
    ident = sql.Identifier(schema)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(ident))
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(ident))
        conn.execute(sql.SQL(PG_VIEW_DDL).format(schema=ident))
        for index in range(partitions):
            conn.execute(
                sql.SQL("INSERT INTO {}.run_status_position VALUES ('run_status', %s, 0)").format(
                    ident
                ),
                (index,),
            )


def prepare_sqlite_view(path: Path, *, partitions: int = 1) -> None:
    """An empty view, with one position row per partition (default 1: the whole log)."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(SQLITE_VIEW_DDL)
    conn.executemany(
        "INSERT INTO run_status_position VALUES ('run_status', ?, 0)",
        [(index,) for index in range(partitions)],
    )
    conn.close()


def view_digest_pg(dsn: str, schema: str, table: str = "run_status") -> dict[str, Any]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            sql.SQL(f"SELECT {RUN_STATUS_COLUMNS} FROM {{}}.{{}}").format(
                sql.Identifier(schema), sql.Identifier(table)
            )
        ).fetchall()
    return digest(rows)


def view_digest_sqlite(path: Path, table: str = "run_status") -> dict[str, Any]:
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(f"SELECT {RUN_STATUS_COLUMNS} FROM {table}").fetchall()
    finally:
        conn.close()
    return digest(rows)


def run_raw_floor(
    store: Store,
    *,
    upto: int,
    batch_size: int,
    view: dict[str, Any],
    workers: int = 1,
    gc_choice: str = collector.DEFAULT,
) -> dict[str, Any]:
    """Catch the run-status table up from zero to ``upto``; returns timings.

    ``workers`` > 1: one process per partition (:func:`partition_main`), released
    together like safereplay's partition workers; the caller has applied the collector
    setting to this process, each partition process applies ``gc_choice`` to itself.
    """
    if workers == 1:
        return catch_up(store, upto=upto, batch_size=batch_size, view=view)
    specs = [
        {
            "store": store.to_json(),
            "upto": upto,
            "batch_size": batch_size,
            "view": view,
            "index": index,
            "count": workers,
            "gc": gc_choice,
        }
        for index in range(workers)
    ]
    elapsed, results = release_together("benchmarks.raw", specs)
    return {
        "seconds": elapsed,
        "batches": sum(r["batches"] for r in results),
        # Summed over the partitions (time spent in each stage, all processes).
        "split_ms": {
            stage: sum(r["split_ms"][stage] for r in results)
            for stage in ("fetch", "decrypt_decode", "apply", "commit")
        },
        "partitions": results,
        "children_peak_rss_kb": max(r["peak_rss_kb"] for r in results),
    }


def catch_up(
    store: Store,
    *,
    upto: int,
    batch_size: int,
    view: dict[str, Any],
    partition: tuple[int, int] = (0, 1),
) -> dict[str, Any]:
    """One process's catch-up of ``partition`` (``(index, count)``) up to ``upto``."""
    index = partition[0]
    opener = Opener(store)
    loads = orjson.loads
    fetch_ns = [0]
    decode_ns = apply_ns = commit_ns = 0
    batches = 0
    write: Callable[[dict[str, list[Any]], int], None]
    if store.backend == "postgres":
        schema = sql.Identifier(view["schema"])
        wconn = psycopg.connect(store.postgres_dsn)
        wcur = wconn.cursor()
        upsert = sql.SQL(PG_UPSERT).format(schema=schema)
        position_sql = sql.SQL(PG_POSITION).format(schema=schema)

        def write(deltas: dict[str, list[Any]], position: int) -> None:
            columns: list[list[Any]] = [list(deltas), [], [], [], [], [], []]
            for delta in deltas.values():
                columns[1].append(delta[0])
                columns[2].append(delta[1])
                columns[3].append(delta[2])
                columns[4].append(delta[3])
                columns[5].append(delta[4])
                columns[6].append(delta[5])
            wcur.execute(upsert, columns, prepare=True)
            wcur.execute(position_sql, (position, index), prepare=True)
            wconn.commit()

        close = wconn.close
    else:
        # Partition processes write the same file: wait for the write lock (IMMEDIATE
        # takes it at BEGIN, so a transaction never fails half-way on a busy database).
        sconn = sqlite3.connect(view["path"], isolation_level=None, timeout=600)
        sconn.execute("PRAGMA journal_mode=WAL")

        def write(deltas: dict[str, list[Any]], position: int) -> None:
            sconn.execute("BEGIN IMMEDIATE")
            sconn.executemany(SQLITE_UPSERT, [(k, *v) for k, v in deltas.items()])
            sconn.execute(SQLITE_POSITION, (position, index))
            sconn.execute("COMMIT")

        close = sconn.close

    started = time.perf_counter_ns()
    try:
        for rows in read_batches(
            store, after=0, upto=upto, batch_size=batch_size, timer=fetch_ns, partition=partition
        ):
            t0 = time.perf_counter_ns()
            decoded = [
                (run_id, topic, loads(opener(blob, run_id, version, topic)))
                for _pos, run_id, version, topic, blob in rows
            ]
            t1 = time.perf_counter_ns()
            deltas: dict[str, list[Any]] = {}
            for run_id, topic, state in decoded:
                fold(deltas, run_id, topic, state)
            t2 = time.perf_counter_ns()
            write(deltas, rows[-1][0])
            t3 = time.perf_counter_ns()
            decode_ns += t1 - t0
            apply_ns += t2 - t1
            commit_ns += t3 - t2
            batches += 1
        elapsed_ns = time.perf_counter_ns() - started
    finally:
        close()
    return {
        "seconds": elapsed_ns / 1e9,
        "batches": batches,
        "split_ms": {
            "fetch": fetch_ns[0] / 1e6,
            "decrypt_decode": decode_ns / 1e6,
            "apply": apply_ns / 1e6,
            "commit": commit_ns / 1e6,
        },
    }


def partition_main(spec: dict[str, Any]) -> int:
    """One partition process of the floor: set up, report READY, wait for GO, catch up."""
    store = Store.from_json(spec["store"])
    # The same collector setting as every other measured process, before the clock.
    collector.apply(spec["gc"])
    if not child_handshake():
        return 1
    result = catch_up(
        store,
        upto=int(spec["upto"]),
        batch_size=int(spec["batch_size"]),
        view=spec["view"],
        partition=(int(spec["index"]), int(spec["count"])),
    )
    result["peak_rss_kb"] = peak_rss_kb()
    result["gc"] = collector.describe()
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(partition_main(json.loads(sys.argv[1])))

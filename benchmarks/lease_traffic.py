"""What the leases cost: a rebuild shared by k ``safereplay worker`` processes, measured
in the database.

    python -m benchmarks.lease_traffic [--events 100000] [--workers 1,2,3]
        [--partitions 6] [--lease-seconds 30] [--out benchmarks/lease_traffic.json]

For each k, a rebuild job of ``run_status`` (cipher on, PostgreSQL) over a seeded
store is planned with no local worker (``rebuild -w 0``), then k real worker
processes (``safereplay worker --job J --exit-when-idle --host lease-bench-I``)
share it, as workers on k machines would. Everything is read from PostgreSQL:

- ``transactions``: the ``xact_commit`` delta of the store's own database (a
  database of its own, ``--database``, so that nothing else is counted; the
  sampler connects to another one);
- per table of the schema, the deltas of ``pg_stat_user_tables`` (rows inserted
  and updated, scans): the projection's position rows (one write per batch
  commit), the lease rows (``safereplay_job_partitions``: claims, renewals,
  progress reports, the fence's tally in each batch commit, finishes) and the job
  rows (``safereplay_jobs``: read before every batch);
- claims: the lease tokens (one per claim);
- connections per worker: ``pg_stat_activity`` sampled while the workers run,
  by ``application_name`` (each worker's ``safereplay-HOST-*``; the event store
  pool's connections, which safereplay leaves unnamed, through ``PGAPPNAME``);
- the server's CPU per event: the CPU time of those backends, from ``/proc`` (the
  server on this machine), at their last sample.

Renewals are not a row of their own: they are the lease-row updates left once the
claims, finishes, one progress report and one tally per batch are taken out (an
estimate, within a few updates). The output is one JSON document, also written to
``--out``. Never run above N = 200,000 on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from benchmarks.dataset import Store, ensure_stores, head_position, prepare_data_dir
from safereplay.domain import DEFAULT_POSTGRES_DSN
from safereplay.recovery.security.audit import AuditKey

PROJECTION = "run_status"
DEFAULT_DATA_DIR = Path(__file__).resolve().parent / ".data-lease"
CLI = [sys.executable, "-m", "safereplay.recovery.cli"]


def _dsn_for(dsn: str, database: str) -> str:
    return make_conninfo(dsn, dbname=database)


def ensure_database(dsn: str, database: str) -> None:
    """The benchmark's own database (its transaction counter counts nothing else)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone()
        if found is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))


def cli_env(store: Store, data_dir: Path, *, lease_seconds: float) -> dict[str, str]:
    """The workers' environment; an admin is bootstrapped once per schema (its token
    file and the audit key are kept in the data dir)."""
    audit_key = data_dir / "audit.key"
    if not audit_key.exists():
        AuditKey.generate().save(audit_key)
    env = {
        **os.environ,
        "SAFEREPLAY_BACKEND": "postgres",
        "SAFEREPLAY_POSTGRES_DSN": store.postgres_dsn,
        "SAFEREPLAY_POSTGRES_SCHEMA": store.postgres_schema,
        "SAFEREPLAY_APPLICATION_NAME": store.name,
        "SAFEREPLAY_KEY_FILE": str(store.key_file),
        "SAFEREPLAY_AUDIT_KEY_FILE": str(audit_key),
        "SAFEREPLAY_APPROVAL_REQUIRED": "",
        "SAFEREPLAY_LEASE_SECONDS": str(lease_seconds),
    }
    token_file = data_dir / f"{store.postgres_schema}.token"
    if not token_file.exists():
        done = subprocess.run(
            [*CLI, "principals", "bootstrap", "bench", "--token-file", str(token_file)],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise SystemExit(f"bootstrap failed: {done.stdout}{done.stderr}")
    return env | {"SAFEREPLAY_TOKEN_FILE": str(token_file)}


def table_stats(conn: psycopg.Connection[Any], schema: str) -> dict[str, dict[str, int]]:
    conn.execute("SELECT pg_stat_clear_snapshot()")
    rows = conn.execute(
        "SELECT relname, n_tup_ins, n_tup_upd, n_tup_del, coalesce(seq_scan, 0), "
        "coalesce(idx_scan, 0) FROM pg_stat_user_tables WHERE schemaname = %s",
        (schema,),
    ).fetchall()
    keys = ("inserted", "updated", "deleted", "seq_scans", "idx_scans")
    return {str(r[0]): dict(zip(keys, (int(v) for v in r[1:]), strict=True)) for r in rows}


def database_stats(conn: psycopg.Connection[Any], database: str) -> dict[str, int]:
    conn.execute("SELECT pg_stat_clear_snapshot()")
    row = conn.execute(
        "SELECT xact_commit, xact_rollback, tup_returned, tup_fetched "
        "FROM pg_stat_database WHERE datname = %s",
        (database,),
    ).fetchone()
    assert row is not None
    return dict(zip(("commits", "rollbacks", "returned", "fetched"), map(int, row), strict=True))


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process of this machine (None: not readable)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()
    except OSError:
        return None
    # After the command's closing parenthesis: field 3 is the state, 14 and 15 utime, stime.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items()}


def run_one(
    *,
    workers: int,
    partitions: int,
    env: dict[str, str],
    store: Store,
    database: str,
    monitor: psycopg.Connection[Any],
    store_conn: psycopg.Connection[Any],
) -> dict[str, Any]:
    reason = f"lease traffic, {workers} workers"
    planned = subprocess.run(
        [*CLI, "rebuild", PROJECTION, "-n", str(partitions), "-w", "0", "-r", reason, "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if planned.returncode != 0:
        raise SystemExit(f"rebuild failed: {planned.stdout}{planned.stderr}")
    job_id = json.loads(planned.stdout)["job_id"]
    hosts = [f"lease-bench-{i}" for i in range(1, workers + 1)]
    time.sleep(1.0)  # the planning's own statistics reach the counters first
    # Table statistics are per database: read on the store's connection, before the
    # database's counter is read and after it is read again (so its own statements,
    # two per reading, fall outside the window but for a late flush).
    tables_before = table_stats(store_conn, store.postgres_schema)
    db_before = database_stats(monitor, database)
    started = time.perf_counter()
    processes = [
        subprocess.Popen(
            [*CLI, "worker", "--job", job_id, "--exit-when-idle", "--host", host, "--json"],
            # libpq's PGAPPNAME names the connections safereplay leaves unnamed (the
            # event store's pool), so that every connection is counted to its worker.
            env=env | {"PGAPPNAME": f"safereplay-{host}-event-store-pool"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for host in hosts
    ]
    most: Counter[str] = Counter()
    # CPU seconds of each server backend of the workers, by pid: the last reading of
    # its /proc entry (the server runs on this machine) before it went away.
    backend_cpu: dict[int, tuple[str, float]] = {}
    while any(p.poll() is None for p in processes):
        rows = monitor.execute(
            "SELECT pid, coalesce(nullif(application_name, ''), '(unnamed)') "
            "FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (database,),
        ).fetchall()
        now = Counter(str(r[1]) for r in rows)
        for name, count in now.items():
            most[name] = max(most[name], count)
        for pid, name in rows:
            cpu = process_cpu_seconds(int(pid))
            if cpu is not None and str(name).startswith("safereplay-lease-bench-"):
                backend_cpu[int(pid)] = (str(name), cpu)
        time.sleep(0.2)
    seconds = time.perf_counter() - started
    reports = []
    for process in processes:
        out, err = process.communicate()
        if process.returncode != 0:
            raise SystemExit(f"worker failed ({process.returncode}): {err}")
        reports.append(json.loads(out))
    time.sleep(1.5)  # ended backends flush their statistics
    db = _delta(database_stats(monitor, database), db_before)
    tables = {
        name: _delta(after, tables_before.get(name, {}))
        for name, after in table_stats(store_conn, store.postgres_schema).items()
    }
    parts = store_conn.execute(
        sql.SQL(
            "SELECT partition_index, lease_token, events_applied, status "
            "FROM {}.safereplay_job_partitions WHERE job_id = %s ORDER BY partition_index"
        ).format(sql.Identifier(store.postgres_schema)),
        (job_id,),
    ).fetchall()
    claims = sum(int(p[1]) for p in parts)
    applied = sum(int(p[2]) for p in parts)
    assert all(p[3] == "completed" for p in parts), parts
    # A batch commit updates its partition's position row (planned with the job);
    # the seal at the end inserts the build's one position and deletes the others.
    position_writes = sum(t["updated"] for n, t in tables.items() if n.endswith("positions"))
    lease = tables.get("safereplay_job_partitions", {})
    jobs = tables.get("safereplay_jobs", {})
    lease_updates = lease.get("updated", 0)
    # One progress report and one fenced tally per batch, a claim per lease, a finish
    # per partition: the rest of the lease-row updates are renewals.
    renewals = max(0, lease_updates - claims - partitions - 2 * position_writes)
    per_host: dict[str, dict[str, int]] = {}
    for name, count in most.items():
        for host in hosts:
            if name.startswith(f"safereplay-{host}-"):
                per_host.setdefault(host, {})[name.removeprefix(f"safereplay-{host}-")] = count
    each = [sum(roles.values()) for roles in per_host.values()]
    server_cpu: dict[str, float] = {}
    for name, cpu in backend_cpu.values():
        role = name.split("-", 3)[-1].split("-", 1)[-1]  # safereplay-lease-bench-I-ROLE
        server_cpu[role] = server_cpu.get(role, 0.0) + cpu
    server_total = sum(server_cpu.values())
    return {
        "workers": workers,
        "partitions": partitions,
        "job_id": job_id,
        "seconds": round(seconds, 2),
        "events_applied": applied,
        "events_per_second": round(applied / seconds, 1),
        "transactions": db["commits"],
        "rollbacks": db["rollbacks"],
        "batches": position_writes,
        "transactions_per_batch": round(db["commits"] / max(1, position_writes), 2),
        "lease_row_updates": lease_updates,
        "claims": claims,
        "renewals_estimated": renewals,
        "job_row_reads": jobs.get("seq_scans", 0) + jobs.get("idx_scans", 0),
        "job_row_updates": jobs.get("updated", 0),
        "job_store_statements_per_batch": round(
            (lease_updates - position_writes + jobs.get("seq_scans", 0) + jobs.get("idx_scans", 0))
            / max(1, position_writes),
            2,
        ),
        "connections_max_by_name": dict(sorted(most.items())),
        "connections_per_worker": {
            "most": max(each, default=0),
            "by_role": next(iter(per_host.values()), {}),
            "unnamed": most.get("(unnamed)", 0),
        },
        # At least: a backend's CPU after its last sample (0.2 s) is not seen.
        "server_cpu_seconds": round(server_total, 2),
        "server_cpu_seconds_by_role": {k: round(v, 2) for k, v in sorted(server_cpu.items())},
        "server_cpu_microseconds_per_event": round(1e6 * server_total / max(1, applied), 2),
        "tables": tables,
        "worker_ids": [r["worker_id"] for r in reports],
        "partitions_by_worker": [sorted(index for _, index, _ in r["outcomes"]) for r in reports],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=23)
    parser.add_argument("--workers", default="1,2,3", help="comma-separated worker counts")
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--lease-seconds", type=float, default=30.0)
    parser.add_argument(
        "--dsn", default=os.environ.get("SAFEREPLAY_TEST_POSTGRES_DSN", DEFAULT_POSTGRES_DSN)
    )
    parser.add_argument("--database", default="safereplay_lease_bench")
    parser.add_argument("--schema", default="lease_bench")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.events > 200_000:
        parser.error("--events above 200,000 is not for a shared machine")
    load_before = os.getloadavg()
    ensure_database(args.dsn, args.database)
    dsn = _dsn_for(args.dsn, args.database)
    prepare_data_dir(args.data_dir)
    store = Store(
        backend="postgres",
        cipher=True,
        events=args.events,
        seed=args.seed,
        data_dir=args.data_dir,
        postgres_dsn=dsn,
        postgres_schema=args.schema,
    )
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(args.schema)))
    ensure_stores([store], log=lambda m: print(m, file=sys.stderr))
    env = cli_env(store, args.data_dir, lease_seconds=args.lease_seconds)
    runs = []
    # The sampler reads pg_stat_* from the server's default database: its own
    # queries are not counted in the benchmark database's transactions.
    with (
        psycopg.connect(args.dsn, autocommit=True) as monitor,
        psycopg.connect(dsn, autocommit=True, application_name="lease-bench-reader") as store_conn,
    ):
        for workers in [int(w) for w in args.workers.split(",")]:
            print(f"k = {workers} ...", file=sys.stderr)
            runs.append(
                run_one(
                    workers=workers,
                    partitions=args.partitions,
                    env=env,
                    store=store,
                    database=args.database,
                    monitor=monitor,
                    store_conn=store_conn,
                )
            )
        version = str(monitor.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
    report = {
        "benchmark": "lease_traffic",
        "command": "python -m benchmarks.lease_traffic " + " ".join(argv or sys.argv[1:]),
        "events": args.events,
        "head_position": head_position(store),
        "projection": PROJECTION,
        "cipher": True,
        "lease_seconds": args.lease_seconds,
        # Not set: the defaults (batch 5000 events, event store pool 5).
        "batch_size": os.environ.get("SAFEREPLAY_PROJECTIONS_BATCH_SIZE", "5000"),
        "pool_size": os.environ.get("SAFEREPLAY_POOL_SIZE", "5"),
        "postgres": version,
        "host": conninfo_to_dict(args.dsn).get("host"),
        "cpus": os.cpu_count(),
        "load_average_before": load_before,
        "runs": runs,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

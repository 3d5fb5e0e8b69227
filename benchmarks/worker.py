"""One measured loop in a fresh process: ``python -m benchmarks.worker SPEC_JSON``.

The harness starts one worker per measurement, so that every loop starts cold
and its peak RSS (``VmHWM``) is its own. The worker prepares an empty view,
applies the collector setting (``spec["gc"]``, :mod:`benchmarks.collector`),
runs the loop over ``(0, upto]``, then (outside the timing) reads back the view
for the state digest, and prints one ``RESULT {json}`` line.
"""

from __future__ import annotations

import cProfile
import io
import json
import pstats
import sqlite3
import sys
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from benchmarks import collector, es_baseline, raw, safereplay_loop
from benchmarks.dataset import Store
from benchmarks.memory import peak_rss_kb, status_kb

__all__ = ["main", "run_spec"]


def _events_in_range(store: Store, upto: int) -> int:
    if store.backend == "sqlite":
        with sqlite3.connect(store.sqlite_path) as conn:
            return int(
                conn.execute(
                    "SELECT count(*) FROM stored_events WHERE rowid <= ?", (upto,)
                ).fetchone()[0]
            )
    with psycopg.connect(store.postgres_dsn) as conn:
        row = conn.execute(
            sql.SQL("SELECT count(*) FROM {} WHERE notification_id <= %s").format(
                sql.SQL(store.table)
            ),
            (upto,),
        ).fetchone()
    return int(row[0]) if row else 0


def _fresh_pg_schema(dsn: str, schema: str) -> None:
    ident = sql.Identifier(schema)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(ident))
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(ident))


def _fresh_sqlite(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def _write_profile(profiler: cProfile.Profile, path: Path) -> None:
    """The profile as ``PATH.prof`` (for snakeviz & co) and a top-40 text ``PATH.txt``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    profiler.dump_stats(str(path.with_suffix(".prof")))
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text)
    stats.sort_stats("tottime").print_stats(40)
    stats.sort_stats("cumulative").print_stats(30)
    path.with_suffix(".txt").write_text(text.getvalue(), encoding="utf-8")


def run_spec(spec: dict[str, Any]) -> dict[str, Any]:
    store = Store.from_json(spec["store"])
    loop = spec["loop"]
    upto = int(spec["upto"])
    view: dict[str, Any] = dict(spec["view"])
    rss_start = status_kb("VmRSS")
    if store.backend == "postgres":
        _fresh_pg_schema(store.postgres_dsn, view["schema"])
    else:
        _fresh_sqlite(Path(view["path"]))
    if loop == "raw":
        partitions = int(spec.get("workers", 1))
        if store.backend == "postgres":
            raw.prepare_pg_view(store.postgres_dsn, view["schema"], partitions=partitions)
        else:
            raw.prepare_sqlite_view(Path(view["path"]), partitions=partitions)
    gc_choice = spec.get("gc", collector.DEFAULT)
    if loop in ("raw", "es"):
        # After imports and set-up, before the clock: the same collector setting as
        # safereplay's loop (which applies it itself, after its own set-up, and in each
        # of its partition processes), so that a ratio measures the loops, not the
        # collector. The raw floor's partition processes apply it themselves.
        collector.apply(gc_choice)
    profiler = cProfile.Profile() if spec.get("profile") else None
    if profiler is not None:
        profiler.enable()
    if loop == "raw":
        result = raw.run_raw_floor(
            store,
            upto=upto,
            batch_size=int(spec["batch_size"]),
            view=view,
            workers=int(spec.get("workers", 1)),
            gc_choice=gc_choice,
        )
    elif loop == "es":
        if store.backend == "postgres":
            result = es_baseline.run_es_postgres(store, upto=upto, view=view)
        else:
            result = es_baseline.run_es_sqlite(store, upto=upto, view=view)
    elif loop == "safereplay":
        result = safereplay_loop.run(
            store, upto=upto, workers=int(spec.get("workers", 1)), view=view, spec=spec
        )
    else:
        raise ValueError(f"unknown loop {loop!r}")
    if profiler is not None:
        profiler.disable()
        _write_profile(profiler, Path(spec["profile"]))
    # Peak RSS of the catch-up itself, before the view is read back.
    peak = peak_rss_kb()
    # Outside the timing: the final state and the size of the range.
    if loop == "safereplay":
        state = safereplay_loop.view_digest(store, view)
    elif store.backend == "postgres":
        state = raw.view_digest_pg(store.postgres_dsn, view["schema"])
    else:
        state = raw.view_digest_sqlite(Path(view["path"]))
    events = _events_in_range(store, upto)
    result.update(
        {
            "events": events,
            "events_per_s": events / result["seconds"] if result["seconds"] else 0.0,
            "state": state,
            "rss_start_kb": rss_start,
            "peak_rss_kb": peak,
            # Partition processes (k workers) report their own peaks.
            "children_peak_rss_kb": int(result.pop("children_peak_rss_kb", 0)),
            "gc_choice": gc_choice,
            # The measuring process's collector (partition processes: in "partitions").
            "gc": collector.describe(),
        }
    )
    return result


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    spec = json.loads(args[0])
    try:
        result = run_spec(spec)
    except safereplay_loop.NotAvailable as exc:
        result = {"unavailable": str(exc)}
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Catch-up throughput benchmark: safereplay vs eventsourcing vs the raw floor.

Run from the repository root::

    python -m benchmarks.catchup                      # N=200,000, 3 runs, both backends
    python -m benchmarks.catchup --quick              # N=20,000, 1 run: a smoke check
    python -m benchmarks.catchup --memory             # peak RSS at 100k vs 1M events

It seeds (or reuses) N encrypted events of the reference domain plus a cipher-off
copy on each backend, then measures, in one run and on the same data, every loop
in a fresh process, ``--runs`` times, interleaved. It prints a table, writes JSON
(``--json``, default ``benchmarks/results/catchup-N.json``) and, for full runs,
regenerates the results block of ``docs/benchmarks.md``. See that file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from benchmarks import collector, raw, safereplay_loop
from benchmarks.dataset import (
    DEFAULT_DATA_DIR,
    SEED_VERSION,
    Store,
    ensure_stores,
    head_position,
    position_of_event,
    prepare_data_dir,
)
from safereplay.domain import DEFAULT_POSTGRES_DSN

__all__ = ["Loop", "main", "run_benchmark"]

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "benchmarks.md"
RESULTS_DIR = Path(__file__).resolve().parent / "results"
START_MARK = "<!-- benchmark-results:start -->"
END_MARK = "<!-- benchmark-results:end -->"
MEMORY_START_MARK = "<!-- memory-results:start -->"
MEMORY_END_MARK = "<!-- memory-results:end -->"
SWEEP_START_MARK = "<!-- batch-sweep:start -->"
SWEEP_END_MARK = "<!-- batch-sweep:end -->"

#: Issue 6's targets.
TARGET_PG_VS_ES = 50.0
TARGET_SQLITE_VS_ES = 20.0
TARGET_VS_RAW = 0.60
TARGET_PARTITIONS = 1.3
TARGET_ENCRYPTION_COST = 0.15
TARGET_MEMORY = 1.2
#: Multiplication sign and en dash for the tables (escaped: ruff flags them in literals).
X = "\u00d7"
DASH = "\u2013"


@dataclass
class Loop:
    """One measured loop: what it is, and its results over the runs."""

    backend: str
    loop: str  # raw | es | safereplay
    cipher: bool
    workers: int = 1
    prefix: bool = False  # runs over the eventsourcing prefix only
    projections: str = "run_status"  # safereplay: run_status | reference (all three)
    results: list[dict[str, Any]] = field(default_factory=list)
    unavailable: str | None = None
    expected: dict[str, Any] | None = None

    @property
    def key(self) -> str:
        workers = f"/{self.workers}w" if self.loop == "safereplay" else ""
        which = "+reference" if self.projections == "reference" else ""
        return f"{self.backend}/{self.loop}{which}{workers}/{'cipher' if self.cipher else 'plain'}"

    @property
    def title(self) -> str:
        return {
            "raw": "raw floor",
            "es": "eventsourcing ProjectionRunner"
            if self.backend == "postgres"
            else "eventsourcing pull loop",
            "safereplay": f"safereplay, {self.workers} worker{'s' if self.workers > 1 else ''}"
            + (", all 3 reference projections" if self.projections == "reference" else ""),
        }[self.loop]

    def rates(self) -> list[float]:
        return [r["events_per_s"] for r in self.results]

    def median(self) -> float | None:
        rates = self.rates()
        return statistics.median(rates) if rates else None

    def state_ok(self) -> bool | None:
        if not self.results or self.expected is None:
            return None
        return all(r["state"] == self.expected for r in self.results)

    def summary(self) -> dict[str, Any]:
        rates = self.rates()
        out: dict[str, Any] = {
            "key": self.key,
            "title": self.title,
            "backend": self.backend,
            "loop": self.loop,
            "cipher": self.cipher,
            "workers": self.workers,
            "projections": self.projections if self.loop == "safereplay" else None,
            "unavailable": self.unavailable,
            "runs": self.results,
        }
        if rates:
            median_run = sorted(self.results, key=lambda r: r["events_per_s"])[len(rates) // 2]
            out.update(
                {
                    "events": self.results[0]["events"],
                    "events_per_s": statistics.median(rates),
                    "events_per_s_min": min(rates),
                    "events_per_s_max": max(rates),
                    "peak_rss_mb": max(
                        max(r["peak_rss_kb"], r.get("children_peak_rss_kb", 0))
                        for r in self.results
                    )
                    / 1024,
                    "state": self.results[0]["state"],
                    "expected_state": self.expected,
                    "state_ok": self.state_ok(),
                    "split_ms_per_batch": per_batch_split(median_run),
                }
            )
        return out


def per_batch_split(result: dict[str, Any]) -> dict[str, float] | None:
    split, batches = result.get("split_ms"), result.get("batches")
    if not split or not batches:
        return None
    total = sum(split.values()) or 1.0
    out = {name: ms / batches for name, ms in split.items()}
    out.update({f"{name}_pct": 100.0 * ms / total for name, ms in split.items()})
    out["batches"] = batches
    return out


# -- running ---------------------------------------------------------------------------


def run_worker(spec: dict[str, Any], *, timeout: float) -> dict[str, Any]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.worker", json.dumps(spec)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line[len("RESULT ") :])
            return result
    raise RuntimeError(
        f"worker for {spec['loop']} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
    )


def _paired(a: Loop, b: Loop) -> float | None:
    """Median of the per-run ratios a/b (side by side), or None."""
    ra, rb = a.rates(), b.rates()
    if not ra or not rb:
        return None
    if len(ra) == len(rb):
        return statistics.median(x / y for x, y in zip(ra, rb, strict=True))
    return statistics.median(ra) / statistics.median(rb)


def drop_schema(dsn: str, schema: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def _run_loops(
    loops: list[Loop],
    runs: int,
    stores: dict[tuple[str, bool], Store],
    uptos: dict[tuple[str, bool, bool], int],
    batch_size: int,
    data_dir: Path,
    postgres_schema: str,
    profile_dir: Path | None,
    sr_batch_size: int | None,
    log: Any,
    gc_choice: str = collector.DEFAULT,
) -> None:
    """Every loop once per run, interleaved, each in a fresh worker process."""
    for run in range(runs):
        for lp in loops:
            if lp.unavailable:
                continue
            store = stores[(lp.backend, lp.cipher)]
            view: dict[str, Any] = (
                {"schema": f"{postgres_schema}_view"}
                if lp.backend == "postgres"
                else {"path": str(data_dir / "work" / "view.db")}
            )
            spec = {
                "loop": lp.loop,
                "store": store.to_json(),
                "upto": uptos[(lp.backend, lp.cipher, lp.prefix)],
                "batch_size": batch_size,
                "workers": lp.workers,
                "projections": lp.projections,
                "sr_batch_size": sr_batch_size,
                "view": view,
                "gc": gc_choice,
            }
            if profile_dir is not None:
                spec["profile"] = str(profile_dir / f"{lp.key.replace('/', '-')}-run{run + 1}")
            result = run_worker(spec, timeout=3600)
            if "unavailable" in result:
                lp.unavailable = result["unavailable"]
                log(f"run {run + 1}/{runs} {lp.key:32} {lp.unavailable}")
                continue
            lp.results.append(result)
            ok = "ok" if result["state"] == lp.expected else "STATE MISMATCH"
            log(
                f"run {run + 1}/{runs} {lp.key:32} {result['events']:>9,} events "
                f"{result['events_per_s']:>10,.0f} ev/s  rss {result['peak_rss_kb'] / 1024:6.1f} MB"
                f"  state {ok}"
            )


def run_benchmark(
    *,
    events: int,
    runs: int,
    backends: list[str],
    es_events: int,
    batch_size: int,
    seed: int,
    data_dir: Path,
    postgres_dsn: str,
    postgres_schema: str,
    loops_filter: set[str] | None = None,
    profile_dir: Path | None = None,
    sr_batch_size: int | None = None,
    gc_choice: str = collector.DEFAULT,
    log: Any = print,
) -> dict[str, Any]:
    es_events = min(es_events, events)
    stores: dict[tuple[str, bool], Store] = {
        (backend, cipher): Store(
            backend, cipher, events, seed, data_dir, postgres_dsn, postgres_schema
        )
        for backend in backends
        for cipher in (True, False)
    }
    seeding = ensure_stores(list(stores.values()), log=log)

    loops: list[Loop] = []
    for backend in backends:
        loops += [
            Loop(backend, "raw", True),
            Loop(backend, "raw", False),
            Loop(backend, "es", True, prefix=True),
            Loop(backend, "safereplay", True, 1),
            Loop(backend, "safereplay", False, 1),
            Loop(backend, "safereplay", True, 2),
            Loop(backend, "safereplay", False, 2),
            Loop(backend, "safereplay", True, 1, projections="reference"),
            Loop(backend, "safereplay", True, 2, projections="reference"),
        ]
    if loops_filter:
        loops = [lp for lp in loops if lp.loop in loops_filter]

    # The range of each loop and the state a correct loop ends with (in-memory fold).
    uptos: dict[tuple[str, bool, bool], int] = {}
    expected: dict[tuple[str, bool, int], dict[str, Any]] = {}
    for lp in loops:
        store = stores[(lp.backend, lp.cipher)]
        ukey = (lp.backend, lp.cipher, lp.prefix)
        if ukey not in uptos:
            uptos[ukey] = position_of_event(store, es_events) if lp.prefix else head_position(store)
        ekey = (lp.backend, lp.cipher, uptos[ukey])
        if ekey not in expected:
            expected[ekey] = raw.reference_fold(store, upto=uptos[ukey])
        lp.expected = expected[ekey]

    reason = safereplay_loop.available()
    for lp in loops:
        if lp.loop == "safereplay" and reason is not None:
            lp.unavailable = reason
            log(f"{lp.key:32} {reason}")

    started = time.perf_counter()
    try:
        _run_loops(
            loops,
            runs,
            stores,
            uptos,
            batch_size,
            data_dir,
            postgres_schema,
            profile_dir,
            sr_batch_size,
            log,
            gc_choice,
        )
    finally:
        if "postgres" in backends:
            drop_schema(postgres_dsn, f"{postgres_schema}_view")
    elapsed = time.perf_counter() - started

    by_key = {lp.key: lp for lp in loops}
    ratios: dict[str, Any] = {}
    for backend in backends:

        def get(key: str, backend: str = backend) -> Loop | None:
            return by_key.get(f"{backend}/{key}")

        pairs = {
            "raw_floor_vs_eventsourcing": ("raw/cipher", "es/cipher"),
            "safereplay_vs_eventsourcing": ("safereplay/1w/cipher", "es/cipher"),
            "safereplay_vs_raw_floor": ("safereplay/1w/cipher", "raw/cipher"),
            "safereplay_plain_vs_raw_floor_plain": ("safereplay/1w/plain", "raw/plain"),
            "two_workers_vs_one": ("safereplay/2w/cipher", "safereplay/1w/cipher"),
            "two_workers_vs_one_plain": ("safereplay/2w/plain", "safereplay/1w/plain"),
            "raw_floor_cipher_vs_plain": ("raw/cipher", "raw/plain"),
            "safereplay_cipher_vs_plain": ("safereplay/1w/cipher", "safereplay/1w/plain"),
        }
        out: dict[str, float | None] = {}
        for name, (a, b) in pairs.items():
            la, lb = get(a), get(b)
            out[name] = _paired(la, lb) if la and lb else None
        for name, cipher_vs_plain in (
            ("raw_floor_encryption_cost", out["raw_floor_cipher_vs_plain"]),
            ("safereplay_encryption_cost", out["safereplay_cipher_vs_plain"]),
        ):
            out[name] = None if cipher_vs_plain is None else 1.0 - cipher_vs_plain
        ratios[backend] = out

    return {
        "meta": machine_meta(
            events=events,
            runs=runs,
            es_events=es_events,
            sr_batch_size=sr_batch_size,
            batch_size=batch_size,
            seed=seed,
            postgres_dsn=postgres_dsn if "postgres" in backends else None,
            gc=gc_choice,
        ),
        "seconds": elapsed,
        "seeding_seconds": seeding,
        "loops": [lp.summary() for lp in loops],
        "ratios": ratios,
        "targets": targets(ratios, backends),
        "safereplay": safereplay_loop.available() or "available",
    }


def targets(ratios: dict[str, Any], backends: list[str]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def add(name: str, target: str, value: float | None, met: bool | None, shown: str) -> None:
        rows.append(
            {"target": name, "wanted": target, "measured": value, "met": met, "shown": shown}
        )

    def times(v: float | None) -> str:
        return "pending" if v is None else f"{v:.1f}{X}"

    def pct(v: float | None) -> str:
        return "pending" if v is None else f"{100 * v:.0f} %"

    for backend, vs_es in (("postgres", TARGET_PG_VS_ES), ("sqlite", TARGET_SQLITE_VS_ES)):
        if backend not in backends:
            continue
        r = ratios[backend]
        v = r["safereplay_vs_eventsourcing"]
        add(
            f"{backend}, cipher, 1 worker vs eventsourcing",
            f"≥ {vs_es:.0f}{X}",
            v,
            None if v is None else v >= vs_es,
            times(v),
        )
        v = r["safereplay_vs_raw_floor"]
        add(
            f"{backend}, cipher, 1 worker vs raw floor",
            f"≥ {TARGET_VS_RAW:.0%}",
            v,
            None if v is None else v >= TARGET_VS_RAW,
            pct(v),
        )
    if "postgres" in backends:
        v = ratios["postgres"]["two_workers_vs_one"]
        add(
            "postgres, 2 partition workers vs 1",
            f"≥ {TARGET_PARTITIONS}{X}",
            v,
            None if v is None else v >= TARGET_PARTITIONS,
            times(v) if v is None else f"{v:.2f}{X}",
        )
    for backend in backends:
        v = ratios[backend]["safereplay_encryption_cost"]
        add(
            f"{backend}, encryption cost of catch-up",
            f"≤ {TARGET_ENCRYPTION_COST:.0%}",
            v,
            None if v is None else v <= TARGET_ENCRYPTION_COST,
            pct(v),
        )
    return rows


def machine_meta(**kwargs: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "sqlite": sqlite3.sqlite_version,
        "eventsourcing": metadata.version("eventsourcing"),
        "seed_version": SEED_VERSION,
        "command": "python -m benchmarks.catchup " + " ".join(sys.argv[1:]),
    }
    dsn = kwargs.pop("postgres_dsn", None)
    if dsn:
        try:
            with psycopg.connect(dsn) as conn:
                row = conn.execute("SHOW server_version").fetchone()
                meta["postgres"] = row[0] if row else "?"
        except psycopg.Error:
            meta["postgres"] = "unreachable"
    meta.update(kwargs)
    return meta


# -- reporting -------------------------------------------------------------------------


def _fmt_rate(v: float | None) -> str:
    return "—" if v is None else f"{v:,.0f}"


def results_table(report: dict[str, Any]) -> str:
    """The results as a Markdown table (also printed)."""
    loops = report["loops"]
    by_key = {lp["key"]: lp for lp in loops}
    lines = [
        f"| backend | loop | cipher | events | events/s (median) | min {DASH} max "
        f"| {X} eventsourcing | % of raw floor | peak RSS | state |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for lp in loops:
        if lp["unavailable"]:
            lines.append(
                f"| {lp['backend']} | {lp['title']} | {'on' if lp['cipher'] else 'off'} "
                f"| | {lp['unavailable']} | | | | | |"
            )
            continue
        es = by_key.get(f"{lp['backend']}/es/cipher")
        rawf = by_key.get(f"{lp['backend']}/raw/{'cipher' if lp['cipher'] else 'plain'}")
        # Ratios only between loops that build the same table (not the 3-projection loops).
        comparable = lp.get("projections") in (None, "run_status")
        vs_es = (
            f"{lp['events_per_s'] / es['events_per_s']:.1f}{X}"
            if comparable and es and es.get("events_per_s") and lp["loop"] != "es"
            else ""
        )
        vs_raw = (
            f"{100 * lp['events_per_s'] / rawf['events_per_s']:.0f} %"
            if comparable and rawf and rawf.get("events_per_s") and lp["loop"] not in ("raw", "es")
            else ""
        )
        state = {True: "ok", False: "MISMATCH", None: "?"}[lp["state_ok"]]
        lines.append(
            f"| {lp['backend']} | {lp['title']} | {'on' if lp['cipher'] else 'off'} "
            f"| {lp['events']:,} | {_fmt_rate(lp['events_per_s'])} "
            f"| {_fmt_rate(lp['events_per_s_min'])} {DASH} {_fmt_rate(lp['events_per_s_max'])} "
            f"| {vs_es} | {vs_raw} | {lp['peak_rss_mb']:.0f} MB | {state} |"
        )
    return "\n".join(lines)


def split_table(report: dict[str, Any]) -> str:
    lines = [
        "| backend | loop | cipher | batches | fetch | decrypt + decode | apply | commit |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for lp in report["loops"]:
        split = lp.get("split_ms_per_batch")
        if not split:
            continue
        cells = [
            f"{split[name]:.2f} ms ({split[name + '_pct']:.0f} %)"
            for name in ("fetch", "decrypt_decode", "apply", "commit")
        ]
        lines.append(
            f"| {lp['backend']} | {lp['title']} | {'on' if lp['cipher'] else 'off'} "
            f"| {split['batches']:,} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


def targets_table(report: dict[str, Any]) -> str:
    lines = ["| target | wanted | measured | met |", "|---|---:|---:|---|"]
    for t in report["targets"]:
        met = {True: "yes", False: "**no**", None: "pending"}[t["met"]]
        lines.append(f"| {t['target']} | {t['wanted']} | {t['shown']} | {met} |")
    return "\n".join(lines)


def ratios_table(report: dict[str, Any]) -> str:
    names = [
        ("raw_floor_vs_eventsourcing", "raw floor ÷ eventsourcing (cipher)", "x"),
        ("safereplay_vs_eventsourcing", "safereplay 1 worker ÷ eventsourcing (cipher)", "x"),
        ("safereplay_vs_raw_floor", "safereplay 1 worker ÷ raw floor (cipher)", "%"),
        ("two_workers_vs_one", "safereplay 2 workers ÷ 1 worker (cipher)", "x"),
        ("raw_floor_encryption_cost", "encryption cost, raw floor", "%"),
        ("safereplay_encryption_cost", "encryption cost, safereplay 1 worker", "%"),
    ]
    backends = list(report["ratios"])
    lines = [
        "| ratio (median of per-run ratios) | " + " | ".join(backends) + " |",
        "|---|" + "---:|" * len(backends),
    ]
    for key, label, kind in names:
        cells = []
        for backend in backends:
            v = report["ratios"][backend].get(key)
            if v is None:
                cells.append("pending")
            elif kind == "x":
                cells.append(f"{v:.2f}{X}" if v < 10 else f"{v:.0f}{X}")
            else:
                cells.append(f"{100 * v:.1f} %")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render(report: dict[str, Any]) -> str:
    meta = report["meta"]
    head = (
        f"Measured {meta['when']} on {meta['cpus']} CPUs ({meta['machine']}), Python "
        f"{meta['python']}, SQLite {meta['sqlite']}"
        + (f", PostgreSQL {meta['postgres']}" if "postgres" in meta else "")
        + f", eventsourcing {meta['eventsourcing']}. N = {meta['events']:,} events "
        f"(eventsourcing loops: the first {meta['es_events']:,}), median of "
        f"{meta['runs']} run{'s' if meta['runs'] != 1 else ''}, raw floor batch "
        f"{meta['batch_size']:,}, {gc_words(meta)}. Command: `{meta['command'].strip()}`."
    )
    return "\n\n".join(
        [
            head,
            results_table(report),
            "Ratios, measured side by side in the same run:",
            ratios_table(report),
            "Targets of issue 6:",
            targets_table(report),
            "Per-batch time split (median run; mean per batch and share; safereplay: measured "
            "around the runner's calls into its event source and store, apply = the rest; "
            "2 workers: summed over both processes):",
            split_table(report),
        ]
    )


def gc_words(meta: dict[str, Any]) -> str:
    """The collector setting of every measured process, in words (report headers)."""
    if meta.get("gc", "default") == "replay":
        return (
            "collector: safereplay's replay policy in every measured process "
            "(`apply_collector_policy()`: `gc.freeze()` after set-up, higher thresholds; "
            "`--gc replay`)"
        )
    return "collector: CPython's default in every measured process (`--gc default`)"


def replace_block(path: Path, start: str, end: str, body: str) -> None:
    text = path.read_text(encoding="utf-8") if path.exists() else f"{start}\n{end}\n"
    if start not in text or end not in text:
        text = text.rstrip("\n") + f"\n\n{start}\n{end}\n"
    before, rest = text.split(start, 1)
    _, after = rest.split(end, 1)
    path.write_text(f"{before}{start}\n{body}\n{end}{after}", encoding="utf-8")


# -- bounded memory --------------------------------------------------------------------


def run_memory(
    *,
    sizes: list[int],
    backends: list[str],
    batch_size: int,
    seed: int,
    data_dir: Path,
    postgres_dsn: str,
    postgres_schema: str,
    log: Any = print,
) -> dict[str, Any]:
    """Peak RSS of a catch-up from zero at each size (cipher on), one fresh process each."""
    rows: list[dict[str, Any]] = []
    for size in sizes:
        stores = [
            Store(b, True, size, seed, data_dir, postgres_dsn, postgres_schema) for b in backends
        ]
        ensure_stores(stores, log=log)
        for store in stores:
            for loop in ("raw", "safereplay"):
                view: dict[str, Any] = (
                    {"schema": f"{postgres_schema}_view"}
                    if store.backend == "postgres"
                    else {"path": str(data_dir / "work" / "view.db")}
                )
                spec = {
                    "loop": loop,
                    "store": store.to_json(),
                    "upto": head_position(store),
                    "batch_size": batch_size,
                    "workers": 1,
                    "view": view,
                }
                result = run_worker(spec, timeout=7200)
                row = {"backend": store.backend, "loop": loop, "events": size}
                if "unavailable" in result:
                    row["unavailable"] = result["unavailable"]
                else:
                    row.update(
                        {
                            "events_per_s": result["events_per_s"],
                            "peak_rss_mb": result["peak_rss_kb"] / 1024,
                            "rss_start_mb": result["rss_start_kb"] / 1024,
                        }
                    )
                log(json.dumps(row))
                rows.append(row)
    ratios = []
    smallest, largest = min(sizes), max(sizes)
    for backend in backends:
        for loop in ("raw", "safereplay"):
            small = next(
                (
                    r
                    for r in rows
                    if (r["backend"], r["loop"], r["events"]) == (backend, loop, smallest)
                ),
                None,
            )
            large = next(
                (
                    r
                    for r in rows
                    if (r["backend"], r["loop"], r["events"]) == (backend, loop, largest)
                ),
                None,
            )
            ratio = (
                large["peak_rss_mb"] / small["peak_rss_mb"]
                if small and large and "peak_rss_mb" in small and "peak_rss_mb" in large
                else None
            )
            ratios.append({"backend": backend, "loop": loop, "ratio": ratio})
    return {
        "meta": machine_meta(sizes=sizes, batch_size=batch_size, seed=seed),
        "rows": rows,
        "ratios": ratios,
    }


def render_memory(report: dict[str, Any]) -> str:
    sizes = report["meta"]["sizes"]
    lines = [
        f"Measured {report['meta']['when']}: peak RSS of one catch-up from zero (cipher on), "
        f"each in a fresh process (throughput in brackets). "
        f"Command: `{report['meta']['command'].strip()}`.",
        "",
        "| backend | loop | "
        + " | ".join(f"{s:,} events" for s in sizes)
        + f" | ratio (target ≤ {TARGET_MEMORY}{X}) |",
        "|---|---|" + "---:|" * (len(sizes) + 1),
    ]
    for ratio in report["ratios"]:
        cells = []
        for size in sizes:
            row = next(
                r
                for r in report["rows"]
                if (r["backend"], r["loop"], r["events"]) == (ratio["backend"], ratio["loop"], size)
            )
            cells.append(
                "not available yet"
                if "unavailable" in row
                else f"{row['peak_rss_mb']:.0f} MB ({row['events_per_s']:,.0f} events/s)"
            )
        shown = "pending" if ratio["ratio"] is None else f"{ratio['ratio']:.2f}{X}"
        lines.append(
            f"| {ratio['backend']} | {ratio['loop']} | " + " | ".join(cells) + f" | {shown} |"
        )
    return "\n".join(lines)


# -- batch size sweep ------------------------------------------------------------------


def run_sweep(
    *,
    events: int,
    runs: int,
    sizes: list[int],
    backends: list[str],
    seed: int,
    data_dir: Path,
    postgres_dsn: str,
    postgres_schema: str,
    log: Any = print,
) -> dict[str, Any]:
    """Raw floor events/s and peak RSS per batch size (cipher on), interleaved runs."""
    stores = [
        Store(b, True, events, seed, data_dir, postgres_dsn, postgres_schema) for b in backends
    ]
    ensure_stores(stores, log=log)
    uptos = {store.backend: head_position(store) for store in stores}
    measured: dict[tuple[str, int], list[dict[str, Any]]] = {}
    try:
        for run in range(runs):
            for store in stores:
                for size in sizes:
                    view: dict[str, Any] = (
                        {"schema": f"{postgres_schema}_view"}
                        if store.backend == "postgres"
                        else {"path": str(data_dir / "work" / "view.db")}
                    )
                    spec = {
                        "loop": "raw",
                        "store": store.to_json(),
                        "upto": uptos[store.backend],
                        "batch_size": size,
                        "view": view,
                    }
                    result = run_worker(spec, timeout=3600)
                    measured.setdefault((store.backend, size), []).append(result)
                    log(
                        f"run {run + 1}/{runs} {store.backend:8} batch {size:>6,} "
                        f"{result['events_per_s']:>10,.0f} ev/s"
                    )
    finally:
        if "postgres" in backends:
            drop_schema(postgres_dsn, f"{postgres_schema}_view")
    rows = [
        {
            "backend": backend,
            "batch_size": size,
            "events_per_s": statistics.median(r["events_per_s"] for r in results),
            "peak_rss_mb": max(r["peak_rss_kb"] for r in results) / 1024,
        }
        for (backend, size), results in measured.items()
    ]
    return {
        "meta": machine_meta(events=events, runs=runs, sizes=sizes, seed=seed),
        "rows": rows,
    }


def render_sweep(report: dict[str, Any]) -> str:
    meta = report["meta"]
    backends = sorted({r["backend"] for r in report["rows"]})
    lines = [
        f"Raw floor, cipher on, N = {meta['events']:,}, median of {meta['runs']} runs, "
        f"measured {meta['when']}. Command: `{meta['command'].strip()}`.",
        "",
        "| batch size | " + " | ".join(f"{b} events/s | {b} peak RSS" for b in backends) + " |",
        "|---:|" + "---:|---:|" * len(backends),
    ]
    for size in meta["sizes"]:
        cells = []
        for backend in backends:
            row = next(
                r for r in report["rows"] if (r["backend"], r["batch_size"]) == (backend, size)
            )
            cells += [f"{row['events_per_s']:,.0f}", f"{row['peak_rss_mb']:.0f} MB"]
        lines.append(f"| {size:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- command line ----------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.catchup", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--events", type=int, default=200_000, help="events to seed (N)")
    parser.add_argument("--runs", type=int, default=3, help="runs per loop (median reported)")
    parser.add_argument("--backends", default="sqlite,postgres", help="sqlite,postgres")
    parser.add_argument(
        "--es-events",
        type=int,
        default=20_000,
        help="prefix of the log for the (slow) eventsourcing loops",
    )
    parser.add_argument("--batch-size", type=int, default=5000, help="raw floor batch size")
    parser.add_argument(
        "--sr-batch-size",
        type=int,
        default=None,
        help="safereplay runner batch size (default: the runner's own default)",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--gc",
        choices=collector.CHOICES,
        default=collector.DEFAULT,
        help="collector of every measured process: replay = safereplay's own processes' "
        "policy (apply_collector_policy), default = CPython's (default: replay)",
    )
    parser.add_argument("--quick", action="store_true", help="N=20,000, 1 run, prefix 5,000")
    parser.add_argument(
        "--loops", default="", help="only these loops (comma list of raw, es, safereplay)"
    )
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument(
        "--postgres-dsn",
        default=os.environ.get("SAFEREPLAY_BENCH_POSTGRES_DSN", DEFAULT_POSTGRES_DSN),
    )
    parser.add_argument("--schema", default="bench", help="PostgreSQL schema of the stores")
    parser.add_argument("--json", type=Path, default=None, help="where to write the JSON")
    parser.add_argument("--no-docs", action="store_true", help="leave docs/benchmarks.md alone")
    parser.add_argument(
        "--memory",
        action="store_true",
        help="bounded-memory check: peak RSS of catch-up at --memory-sizes",
    )
    parser.add_argument("--memory-sizes", default="100000,1000000")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="run each loop under cProfile; reports in benchmarks/results/profile/",
    )
    parser.add_argument(
        "--batch-sweep",
        default="",
        help="raw floor batch size sweep instead, e.g. 250,500,1000,2000,5000,10000",
    )
    args = parser.parse_args(argv)

    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    for backend in backends:
        if backend not in ("sqlite", "postgres"):
            parser.error(f"unknown backend {backend!r}")
    prepare_data_dir(args.data_dir)

    if args.memory:
        sizes = [int(s) for s in args.memory_sizes.split(",")]
        report = run_memory(
            sizes=sizes,
            backends=backends,
            batch_size=args.batch_size,
            seed=args.seed,
            data_dir=args.data_dir,
            postgres_dsn=args.postgres_dsn,
            postgres_schema=args.schema,
        )
        text = render_memory(report)
        print(text)
        out = args.json or RESULTS_DIR / "memory.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2), encoding="utf-8")
        if not args.no_docs:
            replace_block(DOCS, MEMORY_START_MARK, MEMORY_END_MARK, text)
        return 0

    if args.quick:
        args.events, args.runs, args.es_events = 20_000, 1, 5_000

    if args.batch_sweep:
        report = run_sweep(
            events=args.events,
            runs=args.runs,
            sizes=[int(s) for s in args.batch_sweep.split(",")],
            backends=backends,
            seed=args.seed,
            data_dir=args.data_dir,
            postgres_dsn=args.postgres_dsn,
            postgres_schema=args.schema,
        )
        text = render_sweep(report)
        print(text)
        out = args.json or RESULTS_DIR / f"batch-sweep-{args.events}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2), encoding="utf-8")
        if not (args.no_docs or args.quick):
            replace_block(DOCS, SWEEP_START_MARK, SWEEP_END_MARK, text)
        return 0

    report = run_benchmark(
        events=args.events,
        runs=args.runs,
        backends=backends,
        es_events=args.es_events,
        batch_size=args.batch_size,
        seed=args.seed,
        data_dir=args.data_dir,
        postgres_dsn=args.postgres_dsn,
        postgres_schema=args.schema,
        loops_filter={s.strip() for s in args.loops.split(",") if s.strip()} or None,
        profile_dir=RESULTS_DIR / "profile" if args.profile else None,
        sr_batch_size=args.sr_batch_size,
        gc_choice=args.gc,
    )
    text = render(report)
    print()
    print(text)
    out = args.json or RESULTS_DIR / f"catchup-{args.events}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(f"\nJSON: {out}")
    if not (args.no_docs or args.quick or args.loops):
        replace_block(DOCS, START_MARK, END_MARK, text)
        print(f"updated {DOCS.relative_to(ROOT)}")
    mismatches = [lp["key"] for lp in report["loops"] if lp.get("state_ok") is False]
    if mismatches:
        print(f"STATE MISMATCH in: {', '.join(mismatches)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

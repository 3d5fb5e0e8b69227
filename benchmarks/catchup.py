"""Catch-up throughput benchmark: safereplay vs eventsourcing vs the raw floor.

Run from the repository root::

    python -m benchmarks.catchup                      # N=200,000, 3 rounds, both backends
    python -m benchmarks.catchup --quick              # N=20,000, 1 round: a smoke check
    python -m benchmarks.catchup --scaling 1,2,3,4    # k workers, floor beside (PostgreSQL)
    python -m benchmarks.catchup --sizes 100000,1000000   # events/s and peak RSS per N

It seeds (or reuses) N encrypted events of the reference domain plus a cipher-off
copy on each backend, then measures, in one run and on the same data, every loop
in a fresh process, ``--runs`` rounds, interleaved, with the machine's load average
before each measurement and the same collector setting (``--gc``) in every measuring
process. It prints tables, writes JSON (``--json``, default
``benchmarks/results/…``) and, unless ``--no-docs``, regenerates its block of
``docs/benchmarks.md`` (and the plots, with matplotlib). See that file.
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

from benchmarks import collector, plots, raw, safereplay_loop
from benchmarks.dataset import (
    DEFAULT_DATA_DIR,
    SEED_VERSION,
    Store,
    ensure_stores,
    head_position,
    position_of_event,
    prepare_data_dir,
)
from benchmarks.targets import main_targets, sizes_targets
from safereplay.domain import DEFAULT_POSTGRES_DSN

__all__ = ["Loop", "main", "run_benchmark"]

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "benchmarks.md"
RESULTS_DIR = Path(__file__).resolve().parent / "results"
START_MARK = "<!-- benchmark-results:start -->"
END_MARK = "<!-- benchmark-results:end -->"
SIZES_START_MARK = "<!-- cost-growth:start -->"
SIZES_END_MARK = "<!-- cost-growth:end -->"
SCALING_START_MARK = "<!-- scaling-results:start -->"
SCALING_END_MARK = "<!-- scaling-results:end -->"
#: The plots, committed beside the doc that embeds them.
SIZES_PLOT = ROOT / "docs" / "benchmarks-sizes.png"
SCALING_PLOT = ROOT / "docs" / "benchmarks-scaling.png"
SWEEP_START_MARK = "<!-- batch-sweep:start -->"
SWEEP_END_MARK = "<!-- batch-sweep:end -->"

#: Multiplication sign and en dash for the tables (escaped: ruff flags them in literals).
X = "\u00d7"
DASH = "\u2013"


@dataclass
class Loop:
    """One measured loop: what it is, where it reads, and its results over the rounds."""

    backend: str
    loop: str  # raw | es | safereplay
    cipher: bool
    workers: int = 1  # safereplay: partition workers; raw: partition processes
    prefix: bool = False  # runs over the eventsourcing prefix only
    projections: str = "run_status"  # safereplay: run_status | reference (all three)
    size: int = 0  # cost growth (--sizes): the N of the loop's own store; 0: the main store
    results: list[dict[str, Any]] = field(default_factory=list)
    unavailable: str | None = None
    expected: dict[str, Any] | None = None
    store: Store | None = field(default=None, repr=False)
    upto: int = 0

    @property
    def key(self) -> str:
        shown_workers = self.loop == "safereplay" or self.workers > 1
        workers = f"/{self.workers}w" if shown_workers else ""
        which = "+reference" if self.projections == "reference" else ""
        size = f"n{self.size}/" if self.size else ""
        cipher = "cipher" if self.cipher else "plain"
        return f"{self.backend}/{size}{self.loop}{which}{workers}/{cipher}"

    @property
    def title(self) -> str:
        plural = "s" if self.workers > 1 else ""
        return {
            "raw": "raw floor"
            + (f", {self.workers} partition processes" if self.workers > 1 else ""),
            "es": "eventsourcing ProjectionRunner"
            if self.backend == "postgres"
            else "eventsourcing pull loop",
            "safereplay": f"safereplay, {self.workers} worker{plural}"
            + (", all 3 reference projections" if self.projections == "reference" else ""),
        }[self.loop]

    def rates(self) -> list[float]:
        return [r["events_per_s"] for r in self.results]

    def peaks_mb(self) -> list[float]:
        """Peak RSS of each round: the largest of the worker's and its partitions'."""
        return [
            max(r["peak_rss_kb"], r.get("children_peak_rss_kb", 0)) / 1024 for r in self.results
        ]

    def median(self) -> float | None:
        rates = self.rates()
        return statistics.median(rates) if rates else None

    def state_ok(self) -> bool | None:
        if not self.results or self.expected is None:
            return None
        return all(r["state"] == self.expected for r in self.results)

    def load(self) -> dict[str, float] | None:
        """The 1-minute load average before each round's measurement: median, min, max."""
        loads = [r["loadavg"][0] for r in self.results if "loadavg" in r]
        if not loads:
            return None
        return {"median": statistics.median(loads), "min": min(loads), "max": max(loads)}

    def summary(self) -> dict[str, Any]:
        rates = self.rates()
        out: dict[str, Any] = {
            "key": self.key,
            "title": self.title,
            "backend": self.backend,
            "loop": self.loop,
            "cipher": self.cipher,
            "workers": self.workers,
            "size": self.size or None,
            "projections": self.projections if self.loop == "safereplay" else None,
            "unavailable": self.unavailable,
            "runs": self.results,
            "load_1min": self.load(),
        }
        if rates:
            median_run = sorted(self.results, key=lambda r: r["events_per_s"])[len(rates) // 2]
            out.update(
                {
                    "events": self.results[0]["events"],
                    "events_per_s": statistics.median(rates),
                    "events_per_s_min": min(rates),
                    "events_per_s_max": max(rates),
                    "peak_rss_mb": max(self.peaks_mb()),
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
    """One measurement in a fresh worker process, with the load average just before it."""
    # Issue 23: the machine's load before every measurement, recorded with its result
    # (a ratio falls on a busy machine: the report shows how busy it was).
    load = list(os.getloadavg())
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
            result["loadavg"] = load
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


def view_of(store: Store) -> dict[str, Any]:
    """Where a loop over ``store`` writes its view: a schema / file beside the store's."""
    if store.backend == "postgres":
        return {"schema": f"{store.postgres_schema}_view"}
    return {"path": str(store.data_dir / "work" / "view.db")}


def _prepare_loops(loops: list[Loop], *, es_events: int, log: Any) -> None:
    """The range of each loop (its ``store`` set), the state a correct loop ends with
    (an in-memory fold of the same events), and which loops cannot run yet."""
    uptos: dict[tuple[Store, bool], int] = {}
    expected: dict[tuple[Store, int], dict[str, Any]] = {}
    for lp in loops:
        store = lp.store
        assert store is not None
        ukey = (store, lp.prefix)
        if ukey not in uptos:
            uptos[ukey] = position_of_event(store, es_events) if lp.prefix else head_position(store)
        lp.upto = uptos[ukey]
        ekey = (store, lp.upto)
        if ekey not in expected:
            expected[ekey] = raw.reference_fold(store, upto=lp.upto)
        lp.expected = expected[ekey]
    reason = safereplay_loop.available()
    for lp in loops:
        if lp.loop == "safereplay" and reason is not None:
            lp.unavailable = reason
            log(f"{lp.key:32} {reason}")


def _run_loops(
    loops: list[Loop],
    runs: int,
    *,
    batch_size: int,
    profile_dir: Path | None,
    sr_batch_size: int | None,
    gc_choice: str,
    log: Any,
    timeout: float = 3600,
) -> None:
    """Every loop once per round, interleaved, each in a fresh worker process.

    Round by round, so that a ratio is always taken between loops of one round; the
    views are dropped at the end (PostgreSQL: one ``…_view`` schema per store).
    """
    try:
        for run in range(runs):
            for lp in loops:
                if lp.unavailable:
                    continue
                assert lp.store is not None
                spec = {
                    "loop": lp.loop,
                    "store": lp.store.to_json(),
                    "upto": lp.upto,
                    "batch_size": batch_size,
                    "workers": lp.workers,
                    "projections": lp.projections,
                    "sr_batch_size": sr_batch_size,
                    "view": view_of(lp.store),
                    "gc": gc_choice,
                }
                if profile_dir is not None:
                    spec["profile"] = str(profile_dir / f"{lp.key.replace('/', '-')}-run{run + 1}")
                result = run_worker(spec, timeout=timeout)
                if "unavailable" in result:
                    lp.unavailable = result["unavailable"]
                    log(f"run {run + 1}/{runs} {lp.key:36} {lp.unavailable}")
                    continue
                lp.results.append(result)
                ok = "ok" if result["state"] == lp.expected else "STATE MISMATCH"
                log(
                    f"run {run + 1}/{runs} {lp.key:36} {result['events']:>9,} events "
                    f"{result['events_per_s']:>10,.0f} ev/s  rss "
                    f"{result['peak_rss_kb'] / 1024:6.1f} MB  load {result['loadavg'][0]:4.2f}"
                    f"  state {ok}"
                )
    finally:
        for store in {lp.store for lp in loops if lp.store is not None}:
            if store.backend == "postgres":
                drop_schema(store.postgres_dsn, view_of(store)["schema"])


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
    sizes_report: dict[str, Any] | None = None,
    log: Any = print,
) -> dict[str, Any]:
    """The main run; ``sizes_report``: the latest ``--sizes`` run, for the cost-growth
    rows of the targets (pending without one)."""
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
    for lp in loops:
        lp.store = stores[(lp.backend, lp.cipher)]
    _prepare_loops(loops, es_events=es_events, log=log)

    started = time.perf_counter()
    _run_loops(
        loops,
        runs,
        batch_size=batch_size,
        profile_dir=profile_dir,
        sr_batch_size=sr_batch_size,
        gc_choice=gc_choice,
        log=log,
    )
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
        "targets": main_targets(ratios, sizes_report),
        "safereplay": safereplay_loop.available() or "available",
    }


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
        f"| {X} eventsourcing | % of raw floor | peak RSS | load (1 min) | state |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for lp in loops:
        if lp["unavailable"]:
            lines.append(
                f"| {lp['backend']} | {lp['title']} | {'on' if lp['cipher'] else 'off'} "
                f"| | {lp['unavailable']} | | | | | | |"
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
            f"| {vs_es} | {vs_raw} | {lp['peak_rss_mb']:.0f} MB | {_load_cell(lp['load_1min'])} "
            f"| {state} |"
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


def targets_table(rows: list[dict[str, Any]]) -> str:
    """Issue 23's rows: each one met or missed in words, and by how much."""
    lines = ["| target | wanted | measured | verdict |", "|---|---:|---:|---|"]
    for t in rows:
        words = t["verdict"]
        if t["met"] is False:
            words = f"**{words}**"
        lines.append(f"| {t['target']} | {t['wanted']} | {t['shown']} | {words} |")
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
        f"{meta['runs']} interleaved round{'s' if meta['runs'] != 1 else ''} (load: the "
        f"1-minute load average before each measurement, median (min{DASH}max)), raw floor batch "
        f"{meta['batch_size']:,}, {gc_words(meta)}. Command: `{meta['command'].strip()}`."
    )
    return "\n\n".join(
        [
            head,
            results_table(report),
            "Ratios, measured side by side in the same run:",
            ratios_table(report),
            "Targets of issue 23 (ratios: median of per-round ratios; cost growth: from the "
            "`--sizes` run named in the row):",
            targets_table(report["targets"]),
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


# -- cost growth (--sizes) --------------------------------------------------------------


def sized_store(
    backend: str, size: int, *, seed: int, data_dir: Path, postgres_dsn: str, postgres_schema: str
) -> Store:
    """The cipher-on store of N = ``size`` for the cost-growth mode: its own data dir
    (``DATA_DIR/n{N}``) and schema (``SCHEMA_n{N}``), so that every N is seeded once
    and kept beside the others (the main run's store is reseeded when N changes)."""
    sized_dir = data_dir / f"n{size}"
    prepare_data_dir(sized_dir)
    return Store(backend, True, size, seed, sized_dir, postgres_dsn, f"{postgres_schema}_n{size}")


def _per_round(a: Loop, b: Loop, values: str = "rates") -> float | None:
    """Median over the rounds of ``a``'s figure ÷ ``b``'s in the same round."""
    va, vb = getattr(a, values)(), getattr(b, values)()
    pairs = [(x, y) for x, y in zip(va, vb, strict=False) if y]
    return statistics.median(x / y for x, y in pairs) if pairs else None


def run_sizes(
    *,
    sizes: list[int],
    runs: int,
    backends: list[str],
    batch_size: int,
    seed: int,
    data_dir: Path,
    postgres_dsn: str,
    postgres_schema: str,
    sr_batch_size: int | None = None,
    gc_choice: str = collector.DEFAULT,
    log: Any = print,
) -> dict[str, Any]:
    """Events/s and peak RSS of the floor and safereplay (1 worker, cipher on) at each N.

    Rounds are interleaved over every N and backend, so the growth ratios (largest N ÷
    smallest N) are taken within one round.
    """
    sizes = sorted(set(sizes))
    seeding: dict[str, float] = {}
    loops: list[Loop] = []
    for size in sizes:
        stores = {
            backend: sized_store(
                backend,
                size,
                seed=seed,
                data_dir=data_dir,
                postgres_dsn=postgres_dsn,
                postgres_schema=postgres_schema,
            )
            for backend in backends
        }
        seeding.update(ensure_stores(list(stores.values()), log=log))
        for backend, store in stores.items():
            for loop in ("raw", "safereplay"):
                loops.append(Loop(backend, loop, True, 1, size=size, store=store))
    _prepare_loops(loops, es_events=0, log=log)
    started = time.perf_counter()
    _run_loops(
        loops,
        runs,
        batch_size=batch_size,
        profile_dir=None,
        sr_batch_size=sr_batch_size,
        gc_choice=gc_choice,
        log=log,
        timeout=7200,
    )
    elapsed = time.perf_counter() - started
    by = {(lp.backend, lp.loop, lp.size): lp for lp in loops}
    growth = []
    for backend in backends:
        for loop in ("raw", "safereplay"):
            small, large = by[(backend, loop, sizes[0])], by[(backend, loop, sizes[-1])]
            growth.append(
                {
                    "backend": backend,
                    "loop": loop,
                    "smallest": sizes[0],
                    "largest": sizes[-1],
                    "events_per_s_ratio": _per_round(large, small),
                    "peak_rss_ratio": _per_round(large, small, "peaks_mb"),
                }
            )
    report: dict[str, Any] = {
        "meta": machine_meta(
            sizes=sizes,
            runs=runs,
            batch_size=batch_size,
            sr_batch_size=sr_batch_size,
            seed=seed,
            gc=gc_choice,
            postgres_dsn=postgres_dsn if "postgres" in backends else None,
        ),
        "seconds": elapsed,
        "seeding_seconds": seeding,
        "loops": [lp.summary() for lp in loops],
        "growth": growth,
    }
    report["targets"] = sizes_targets(report)
    return report


def _load_cell(load: dict[str, float] | None) -> str:
    if not load:
        return ""
    return f"{load['median']:.2f} ({load['min']:.2f}{DASH}{load['max']:.2f})"


def render_sizes(report: dict[str, Any], *, plot: str) -> str:
    meta = report["meta"]
    sizes = meta["sizes"]
    lines = [
        f"Measured {meta['when']} on {meta['cpus']} CPUs ({meta['machine']}): one catch-up "
        f"from zero per N, cipher on, 1 worker, each in a fresh process, median of "
        f"{meta['runs']} interleaved round{'s' if meta['runs'] != 1 else ''} "
        f"(events/s, peak RSS; load: 1-minute load average before the measurement, median "
        f"(min{DASH}max)), {gc_words(meta)}. Command: `{meta['command'].strip()}`.",
        "",
        "| backend | loop | " + " | ".join(f"N = {s:,}" for s in sizes) + " | load |",
        "|---|---|" + "---:|" * len(sizes) + "---:|",
    ]
    by = {(lp["backend"], lp["loop"], lp["size"]): lp for lp in report["loops"]}
    for g in report["growth"]:
        cells, loads = [], []
        for size in sizes:
            lp = by[(g["backend"], g["loop"], size)]
            if lp["unavailable"]:
                cells.append(lp["unavailable"])
                continue
            state = "" if lp["state_ok"] else " **MISMATCH**"
            cells.append(f"{lp['events_per_s']:,.0f} events/s, {lp['peak_rss_mb']:.0f} MB{state}")
            if lp["load_1min"]:
                loads += [lp["load_1min"]["min"], lp["load_1min"]["max"]]
        title = "raw floor" if g["loop"] == "raw" else "safereplay, 1 worker"
        load = (
            {"median": statistics.median(loads), "min": min(loads), "max": max(loads)}
            if loads
            else None
        )
        lines.append(
            f"| {g['backend']} | {title} | " + " | ".join(cells) + f" | {_load_cell(load)} |"
        )
    lines += [
        "",
        f"Growth, N = {sizes[-1]:,} ÷ N = {sizes[0]:,} (median of per-round ratios):",
        "",
        "| backend | loop | events/s ratio | peak RSS ratio |",
        "|---|---|---:|---:|",
    ]
    for g in report["growth"]:
        rate, rss = g["events_per_s_ratio"], g["peak_rss_ratio"]
        lines.append(
            f"| {g['backend']} | {'raw floor' if g['loop'] == 'raw' else 'safereplay'} "
            f"| {'pending' if rate is None else f'{rate:.2f}'} "
            f"| {'pending' if rss is None else f'{rss:.2f}'} |"
        )
    lines += ["", "Targets of issue 23 measured here:", "", targets_table(report["targets"])]
    if plot:
        lines += ["", plot]
    return "\n".join(lines)


# -- scaling curve (--scaling) -----------------------------------------------------------


def run_scaling(
    *,
    workers: list[int],
    events: int,
    runs: int,
    backends: list[str],
    batch_size: int,
    seed: int,
    data_dir: Path,
    postgres_dsn: str,
    postgres_schema: str,
    sr_batch_size: int | None = None,
    gc_choice: str = collector.DEFAULT,
    log: Any = print,
) -> dict[str, Any]:
    """Events/s of the floor and safereplay with k partition processes (cipher on), each
    k interleaved round by round; efficiency per worker = events/s ÷ (k * events/s at
    1 worker), in the same round."""
    workers = sorted(set(workers))
    if workers[0] != 1:
        raise ValueError("--scaling needs 1 worker: the base of the efficiency per worker")
    stores = {
        backend: Store(backend, True, events, seed, data_dir, postgres_dsn, postgres_schema)
        for backend in backends
    }
    seeding = ensure_stores(list(stores.values()), log=log)
    loops = [
        Loop(backend, loop, True, k, store=stores[backend])
        for backend in backends
        for k in workers
        for loop in ("raw", "safereplay")
    ]
    _prepare_loops(loops, es_events=0, log=log)
    started = time.perf_counter()
    _run_loops(
        loops,
        runs,
        batch_size=batch_size,
        profile_dir=None,
        sr_batch_size=sr_batch_size,
        gc_choice=gc_choice,
        log=log,
    )
    elapsed = time.perf_counter() - started
    by = {(lp.backend, lp.loop, lp.workers): lp for lp in loops}
    curve = []
    for backend in backends:
        for loop in ("raw", "safereplay"):
            base = by[(backend, loop, 1)]
            for k in workers:
                lp = by[(backend, loop, k)]
                one = _per_round(lp, base)
                entry: dict[str, Any] = {
                    "backend": backend,
                    "loop": loop,
                    "workers": k,
                    "events_per_s": lp.median(),
                    "events_per_s_min": min(lp.rates()) if lp.results else None,
                    "events_per_s_max": max(lp.rates()) if lp.results else None,
                    "speed_up": one,
                    "efficiency": None if one is None else one / k,
                    "load_1min": lp.load(),
                    "state_ok": lp.state_ok(),
                    "unavailable": lp.unavailable,
                }
                if loop == "safereplay":
                    entry["vs_raw_floor"] = _per_round(lp, by[(backend, "raw", k)])
                curve.append(entry)
    return {
        "meta": machine_meta(
            events=events,
            runs=runs,
            workers=workers,
            batch_size=batch_size,
            sr_batch_size=sr_batch_size,
            seed=seed,
            gc=gc_choice,
            postgres_dsn=postgres_dsn if "postgres" in backends else None,
        ),
        "seconds": elapsed,
        "seeding_seconds": seeding,
        "loops": [lp.summary() for lp in loops],
        "scaling": curve,
    }


def render_scaling(report: dict[str, Any], *, plot: str) -> str:
    meta = report["meta"]
    lines = [
        f"Measured {meta['when']} on {meta['cpus']} CPUs ({meta['machine']}): N = "
        f"{meta['events']:,} events, cipher on, k partition processes released together "
        f"(safereplay's partition workers; the floor's partitions filtered in the database "
        f"the same way), median of {meta['runs']} interleaved round"
        f"{'s' if meta['runs'] != 1 else ''}; speed-up and efficiency per worker "
        f"(events/s ÷ (k {X} events/s at 1 worker)) are medians of per-round ratios; "
        f"{gc_words(meta)}. Command: `{meta['command'].strip()}`.",
        "",
        f"| backend | loop | workers | events/s (median) | min {DASH} max | speed-up "
        f"| efficiency per worker | safereplay ÷ floor | load (1 min) | state |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for e in report["scaling"]:
        title = "raw floor" if e["loop"] == "raw" else "safereplay"
        if e["unavailable"]:
            lines.append(
                f"| {e['backend']} | {title} | {e['workers']} | {e['unavailable']} | | | | | | |"
            )
            continue
        vs = e.get("vs_raw_floor")
        state = {True: "ok", False: "MISMATCH", None: "?"}[e["state_ok"]]
        lines.append(
            f"| {e['backend']} | {title} | {e['workers']} | {_fmt_rate(e['events_per_s'])} "
            f"| {_fmt_rate(e['events_per_s_min'])} {DASH} {_fmt_rate(e['events_per_s_max'])} "
            f"| {e['speed_up']:.2f}{X} | {100 * e['efficiency']:.0f} % "
            f"| {'' if vs is None else f'{100 * vs:.0f} %'} | {_load_cell(e['load_1min'])} "
            f"| {state} |"
        )
    if plot:
        lines += ["", plot]
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
    gc_choice: str = collector.DEFAULT,
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
                        "gc": gc_choice,
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
        "meta": machine_meta(events=events, runs=runs, sizes=sizes, seed=seed, gc=gc_choice),
        "rows": rows,
    }


def render_sweep(report: dict[str, Any]) -> str:
    meta = report["meta"]
    backends = sorted({r["backend"] for r in report["rows"]})
    lines = [
        f"Raw floor, cipher on, N = {meta['events']:,}, median of {meta['runs']} runs, "
        f"measured {meta['when']}, {gc_words(meta)}. Command: `{meta['command'].strip()}`.",
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


def _ints(text: str) -> list[int]:
    return [int(s.replace("_", "")) for s in text.split(",") if s.strip()]


def _plot(
    draw: Any, report: dict[str, Any], *, docs_png: Path, out_json: Path, docs: bool, log: Any
) -> str:
    """Draw one plot: into ``docs/`` when the doc is regenerated, else beside the JSON.
    Returns the Markdown that embeds it in the doc's block ("" when not drawn)."""
    reason = plots.unavailable()
    if reason is not None:
        log(reason)
        return ""
    path = docs_png if docs else out_json.with_suffix(".png")
    draw(report, path)
    log(f"plot: {path}")
    return f"![{report_title(draw)}]({docs_png.name})" if docs else ""


def report_title(draw: Any) -> str:
    return "events/s against N" if draw is plots.draw_sizes else "events/s against workers"


def _write_json(report: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(f"\nJSON: {out}")


def _mismatches(report: dict[str, Any]) -> int:
    mismatches = [lp["key"] for lp in report["loops"] if lp.get("state_ok") is False]
    if mismatches:
        print(f"STATE MISMATCH in: {', '.join(mismatches)}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.catchup", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--events", type=int, default=200_000, help="events to seed (N)")
    parser.add_argument("--runs", type=int, default=3, help="rounds (median reported)")
    parser.add_argument(
        "--backends",
        default=None,
        help="sqlite,postgres (default: both; --scaling: postgres)",
    )
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
        "--sizes",
        default="",
        help="cost growth instead: floor and safereplay at each N, e.g. 100000,1000000,5000000",
    )
    parser.add_argument(
        "--sizes-json",
        type=Path,
        default=RESULTS_DIR / "sizes.json",
        help="main run: the --sizes report whose growth rows join the targets (if present)",
    )
    parser.add_argument(
        "--scaling",
        default="",
        help="scaling curve instead: floor and safereplay with k workers, e.g. 1,2,3,4",
    )
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

    default_backends = "postgres" if args.scaling else "sqlite,postgres"
    backends = [b.strip() for b in (args.backends or default_backends).split(",") if b.strip()]
    for backend in backends:
        if backend not in ("sqlite", "postgres"):
            parser.error(f"unknown backend {backend!r}")
    if args.sizes and args.scaling:
        parser.error("--sizes and --scaling are separate runs: one at a time")
    workers: list[int] = []
    if args.scaling:
        workers = _ints(args.scaling)
        if 1 not in workers:
            parser.error("--scaling needs 1 worker: the base of the efficiency per worker")
    prepare_data_dir(args.data_dir)
    docs = not args.no_docs

    if args.sizes:
        report = run_sizes(
            sizes=_ints(args.sizes),
            runs=args.runs,
            backends=backends,
            batch_size=args.batch_size,
            seed=args.seed,
            data_dir=args.data_dir,
            postgres_dsn=args.postgres_dsn,
            postgres_schema=args.schema,
            sr_batch_size=args.sr_batch_size,
            gc_choice=args.gc,
        )
        out = args.json or RESULTS_DIR / "sizes.json"
        embed = _plot(
            plots.draw_sizes, report, docs_png=SIZES_PLOT, out_json=out, docs=docs, log=print
        )
        text = render_sizes(report, plot=embed)
        print()
        print(text)
        _write_json(report, out)
        if docs:
            replace_block(DOCS, SIZES_START_MARK, SIZES_END_MARK, text)
            print(f"updated {DOCS.relative_to(ROOT)}")
        return _mismatches(report)

    if args.scaling:
        report = run_scaling(
            workers=workers,
            events=args.events,
            runs=args.runs,
            backends=backends,
            batch_size=args.batch_size,
            seed=args.seed,
            data_dir=args.data_dir,
            postgres_dsn=args.postgres_dsn,
            postgres_schema=args.schema,
            sr_batch_size=args.sr_batch_size,
            gc_choice=args.gc,
        )
        out = args.json or RESULTS_DIR / f"scaling-{args.events}.json"
        embed = _plot(
            plots.draw_scaling, report, docs_png=SCALING_PLOT, out_json=out, docs=docs, log=print
        )
        text = render_scaling(report, plot=embed)
        print()
        print(text)
        _write_json(report, out)
        if docs:
            replace_block(DOCS, SCALING_START_MARK, SCALING_END_MARK, text)
            print(f"updated {DOCS.relative_to(ROOT)}")
        return _mismatches(report)

    if args.quick:
        args.events, args.runs, args.es_events = 20_000, 1, 5_000

    if args.batch_sweep:
        report = run_sweep(
            events=args.events,
            runs=args.runs,
            sizes=_ints(args.batch_sweep),
            backends=backends,
            seed=args.seed,
            data_dir=args.data_dir,
            postgres_dsn=args.postgres_dsn,
            postgres_schema=args.schema,
            gc_choice=args.gc,
        )
        text = render_sweep(report)
        print(text)
        out = args.json or RESULTS_DIR / f"batch-sweep-{args.events}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2), encoding="utf-8")
        if not (args.no_docs or args.quick):
            replace_block(DOCS, SWEEP_START_MARK, SWEEP_END_MARK, text)
        return 0

    sizes_report = (
        json.loads(args.sizes_json.read_text(encoding="utf-8"))
        if args.sizes_json.exists()
        else None
    )
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
        sizes_report=sizes_report,
    )
    text = render(report)
    print()
    print(text)
    _write_json(report, args.json or RESULTS_DIR / f"catchup-{args.events}.json")
    if not (args.no_docs or args.quick or args.loops):
        replace_block(DOCS, START_MARK, END_MARK, text)
        print(f"updated {DOCS.relative_to(ROOT)}")
    return _mismatches(report)


if __name__ == "__main__":
    raise SystemExit(main())

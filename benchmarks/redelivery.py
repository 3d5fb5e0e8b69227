"""Re-delivery throughput after an outage: the reaction runner against a 20 ms receiver.

Run from the repository root::

    python -m benchmarks.redelivery                       # SQLite, N=2,000, concurrency 1, 8, 32
    python -m benchmarks.redelivery --backend postgres --rounds 3

A receiver (``benchmarks/receiver.py``, a ``ThreadingHTTPServer`` in a process of
its own) answers every request after ``--delay`` seconds (20 ms). A fresh event store
holds ``--deliveries`` events of the reference domain, many runs interleaved as in
the catch-up benchmark; per measurement, a reaction of its own (one delivery per
event, to a :class:`~safereplay.reactions.WebhookDestination`) records them all in
its ledger *while the receiver is down* (503), and the runner's first attempt at
each aggregate's first owed event fails: what a downstream outage leaves behind.
Then the receiver comes back and the clock runs while the same runner delivers
everything owed at ``ReactionOptions.concurrency`` = 1, 8 and 32 (``--concurrency``),
``--rounds`` times, interleaved; the median is reported.

Checked after every measurement, or the command fails: the receiver acknowledged
exactly N distinct idempotency keys of that reaction, and the ledger holds N rows,
all delivered. Reported: deliveries/s, wall time, distinct keys, duplicates (calls
acknowledged beyond one per key), and the time 40,000 deliveries (the issue's
40-minute outage) would take at that rate. A second case puts ``--one-aggregate``
events on a single aggregate: its events go out one after the other whatever the
concurrency (order per aggregate), which the table shows.

The JSON goes to ``--json`` (default ``benchmarks/results/redelivery-BACKEND-N.json``);
unless ``--no-docs``, the backend's block of ``docs/benchmarks.md`` is rewritten.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from benchmarks.catchup import replace_block
from benchmarks.dataset import generate_chunks
from safereplay.domain import DEFAULT_POSTGRES_DSN, AutomationApp, DomainSettings, KeyRing
from safereplay.domain.automation import Run, Workflow
from safereplay.domain.envelope import recording
from safereplay.domain.workload import build_workflow, plan_workflow
from safereplay.projections import open_source
from safereplay.projections.failure import Decision
from safereplay.reactions import (
    Reaction,
    ReactionOptions,
    ReactionRunner,
    WebhookDestination,
    WebhookSecret,
    open_ledger,
)
from safereplay.recovery.resilience.backoff import Backoff

__all__ = ["main", "run_benchmark"]

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "benchmarks.md"
RESULTS_DIR = Path(__file__).resolve().parent / "results"
OUTAGE_DELIVERIES = 40_000
#: En dash for the tables (escaped: ruff flags it in literals).
DASH = "\u2013"
SECRET = WebhookSecret(b"redelivery-benchmark-shared-secret!")


class Redelivery(Reaction):
    """Every event of the reference domain, once, to the receiver (its public form)."""

    name = "redelivery"
    reacts_to = (
        Workflow.Created,
        Workflow.StepAdded,
        Workflow.Published,
        Workflow.Archived,
        Run.Started,
        Run.StepSucceeded,
        Run.StepFailed,
        Run.StepRetried,
        Run.Completed,
    )


class OutagePolicy:
    """During the outage, stop at the first failure (the rows stay owed, as a runner
    that gave up for this cycle leaves them); afterwards, retry up to 5 times."""

    def __init__(self) -> None:
        self.outage = True
        self._backoff = Backoff(initial=0.05, multiplier=2.0, maximum=1.0)

    def decide(self, attempt: int) -> Decision:
        if self.outage:
            return Decision.fail("the receiver is down")
        if attempt < 5:
            return Decision.retry(self._backoff.delay(attempt))
        return Decision.park("still failing after 5 attempts")


class BusyClock:
    """Wall time during which at least one call of a wrapped method is in progress.

    The ledger serialises its writes (one connection, one lock): when it is busy all
    the time, it, not the receiver or the threads, bounds the rate."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._in_flight = 0
        self._since = 0.0
        self.busy = 0.0

    def wrap(self, method: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                self._in_flight += 1
                if self._in_flight == 1:
                    self._since = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                with self._lock:
                    self._in_flight -= 1
                    if self._in_flight == 0:
                        self.busy += time.perf_counter() - self._since

        return timed


# -- the receiver process ------------------------------------------------------------------


@dataclass
class ReceiverProcess:
    process: subprocess.Popen[str]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def control(self, what: str) -> None:
        request = urllib.request.Request(f"{self.url}/{what}", data=b"", method="POST")
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()

    def stats(self, reaction: str) -> dict[str, int]:
        with urllib.request.urlopen(f"{self.url}/stats?reaction={reaction}", timeout=30) as r:
            answer: dict[str, int] = json.loads(r.read())
        return answer


@contextmanager
def receiver(delay: float) -> Iterator[ReceiverProcess]:
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.receiver", "--delay", str(delay)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line.startswith("PORT "):
            raise RuntimeError(f"the receiver did not start (said {line!r})")
        yield ReceiverProcess(process, int(line.split()[1]))
    finally:
        process.terminate()
        process.wait(timeout=30)


# -- stores ------------------------------------------------------------------------------------


def store_settings(
    backend: str, name: str, *, data_dir: Path, dsn: str, schema: str
) -> DomainSettings:
    values: dict[str, Any] = {
        "backend": backend,
        "application_name": name,
        "encryption": True,
        "key_file": data_dir / "keyring.json",
    }
    if backend == "sqlite":
        values["sqlite_path"] = data_dir / f"{name}.db"
    else:
        values["postgres_dsn"] = dsn
        values["postgres_schema"] = schema
    return DomainSettings.from_env(**values)


def seed_many(settings: DomainSettings, events: int, *, seed: int) -> None:
    """Exactly ``events`` events, ~100 runs in flight at once (many aggregates)."""
    with AutomationApp(settings) as app:
        for chunk in generate_chunks(events, seed=seed, concurrency=100):
            app.save(*chunk)


def seed_one(settings: DomainSettings, events: int) -> None:
    """Exactly ``events`` events of one run (its workflow is not saved)."""
    workflow = build_workflow(plan_workflow(0, random.Random(1)))
    with recording(source="benchmark"):
        run = Run.start(workflow=workflow, trigger_payload={"n": 1}, started_by="benchmark")
        for i in range(events - 1):
            output = {"status": 200, "id": f"obj_{i}", "bytes": 100}
            run.step_succeeded(step_name="step-1", attempt=1, duration_ms=20, output=output)
    with AutomationApp(settings) as app:
        app.save(run)


def aggregates_in(settings: DomainSettings) -> int:
    with AutomationApp(settings) as app:
        source = open_source(app)
        try:
            found = source.read(
                after=0, upto=source.high_water_mark(), limit=10**7, topics=Redelivery.topics
            )
            return len({source.decode(n).aggregate_id for n in found})
        finally:
            source.close()


# -- one measurement ---------------------------------------------------------------------------


def measure(
    settings: DomainSettings,
    *,
    case: str,
    expected: int,
    concurrency: int,
    round_: int,
    receiver_process: ReceiverProcess,
) -> dict[str, Any]:
    """Leave ``expected`` deliveries owed by an outage, then time their re-delivery."""
    name = f"{case}_c{concurrency}_r{round_}"
    reaction_type = type(f"Redelivery_{name}", (Redelivery,), {"name": name})
    reaction = reaction_type(destinations=["receiver"])
    policy = OutagePolicy()
    with AutomationApp(settings) as app, open_ledger(settings) as ledger:
        source = open_source(app)
        destination = WebhookDestination(
            "receiver", f"{receiver_process.url}/hook", secret=SECRET, timeout=30
        )
        runner = ReactionRunner(
            reaction,
            source=source,
            ledger=ledger,
            destinations=[destination],
            policy=policy,
            options=ReactionOptions(concurrency=concurrency),
        )
        try:
            # The outage: events recorded as owed, first attempts refused with 503.
            receiver_process.control("down")
            while not runner.record_new().caught_up:
                pass
            outage = runner.deliver_owed()
            owed = ledger.counts(name)
            receiver_process.control("up")
            policy.outage = False
            load_before = os.getloadavg()[0]
            connections_before = receiver_process.stats(name)["connections"]
            # Every attempt's outcome is one ledger transaction (record_attempt).
            clock = BusyClock()
            ledger.record_attempt = clock.wrap(ledger.record_attempt)  # type: ignore[method-assign]

            started = time.perf_counter()
            cpu_started = time.process_time()
            cycles = 0
            while ledger.owed(name, limit=1):
                cycles += 1
                if cycles > 20:
                    raise SystemExit(f"{name}: deliveries still owed after 20 cycles")
                runner.deliver_owed()
            seconds = time.perf_counter() - started
            cpu_seconds = time.process_time() - cpu_started
            load_after = os.getloadavg()[0]
            counts = ledger.counts(name)
        finally:
            runner.close()
            destination.close()
            source.close()
    stats = receiver_process.stats(name)
    delivered = counts.get(("receiver", "delivered"), 0)
    result = {
        "case": case,
        "concurrency": concurrency,
        "round": round_,
        "reaction": name,
        "deliveries": expected,
        "seconds": seconds,
        "deliveries_per_s": expected / seconds,
        "cycles": cycles,
        "sender_cpu_ms_per_delivery": 1000 * cpu_seconds / expected,
        "connections_opened": stats["connections"] - connections_before,
        "ledger_busy_share": clock.busy / seconds,
        "distinct_keys": stats["distinct"],
        "acknowledged_calls": stats["acknowledged"],
        "duplicates": stats["acknowledged"] - stats["distinct"],
        "refused_during_outage": stats["refused"],
        "owed_after_outage": {f"{d}/{s}": n for (d, s), n in sorted(owed.items())},
        "outage_failed_attempts": outage.failed,
        "ledger_delivered": delivered,
        "ledger_rows": sum(counts.values()),
        "load_before": load_before,
        "load_after": load_after,
    }
    if stats["distinct"] != expected or delivered != expected or result["ledger_rows"] != expected:
        raise SystemExit(
            f"{name}: the receiver acknowledged {stats['distinct']} distinct keys and the "
            f"ledger delivered {delivered} of {result['ledger_rows']} rows; expected {expected}"
        )
    return result


# -- the command -------------------------------------------------------------------------------


def fresh_store_location(backend: str, *, data_dir: Path, dsn: str, schema: str) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    KeyRing.generate("redelivery").save(data_dir / "keyring.json")
    if backend == "postgres":
        ident = sql.Identifier(schema)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(ident))
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(ident))


def run_benchmark(
    *,
    backend: str,
    deliveries: int,
    one_aggregate: int,
    concurrencies: list[int],
    rounds: int,
    delay: float,
    data_dir: Path,
    dsn: str,
    schema: str,
    log: Any = print,
) -> dict[str, Any]:
    fresh_store_location(backend, data_dir=data_dir, dsn=dsn, schema=schema)
    many = store_settings(backend, "redelivery_many", data_dir=data_dir, dsn=dsn, schema=schema)
    one = store_settings(backend, "redelivery_one", data_dir=data_dir, dsn=dsn, schema=schema)
    t0 = time.perf_counter()
    seed_many(many, deliveries, seed=7)
    if one_aggregate:
        seed_one(one, one_aggregate)
    log(f"seeded {deliveries:,} + {one_aggregate:,} events in {time.perf_counter() - t0:.1f} s")
    plan = [("many", many, deliveries, c) for c in concurrencies]
    if one_aggregate:
        plan += [("one", one, one_aggregate, c) for c in (min(concurrencies), max(concurrencies))]
    runs: list[dict[str, Any]] = []
    with receiver(delay) as receiving:
        for round_ in range(1, rounds + 1):
            for case, settings, expected, concurrency in plan:
                result = measure(
                    settings,
                    case=case,
                    expected=expected,
                    concurrency=concurrency,
                    round_=round_,
                    receiver_process=receiving,
                )
                log(
                    f"  round {round_} {case:>4} concurrency {concurrency:>2}: "
                    f"{result['deliveries_per_s']:8.1f} deliveries/s, {result['seconds']:.2f} s, "
                    f"{result['distinct_keys']} distinct keys, {result['duplicates']} duplicates"
                )
                runs.append(result)
    summary = []
    for case, _, expected, concurrency in plan:
        mine = [r for r in runs if r["case"] == case and r["concurrency"] == concurrency]
        rate = statistics.median(r["deliveries_per_s"] for r in mine)
        summary.append(
            {
                "case": case,
                "concurrency": concurrency,
                "deliveries": expected,
                "deliveries_per_s": rate,
                "rates": [r["deliveries_per_s"] for r in mine],
                "seconds": statistics.median(r["seconds"] for r in mine),
                "distinct_keys": sorted({r["distinct_keys"] for r in mine}),
                "duplicates": sum(r["duplicates"] for r in mine),
                "sender_cpu_ms_per_delivery": statistics.median(
                    r["sender_cpu_ms_per_delivery"] for r in mine
                ),
                "connections_opened": max(r["connections_opened"] for r in mine),
                "ledger_busy_share": statistics.median(r["ledger_busy_share"] for r in mine),
                "outage_minutes_for_40000": OUTAGE_DELIVERIES / rate / 60,
            }
        )
    return {
        "meta": meta(
            backend=backend,
            deliveries=deliveries,
            one_aggregate=one_aggregate,
            rounds=rounds,
            delay=delay,
            dsn=dsn if backend == "postgres" else None,
            aggregates=aggregates_in(many),
        ),
        "summary": summary,
        "runs": runs,
    }


def meta(*, dsn: str | None, **values: Any) -> dict[str, Any]:
    found: dict[str, Any] = {
        "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "command": "python -m benchmarks.redelivery " + " ".join(sys.argv[1:]),
        **values,
    }
    if dsn:
        with psycopg.connect(dsn) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            found["postgres"] = row[0] if row else "?"
    return found


def markdown(report: dict[str, Any]) -> str:
    m = report["meta"]
    loads = [r["load_before"] for r in report["runs"]] + [r["load_after"] for r in report["runs"]]
    lines = [
        f"Measured {m['when']} on {m['cpus']} CPUs ({m['machine']}), Python {m['python']}, "
        f"backend {m['backend']}"
        + (f" (PostgreSQL {m['postgres']})" if m.get("postgres") else "")
        + f". N = {m['deliveries']:,} deliveries over {m['aggregates']:,} aggregates, receiver "
        f"answering after {m['delay'] * 1000:.0f} ms, median of {m['rounds']} round(s); 1-minute "
        f"load average {min(loads):.1f} to {max(loads):.1f} during the measurements. "
        f"Command: `{m['command'].strip()}`.",
        "",
        f"| case | concurrency | deliveries | deliveries/s (median) | min {DASH} max | wall time "
        "| distinct keys "
        "| duplicates | 40,000 deliveries would take | sender CPU per delivery "
        "| ledger busy | connections opened |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in report["summary"]:
        case = "many aggregates" if s["case"] == "many" else "one aggregate"
        keys = ", ".join(f"{k:,}" for k in s["distinct_keys"])
        lines.append(
            f"| {case} | {s['concurrency']} | {s['deliveries']:,} | {s['deliveries_per_s']:,.1f} "
            f"| {min(s['rates']):,.1f} {DASH} {max(s['rates']):,.1f} | {s['seconds']:.1f} s "
            f"| {keys} | {s['duplicates']} "
            f"| {s['outage_minutes_for_40000']:.1f} min "
            f"| {s['sender_cpu_ms_per_delivery']:.2f} ms | {100 * s['ledger_busy_share']:.0f} % "
            f"| {s['connections_opened']:,} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.redelivery", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--deliveries", type=int, default=2_000, help="owed deliveries (N)")
    parser.add_argument(
        "--one-aggregate", type=int, default=200, help="events of the one-aggregate case (0: skip)"
    )
    parser.add_argument("--concurrency", default="1,8,32", help="comma list")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds (median)")
    parser.add_argument("--delay", type=float, default=0.02, help="receiver's answer delay (s)")
    parser.add_argument("--data-dir", type=Path, default=None, help="default: a temporary dir")
    parser.add_argument(
        "--postgres-dsn",
        default=os.environ.get("SAFEREPLAY_BENCH_POSTGRES_DSN", DEFAULT_POSTGRES_DSN),
    )
    parser.add_argument("--schema", default="bench_redelivery", help="PostgreSQL schema")
    parser.add_argument("--json", type=Path, default=None, help="where to write the JSON")
    parser.add_argument("--no-docs", action="store_true", help="leave docs/benchmarks.md alone")
    args = parser.parse_args(argv)
    concurrencies = sorted({int(c) for c in args.concurrency.split(",")})
    with tempfile.TemporaryDirectory(prefix="safereplay-redelivery-") as scratch:
        report = run_benchmark(
            backend=args.backend,
            deliveries=args.deliveries,
            one_aggregate=args.one_aggregate,
            concurrencies=concurrencies,
            rounds=args.rounds,
            delay=args.delay,
            data_dir=args.data_dir or Path(scratch),
            dsn=args.postgres_dsn,
            schema=args.schema,
        )
    text = markdown(report)
    print(text)
    out = args.json or RESULTS_DIR / f"redelivery-{args.backend}-{args.deliveries}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    if not args.no_docs:
        replace_block(
            DOCS,
            f"<!-- redelivery-{args.backend}:start -->",
            f"<!-- redelivery-{args.backend}:end -->",
            text,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

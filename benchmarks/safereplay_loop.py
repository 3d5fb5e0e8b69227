"""safereplay catch-up of the reference projections, from zero, with ``projections/``.

What a user gets: ``safereplay.projections.runner.ProjectionRunner`` over the event source
and projection store of ``safereplay.projections.backends`` (a separate store file/schema,
like the other loops' views), the runner's default batch size unless the
harness sets one, ``catch_up()`` from position zero to the head.

- ``projections="run_status"`` (the comparable loop): ``RunStatusBoard`` only,
  the same shape as the raw floor and the eventsourcing baselines;
- ``projections="reference"``: the three reference projections, one runner
  each, one after the other (what a rebuild of all of them costs).

With ``workers > 1`` every partition (``Partition(i, workers)``, by aggregate
hash, filtered in the database) is caught up by its own OS process
(``python -m benchmarks.safereplay_loop SPEC``), released together by
:mod:`benchmarks.partitions`: interpreter start-up and imports are not counted
(for 1 worker, imports are not counted either). Every process doing the work
applies the harness's collector setting (:mod:`benchmarks.collector`) first.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from typing import Any

from benchmarks import collector
from benchmarks.dataset import Store
from benchmarks.partitions import child_handshake, release_together

__all__ = ["NotAvailable", "available", "run", "view_digest"]


class NotAvailable(Exception):
    """The projections work this loop needs has not landed yet."""


def available() -> str | None:
    """None when the loop can run, else why not."""
    for module in (
        "safereplay.projections.runner",
        "safereplay.projections.reference",
        "safereplay.projections.backends",
    ):
        try:
            found = importlib.util.find_spec(module)
        except ModuleNotFoundError:
            found = None
        if found is None:
            return f"not available yet: {module} does not exist"
    try:
        from safereplay.projections.reference import RunStatusBoard  # noqa: F401
        from safereplay.projections.runner import ProjectionRunner, RunnerOptions  # noqa: F401
        from safereplay.projections.source import Partition  # noqa: F401
    except ImportError as exc:
        return f"not available yet: {exc}"
    return None


def _projection_classes(which: str) -> list[type[Any]]:
    from safereplay.projections.reference import REFERENCE_PROJECTIONS, RunStatusBoard

    if which == "run_status":
        return [RunStatusBoard]
    if which == "reference":
        return list(REFERENCE_PROJECTIONS)
    raise ValueError(f"unknown projections {which!r}")


def _open_store(store: Store, view: dict[str, Any]) -> Any:
    if store.backend == "postgres":
        from safereplay.projections.postgres import PostgresProjectionStore

        return PostgresProjectionStore(store.postgres_dsn, schema=view["schema"])
    from safereplay.projections.sqlite import SQLiteProjectionStore

    return SQLiteProjectionStore(view["path"])


def _catch_up(
    store: Store,
    view: dict[str, Any],
    *,
    which: str,
    index: int,
    count: int,
    batch_size: int | None,
) -> dict[str, Any]:
    """Open everything and catch the projections of one partition up to the head."""
    from safereplay.domain import AutomationApp
    from safereplay.projections.backends import open_source
    from safereplay.projections.runner import ProjectionRunner, RunnerOptions
    from safereplay.projections.source import Partition

    class SeededApp(AutomationApp):
        """The seeded store's application, without eventsourcing's CREATE TABLE / FUNCTION.

        Partition workers start together; eventsourcing's ``create_table`` run by two
        processes at once can fail on PostgreSQL with "tuple concurrently updated"
        (``CREATE OR REPLACE FUNCTION``). The tables exist: the store is seeded.
        """

        def construct_env(self, name: str, env: Any = None) -> Any:
            environment = super().construct_env(name, env)
            environment["CREATE_TABLE"] = "false"
            return environment

    started = time.perf_counter()
    app = SeededApp(store.settings(), key_ring=store.key_ring())
    options: dict[str, Any] = {"listen": False} if store.backend == "postgres" else {}
    source = open_source(app, **options)
    projection_store = _open_store(store, view)
    runner_options = RunnerOptions(batch_size=batch_size) if batch_size else RunnerOptions()
    timers = _instrument(source, projection_store)
    batches = applied = 0
    try:
        for cls in _projection_classes(which):
            runner = ProjectionRunner(
                cls(),
                source=source,
                store=projection_store,
                partition=Partition(index, count),
                options=runner_options,
            )
            result = runner.catch_up()
            batches += result.batches
            applied += result.applied
        elapsed = time.perf_counter() - started
    finally:
        projection_store.close()
        source.close()
        app.close()
    measured = sum(timers.values()) / 1e6
    return {
        "seconds": elapsed,
        "batches": batches,
        "applied": applied,
        "batch_size": runner_options.batch_size,
        "split_ms": {
            "fetch": timers["fetch"] / 1e6,
            "decrypt_decode": timers["decode"] / 1e6,
            # Handlers, batch state, and the runner's own bookkeeping: the rest.
            "apply": max(0.0, elapsed * 1e3 - measured),
            "commit": timers["commit"] / 1e6,
        },
    }


def _instrument(source: Any, projection_store: Any) -> dict[str, int]:
    """Time the runner's calls into the source and the store, from outside.

    Instance attributes shadow the methods: ``read`` and ``high_water_mark``
    (fetch), ``decode`` (decrypt + decode, per event), ``commit`` (the batch's
    transaction). Everything else the runner does is "apply". The per-event
    ``decode`` wrapper takes one argument and no ``try``: about 0.15 µs per event
    (the time of a call that raises is not counted; the benchmark's do not raise).
    """
    timers = {"fetch": 0, "decode": 0, "commit": 0}
    clock = time.perf_counter_ns

    def timed(obj: Any, name: str, bucket: str) -> None:
        method = getattr(obj, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = clock()
            try:
                return method(*args, **kwargs)
            finally:
                timers[bucket] += clock() - t0

        setattr(obj, name, wrapper)

    def timed_per_event(obj: Any, name: str, bucket: str) -> None:
        method = getattr(obj, name)

        def wrapper(arg: Any) -> Any:
            t0 = clock()
            result = method(arg)
            timers[bucket] += clock() - t0
            return result

        setattr(obj, name, wrapper)

    timed(source, "read", "fetch")
    timed(source, "high_water_mark", "fetch")
    timed_per_event(source, "decode", "decode")
    timed(projection_store, "commit", "commit")
    return timers


def _prepare(store: Store, view: dict[str, Any], which: str) -> None:
    """Create the builds (registry, tables) before the clock and before partitions race."""
    projection_store = _open_store(store, view)
    try:
        for cls in _projection_classes(which):
            projection_store.prepare(cls())
    finally:
        projection_store.close()


def run(
    store: Store, *, upto: int, workers: int, view: dict[str, Any], spec: dict[str, Any]
) -> dict[str, Any]:
    reason = available()
    if reason is not None:
        raise NotAvailable(reason)
    from benchmarks.dataset import head_position

    if upto != head_position(store):
        raise ValueError("safereplay catch-up runs to the head of the log only")
    which = spec.get("projections", "run_status")
    batch_size = spec.get("sr_batch_size")
    gc_choice = spec.get("gc", collector.DEFAULT)
    _prepare(store, view, which)
    if workers == 1:
        # What the catch-up imports, imported before the collector policy (so that it is
        # frozen with the rest of the start-up) and before the clock.
        import safereplay.projections.backends  # noqa: F401

        collector.apply(gc_choice)
        return _catch_up(store, view, which=which, index=0, count=1, batch_size=batch_size)
    return _run_partitions(
        store, view, which=which, workers=workers, batch_size=batch_size, gc_choice=gc_choice
    )


def _run_partitions(
    store: Store,
    view: dict[str, Any],
    *,
    which: str,
    workers: int,
    batch_size: int | None,
    gc_choice: str,
) -> dict[str, Any]:
    specs = [
        {
            "store": store.to_json(),
            "view": view,
            "projections": which,
            "index": index,
            "count": workers,
            "batch_size": batch_size,
            "gc": gc_choice,
        }
        for index in range(workers)
    ]
    elapsed, results = release_together("benchmarks.safereplay_loop", specs)
    return {
        "seconds": elapsed,
        "batches": sum(r["batches"] for r in results),
        "applied": sum(r["applied"] for r in results),
        "batch_size": results[0]["batch_size"],
        # Summed over the partitions (time spent in each stage, all processes).
        "split_ms": {
            stage: sum(r["split_ms"][stage] for r in results)
            for stage in ("fetch", "decrypt_decode", "apply", "commit")
        },
        "partitions": results,
        "children_peak_rss_kb": max(r["peak_rss_kb"] for r in results),
    }


def view_digest(store: Store, view: dict[str, Any]) -> dict[str, Any]:
    """Digest of ``RunStatusBoard``'s table, in the harness's normalised form."""
    from benchmarks.shape import digest
    from safereplay.projections.reference import RunStatusBoard

    projection_store = _open_store(store, view)
    try:
        rows = projection_store.rows(RunStatusBoard, "runs")
    finally:
        projection_store.close()
    return digest(
        (
            r["run_id"],
            r["workflow_id"],
            r["status"],
            r["steps_succeeded"],
            r["failures"],
            r["last_error_code"],
            r["updated_at"],
        )
        for r in rows
    )


def _partition_main(spec: dict[str, Any]) -> int:
    """One partition worker: import, report READY, wait for GO, catch up, report."""
    # Import what the catch-up needs before reporting ready, so the clock sees none of it.
    import safereplay.domain
    import safereplay.projections.backends
    import safereplay.projections.runner  # noqa: F401
    from benchmarks.memory import peak_rss_kb

    store = Store.from_json(spec["store"])
    # The same collector setting as every other measured process, before the clock.
    collector.apply(spec.get("gc", collector.DEFAULT))
    if not child_handshake():
        return 1
    result = _catch_up(
        store,
        spec["view"],
        which=spec["projections"],
        index=int(spec["index"]),
        count=int(spec["count"]),
        batch_size=spec.get("batch_size"),
    )
    result["peak_rss_kb"] = peak_rss_kb()
    result["gc"] = collector.describe()
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(_partition_main(json.loads(sys.argv[1])))

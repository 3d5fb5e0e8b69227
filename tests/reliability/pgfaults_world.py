"""One trial's world on the private cluster: a schema with an event log, an admin's
CLI environment, the product's processes (``safereplay rebuild``, ``follow``), and
the checks made directly in the database.

The checks never go through the code under test: rows are read with plain SQL
from the build's tables (``{projection}__{table}__b{build}``), positions from
``safereplay_projection_positions``, jobs and leases from ``safereplay_jobs`` and
``safereplay_job_partitions``, and compared with the clean folds of
``projection_fixtures`` over the stored events.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pgfaults_cluster import OURS, PrivateCluster
from projection_fixtures import EXPECTED, handled_count
from psycopg import sql
from psycopg.rows import dict_row
from recovery_fixtures import principals_world, wait_until
from reliability_trials import Trial

from safereplay.domain import AutomationApp, DomainSettings, Envelope, KeyRing
from safereplay.domain.workload import record_workload
from safereplay.projections import (
    PostgresEventSource,
    PostgresProjectionStore,
    Projection,
    ProjectionRunner,
    RunStatusBoard,
    WorkflowStatistics,
)
from safereplay.recovery.security.audit import AuditKey

#: The projections the scenarios rebuild and follow: one keyed by run, one whose
#: merges span partitions (a workflow's counters are moved by its runs' events).
PROJECTIONS: tuple[type[Projection], ...] = (RunStatusBoard, WorkflowStatistics)
T = TypeVar("T")

#: Generous: the machine is shared; a bound on time is never the invariant here.
PATIENCE = 180.0


@dataclass
class Process:
    """A ``safereplay`` command in its own process, its output kept in files."""

    popen: subprocess.Popen[bytes]
    out: Path
    err: Path
    args: tuple[str, ...]

    def wait(self, timeout: float = PATIENCE) -> int:
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            raise AssertionError(
                f"`safereplay {' '.join(self.args)}` did not end within {timeout}s "
                f"(it hangs): {self.stderr()[-2000:]}"
            ) from None

    def stdout(self) -> str:
        return self.out.read_text(errors="replace")

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def stop(self, timeout: float = PATIENCE) -> int:
        """SIGTERM (a follower's normal stop) and wait for its exit code."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        return self.wait(timeout)


@dataclass
class World:
    """A fresh schema on the private cluster, its event log and an admin's CLI env."""

    cluster: PrivateCluster
    directory: Path
    schema: str
    settings: DomainSettings
    env: dict[str, str]
    app: AutomationApp
    processes: list[Process] = field(default_factory=list)

    # -- events -------------------------------------------------------------------------

    def record(self, *, workflows: int, runs: int, seed: int) -> None:
        record_workload(self.app, workflows=workflows, runs_per_workflow=runs, seed=seed)

    def envelopes(self, upto: int | None = None) -> list[Envelope]:
        """The stored events (decrypted by the application: the oracle's input). The
        application's pooled connections may have met a restart: asked again."""
        everything = retried(lambda: self.app.read(after=0, limit=10**9))
        return [e for e in everything if upto is None or (e.position or 0) <= upto]

    def head(self) -> int:
        """The log's head, read in the database."""
        [row] = self.query(
            sql.SQL("SELECT coalesce(max(notification_id), 0) AS head FROM {}").format(
                self.table(f"{self.settings.application_name}_events")
            )
        )
        return int(row["head"])

    def prebuild(self, *, until: int) -> None:
        """The scenario projections' live builds caught up to ``until`` (a runner in
        this process, on connections of its own, closed afterwards)."""
        dsn = self.cluster.dsn
        store = PostgresProjectionStore(dsn, schema=self.schema, application_name=OURS)
        source = PostgresEventSource(
            dsn,
            schema=self.schema,
            table=f"{self.settings.application_name}_events",
            mapper=self.app.envelope_mapper,
            application_name=OURS,
        )
        try:
            for projection in PROJECTIONS:
                ProjectionRunner(projection(), source=source, store=store).catch_up(until=until)
        finally:
            source.close()
            store.close()

    # -- the product's processes ------------------------------------------------------------

    def cli(self, *args: str, env: dict[str, str] | None = None) -> Process:
        tag = uuid.uuid4().hex[:6]
        out = self.directory / f"{args[0]}-{tag}.out"
        err = self.directory / f"{args[0]}-{tag}.err"
        with out.open("wb") as stdout, err.open("wb") as stderr:
            popen = subprocess.Popen(
                [sys.executable, "-m", "safereplay.recovery.cli", *args],
                env={**self.env, **(env or {})},
                stdout=stdout,
                stderr=stderr,
            )
        process = Process(popen, out, err, args)
        self.processes.append(process)
        return process

    # -- direct reads of the database -------------------------------------------------------

    def query(self, statement: sql.Composable, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        with self.cluster.connect() as conn, conn.cursor(row_factory=dict_row) as cur:
            cur.execute(statement, params)
            return list(cur.fetchall())

    def execute(self, statement: sql.Composable) -> None:
        with self.cluster.connect() as conn:
            conn.execute(statement)

    def table(self, name: str) -> sql.Identifier:
        return sql.Identifier(self.schema, name)

    def positions(
        self, projection: type[Projection], build: int | None = None
    ) -> list[dict[str, Any]]:
        build = self.live_build(projection) if build is None else build
        return self.query(
            sql.SQL(
                "SELECT partition_index, partition_count, position, events_applied, "
                "events_parked FROM {} WHERE projection = %s AND build = %s "
                "ORDER BY partition_count, partition_index"
            ).format(self.table("safereplay_projection_positions")),
            (projection.name, build),
        )

    def tables(self) -> set[str]:
        rows = self.query(
            sql.SQL("SELECT table_name FROM information_schema.tables WHERE table_schema = %s"),
            (self.schema,),
        )
        return {str(r["table_name"]) for r in rows}

    def live_build(self, projection: type[Projection]) -> int | None:
        rows = self.query(
            sql.SQL("SELECT build FROM {} WHERE projection = %s AND status = 'live'").format(
                self.table("safereplay_projection_builds")
            ),
            (projection.name,),
        )
        return int(rows[0]["build"]) if rows else None

    def reached(self, projection: type[Projection], position: int) -> bool:
        """Every partition of the live build at ``position`` or beyond (read in the DB)."""
        with contextlib.suppress(Exception):  # the tables may not exist yet
            rows = self.positions(projection)
            return bool(rows) and all(int(r["position"]) >= position for r in rows)
        return False

    def jobs(self) -> list[dict[str, Any]]:
        return self.query(
            sql.SQL("SELECT job_id, state, projection, build, target_position FROM {}").format(
                self.table("safereplay_jobs")
            )
        )

    def job_partitions(self) -> list[dict[str, Any]]:
        return self.query(
            sql.SQL(
                "SELECT job_id, partition_index, status, position, events_applied, parked, "
                "lease_owner, lease_expires_at FROM {} ORDER BY job_id, partition_index"
            ).format(self.table("safereplay_job_partitions"))
        )

    def job_progress(self) -> int:
        """Events applied so far by the jobs' partitions (read in the DB)."""
        with contextlib.suppress(Exception):
            return sum(int(p["events_applied"] or 0) for p in self.job_partitions())
        return 0

    # -- the invariants ---------------------------------------------------------------------

    def check_build(
        self, trial: Trial, projection: type[Projection], *, build: int, upto: int
    ) -> None:
        """The build's rows equal the clean fold of the events up to ``upto``, each of
        its positions is ``upto``, and it applied every handled event exactly once."""
        envelopes = self.envelopes(upto)
        expected = EXPECTED[projection.name](envelopes)
        handled = handled_count(projection, envelopes)
        wrong = 0
        details: list[str] = []
        for table in projection.tables:
            rows = self.query(
                sql.SQL("SELECT * FROM {}").format(
                    self.table(f"{projection.name}__{table.name}__b{build}")
                )
            )
            actual = {tuple(row[k] for k in table.key_names): row for row in rows}
            want = expected[table.name]
            missing = want.keys() - actual.keys()
            extra = actual.keys() - want.keys()
            differ = [k for k in want.keys() & actual.keys() if actual[k] != want[k]]
            wrong += len(missing) + len(extra) + len(differ)
            if missing or extra or differ:
                details.append(
                    f"{table.name}: {len(missing)} missing, {len(extra)} extra, "
                    f"{len(differ)} differ, e.g. "
                    f"{[(actual[k], want[k]) for k in differ[:1]]} {list(missing)[:1]}"
                )
        positions = self.positions(projection, build)
        applied = sum(int(p["events_applied"]) for p in positions)
        parked = sum(int(p["events_parked"]) for p in positions)
        behind = [p for p in positions if int(p["position"]) != upto]
        assert positions and not behind, (
            f"{trial.label}: {projection.name} build {build}: positions {positions}, "
            f"expected every partition at {upto}"
        )
        assert parked == 0, f"{trial.label}: {projection.name}: {parked} events parked"
        assert not details, f"{trial.label}: {projection.name} build {build}: {details}"
        trial.checked(
            handled,
            losses=max(0, handled - applied) + wrong,
            duplicates=max(0, applied - handled),
        )

    def check_status_tells_the_truth(self, trial: Trial) -> int:
        """``safereplay status --json`` reports each projection's position as the
        database holds it, and a backlog unless it is really at the head: never caught
        up while behind. Returns how many projections it reported behind."""
        status = self.cli("status", "--json")
        code = status.wait()
        assert code == 0, f"{trial.label}: status failed: {status.stderr()[-2000:]}"
        report = json.loads(status.stdout())
        head = int(report["head_position"])
        reported = {p["name"]: p for p in report["projections"]}
        behind = 0
        for projection in PROJECTIONS:
            stored = min(int(p["position"]) for p in self.positions(projection))
            shown = reported[projection.name]
            assert int(shown["position"]) == stored, (
                f"{trial.label}: status says {projection.name} is at {shown['position']}, "
                f"the database at {stored}"
            )
            assert int(shown["backlog"]) == head - stored, (
                f"{trial.label}: status says {projection.name}'s backlog is "
                f"{shown['backlog']}, but it is at {stored} of {head}"
            )
            behind += stored < head
        return behind

    def check_no_lease_outlives(self, trial: Trial) -> None:
        """No job is stuck running: every job ended, no partition runs or holds a lease."""
        jobs = self.jobs()
        unfinished = [j for j in jobs if j["state"] not in ("completed", "failed", "aborted")]
        assert not unfinished, f"{trial.label}: jobs not ended: {unfinished}"
        held = [p for p in self.job_partitions() if p["status"] == "running" or p["lease_owner"]]
        assert not held, f"{trial.label}: partitions still running or leased: {held}"

    def close(self) -> None:
        for process in self.processes:
            if process.popen.poll() is None:
                process.popen.kill()
                process.popen.wait()
        self.app.close()
        with contextlib.suppress(Exception):
            self.cluster.wait_up()
            with self.cluster.connect() as conn:
                conn.execute(
                    sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(self.schema))
                )


@contextlib.contextmanager
def new_world(cluster: PrivateCluster, directory: Path, **env: str) -> Iterator[World]:
    """A fresh schema with its key ring, audit key and an admin (``env``: more settings
    of the product's processes, e.g. a short lease)."""
    cluster.ensure_running()
    directory.mkdir(parents=True, exist_ok=True)
    schema = f"f_{uuid.uuid4().hex[:10]}"
    with cluster.connect() as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    key_file = directory / "keyring.json"
    KeyRing.generate("k1").save(key_file)
    audit_key = directory / "audit.key"
    AuditKey.generate().save(audit_key)
    settings = DomainSettings.from_env(
        backend="postgres", postgres_dsn=cluster.dsn, postgres_schema=schema, key_file=key_file
    )
    context, envs = principals_world(settings, audit_key)
    context.close()
    base = {k: v for k, v in os.environ.items() if not k.startswith("SAFEREPLAY_")}
    world = World(
        cluster=cluster,
        directory=directory,
        schema=schema,
        settings=settings,
        env={
            **base,
            **envs["admin"],
            "SAFEREPLAY_APPROVAL_REQUIRED": "",
            # Quick to notice and to retry; a dead worker's lease expires soon.
            "SAFEREPLAY_PROJECTIONS_RETRY_MAX": "0.5",
            "SAFEREPLAY_PROJECTIONS_REPOLL_INTERVAL": "0.2",
            "SAFEREPLAY_LEASE_SECONDS": "2",
            **env,
        },
        app=AutomationApp(settings),
    )
    try:
        yield world
    finally:
        world.close()


class Writer:
    """Appends workload runs in a thread until stopped (live following's input); a
    failed append (the server away) is retried, never counted twice: the log is the
    oracle, not this writer's count."""

    def __init__(self, world: World, seed: int) -> None:
        self.world = world
        self.seed = seed
        self.rounds = 0
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pgfaults-writer", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.world.record(workflows=1, runs=3, seed=self.seed + self.rounds)
                self.rounds += 1
            except Exception:
                self.errors += 1
                self._stop.wait(0.2)
            self._stop.wait(0.2)

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(PATIENCE)


def retried(read: Callable[[], T], attempts: int = 20) -> T:
    """``read()``, asked again for a while if it fails (a connection a restart broke)."""
    for _ in range(attempts - 1):
        try:
            return read()
        except Exception:
            time.sleep(0.5)
    return read()


def wait_for(condition: Callable[[], Any], what: str, timeout: float = PATIENCE) -> Any:
    return wait_until(condition, timeout=timeout, what=what, interval=0.1)


def settle(seconds: float) -> None:
    time.sleep(seconds)

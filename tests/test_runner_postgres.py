"""PostgreSQL-only runner behaviour: LISTEN/NOTIFY, lost connections, real concurrency, holes.

- Killing the LISTEN connection (``pg_terminate_backend``) while following: the
  listener is reopened and every later event is applied; an event committed
  without any NOTIFY is applied by the timed re-poll.
- Connections of the store and of the source killed in the middle of a batch:
  the batch is retried from the committed position.
- Several writer processes commit while two partition runners follow live:
  eventsourcing's insert function without the table lock
  (``POSTGRES_ENABLE_DB_FUNCTIONS=y``: ids commit out of order) and raw inserts
  in transactions of random length, some rolled back. After each round every
  committed event is in the projection exactly once. Several rounds.
- A hole left by a rolled-back insert holds the projection only while the
  transaction is open, then is recorded as skipped.
"""

from __future__ import annotations

import multiprocessing
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from eventsourcing.utils import Environment, EnvType
from projection_fixtures import Log, PostgresBackend
from psycopg import sql

from safereplay.domain import AutomationApp, DomainSettings, Envelope
from safereplay.domain.automation import Run, Workflow
from safereplay.domain.workload import record_workload
from safereplay.projections import (
    BatchState,
    Partition,
    PostgresEventSource,
    Projection,
    ReadAheadMode,
    RunnerOptions,
    Table,
    WorkflowStatistics,
    handles,
    wait_for_position,
)

pytestmark = pytest.mark.postgres


class FunctionsApp(AutomationApp):
    """Inserts through eventsourcing's plpgsql function without the table lock: ids
    commit out of order, as with POSTGRES_ENABLE_DB_FUNCTIONS=y."""

    def construct_env(self, name: str, env: EnvType | None = None) -> Environment:
        environment = super().construct_env(name, env)
        environment["POSTGRES_ENABLE_DB_FUNCTIONS"] = "y"
        return environment


class NoTablesApp(AutomationApp):
    """An app in a writer process: the tables exist already (no concurrent DDL)."""

    def construct_env(self, name: str, env: EnvType | None = None) -> Environment:
        environment = super().construct_env(name, env)
        environment["CREATE_TABLE"] = "n"
        return environment


class FunctionsWriterApp(FunctionsApp, NoTablesApp):
    pass


class Ledger(Projection):
    """One row per event applied, counting applications: a double shows as 2."""

    name = "ledger"
    tables = (
        Table(
            "events",
            key={"aggregate_id": "text", "version": "integer"},
            values={"applied": "integer", "position": "integer"},
        ),
    )

    @handles(
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
    def record(self, envelope: Envelope, state: BatchState) -> None:
        state.merge(
            "events",
            (envelope.aggregate_id, envelope.aggregate_version),
            add={"applied": 1},
            set={"position": envelope.position},
        )


@pytest.fixture
def backend(postgres_dsn: str, key_file: Path) -> Iterator[PostgresBackend]:
    backend = PostgresBackend(postgres_dsn, key_file)
    yield backend
    backend.close()


@pytest.fixture
def log(backend: PostgresBackend) -> Iterator[Log]:
    with backend.fresh() as log:
        yield log


def wait_until(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def backends_named(conn: psycopg.Connection[Any], application_name: str) -> list[int]:
    rows = conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND pid <> pg_backend_pid()",
        (application_name,),
    ).fetchall()
    return [int(r[0]) for r in rows]


def terminate(conn: psycopg.Connection[Any], application_name: str) -> int:
    """Kill the backends of that name; returns how many, once they are gone."""
    pids = backends_named(conn, application_name)
    for pid in pids:
        conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
    wait_until(lambda: not set(pids) & set(backends_named(conn, application_name)))
    return len(pids)


def events_table(log: Log) -> sql.Composed:
    return sql.SQL("{}").format(sql.Identifier(log.settings.postgres_schema, "safereplay_events"))


def committed_events(log: Log) -> dict[tuple[str, int], int]:
    assert isinstance(log.backend, PostgresBackend)
    with log.backend.connect() as conn:
        rows = conn.execute(
            sql.SQL(
                "SELECT originator_id::text, originator_version, notification_id FROM {}"
            ).format(events_table(log))
        ).fetchall()
    return {(a, int(v)): int(p) for a, v, p in rows}


def ledger(log: Log) -> dict[tuple[str, int], tuple[int, int]]:
    return {
        (r["aggregate_id"], r["version"]): (r["applied"], r["position"])
        for r in log.store().rows(Ledger, "events")
    }


def assert_exactly_once(log: Log) -> None:
    committed = committed_events(log)
    applied = ledger(log)
    missing = committed.keys() - applied.keys()
    extra = applied.keys() - committed.keys()
    doubles = {k: v for k, v in applied.items() if v[0] != 1}
    assert not missing, f"{len(missing)} committed events never applied"
    assert not extra and not doubles, (extra, doubles)
    assert {k: v[1] for k, v in applied.items()} == committed


# -- LISTEN/NOTIFY ---------------------------------------------------------------------------


def test_a_killed_listening_connection_is_reopened_and_nothing_is_missed(log: Log) -> None:
    assert isinstance(log.backend, PostgresBackend)
    source = log.source()
    assert isinstance(source, PostgresEventSource) and source.notifies
    # Re-polling only every 30 s: only notifications (and the reconnect) wake it up.
    options = RunnerOptions(repoll_interval=30, retry_initial=0.01, retry_max=0.1)
    store = log.store()
    runner = log.runner(WorkflowStatistics(), store=store, source=source, options=options)
    listener = f"{log.backend.app_name}-listen-safereplay_events"
    with runner.in_background(), log.backend.connect() as admin:
        wait_until(lambda: len(backends_named(admin, listener)) == 1)
        record_workload(log.app, workflows=1, runs_per_workflow=1)
        head = log.app.head_position()
        assert wait_for_position(store, WorkflowStatistics, head, timeout=10) == head
        assert source.notifications >= 1
        for round_ in range(3):
            assert terminate(admin, listener) == 1
            connects = source.listen_connects
            wait_until(lambda connects=connects: source.listen_connects > connects)
            record_workload(log.app, workflows=1, runs_per_workflow=2, seed=round_)
            head = log.app.head_position()
            assert wait_for_position(store, WorkflowStatistics, head, timeout=10) == head
    assert source.listen_connects >= 4


def test_an_event_committed_without_notify_is_found_by_the_timed_repoll(log: Log) -> None:
    assert isinstance(log.backend, PostgresBackend)
    store = log.store()
    runner = log.runner(Ledger(), store=store)  # re-polls every 0.2 s
    with runner.in_background(), log.backend.connect() as conn:
        log.app.submit(
            {"type": "CreateWorkflow", "name": "w", "owner": "o@example.com", "trigger": {}},
            source="test",
        )
        assert wait_for_position(store, Ledger, 1, timeout=10) == 1
        insert_raw_workflow(conn, log.app, log.settings.postgres_schema, notify=False)
        assert wait_for_position(store, Ledger, 2, timeout=10) == 2
    assert_exactly_once(log)


# -- lost connections mid-batch ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("point", "victim", "read_ahead"),
    [
        ("in_commit", "projections", "off"),
        ("before_commit", "projections", "off"),
        ("before_apply", "projections", "off"),
        ("before_read", "source", "off"),
        ("before_read", "watermark", "off"),
        # Reading ahead (PostgreSQL's default): a lost commit drops what was read
        # ahead; a lost source connection is met by the read ahead, or by the runner.
        ("in_commit", "projections", "read"),
        ("before_commit", "projections", "read"),
        ("before_read", "source", "read"),
    ],
)
def test_a_connection_killed_mid_batch_is_retried(
    log: Log, point: str, victim: str, read_ahead: ReadAheadMode
) -> None:
    assert isinstance(log.backend, PostgresBackend)
    victim = f"{log.backend.app_name}-{victim}"
    record_workload(log.app, workflows=2, runs_per_workflow=4)
    kills = 0
    with log.backend.connect() as admin:

        def faults(at: str) -> None:
            nonlocal kills
            if at == point and kills < 3:
                kills += terminate(admin, victim) > 0

        store = log.store()
        # Warm the connections up so that there is something to kill.
        store.prepare(Ledger)
        runner = log.runner(
            Ledger(), store=store, batch_size=7, faults=faults, read_ahead=read_ahead
        )
        runner.catch_up()
    assert kills == 3
    if victim.endswith("-watermark"):
        assert runner.connection_retries == 0  # the mark reconnects by itself
    elif victim.endswith("-source") and read_ahead == "read":
        # The batch was read ahead before the kill: the read ahead of the next one
        # meets the dead connection and is dropped, and the runner reads that batch
        # again on a new connection (a retry only if the kill lands on its own read).
        assert runner.connection_retries <= 3
    else:
        assert runner.connection_retries == 3  # every other kill: one retry of the batch
    assert_exactly_once(log)


# -- real concurrency -------------------------------------------------------------------------


def insert_raw_workflow(
    conn: psycopg.Connection[Any], app: AutomationApp, schema: str, *, notify: bool
) -> None:
    """One encrypted Workflow.Created, inserted by hand (no eventsourcing recorder)."""
    workflow = Workflow.create(name="raw", owner="raw@example.com", description="", trigger={})
    [event] = workflow.collect_events()
    stored = app.mapper.to_stored_event(event)
    conn.execute(
        sql.SQL(
            "INSERT INTO {} (originator_id, originator_version, topic, state) "
            "VALUES (%s, %s, %s, %s)"
        ).format(sql.Identifier(schema, "safereplay_events")),
        (stored.originator_id, stored.originator_version, stored.topic, stored.state),
    )
    if notify:
        conn.execute("NOTIFY safereplay_events")


def _write_for(task: tuple[str, str, str, str, int, float]) -> tuple[int, int]:
    """One writer process: (commits, rollbacks) over ``seconds``."""
    kind, dsn, schema, key_file, seed, seconds = task
    rng = random.Random(seed)
    settings = DomainSettings.from_env(
        backend="postgres", postgres_dsn=dsn, postgres_schema=schema, key_file=key_file
    )
    end = time.monotonic() + seconds
    commits = rollbacks = 0
    if kind == "functions":
        app: AutomationApp = FunctionsWriterApp(settings)
        try:
            while time.monotonic() < end:
                summary = record_workload(
                    app, workflows=1, runs_per_workflow=1, seed=rng.randint(0, 10**6)
                )
                commits += summary.events
        finally:
            app.close()
        return commits, rollbacks
    app = NoTablesApp(settings)
    try:
        with psycopg.connect(dsn) as conn:
            while time.monotonic() < end:
                rollback = rng.random() < 0.25
                with conn.transaction():
                    count = rng.randint(1, 3)
                    for _ in range(count):
                        insert_raw_workflow(conn, app, schema, notify=rng.random() < 0.5)
                        time.sleep(
                            rng.uniform(0.1, 0.3) if rng.random() < 0.05 else rng.random() / 40
                        )
                    if rollback:
                        raise psycopg.Rollback
                commits += 0 if rollback else count
                rollbacks += rollback
    finally:
        app.close()
    return commits, rollbacks


def test_concurrent_out_of_order_writers_every_committed_event_applied_exactly_once(
    log: Log, key_file: Path
) -> None:
    assert isinstance(log.backend, PostgresBackend)
    rounds, seconds = 4, 2.0
    kinds = ["functions", "functions", "raw", "raw"]
    store = log.store()
    sources = [log.source() for _ in range(2)]
    runners = [
        log.runner(Ledger(), store=log.store(), source=source, partition=partition, batch_size=25)
        for source, partition in zip(sources, Partition.all(2), strict=True)
    ]
    threads = [r.in_background() for r in runners]
    totals = {"commits": 0, "rollbacks": 0}
    context = multiprocessing.get_context("spawn")
    try:
        with context.Pool(len(kinds)) as pool:
            for round_ in range(rounds):
                tasks = [
                    (
                        kind,
                        log.backend.dsn,
                        log.settings.postgres_schema,
                        str(key_file),
                        10 * round_ + i,
                        seconds,
                    )
                    for i, kind in enumerate(kinds)
                ]
                for commits, rollbacks in pool.map(_write_for, tasks):
                    totals["commits"] += commits
                    totals["rollbacks"] += rollbacks
                head = max(committed_events(log).values())
                assert wait_for_position(store, Ledger, head, timeout=30) >= head
                assert_exactly_once(log)
                assert all(t.alive for t in threads)
    finally:
        for thread in threads:
            thread.stop()
    assert totals["rollbacks"] > 0 and totals["commits"] > 100, totals
    committed = set(committed_events(log).values())
    holes = {h.position for h in sources[0].skipped_holes()}
    assert holes and not holes & committed
    assert holes | committed == set(range(1, max(committed) + 1))


# -- holes ------------------------------------------------------------------------------------


def test_a_rolled_back_insert_holds_the_projection_only_while_open(
    backend: PostgresBackend,
) -> None:
    with backend.fresh(app_class=FunctionsApp) as log:
        store = log.store()
        source = log.source()
        runner = log.runner(Ledger(), store=store, source=source)
        with psycopg.connect(backend.dsn) as slow:
            insert_raw_workflow(slow, log.app, log.settings.postgres_schema, notify=False)
            [[hole]] = slow.execute(
                sql.SQL("SELECT max(notification_id) FROM {}").format(events_table(log))
            ).fetchall()
            record_workload(log.app, workflows=1, runs_per_workflow=1)
            head = log.app.head_position()
            assert head > hole
            assert runner.catch_up().position == hole - 1, "passed a hole a live writer may fill"
            assert runner.catch_up().position == hole - 1
            slow.rollback()
        assert runner.catch_up().position == head
        [skipped] = source.skipped_holes()
        assert skipped.position == hole and "dead" in skipped.reason
        assert_exactly_once(log)


def test_many_rolled_back_holes_do_not_stall_live_following(log: Log) -> None:
    assert isinstance(log.backend, PostgresBackend)
    store = log.store()
    runner = log.runner(Ledger(), store=store)
    with runner.in_background(), log.backend.connect() as conn:
        for _ in range(20):
            with conn.transaction():
                insert_raw_workflow(conn, log.app, log.settings.postgres_schema, notify=True)
                raise psycopg.Rollback
            log.app.submit(
                {"type": "CreateWorkflow", "name": "w", "owner": "o@example.com", "trigger": {}},
                source="test",
            )
        head = log.app.head_position()
        assert wait_for_position(store, Ledger, head, timeout=15) == head
    assert_exactly_once(log)
    assert len(log.source().skipped_holes()) == 20


def test_following_stops_promptly(log: Log, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stop ends the follower's wait for a notification at once: with a re-poll only
    every hour, nothing written and a channel of its own (other tests' followers share
    the database), nothing else could wake it up."""
    source = log.source()
    assert isinstance(source, PostgresEventSource)
    source.channel = f"{source.channel}_{uuid.uuid4().hex[:8]}"
    waiting = threading.Event()
    waiters: list[threading.Thread] = []
    real_wait = source.wait
    #: Set only once the test has failed: ends a wait that was not given the stop event
    #: (the teardown would hang on it).
    failed = threading.Event()

    def wait(timeout: float, stop: threading.Event | None = None) -> bool:
        waiters.append(threading.current_thread())
        if source.listen_connects:  # listening already: not the first call, which connects
            waiting.set()
        return real_wait(timeout, stop or failed)

    monkeypatch.setattr(source, "wait", wait)
    runner = log.runner(Ledger(), source=source, options=RunnerOptions(repoll_interval=3600))
    thread = runner.in_background()
    assert waiting.wait(30), "the follower never waited for a notification"
    # It waits on its own background thread, not on the caller's.
    [follower] = set(waiters)
    assert follower is not threading.current_thread()
    assert follower.name.startswith("safereplay-ledger") and follower.is_alive()
    try:
        thread.stop(timeout=30)  # far less than the hour the wait would otherwise last
    finally:
        failed.set()
    assert not thread.alive and follower not in threading.enumerate()

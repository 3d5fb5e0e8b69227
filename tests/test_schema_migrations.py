"""Schema migrations: the catalog, migrate-on-start, ``safereplay migrate``; starts that
neither wait for open writers nor make new writers wait; processes started together
that all start; and a worker that dies at start, which fails its command and gives
its partition back.

The catalog's contract runs on both backends (one class, subclassed per backend);
the load tests need PostgreSQL, where DDL takes locks that writers feel.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from projection_fixtures import OnPostgres, OnSQLite
from psycopg import sql
from recovery_fixtures import (
    QUICK_RUNNER,
    Recovery,
    RecoveryContract,
    backend_env,
    bootstrap_args,
    bootstrapped_token,
)
from typer.testing import CliRunner

from safereplay.domain import AutomationApp, DomainSettings
from safereplay.domain.errors import (
    DatabaseSchemaOutdated,
    DatabaseSchemaTooNew,
    SchemaMigrationFailed,
)
from safereplay.domain.schema import (
    SchemaStep,
    ensure_event_store,
    ensure_schema,
)
from safereplay.domain.workload import record_workload
from safereplay.projections import ProjectionSettings, open_store
from safereplay.projections.postgres_watermark import WATERMARK_SCHEMA_VERSION
from safereplay.projections.store_sql import PROJECTIONS_SCHEMA_VERSION
from safereplay.recovery.cli.app import app as cli
from safereplay.recovery.database import (
    Database,
    PostgresDatabase,
    SQLiteDatabase,
    recorded_rows,
)
from safereplay.recovery.jobs.plans import JobRequest, start_rebuild
from safereplay.recovery.migrations.steps import RECOVERY_SCHEMA_VERSION
from safereplay.recovery.operations.catalog import open_operations
from safereplay.recovery.operations.context import RecoveryContext
from safereplay.recovery.operations.security import bootstrap_admin
from safereplay.recovery.security.audit import AuditKey
from safereplay.recovery.settings import RecoverySettings

SettingsFactory = Callable[..., DomainSettings]
TESTS = Path(__file__).resolve().parent


#: The job partitions table as recovery schema version 2 made it.
VERSION_2_PARTITIONS = """
CREATE TABLE {job_partitions} (
    job_id TEXT NOT NULL, partition_index INTEGER NOT NULL, status TEXT NOT NULL,
    start_position BIGINT NOT NULL, position BIGINT NOT NULL, target_position BIGINT,
    events_applied BIGINT NOT NULL DEFAULT 0, parked BIGINT NOT NULL DEFAULT 0,
    retries BIGINT NOT NULL DEFAULT 0, conflicts BIGINT NOT NULL DEFAULT 0,
    lease_owner TEXT, lease_token BIGINT NOT NULL DEFAULT 0,
    lease_expires_at DOUBLE PRECISION, started_at DOUBLE PRECISION,
    updated_at DOUBLE PRECISION NOT NULL, last_error TEXT,
    PRIMARY KEY (job_id, partition_index)
)"""


#: The job partitions table as recovery schema version 3 made it (no advanced_at).
VERSION_3_PARTITIONS = VERSION_2_PARTITIONS.replace(
    "last_error TEXT,", "last_error TEXT, events_in_scope BIGINT, recent_rate DOUBLE PRECISION,"
)


#: One completed job partition, kept through each upgrade of the partitions table.
A_COMPLETED_PARTITION = (
    "INSERT INTO {job_partitions} (job_id, partition_index, status, "
    "start_position, position, updated_at) VALUES ('j', 0, 'completed', 0, 9, 1)"
)


def database_of(settings: DomainSettings) -> Database:
    """The recovery database where the catalog lives (the store's, here the events')."""
    if settings.backend == "sqlite":
        return SQLiteDatabase(settings.sqlite_path)
    assert settings.postgres_dsn is not None
    return PostgresDatabase(
        settings.postgres_dsn.get_secret_value(), schema=settings.postgres_schema
    )


@contextmanager
def opened_database(settings: DomainSettings) -> Iterator[Database]:
    database = database_of(settings)
    try:
        yield database
    finally:
        database.close()


def rows_of(settings: DomainSettings, query: str) -> list[dict[str, Any]]:
    with opened_database(settings) as database, database.transaction(write=False) as tx:
        return [dict(r) for r in tx.rows(query)]


def catalog(settings: DomainSettings) -> dict[str, tuple[int, str]]:
    """The versions table: component -> (version, applied_by); empty if missing."""
    with opened_database(settings) as database:
        rows = recorded_rows(
            database, "SELECT component, version, applied_by FROM {schema_versions}", {}
        )
    return {r["component"]: (int(r["version"]), r["applied_by"]) for r in rows}


def set_versions(settings: DomainSettings, version: int) -> None:
    """Pretend a newer release migrated every component."""
    with opened_database(settings) as database, database.transaction(write=True) as tx:
        tx.execute("UPDATE {schema_versions} SET version = %(v)s", {"v": version})


def cli_env(settings: DomainSettings, audit_key: Path) -> dict[str, str]:
    return backend_env(settings) | {
        "SAFEREPLAY_AUDIT_KEY_FILE": str(audit_key),
        "SAFEREPLAY_MIGRATE_ON_START": "true" if settings.migrate_on_start else "false",
    }


def run(env: dict[str, str], *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), env=env)
    return result.exit_code, result.output


@pytest.fixture
def audit_key(tmp_path: Path) -> Path:
    path = tmp_path / "audit.key"
    AuditKey.generate().save(path)
    return path


@contextmanager
def recovery_context(settings: DomainSettings, audit_key: Path) -> Iterator[RecoveryContext]:
    context = RecoveryContext(domain=settings, recovery=RecoverySettings(audit_key_file=audit_key))
    try:
        yield context
    finally:
        context.close()


def start_everything(context: RecoveryContext) -> None:
    """What a process opens when it starts: event store, source, store, recovery tables."""
    context.app  # noqa: B018 - opening it is the point
    context.source.ensure_schema()
    context.projection_store.ensure_schema()
    context.ensure_schema()


def restarted_after_downgrade(
    settings: DomainSettings, audit_key: Path, *undo: str, component: str, version: int
) -> None:
    """Set everything up, run ``undo`` (statements that put ``component`` back to its
    ``version`` schema) and record that version, then start again: that start has the
    migration to run."""
    with recovery_context(settings, audit_key) as context:
        start_everything(context)
    with opened_database(settings) as database, database.transaction(write=True) as tx:
        for statement in undo:
            tx.execute(statement)
        tx.execute(
            "UPDATE {schema_versions} SET version = %(v)s WHERE component = %(c)s",
            {"v": version, "c": component},
        )
    with recovery_context(settings, audit_key) as context:
        start_everything(context)


# -- the catalog's contract, on each backend ----------------------------------------------------


class SchemaContract:
    """``make`` builds the backend's settings (a fresh database per test)."""

    make: SettingsFactory

    @pytest.fixture(autouse=True)
    def _settings(self, request: pytest.FixtureRequest) -> None:
        self.make = request.getfixturevalue(self.settings_fixture)

    settings_fixture: str

    def components(self, settings: DomainSettings) -> set[str]:
        events = (
            "events:stored_events" if settings.backend == "sqlite" else "events:safereplay_events"
        )
        found = {events, "projections", "recovery"}
        if settings.backend == "postgres":
            found.add("watermark:safereplay_events")
        return found

    @pytest.mark.parametrize(
        ("undo", "component", "current", "read"),
        [
            # Recovery version 2 added the failed sign-ins' counts: a store the first
            # catalog set up gets the table from the next start's migration.
            (
                "DROP TABLE {auth_failures}",
                "recovery",
                RECOVERY_SCHEMA_VERSION,
                "SELECT * FROM {auth_failures}",
            ),
            # Projections version 2: a parked event can be skipped (skipped_reason).
            (
                "ALTER TABLE {projection_parked} DROP COLUMN skipped_reason",
                "projections",
                2,
                "SELECT skipped_reason FROM {projection_parked}",
            ),
        ],
        ids=["recovery auth_failures", "projections skipped_reason"],
    )
    def test_a_component_at_version_1_is_brought_up_to_date(
        self, audit_key: Path, undo: str, component: str, current: int, read: str
    ) -> None:
        settings = self.make()
        restarted_after_downgrade(settings, audit_key, undo, component=component, version=1)
        assert catalog(settings)[component][0] == current
        assert rows_of(settings, read) == []  # raises if the table or column is missing

    def test_a_recovery_schema_at_version_2_gets_the_partitions_progress_columns(
        self, audit_key: Path
    ) -> None:
        # Version 3 counts progress in events: each job partition's events in scope
        # and its recent rate. A version 2 table (without them) gets both, its rows kept.
        settings = self.make()
        restarted_after_downgrade(
            settings,
            audit_key,
            "DROP TABLE {job_partitions}",
            VERSION_2_PARTITIONS,
            A_COMPLETED_PARTITION,
            component="recovery",
            version=2,
        )
        assert catalog(settings)["recovery"][0] == RECOVERY_SCHEMA_VERSION
        rows = rows_of(
            settings, "SELECT position, events_in_scope, recent_rate FROM {job_partitions}"
        )
        assert rows == [{"position": 9, "events_in_scope": None, "recent_rate": None}]

    def test_a_recovery_schema_at_version_3_gets_stall_and_anomaly_detection(
        self, audit_key: Path
    ) -> None:
        # Version 4: when each job partition last advanced (advanced_at), the live
        # followers' heartbeats, the alerts and the anomaly rules' samples. A version 3
        # database (partitions without advanced_at, none of the three tables) gets them
        # all, its partitions' rows kept.
        settings = self.make()
        restarted_after_downgrade(
            settings,
            audit_key,
            "DROP TABLE {job_partitions}",
            "DROP TABLE {followers}",
            "DROP TABLE {alerts}",
            "DROP TABLE {alert_samples}",
            VERSION_3_PARTITIONS,
            A_COMPLETED_PARTITION,
            component="recovery",
            version=3,
        )
        assert catalog(settings)["recovery"][0] == RECOVERY_SCHEMA_VERSION == 6
        rows = rows_of(settings, "SELECT position, advanced_at FROM {job_partitions}")
        assert rows == [{"position": 9, "advanced_at": None}]
        for table in ("followers", "alerts", "alert_samples"):
            assert rows_of(settings, f"SELECT * FROM {{{table}}}") == []

    def test_a_recovery_schema_at_version_5_gets_the_change_requests_table(
        self, audit_key: Path
    ) -> None:
        # Version 6 (governance): four-eyes approval's change requests. A version 5
        # database (the tables of 4) gets the table, empty.
        settings = self.make()
        restarted_after_downgrade(
            settings,
            audit_key,
            "DROP TABLE {change_requests}",
            component="recovery",
            version=5,
        )
        assert catalog(settings)["recovery"][0] == RECOVERY_SCHEMA_VERSION == 6
        assert rows_of(settings, "SELECT * FROM {change_requests}") == []

    def test_a_first_start_sets_each_component_up_once_and_records_it(
        self, audit_key: Path
    ) -> None:
        settings = self.make()
        assert catalog(settings) == {}
        with recovery_context(settings, audit_key) as context:
            start_everything(context)
        recorded = catalog(settings)
        assert set(recorded) == self.components(settings)
        # Each at its current version: the watermark's 2 added the hole proofs, the
        # recovery's 2 the failed sign-ins' counts, its 3 the partitions' progress, its
        # 4 stall and anomaly detection;
        # the projections' 2 the skipped parked events.
        current = {
            c: WATERMARK_SCHEMA_VERSION
            if c.startswith("watermark:")
            else RECOVERY_SCHEMA_VERSION
            if c == "recovery"
            else PROJECTIONS_SCHEMA_VERSION
            if c == "projections"
            else 1
            for c in recorded
        }
        assert {c: version for c, (version, _) in recorded.items()} == current
        assert all("migrate on start" in by for _, by in recorded.values())

        # The next start finds every component current: it applies nothing.
        with recovery_context(settings, audit_key) as context:
            assert ensure_event_store(context.app, migrate=False) == []
            start_everything(context)
        assert catalog(settings) == recorded

    def test_with_migrate_on_start_off_a_missing_schema_is_an_error_naming_migrate(
        self, audit_key: Path
    ) -> None:
        settings = self.make(migrate_on_start=False)
        with pytest.raises(DatabaseSchemaOutdated, match="safereplay migrate"):
            AutomationApp(settings)
        store = open_store(settings, ProjectionSettings())
        with pytest.raises(DatabaseSchemaOutdated, match="'projections' is not set up"):
            store.ensure_schema()
        store.close()
        with (
            recovery_context(settings, audit_key) as context,
            pytest.raises(DatabaseSchemaOutdated, match="SAFEREPLAY_MIGRATE_ON_START"),
        ):
            context.access  # noqa: B018
        assert catalog(settings) == {}, "nothing was created"

    def test_code_older_than_the_database_is_refused(self, audit_key: Path) -> None:
        settings = self.make()
        with recovery_context(settings, audit_key) as context:
            start_everything(context)
        set_versions(settings, 99)
        with pytest.raises(DatabaseSchemaTooNew, match="newer than this code's 1"):
            AutomationApp(settings)
        store = open_store(settings, ProjectionSettings())
        with pytest.raises(DatabaseSchemaTooNew, match="'projections' is at schema version 99"):
            store.ensure_schema()
        store.close()
        with (
            recovery_context(settings, audit_key) as context,
            pytest.raises(DatabaseSchemaTooNew, match="'recovery'"),
        ):
            context.jobs  # noqa: B018

    def test_steps_run_once_per_version_from_the_recorded_one_all_or_nothing(
        self, audit_key: Path
    ) -> None:
        settings = self.make()
        calls: list[tuple[int, int]] = []

        with recovery_context(settings, audit_key) as context:
            probes = {
                v: context.database.render(t)
                for v, t in [
                    (1, "CREATE TABLE {probe_v1} (x integer)"),
                    (2, "CREATE TABLE {probe_v2} (x integer)"),
                    (3, "CREATE TABLE {probe_v3} (x integer)"),
                ]
            }

            def step(version: int, *, fail: bool = False) -> SchemaStep:
                def apply(cursor: Any, from_version: int) -> None:
                    calls.append((from_version, version))
                    cursor.execute(probes[version])
                    if fail:
                        raise RuntimeError("step failed half-way")

                return SchemaStep("probe", version, apply, "a test component")

            database = context.database.schema_database()
            assert [a.to_version for a in ensure_schema(database, [step(1)], migrate=True)] == [1]
            assert ensure_schema(database, [step(1)], migrate=True) == []
            applied = ensure_schema(database, [step(2)], migrate=True)
            assert [(a.from_version, a.to_version) for a in applied] == [(1, 2)]
            with pytest.raises(RuntimeError, match="half-way"):
                ensure_schema(database, [step(3, fail=True)], migrate=True)
            with pytest.raises(DatabaseSchemaOutdated, match="'probe' is at schema version 2"):
                ensure_schema(database, [step(3)], migrate=False)
            with context.database.transaction(write=False) as tx:
                assert tx.rows("SELECT count(*) AS n FROM {probe_v2}")[0]["n"] == 0
                with pytest.raises(Exception, match="probe_v3"):
                    tx.rows("SELECT count(*) AS n FROM {probe_v3}")
        assert calls == [(0, 1), (1, 2), (2, 3)]
        assert catalog(settings)["probe"][0] == 2, "the failed step left nothing recorded"

    def test_migrate_bootstraps_a_new_database_then_needs_an_admin(self, audit_key: Path) -> None:
        settings = self.make(migrate_on_start=False)
        env = cli_env(settings, audit_key)

        code, out = run(env, "status")
        if settings.backend == "sqlite":  # no file yet: a read creates none
            assert code == 2 and "no store at" in out and "safereplay init" in out, out
            assert not settings.sqlite_path.exists()
        else:
            assert code == 6 and "safereplay migrate" in out, out
        code, out = run(env, "migrate", "-r", "first install", "--json")
        assert code == 0, out
        report = json.loads(out)
        assert report["applied_by"] == "bootstrap"
        # migrate also sets up what only a reaction's runner opens: the delivery ledger.
        applied = {c["component"] for c in report["applied"]}
        assert applied == self.components(settings) | {"reactions"}
        assert {by for _, by in catalog(settings).values()} == {"bootstrap"}

        code, out = run(env, *bootstrap_args("ada"))
        assert code == 0, out
        admin = bootstrapped_token(out)
        with recovery_context(settings, audit_key) as context:
            context.access.add_principal("mallory", kind="person", created_by="ada")
            mallory = context.access.issue_token("mallory")

        code, out = run(env, "migrate", "-r", "again")
        assert code == 4, out  # principals exist: a token is needed now
        code, out = run(env | {"SAFEREPLAY_TOKEN": mallory}, "migrate", "-r", "again")
        assert code == 3 and "'mallory' may not migrate" in out, out
        code, out = run(env | {"SAFEREPLAY_TOKEN": admin}, "migrate", "-r", "upgrade 1.5")
        assert code == 0 and "every component was current" in out, out
        code, out = run(env | {"SAFEREPLAY_TOKEN": admin}, "status")
        assert code == 0, out

        with recovery_context(settings, audit_key) as context:
            entries = [
                (e.actor, e.action, e.outcome, e.reason)
                for e in context.audit.entries()
                if e.action == "migrate"
            ]
            assert entries == [
                ("bootstrap", "migrate", "succeeded", "first install"),
                ("mallory", "migrate", "denied", "again"),
                ("ada", "migrate", "started", "upgrade 1.5"),
                ("ada", "migrate", "succeeded", "upgrade 1.5"),
            ]
            assert context.audit.verify().ok


class TestSchemaOnSQLite(SchemaContract):
    settings_fixture = "sqlite_settings"


@pytest.mark.postgres
class TestSchemaOnPostgres(SchemaContract):
    settings_fixture = "postgres_settings"


# -- a worker that fails gives its partition back ------------------------------------------------


class WorkerStartContract(RecoveryContract):
    def test_a_worker_that_fails_gives_its_claimed_partition_back(self, recovery: Recovery) -> None:
        record_workload(recovery.log.app, workflows=2, runs_per_workflow=4, seed=3)
        job = start_rebuild(
            JobRequest(principal="alice", reason="fix", partitions=2),
            projection="run_status",
            store=recovery.store,
            source=recovery.source,
            jobs=recovery.jobs,
            registry=recovery.registry,
        )
        opened = threading.Event()

        def broken_source() -> Any:
            opened.set()
            raise RuntimeError("the event store would not open")

        worker = recovery.worker(lease_seconds=3600, open_source=broken_source)
        with pytest.raises(RuntimeError, match="would not open"):
            worker.run()
        assert opened.is_set(), "it died with a partition claimed"
        parts = recovery.partitions(job)
        # Given back at once: pending, nobody's lease (not left to expire in an hour).
        assert [(p.status, p.lease_owner) for p in parts] == [("pending", None)] * 2
        survivor = recovery.worker(lease_seconds=3600, runner_options=QUICK_RUNNER)
        survivor.run()
        assert recovery.job(job).state == "completed"


class TestWorkerStartOnSQLite(OnSQLite, WorkerStartContract):
    pass


@pytest.mark.postgres
class TestWorkerStartOnPostgres(OnPostgres, WorkerStartContract):
    pass


FAIL_ONCE_PROJECTION = '''
"""A projection whose first instance in a worker process fails (a start-up fault)."""
import os
import sys

from safereplay.projections.reference import RunStatusBoard


class FailsOnce(RunStatusBoard):
    name = "fails_once"

    def __init__(self) -> None:
        super().__init__()
        marker = os.environ["SAFEREPLAY_TEST_FAIL_ONCE"]
        if "worker" in sys.argv:
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                return
            raise RuntimeError("simulated start-up fault of this worker")
'''


def test_a_worker_dying_at_start_fails_its_command_naming_it_and_its_partition_moves_on(
    tmp_path: Path, sqlite_cli_env: dict[str, str]
) -> None:
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / "fails_once.py").write_text(textwrap.dedent(FAIL_ONCE_PROJECTION))
    settings = DomainSettings.from_env(
        backend="sqlite",
        sqlite_path=Path(sqlite_cli_env["SAFEREPLAY_SQLITE_PATH"]),
        key_file=Path(sqlite_cli_env["SAFEREPLAY_KEY_FILE"]),
    )
    with AutomationApp(settings) as application:
        record_workload(application, workflows=2, runs_per_workflow=6, seed=4)
    env = sqlite_cli_env | {
        "SAFEREPLAY_PROJECTIONS": "fails_once:FailsOnce",
        # A lease that never expires during the test: only a partition given back can
        # be taken over by the other worker.
        "SAFEREPLAY_LEASE_SECONDS": "3600",
        "SAFEREPLAY_TEST_FAIL_ONCE": str(tmp_path / "failed-once"),
        "PYTHONPATH": str(modules),
    }
    code, out = run(env, *bootstrap_args("root"))
    assert code == 0, out
    env["SAFEREPLAY_TOKEN"] = bootstrapped_token(out)

    command = [sys.executable, "-m", "safereplay.recovery.cli", "rebuild", "fails_once"]
    result = subprocess.run(
        [*command, "-n", "2", "-w", "2", "-r", "a fix", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )

    assert result.returncode == 1, result.stdout + result.stderr
    assert "simulated start-up fault of this worker" in result.stderr
    failed = [line for line in result.stderr.splitlines() if "exited with code 1" in line]
    assert len(failed) == 1 and failed[0].startswith("error: worker "), result.stderr
    status = json.loads(result.stdout)
    # The other worker finished the job, the dead one's partition included.
    assert status["job"]["state"] == "completed", status
    assert [p["status"] for p in status["partitions"]] == ["completed"] * 2


# -- PostgreSQL under load -------------------------------------------------------------------------


@contextmanager
def held_writer(dsn: str, tables: list[sql.Composable], *, hold_at_most: float) -> Iterator[Any]:
    """A transaction holding the write lock writers hold (ROW EXCLUSIVE) on ``tables``
    until the block ends (or ``hold_at_most`` seconds, so that a test that fails
    does not hang); yields a flag that says whether it is still open."""
    conn = psycopg.connect(dsn)
    release = threading.Event()
    locked = threading.Event()
    state = {"open": False}

    def hold() -> None:
        with conn.transaction():
            for table in tables:
                conn.execute(sql.SQL("LOCK TABLE {} IN ROW EXCLUSIVE MODE").format(table))
            state["open"] = True
            locked.set()
            release.wait(hold_at_most)
            state["open"] = False

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    assert locked.wait(60), "the writer could not take its locks"
    try:
        yield state
    finally:
        release.set()
        thread.join(120)
        conn.close()


def waiting_on_locks(dsn: str, schema: str) -> int:
    """Backends waiting for a lock on a relation of ``schema`` (DDL queued behind writers)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks AS l JOIN pg_class AS c ON c.oid = l.relation "
            "JOIN pg_namespace AS n ON n.oid = c.relnamespace "
            "WHERE NOT l.granted AND n.nspname = %s",
            (schema,),
        ).fetchone()
    return int(row[0]) if row else 0


@pytest.mark.postgres
def test_a_start_neither_waits_for_open_writers_nor_makes_new_writers_wait(
    postgres_settings: SettingsFactory, audit_key: Path, postgres_dsn: str
) -> None:
    settings = postgres_settings()
    schema = settings.postgres_schema
    with recovery_context(settings, audit_key) as context:
        start_everything(context)  # the schema exists (as in production after the first start)
        token = bootstrap_admin(context, "ada")
    hot = [
        sql.Identifier(schema, name)
        for name in (
            "safereplay_events",
            "safereplay_audit_entries",
            "safereplay_audit_head",
            "safereplay_projection_positions",
            "safereplay_jobs",
            "safereplay_job_partitions",
        )
    ]
    started = threading.Event()
    errors: list[BaseException] = []

    def start() -> None:
        # A command's start (status through the dispatch layer) and a worker's start.
        try:
            with recovery_context(settings, audit_key) as context:
                admin = context.access.authenticate(token)
                operations = open_operations(context)
                context.app  # noqa: B018 - the event store, as a worker opens it
                operations.run(admin, "status")
                operations.run(admin, "worker", reason="start", exit_when_idle=True)
        except BaseException as exc:
            errors.append(exc)
        finally:
            started.set()

    with held_writer(postgres_dsn, hot, hold_at_most=90) as first:
        starter = threading.Thread(target=start, daemon=True)
        starter.start()
        # Until the start has finished, or is stuck queued behind the open writer.
        for _ in range(6000):
            if started.wait(0.01) or waiting_on_locks(postgres_dsn, schema):
                break
        second_done = threading.Event()

        def second_writer() -> None:
            with psycopg.connect(postgres_dsn) as conn, conn.transaction():
                for table in hot:
                    conn.execute(sql.SQL("LOCK TABLE {} IN ROW EXCLUSIVE MODE").format(table))
            second_done.set()

        threading.Thread(target=second_writer, daemon=True).start()
        assert second_done.wait(60) and first["open"], (
            "a writer that began during the start waited for the open writer"
        )
        assert started.wait(60) and first["open"], "the start waited for the open writer"
    starter.join(60)
    assert not errors, errors


def process_script(kind: str, barrier: Path, ready: Path) -> str:
    """A process that imports everything, says it is ready, waits for the barrier, then
    starts: ``cli ARGS...`` (the command line) or ``worker`` (a worker's start)."""
    return textwrap.dedent(
        f"""
        import os, sys, time
        from pathlib import Path
        from safereplay.recovery.cli.app import main
        from safereplay.recovery.operations.context import RecoveryContext
        from safereplay.recovery.jobs.worker import WorkerOptions
        Path({str(ready)!r}).touch()
        while not Path({str(barrier)!r}).exists():
            time.sleep(0.005)
        if {kind!r} == "worker":
            context = RecoveryContext.from_env()
            context.app
            context.source.high_water_mark()
            context.worker(options=WorkerOptions(exit_when_idle=True)).run()
            context.close()
        else:
            sys.argv = ["safereplay", *sys.argv[1:]]
            main()
        """
    )


@pytest.mark.postgres
def test_processes_started_together_all_start(
    postgres_settings: SettingsFactory, audit_key: Path, postgres_dsn: str, tmp_path: Path
) -> None:
    """Eight processes at once, released by a barrier file, five rounds: on a new
    schema (no table at all) and on one in use. Before the catalog, processes
    re-created eventsourcing's function and the audit triggers at every start and
    died of ``tuple concurrently updated`` or deadlocks."""
    settings = postgres_settings()
    schema = settings.postgres_schema
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAFEREPLAY_")} | {
        "SAFEREPLAY_APPROVAL_REQUIRED": ""
    }
    env |= cli_env(settings, audit_key)
    token: str | None = None
    for round_number, fresh in enumerate([True, False, True, False, False]):
        if fresh:
            with psycopg.connect(postgres_dsn, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
                conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
            token = None
        round_dir = tmp_path / f"round-{round_number}"
        round_dir.mkdir()
        barrier = round_dir / "go"
        if fresh:
            # Nobody to authenticate yet: migrations (bootstraps) and worker starts.
            kinds = [("cli", ["migrate", "-r", f"round {round_number}"])] * 4
            kinds += [("worker", [])] * 4
        else:
            assert token is not None
            kinds = [("cli", ["status"])] * 5 + [("cli", ["worker", "--exit-when-idle"])] * 1
            kinds += [("worker", [])] * 2
        processes = []
        for index, (kind, args) in enumerate(kinds):
            ready = round_dir / f"ready-{index}"
            script = process_script(kind, barrier, ready)
            process_env = env if token is None else env | {"SAFEREPLAY_TOKEN": token}
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-c", script, *args],
                    env=process_env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
            )
        for _ in range(60_000):
            if all((round_dir / f"ready-{i}").exists() for i in range(len(kinds))):
                break
            if any(p.poll() is not None for p in processes):
                break
            threading.Event().wait(0.005)
        barrier.touch()
        outputs = [p.communicate(timeout=300)[0] for p in processes]
        failed = [
            f"{kinds[i]}: exit {p.returncode}\n{out}"
            for i, (p, out) in enumerate(zip(processes, outputs, strict=True))
            if p.returncode
        ]
        where = f"round {round_number} ({'new' if fresh else 'existing'} schema)"
        assert not failed, where + ":\n" + "\n".join(failed)
        if fresh:
            code, out = run(env, *bootstrap_args("ada"))
            assert code == 0, out
            token = bootstrapped_token(out)
        recorded = catalog(settings)
        assert set(recorded) == {
            "events:safereplay_events",
            "watermark:safereplay_events",
            "projections",
            "reactions",  # set up by the migrate process among them
            "recovery",
        }
    with recovery_context(settings, audit_key) as context:
        assert context.audit.verify().ok


@pytest.mark.postgres
def test_a_migration_gives_up_rather_than_queue_writers_behind_its_ddl(
    postgres_settings: SettingsFactory, audit_key: Path, postgres_dsn: str
) -> None:
    """A step that needs a lock an open writer holds fails after the lock timeout
    (the DDL never holds new writers up for longer), and leaves nothing behind."""
    settings = postgres_settings()
    schema = settings.postgres_schema
    with recovery_context(settings, audit_key) as context:
        start_everything(context)
        database = context.database.schema_database()
        step = SchemaStep(
            "index",
            1,
            lambda cursor, _v: cursor.execute(
                sql.SQL("CREATE INDEX probe_idx ON {} (state)").format(
                    sql.Identifier(schema, "safereplay_jobs")
                )
            ),
        )
        hot = [sql.Identifier(schema, "safereplay_jobs")]
        with held_writer(postgres_dsn, hot, hold_at_most=90) as writer:
            with pytest.raises(SchemaMigrationFailed, match="waited more than 5s"):
                ensure_schema(database, [step], migrate=True)
            assert writer["open"]
        assert "index" not in catalog(settings)

"""High-water mark: one contract for SQLite and PostgreSQL, then PostgreSQL's gap safety.

The PostgreSQL tests drive real out-of-order commits: transactions left open while
later ids commit, rolled-back inserts, sequence values taken without an insert, a
writer paused between ``nextval`` and its heap insert, and several writer
processes racing a reader (raw inserts and eventsourcing's
``POSTGRES_ENABLE_DB_FUNCTIONS=y`` insert function, in transactions of random
length, some rolled back).
"""

from __future__ import annotations

import gc
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
from psycopg import sql
from psycopg.conninfo import make_conninfo

from safereplay.domain import AutomationApp, DomainSettings
from safereplay.domain.workload import record_workload
from safereplay.projections import (
    HighWaterMark,
    PostgresHighWaterMark,
    SQLiteHighWaterMark,
    postgres_watermark,
)
from safereplay.projections.postgres_watermark import WatermarkError

SettingsFactory = Callable[..., DomainSettings]


class DbFunctionsApp(AutomationApp):
    """AutomationApp inserting through eventsourcing's plpgsql function, without
    the table lock: ids commit out of order, as with POSTGRES_ENABLE_DB_FUNCTIONS=y."""

    def construct_env(self, name: str, env: EnvType | None = None) -> Environment:
        environment = super().construct_env(name, env)
        environment["POSTGRES_ENABLE_DB_FUNCTIONS"] = "y"
        return environment


def workflow_message(n: int) -> dict[str, Any]:
    return {
        "type": "CreateWorkflow",
        "name": f"Lead routing #{n}",
        "owner": "ops@example.com",
        "trigger": {"kind": "webhook", "path": f"/hooks/leads/{n}"},
    }


class Log:
    """One application's notification log and how to build a mark over it."""

    def __init__(self, app: AutomationApp, new_mark: Callable[[], HighWaterMark]) -> None:
        self.app = app
        self.new_mark = new_mark

    def positions(self, upto: int) -> list[int]:
        notifications = self.app.recorder.select_notifications(start=1, limit=10**9, stop=upto)
        return [n.id for n in notifications]


class HighWaterMarkContract:
    """Every backend's mark must pass these."""

    @pytest.fixture
    def log(self) -> Iterator[Log]:
        raise NotImplementedError

    def test_an_empty_log_is_at_zero(self, log: Log) -> None:
        mark = log.new_mark()
        assert mark.advance() == 0
        assert mark.skipped_holes() == []
        mark.close()

    def test_the_mark_reaches_the_head_of_a_gapless_log(self, log: Log) -> None:
        summary = record_workload(log.app, workflows=2, runs_per_workflow=3)
        mark = log.new_mark()
        head = mark.advance()
        assert head == summary.head_position == log.app.head_position()
        assert log.positions(head) == list(range(1, head + 1))
        assert mark.skipped_holes() == []
        mark.close()

    def test_the_mark_never_decreases_and_follows_new_events(self, log: Log) -> None:
        mark = log.new_mark()
        seen = [mark.advance()]
        for n in range(5):
            log.app.submit(workflow_message(n), source="test")
            seen.append(mark.advance())
            seen.append(mark.advance())
        assert seen == sorted(seen)
        assert seen[-1] == log.app.head_position() == 5
        mark.close()

    def test_skipped_holes_of_a_gapless_log_are_empty_in_every_range(self, log: Log) -> None:
        record_workload(log.app, workflows=1, runs_per_workflow=2)
        mark = log.new_mark()
        head = mark.advance()
        assert mark.skipped_holes(after=0, upto=head) == []
        assert mark.skipped_holes(after=3) == []
        assert mark.skipped_holes(after=head, upto=None) == []
        mark.close()

    def test_a_second_instance_agrees(self, log: Log) -> None:
        record_workload(log.app, workflows=1, runs_per_workflow=2)
        first = log.new_mark()
        head = first.advance()
        first.close()
        second = log.new_mark()
        assert second.advance() == head
        second.close()


class TestSQLiteHighWaterMark(HighWaterMarkContract):
    @pytest.fixture
    def log(self, sqlite_settings: SettingsFactory) -> Iterator[Log]:
        settings = sqlite_settings()
        app = AutomationApp(settings)
        path: Path = settings.sqlite_path
        yield Log(app, lambda: SQLiteHighWaterMark(path))
        app.close()

    def test_each_advance_closes_its_connection(self, log: Log) -> None:
        # Not left to the cyclic collector (a replay process runs it rarely): every
        # unclosed sqlite3 connection would keep a file descriptor and its page cache.
        record_workload(log.app, workflows=1, runs_per_workflow=1)
        mark = log.new_mark()
        fds = Path("/proc/self/fd")
        gc.disable()
        try:
            before = len(list(fds.iterdir()))
            for _ in range(50):
                mark.advance()
            assert len(list(fds.iterdir())) <= before + 1, "a connection per advance left open"
        finally:
            gc.enable()


# -- PostgreSQL -------------------------------------------------------------------------


class PgLog(Log):
    def __init__(self, app: AutomationApp, dsn: str, schema: str, table: str) -> None:
        super().__init__(app, self.mark)
        self.dsn = dsn
        self.schema = schema
        self.table = table

    @property
    def events(self) -> sql.Composed:
        return sql.SQL("{}.{}").format(sql.Identifier(self.schema), sql.Identifier(self.table))

    @property
    def sequence(self) -> str:
        """For nextval(): a text that regclass parses."""
        return f"{self.schema}.{self.table}_notification_id_seq"

    @property
    def sequence_id(self) -> sql.Identifier:
        return sql.Identifier(self.schema, f"{self.table}_notification_id_seq")

    @property
    def hwm(self) -> sql.Identifier:
        return sql.Identifier(self.schema, f"{self.table}_hwm")

    def mark(self, **options: Any) -> PostgresHighWaterMark:
        options.setdefault("hole_wait", 0.05)
        return PostgresHighWaterMark(self.dsn, schema=self.schema, table=self.table, **options)

    def connect(self, *, autocommit: bool = True) -> psycopg.Connection[Any]:
        return psycopg.connect(self.dsn, autocommit=autocommit)

    def insert(self, conn: psycopg.Connection[Any], rows: int = 1) -> list[int]:
        """Raw inserts (state is arbitrary bytes): the ids they took, in order."""
        return [r[0] for r in conn.execute(insert_statement(self.schema, self.table), (rows,))]

    def committed(self) -> set[int]:
        with self.connect() as conn:
            query = sql.SQL("SELECT notification_id FROM {}").format(self.events)
            return {r[0] for r in conn.execute(query)}

    def persisted_mark(self) -> int | None:
        with self.connect() as conn:
            row = conn.execute(sql.SQL("SELECT position FROM {}").format(self.hwm)).fetchone()
            return None if row is None else int(row[0])


def insert_statement(schema: str, table: str) -> sql.Composed:
    return sql.SQL(
        "INSERT INTO {}.{} (originator_id, originator_version, topic, state) "
        "SELECT gen_random_uuid(), 1, 'tests.Raw', '\\x00'::bytea FROM generate_series(1, %s) "
        "RETURNING notification_id"
    ).format(sql.Identifier(schema), sql.Identifier(table))


def function_statement(schema: str) -> sql.Composed:
    """eventsourcing's own insert function (no table lock), inside our transaction."""
    return sql.SQL(
        "SELECT * FROM {schema}.es_insert_events_uuid(ARRAY[ROW(gen_random_uuid(), 1, "
        "'tests.Fn', '\\x01'::bytea)::{schema}.stored_event_uuid])"
    ).format(schema=sql.Identifier(schema))


class WatermarkClock:
    """Stands in for ``time`` in the watermark module: records every sleep it asks for.

    ``virtual``: its clock moves only by those sleeps (which return at once), so what
    is asserted is what the mark asked for, however slow the machine.
    """

    def __init__(self, *, virtual: bool = False) -> None:
        self.virtual = virtual
        self.slept: list[float] = []
        self._now = time.monotonic()

    def monotonic(self) -> float:
        return self._now if self.virtual else time.monotonic()

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        if self.virtual:
            self._now += seconds
        else:
            time.sleep(seconds)


@pytest.fixture
def watermark_clock(monkeypatch: pytest.MonkeyPatch) -> Callable[..., WatermarkClock]:
    def install(*, virtual: bool = False) -> WatermarkClock:
        clock = WatermarkClock(virtual=virtual)
        monkeypatch.setattr(postgres_watermark, "time", clock)
        return clock

    return install


def make_pg_log(settings: DomainSettings, dsn: str, schema: str, name: str = "safereplay") -> PgLog:
    return PgLog(DbFunctionsApp(settings), dsn, schema, f"{name}_events")


@pytest.mark.postgres
class TestPostgresHighWaterMark(HighWaterMarkContract):
    @pytest.fixture
    def log(
        self, postgres_settings: SettingsFactory, postgres_dsn: str, pg_schema: str
    ) -> Iterator[PgLog]:
        log = make_pg_log(postgres_settings(), postgres_dsn, pg_schema)
        assert log.app.recorder.datastore.enable_db_functions  # type: ignore[attr-defined]
        yield log
        log.app.close()

    # -- holes held open, then committed or rolled back ---------------------------------

    def test_an_open_insert_holds_the_mark_and_its_commit_is_not_a_hole(self, log: PgLog) -> None:
        mark = log.mark()
        with log.connect() as fast, log.connect(autocommit=False) as slow:
            log.insert(fast, 2)  # 1, 2
            [h] = log.insert(slow)  # 3, uncommitted
            later = log.insert(fast, 3)  # 4..6 committed
            for _ in range(3):
                assert mark.advance() == h - 1
            status = mark.status()
            assert status.holding_at == h
            assert slow.info.backend_pid in status.waiting_for
            slow.commit()
        assert mark.advance() == later[-1]
        assert mark.skipped_holes() == []
        assert mark.status().holding_at is None
        mark.close()

    def test_a_rolled_back_insert_is_skipped_and_recorded_with_a_reason(self, log: PgLog) -> None:
        mark = log.mark()
        with log.connect() as fast, log.connect(autocommit=False) as slow:
            log.insert(fast)
            [h] = log.insert(slow)
            later = log.insert(fast, 2)
            assert mark.advance() == h - 1
            slow.rollback()
        assert mark.advance() == later[-1]
        [hole] = mark.skipped_holes()
        assert hole.position == h
        assert hole.reason.startswith("dead:") and "1 writer transaction" in hole.reason
        assert hole.detected_at <= hole.skipped_at
        assert mark.filled_holes() == []
        mark.close()

    def test_a_sequence_value_taken_without_insert_does_not_stall(self, log: PgLog) -> None:
        mark = log.mark(hole_wait=0.0)
        with log.connect() as conn:
            log.insert(conn)
            [[taken]] = conn.execute("SELECT nextval(%s)", (log.sequence,)).fetchall()
            [after] = log.insert(conn)
        assert mark.advance() == after
        assert [h.position for h in mark.skipped_holes()] == [taken]
        assert "no writer transaction was in flight" in mark.skipped_holes()[0].reason
        mark.close()

    def test_a_proof_carries_over_between_calls_without_waiting(
        self, log: PgLog, watermark_clock: Callable[..., WatermarkClock]
    ) -> None:
        mark = log.mark(hole_wait=0.0)
        assert mark.advance() == 0  # connected, tables created
        clock = watermark_clock()
        with log.connect() as fast, log.connect(autocommit=False) as slow:
            [h] = log.insert(slow)
            [g] = log.insert(fast)
            assert mark.advance() == h - 1
            assert clock.slept == [], "hole_wait=0: the mark never sleeps"
            [[between]] = fast.execute("SELECT clock_timestamp()").fetchall()
            slow.rollback()
        assert mark.advance() == g
        assert clock.slept == []
        [hole] = mark.skipped_holes()
        assert hole.position == h
        assert hole.detected_at < between, "the proof begun by the first call was carried over"
        mark.close()

    def test_advance_waits_no_longer_than_hole_wait(
        self, log: PgLog, watermark_clock: Callable[..., WatermarkClock]
    ) -> None:
        mark = log.mark(hole_wait=0.3)
        clock = watermark_clock(virtual=True)
        with log.connect() as fast, log.connect(autocommit=False) as slow:
            [h] = log.insert(slow)
            log.insert(fast)
            assert mark.advance() == h - 1
            waited = sum(clock.slept)
            slow.rollback()
        # It waited for the writer in flight: hole_wait in all, no less and no longer.
        assert waited == pytest.approx(0.3)
        mark.close()

    def test_a_hole_waits_only_for_writers_in_flight_when_it_was_seen(self, log: PgLog) -> None:
        # A later transaction (new virtual id) that also writes does not hold the
        # proof up, nor does a long reader or autovacuum's lock (not writers).
        mark = log.mark(hole_wait=0.0)
        with (
            log.connect() as fast,
            log.connect(autocommit=False) as slow,
            log.connect(autocommit=False) as reader,
            log.connect(autocommit=False) as vacuum_like,
        ):
            reader.execute(sql.SQL("SELECT count(*) FROM {}").format(log.events))
            vacuum_like.execute(
                sql.SQL("LOCK TABLE {} IN SHARE UPDATE EXCLUSIVE MODE").format(log.events)
            )
            [h] = log.insert(slow)
            log.insert(fast)
            assert mark.advance() == h - 1
            slow.rollback()
            [newer] = log.insert(slow)  # same backend, new transaction, still open
            assert newer > h
            assert mark.advance() == newer - 1
            assert [x.position for x in mark.skipped_holes()] == [h]
            slow.commit()
            reader.rollback()
            vacuum_like.rollback()
        assert mark.advance() == newer
        mark.close()

    def test_a_writer_paused_between_nextval_and_its_insert_holds_the_mark(
        self, log: PgLog
    ) -> None:
        """The id is taken, the row not yet written, and the transaction has no xid:
        no snapshot lists it as in progress. Its RowExclusiveLock (taken before the
        default is evaluated) is what keeps the mark below the id."""
        key = random.randrange(1, 2**31)
        with log.connect() as admin:
            admin.execute(
                sql.SQL(
                    "CREATE FUNCTION {schema}.pause_for_test() RETURNS text LANGUAGE plpgsql "
                    "AS $$ BEGIN IF current_setting('safereplay.test_pause', true) = 'on' THEN "
                    "PERFORM pg_advisory_xact_lock({key}); END IF; RETURN NULL; END $$"
                ).format(schema=sql.Identifier(log.schema), key=sql.Literal(key))
            )
            # A column after notification_id: its default runs after nextval().
            admin.execute(
                sql.SQL(
                    "ALTER TABLE {} ADD COLUMN test_pause text DEFAULT {}.pause_for_test()"
                ).format(log.events, sql.Identifier(log.schema))
            )
            log.insert(admin, 3)
            admin.execute("SELECT pg_advisory_lock(%s)", (key,))
            mark = log.mark()
            with log.connect(autocommit=False) as slow:
                slow.execute("SET safereplay.test_pause = 'on'")
                pid = slow.info.backend_pid
                result: list[int] = []
                worker = threading.Thread(target=lambda: result.extend(log.insert(slow)))
                worker.start()
                try:
                    wait_until(lambda: _waits_on_advisory_lock(admin, pid))
                    [[taken]] = admin.execute(
                        sql.SQL("SELECT last_value FROM {}").format(log.sequence_id)
                    ).fetchall()
                    assert taken == 4  # id 4 is taken, its row not yet written
                    # Usually the writer has no xid yet either (nextval takes one only
                    # when it WAL-logs, once per 32 values or after a checkpoint), so
                    # no snapshot lists it as in progress: only its lock gives it away.
                    [later] = log.insert(admin)
                    assert mark.advance() == 3
                finally:
                    admin.execute("SELECT pg_advisory_unlock(%s)", (key,))
                    worker.join(10)
                assert result == [4]
                assert mark.advance() == 3  # written, not yet committed
                slow.commit()
        assert mark.advance() == later
        assert mark.skipped_holes() == []
        mark.close()

    def test_writers_are_collected_after_the_scan_that_saw_the_hole(self, log: PgLog) -> None:
        """White-box, deterministic: a writer that takes an id and a later id that
        commits, both right after pg_locks was read. Collected after the scan (as
        required), the proof cannot cover the new hole; collected before it, the
        racing writer would be missing from the proof and its id skipped."""
        racer = log.connect(autocommit=False)
        other = log.connect()
        raced: list[int] = []

        class Racing(PostgresHighWaterMark):
            def _writers(self, conn: psycopg.Connection[Any]) -> dict[str, int | None]:
                result = super()._writers(conn)
                if not raced:
                    raced.extend(log.insert(racer))  # open: may still commit
                    raced.extend(log.insert(other))  # a later id, committed
                return result

        with log.connect() as conn:
            log.insert(conn)
            conn.execute("SELECT nextval(%s)", (log.sequence,))  # a dead hole at 2
            log.insert(conn)  # 3: the scan sees a hole, so pg_locks is read
        mark = Racing(log.dsn, schema=log.schema, table=log.table, hole_wait=0.05)
        try:
            assert mark.advance() == 3
            assert raced == [4, 5]
            assert mark.advance() == 3  # 4 is still in flight
            racer.commit()
            assert mark.advance() == 5
            assert [h.position for h in mark.skipped_holes()] == [2]
        finally:
            racer.close()
            other.close()
            mark.close()

    # -- proofs that outlive a process, under writers that always overlap ---------------

    def proofs(self, log: PgLog) -> list[tuple[int, int, list[str]]]:
        """(hole, cover, writers) of the persisted proofs."""
        with log.connect() as conn:
            rows = conn.execute(
                sql.SQL("SELECT hole, cover, writers FROM {} ORDER BY cover").format(
                    sql.Identifier(log.schema, f"{log.table}_hole_proofs")
                )
            ).fetchall()
        return [(int(h), int(c), list(w)) for h, c, w in rows]

    def test_a_new_process_continues_the_proof_another_began(self, log: PgLog) -> None:
        """A proof is kept in the database: a new instance (a new process, on a new
        connection) waits only for the writers in flight when the hole was first
        seen, not for a writer that began later and is still open."""
        first = log.mark(hole_wait=0.0)
        with (
            log.connect() as fast,
            log.connect(autocommit=False) as slow,
            log.connect(autocommit=False) as later,
        ):
            log.insert(fast)
            [h] = log.insert(slow)
            [g] = log.insert(fast)
            assert first.advance() == h - 1
            [[slow_vxid]] = slow.execute(
                "SELECT virtualtransaction FROM pg_locks WHERE pid = pg_backend_pid() "
                "AND locktype = 'virtualxid'"
            ).fetchall()
            assert self.proofs(log) == [(h, g, [slow_vxid])]
            first.close()
            [[between]] = fast.execute("SELECT clock_timestamp()").fetchall()
            [newer] = log.insert(later)  # began after the hole was seen; stays open
            slow.rollback()
            second = log.mark(hole_wait=0.0)
            assert second.advance() == g, "the persisted proof was continued"
            [hole] = second.skipped_holes()
            assert hole.position == h and "1 writer transaction" in hole.reason
            assert hole.detected_at < between, "first seen by the first process"
            assert self.proofs(log) == [], "a settled proof is removed with the move"
            log.insert(fast)
            assert second.advance() == newer - 1  # the later writer still holds its own id
            later.commit()
        assert second.advance() == newer + 1
        second.close()

    def test_the_mark_passes_a_dead_hole_under_writers_that_always_overlap(
        self, log: PgLog
    ) -> None:
        """Two writers of which one has a transaction open at every instant (each
        commits only once the other has opened its next one), a dead hole among
        their ids, and a reader that is a new process at every step, calling
        advance() once without waiting (like ``safereplay status`` run again and
        again). Each process alone never sees a moment without a writer in flight;
        the persisted proofs still move the mark past every committed position
        within one step, and never past one before it committed."""

        def one_process() -> int:
            mark = log.mark(hole_wait=0.0, hole_proof_refresh=0.0)
            try:
                return mark.advance()
            finally:
                mark.close()

        steps = 8
        marks: list[int] = []
        targets: list[int] = []
        committed: set[int] = set()
        seen: set[int] = set()
        select = sql.SQL(
            "SELECT notification_id FROM {} WHERE notification_id > %s AND notification_id <= %s"
        ).format(log.events)
        with (
            log.connect() as fast,
            log.connect(autocommit=False) as a,
            log.connect(autocommit=False) as b,
            log.connect(autocommit=False) as doomed,
        ):
            open_ids = {id(a): log.insert(a)}
            [dead] = log.insert(doomed)
            doomed.rollback()
            committed.update(log.insert(fast))
            current, other = a, b
            for _ in range(steps):
                open_ids[id(other)] = log.insert(other)  # opens before the other commits
                current.commit()
                committed.update(open_ids.pop(id(current)))
                committed.update(log.insert(fast))
                targets.append(max(committed))
                value = one_process()
                assert value >= max(marks, default=0), "the mark went backwards"
                seen.update(r[0] for r in fast.execute(select, (max(marks, default=0), value)))
                marks.append(value)
                current, other = other, current
            current.commit()
            committed.update(open_ids.pop(id(current)))
        # Each process passed every position committed before the previous one ran.
        lagging = [
            (k, marks[k], targets[k - 1]) for k in range(1, steps) if marks[k] < targets[k - 1]
        ]
        assert not lagging, f"(step, mark, committed before the previous step): {lagging}"
        final = one_process()
        assert final == max(committed)
        mark = log.mark()
        assert [x.position for x in mark.skipped_holes()] == [dead]
        mark.close()
        # Nothing committed at or below a mark already handed out.
        assert {x for x in committed if x <= marks[-1]} <= seen

    def test_proofs_of_an_earlier_server_run_or_prepared_writers(self) -> None:
        """White-box: a restart ends every writer a proof names (virtual ids start
        over with the server); a prepared transaction is waited for always."""
        from datetime import UTC, datetime, timedelta

        from safereplay.projections.hole_proofs import HoleProof, decided

        run = datetime(2025, 1, 1, tzinfo=UTC)
        proof = HoleProof.made(hole=5, cover=9, writers={"3/7": 101}, detected_at=run, server=run)
        assert proof.running({"3/7": 101, "4/2": 102}, run) == {"3/7": 101}
        assert proof.running({"4/2": 102}, run) == {}, "a writer that began later"
        assert proof.running({"3/7": 101}, run + timedelta(hours=1)) == {}, "restarted"
        assert proof.running({"-1/900": None}, run) == {"-1/900": None}, "prepared"
        # A newer proof names the older one's writers still in flight when it was made.
        newer = HoleProof.made(
            hole=5, cover=12, writers={"3/7": 101, "4/2": 102}, detected_at=run, server=run
        )
        assert decided([proof, newer], {"3/7": 101, "4/2": 102}, run) is None
        assert decided([proof, newer], {"4/2": 102}, run) == proof, "the lower cover first"
        assert decided([proof, newer], {"5/1": 103}, run) == newer, "the largest cover done"

    def test_one_idempotent_function_creates_every_watermark_table(self, log: PgLog) -> None:
        from safereplay.projections.postgres_watermark import (
            WATERMARK_SCHEMA_VERSION,
            create_watermark_tables,
        )

        mark = log.mark()
        assert mark.advance() == 0  # the catalog set the tables up (migrate on start)
        names = (f"{log.table}_skipped_holes", f"{log.table}_hwm", f"{log.table}_hole_proofs")
        assert (mark.holes_table, mark.mark_table, mark.proofs_table) == names
        assert mark.schema_step().version == WATERMARK_SCHEMA_VERSION == 2
        with log.connect() as conn:
            for _ in range(2):  # idempotent
                assert create_watermark_tables(conn, schema=log.schema, table=log.table) == names
            found = {
                r[0]
                for r in conn.execute(
                    "SELECT tablename FROM pg_tables WHERE schemaname = %s", (log.schema,)
                )
            }
        assert set(names) <= found
        mark.close()

    # -- skipped holes and the persisted mark ---------------------------------------------

    def test_skipped_holes_filters_by_position(self, log: PgLog) -> None:
        mark = log.mark(hole_wait=0.0)
        holes = []
        with log.connect() as conn, log.connect(autocommit=False) as doomed:
            for _ in range(4):
                log.insert(conn)
                holes += log.insert(doomed)
                doomed.rollback()
            [[taken]] = conn.execute("SELECT nextval(%s)", (log.sequence,)).fetchall()
            holes.append(taken)
            last = log.insert(conn)[-1]
        assert holes == [2, 4, 6, 8, 9]
        assert mark.advance() == last == 10

        def positions(after: int = 0, upto: int | None = None) -> list[int]:
            return [h.position for h in mark.skipped_holes(after=after, upto=upto)]

        assert positions() == holes
        assert positions(after=4) == [6, 8, 9]
        assert positions(upto=4) == [2, 4]
        assert positions(after=2, upto=8) == [4, 6, 8]
        assert positions(after=9) == []
        assert all(h.reason for h in mark.skipped_holes())
        mark.close()

    def test_the_mark_is_persisted_and_never_decreases_across_instances(self, log: PgLog) -> None:
        first = log.mark(persist_interval=0.0)
        with log.connect() as conn, log.connect(autocommit=False) as doomed:
            log.insert(conn, 5)
            log.insert(doomed)
            doomed.rollback()
            log.insert(conn, 4)
        assert first.advance() == 10
        assert log.persisted_mark() == 10
        first.close()
        # Another process starts from the persisted mark (checked against the log
        # and the recorded holes), not from 0, and never goes below it.
        second = log.mark()
        assert second.status().mark == 0
        assert second.advance() == 10
        assert [h.position for h in second.skipped_holes()] == [6]
        with log.connect() as conn:
            conn.execute(sql.SQL("UPDATE {} SET position = 3").format(log.hwm))
            assert second.advance() == 10
            log.insert(conn)
        assert second.advance() == 11
        second.close()
        assert log.persisted_mark() == 11

    def test_correctness_does_not_depend_on_the_persisted_mark(self, log: PgLog) -> None:
        def fresh_mark() -> int:
            other = log.mark()
            try:
                return other.advance()
            finally:
                other.close()

        mark = log.mark()
        with log.connect() as conn, log.connect(autocommit=False) as slow:
            log.insert(conn, 2)
            [h] = log.insert(slow)
            [g] = log.insert(conn)
            assert mark.advance() == h - 1
            mark.close()
            assert log.persisted_mark() == h - 1
            # A mark past a live hole (tampered, or a bug elsewhere) is not adopted ...
            conn.execute(sql.SQL("UPDATE {} SET position = %s").format(log.hwm), (g,))
            assert fresh_mark() == h - 1
            # ... nor one past the end of the log; and a lost mark costs no correctness.
            conn.execute(sql.SQL("UPDATE {} SET position = 1000").format(log.hwm))
            assert fresh_mark() == h - 1
            conn.execute(sql.SQL("DELETE FROM {}").format(log.hwm))
            assert fresh_mark() == h - 1
            slow.rollback()
        assert fresh_mark() == g
        again = log.mark()
        assert again.advance() == g
        assert [x.position for x in again.skipped_holes()] == [h]
        again.close()

    # -- escape hatch, configuration and connection errors ------------------------------

    def test_forced_skip_is_off_by_default_and_recorded_when_enabled(self, log: PgLog) -> None:
        patient = log.mark()
        impatient = log.mark(skip_stale_holes_despite_live_transactions_after=0.2)
        with log.connect() as fast, log.connect(autocommit=False) as slow:
            [h] = log.insert(slow)
            [g] = log.insert(fast)
            assert impatient.advance() == h - 1
            time.sleep(0.3)
            assert patient.advance() == h - 1  # the default never skips a live hole
            assert impatient.advance() == g
            [hole] = impatient.skipped_holes()
            assert hole.position == h
            assert hole.reason.startswith("FORCED") and str(slow.info.backend_pid) in hole.reason
            # An instance without the option does not adopt a forced skip either.
            assert patient.advance() == h - 1
            assert impatient.filled_holes() == []
            slow.commit()
        # The event the forced skip passed over arrived: it is reported, not hidden.
        assert impatient.filled_holes() == [h]
        assert patient.advance() == g
        patient.close()
        impatient.close()

    def test_a_log_whose_table_does_not_exist_yet_is_at_zero(self, log: PgLog) -> None:
        mark = PostgresHighWaterMark(log.dsn, schema=log.schema, table="later_events")
        assert mark.advance() == 0
        assert mark.skipped_holes() == [] and mark.filled_holes() == []
        later = make_pg_log(
            log.app.settings.model_copy(update={"application_name": "later"}),
            log.dsn,
            log.schema,
            "later",
        )
        try:
            later.app.submit(workflow_message(1), source="test")
            assert mark.advance() == 1
        finally:
            later.app.close()
            mark.close()

    def test_a_cached_sequence_is_refused(self, log: PgLog) -> None:
        with log.connect() as conn:
            conn.execute(sql.SQL("ALTER SEQUENCE {} CACHE 20").format(log.sequence_id))
        mark = log.mark()
        with pytest.raises(WatermarkError, match="CACHE 20"):
            mark.advance()
        mark.close()

    def test_a_lost_connection_is_reopened(self, log: PgLog) -> None:
        name = f"hwm-{uuid.uuid4().hex[:8]}"
        conninfo = make_conninfo(log.dsn, application_name=name)
        mark = PostgresHighWaterMark(conninfo, schema=log.schema, table=log.table)
        with log.connect() as conn:
            log.insert(conn, 2)
            assert mark.advance() == 2
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = %s",
                (name,),
            )
            log.insert(conn)
        assert mark.advance() == 3
        mark.close()

    def test_an_unreachable_server_is_one_clear_error(self, pg_schema: str) -> None:
        mark = PostgresHighWaterMark(
            "postgresql://postgres@127.0.0.1:1/test",
            schema=pg_schema,
            table="safereplay_events",
            reconnect_for=0.3,
        )
        with pytest.raises(WatermarkError, match="unreachable") as info:
            mark.advance()
        assert isinstance(info.value.__cause__, psycopg.OperationalError)

    def test_options_are_checked(self) -> None:
        with pytest.raises(ValueError, match="batch_size"):
            PostgresHighWaterMark("", schema="s", table="t", batch_size=0)
        with pytest.raises(ValueError, match="63 bytes"):
            PostgresHighWaterMark("", schema="s", table="t" * 60)

    # -- real concurrency -----------------------------------------------------------------

    def test_concurrent_writers_never_commit_below_a_handed_out_mark(
        self, postgres_settings: SettingsFactory, postgres_dsn: str, pg_schema: str
    ) -> None:
        rounds, seconds, writers = 5, 2.5, 4
        totals = {"held": 0, "holes": 0, "rollbacks": 0, "committed": 0}
        context = multiprocessing.get_context("spawn")
        with context.Pool(writers) as pool:
            for round_ in range(rounds):
                name = f"race{round_}"
                log = make_pg_log(
                    postgres_settings(application_name=name, encryption=False),
                    postgres_dsn,
                    pg_schema,
                    name,
                )
                tasks = [
                    ("app" if w == 0 else "raw", postgres_dsn, pg_schema, name, round_ * 10 + w)
                    for w in range(writers)
                ]
                result = pool.map_async(_write_for, [(*t, seconds) for t in tasks])
                stats = race_reader(log, until=result.ready)
                for commits, rollbacks in result.get(timeout=60):
                    totals["committed"] += commits
                    totals["rollbacks"] += rollbacks
                totals["held"] += stats["held"]
                totals["holes"] += stats["holes"]
                log.app.close()
        # The race was real: marks were held below visible ids, holes were proven.
        assert totals["rollbacks"] > 0 and totals["holes"] > 0, totals
        assert totals["held"] > 0, totals


def race_reader(log: PgLog, *, until: Callable[[], bool]) -> dict[str, int]:
    """Follow the log like a projection runner, with two marks taking turns."""
    marks = [log.mark(hole_wait=0.05), log.mark(hole_wait=0.0, batch_size=5)]
    last = [0, 0]
    high = 0
    seen: set[int] = set()
    held = 0
    select = sql.SQL(
        "SELECT notification_id FROM {} WHERE notification_id > %s AND notification_id <= %s"
    ).format(log.events)
    head = sql.SQL("SELECT max(notification_id) FROM {}").format(log.events)
    with log.connect() as reader:

        def step() -> None:
            nonlocal high, held
            for i, mark in enumerate(marks):
                value = mark.advance()
                assert value >= last[i], "a mark went backwards"
                last[i] = value
                if value > high:
                    seen.update(r[0] for r in reader.execute(select, (high, value)))
                    high = value
                [[top]] = reader.execute(head).fetchall()
                held += top is not None and top > value

        while not until():
            step()
        committed = log.committed()
        deadline = time.monotonic() + 15
        while high < max(committed, default=0):
            assert time.monotonic() < deadline, f"stalled at {high} < {max(committed)}"
            step()
    # Nothing that ended up committed appeared at or below a mark already handed out.
    missed = {x for x in committed if x <= high} - seen
    assert not missed, f"committed ids read too late (mark had passed them): {sorted(missed)}"
    holes = {h.position for h in marks[0].skipped_holes(upto=high)}
    assert not holes & committed, "a committed id was recorded as a hole"
    assert holes | {x for x in committed if x <= high} == set(range(1, high + 1))
    assert high == max(committed, default=0)
    assert marks[0].filled_holes() == []
    for mark in marks:
        mark.close()
    return {"held": held, "holes": len(holes)}


def _write_for(task: tuple[str, str, str, str, int, float]) -> tuple[int, int]:
    """One writer process: (commits, rollbacks) over ``seconds``."""
    kind, dsn, schema, name, seed, seconds = task
    rng = random.Random(seed)
    end = time.monotonic() + seconds
    commits = rollbacks = 0
    if kind == "app":
        # eventsourcing's own path with db functions: one autocommit statement each.
        settings = DomainSettings.from_env(
            backend="postgres",
            postgres_dsn=dsn,
            postgres_schema=schema,
            application_name=name,
            encryption=False,
        )
        app = DbFunctionsApp(settings)
        while time.monotonic() < end:
            app.submit(workflow_message(commits), source="race")
            commits += 1
        app.close()
        return commits, rollbacks
    table = f"{name}_events"
    sequence = f"{schema}.{table}_notification_id_seq"
    with psycopg.connect(dsn) as conn:
        while time.monotonic() < end:
            rollback = rng.random() < 0.2
            with conn.transaction():
                for _ in range(rng.randint(1, 3)):
                    pick = rng.random()
                    if pick < 0.45:
                        conn.execute(function_statement(schema)).fetchall()
                    elif pick < 0.93:
                        conn.execute(insert_statement(schema, table), (rng.randint(1, 3),))
                    else:
                        conn.execute("SELECT nextval(%s)", (sequence,))
                    # Mostly short, sometimes long enough to span many advance() calls.
                    time.sleep(rng.uniform(0.2, 0.4) if rng.random() < 0.02 else rng.random() / 50)
                if rollback:
                    raise psycopg.Rollback
            commits += not rollback
            rollbacks += rollback
    return commits, rollbacks


def _waits_on_advisory_lock(conn: psycopg.Connection[Any], pid: int) -> bool:
    row = conn.execute(
        "SELECT wait_event_type = 'Lock' AND wait_event = 'advisory' FROM pg_stat_activity "
        "WHERE pid = %s",
        (pid,),
    ).fetchone()
    return bool(row and row[0])


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)

"""The audit trail: append-only in the database, and tampering is detected and located."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from safereplay.recovery.database import Database, PostgresDatabase, SQLiteDatabase
from safereplay.recovery.security.anchors import DirectoryAnchorSink
from safereplay.recovery.security.audit import (
    AuditKey,
    AuditKeyError,
    AuditRecord,
    AuditTrail,
    AuditTrailUnavailable,
    entry_hash,
)
from safereplay.recovery.security.audit_verify import NO_ANCHOR, Anchoring, verify_audit


def record(n: int, **extra: Any) -> AuditRecord:
    values: dict[str, Any] = {
        "actor": "alice" if n % 2 else "bob",
        "action": "rebuild" if n % 3 else "swap",
        "scope": "projection:run_status",
        "reason": f"incident INC-{n}",
        "outcome": "succeeded",
        "parameters": {"partitions": 4, "batch_size": 500},
        "job_id": uuid.UUID(int=n),
    }
    values.update(extra)
    return AuditRecord(**values)


class AuditTrailContract:
    """Both backends; subclasses give a trail and a way to tamper behind its back."""

    @pytest.fixture
    def trail(self) -> Iterator[AuditTrail]:
        raise NotImplementedError

    def tamper(self, statement: str, params: tuple[Any, ...] = ()) -> None:
        """Run SQL with the append-only guards bypassed, as a database owner could."""
        raise NotImplementedError

    def fill(self, trail: AuditTrail, n: int = 6) -> None:
        for i in range(1, n + 1):
            trail.append(record(i))

    def test_an_untouched_trail_verifies(self, trail: AuditTrail) -> None:
        assert trail.verify().ok
        self.fill(trail)
        report = trail.verify()
        assert report.ok
        assert report.entries_checked == 6
        assert "6 entries" in str(report)

    def test_entries_are_listed_with_filters(self, trail: AuditTrail) -> None:
        self.fill(trail)
        assert [e.seq for e in trail.entries(actor="alice")] == [1, 3, 5]
        assert [e.seq for e in trail.entries(action="swap")] == [3, 6]
        assert [e.seq for e in trail.entries(job_id=uuid.UUID(int=4))] == [4]
        assert len(trail.entries(limit=2)) == 2

    def test_secrets_never_enter_an_entry(self, trail: AuditTrail) -> None:
        entry = trail.append(
            record(
                1,
                parameters={
                    "api_token": "sk-live-123",
                    "dsn": "postgresql://u:pw@h/db",
                    "key_id": "k2",
                    "nested": {"password": "hunter2"},
                },
            )
        )
        stored = trail.entries()[0]
        assert stored.parameters == entry.parameters
        text = repr(stored)
        for secret in ("sk-live-123", "pw@h", "hunter2"):
            assert secret not in text
        assert stored.parameters["key_id"] == "k2"

    def test_the_database_refuses_updates_and_deletes(self, trail: AuditTrail) -> None:
        self.fill(trail, 2)
        for template in (
            "UPDATE {audit_entries} SET reason = 'nothing happened' WHERE seq = 1",
            "DELETE FROM {audit_entries} WHERE seq = 2",
            "DELETE FROM {audit_head}",
        ):
            with (
                pytest.raises(Exception) as refused,
                trail.database.transaction(write=True) as tx,
            ):
                tx.execute(template)
            assert trail.database.is_refused_by_database(refused.value)
        assert trail.verify().ok

    def test_a_modified_entry_is_named(self, trail: AuditTrail) -> None:
        self.fill(trail)
        self.tamper("UPDATE {audit_entries} SET reason = 'routine' WHERE seq = 4")
        report = trail.verify()
        assert not report.ok
        assert report.first_bad_seq == 4
        assert "modified" in report.problem

    def test_a_deleted_entry_is_named(self, trail: AuditTrail) -> None:
        self.fill(trail)
        self.tamper("DELETE FROM {audit_entries} WHERE seq = 3")
        report = trail.verify()
        assert (report.ok, report.first_bad_seq) == (False, 3)
        assert "deleted" in report.problem

    def test_deleted_trailing_entries_are_detected(self, trail: AuditTrail) -> None:
        self.fill(trail)
        self.tamper("DELETE FROM {audit_entries} WHERE seq >= 5")
        report = trail.verify()
        assert (report.ok, report.first_bad_seq) == (False, 5)

    def test_an_inserted_entry_is_named(self, trail: AuditTrail) -> None:
        self.fill(trail)
        # Shift entries 4.. up by one and slip a forged entry in at 4, recomputing
        # its hash (the forger knows the algorithm but not the MAC key).
        self.tamper("UPDATE {audit_entries} SET seq = seq + 100 WHERE seq >= 4")
        self.tamper("UPDATE {audit_entries} SET seq = seq - 99 WHERE seq >= 104")
        forged = trail.entries()[2]
        content = {
            **forged.content(),
            "seq": 4,
            "entry_id": str(uuid.uuid4()),
            "reason": "forged approval",
            "prev_hash": forged.hash,
        }
        self.tamper(
            "INSERT INTO {audit_entries} VALUES (4, %(entry_id)s, %(at)s, %(actor)s, "
            "%(action)s, %(scope)s, %(reason)s, %(outcome)s, '{{}}', NULL, %(prev_hash)s, "
            "%(hash)s, %(mac)s)",
            {
                **content,
                "hash": entry_hash({**content, "parameters": {}, "job_id": None}),
                "mac": "0" * 64,
            },
        )
        report = trail.verify()
        assert (report.ok, report.first_bad_seq) == (False, 4)

    def test_reordered_entries_are_named(self, trail: AuditTrail) -> None:
        self.fill(trail)
        self.tamper("UPDATE {audit_entries} SET seq = 100 WHERE seq = 2")
        self.tamper("UPDATE {audit_entries} SET seq = 2 WHERE seq = 5")
        self.tamper("UPDATE {audit_entries} SET seq = 5 WHERE seq = 100")
        report = trail.verify()
        assert (report.ok, report.first_bad_seq) == (False, 2)

    def test_a_rehashed_forgery_fails_its_signature(self, trail: AuditTrail) -> None:
        self.fill(trail)
        original = trail.entries()[1]
        content = {**original.content(), "reason": "approved by the CEO"}
        self.tamper(
            "UPDATE {audit_entries} SET reason = %(reason)s, hash = %(hash)s WHERE seq = 2",
            {"reason": content["reason"], "hash": entry_hash(content)},
        )
        report = trail.verify()
        assert (report.ok, report.first_bad_seq) == (False, 2)
        assert "signature" in report.problem

    def test_a_different_key_cannot_verify(self, trail: AuditTrail) -> None:
        self.fill(trail, 2)
        other = AuditTrail(trail.database, AuditKey.generate())
        assert not other.verify().ok

    # -- anchors, and tampering that never crashes verification ---------------------------

    key: AuditKey

    def anchoring(self, trail: AuditTrail, directory: Path) -> Anchoring:
        return Anchoring(trail, DirectoryAnchorSink(directory), self.key, interval_seconds=3600)

    def test_a_cut_tail_with_an_older_head_put_back_is_seen_only_against_the_anchor(
        self, trail: AuditTrail, tmp_path: Path
    ) -> None:
        self.fill(trail, 3)
        old = trail.head()
        assert old is not None
        for i in range(4, 7):
            trail.append(record(i))
        anchoring = self.anchoring(trail, tmp_path / "anchor")
        digest = anchoring.anchor()
        assert (digest.seq, digest.entries, digest.number) == (6, 6, 1)
        assert oct((tmp_path / "anchor" / "digest-000000000001.json").stat().st_mode)[-3:] == "600"
        self.tamper("DELETE FROM {audit_entries} WHERE seq > 3")
        self.tamper(
            "UPDATE {audit_head} SET seq = %(seq)s, hash = %(hash)s, mac = %(mac)s",
            {"seq": old.seq, "hash": old.hash, "mac": old.mac},
        )
        assert trail.verify().ok, "the database alone cannot tell"
        alone = verify_audit(trail, None)
        assert alone.ok and NO_ANCHOR in str(alone)
        report = verify_audit(trail, anchoring)
        assert (report.ok, report.status, report.first_bad_seq) == (False, "rolled back", 4)
        assert "ROLLED BACK at entry 4" in str(report)

    def test_an_emptied_trail_is_seen_and_so_is_its_restart(
        self, trail: AuditTrail, tmp_path: Path
    ) -> None:
        self.fill(trail)
        anchoring = self.anchoring(trail, tmp_path / "anchor")
        anchoring.anchor()
        self.tamper("DELETE FROM {audit_entries}")
        self.tamper("DELETE FROM {audit_head}")
        assert trail.verify().ok
        report = verify_audit(trail, anchoring)
        assert (report.ok, report.status, report.first_bad_seq) == (False, "emptied", 1)
        trail.append(record(1))  # the trail restarts at 1
        report = verify_audit(trail, anchoring)
        assert (report.ok, report.status) == (False, "rolled back")

    def test_dropped_tables_are_reported_and_nothing_runs_unaudited(
        self, trail: AuditTrail
    ) -> None:
        self.fill(trail)
        self.tamper("DROP TABLE {audit_entries}")
        self.tamper("DROP TABLE {audit_head}")
        report = verify_audit(trail, None)
        assert (report.ok, report.status, report.first_bad_seq) == (False, "dropped", 1)
        with pytest.raises(AuditTrailUnavailable, match="audit tables are missing"):
            trail.append(record(7))

    def test_invalid_json_is_reported_not_raised(self, trail: AuditTrail) -> None:
        self.fill(trail)
        self.tamper(
            "UPDATE {audit_entries} SET parameters = %(bad)s WHERE seq = 3", {"bad": "{not json"}
        )
        report = trail.verify()
        assert (report.ok, report.first_bad_seq) == (False, 3)

    def test_a_row_forged_after_the_head_never_makes_an_append_collide(
        self, trail: AuditTrail
    ) -> None:
        self.fill(trail)
        forged = trail.entries()[-1]
        self.tamper(
            "INSERT INTO {audit_entries} (seq, entry_id, at, actor, action, scope, reason, "
            "outcome, parameters, job_id, prev_hash, hash, mac) VALUES (7, 'x', %(at)s, 'eve', "
            "'grant', '*', 'r', 'succeeded', %(p)s, NULL, %(prev)s, 'h', 'm')",
            {"at": forged.at, "prev": forged.hash, "p": "{}"},
        )
        assert trail.verify().first_bad_seq == 7
        assert trail.append(record(8)).seq == 8, "no UNIQUE violation"
        assert trail.append(record(9)).seq == 9
        assert trail.verify().first_bad_seq == 7, "still named"

    def test_a_deleted_head_after_a_cut_is_reported_and_appends_go_on(
        self, trail: AuditTrail
    ) -> None:
        self.fill(trail)
        self.tamper("DELETE FROM {audit_entries} WHERE seq > 4")
        self.tamper("DELETE FROM {audit_head}")
        assert trail.verify().first_bad_seq == 4
        assert trail.append(record(5)).seq == 5
        report = trail.verify()
        assert (report.ok, report.first_bad_seq) == (False, 5)
        assert "restarts the chain" in report.problem

    def test_a_wrong_key_is_refused_before_anything_is_appended(self, trail: AuditTrail) -> None:
        self.fill(trail)
        with pytest.raises(AuditKeyError, match="not the key the trail was written with"):
            AuditTrail(trail.database, AuditKey.generate()).append(record(7))
        assert len(trail.entries()) == 6
        assert trail.verify().ok

    def test_anchors_are_due_after_the_interval_only(
        self, trail: AuditTrail, tmp_path: Path
    ) -> None:
        self.fill(trail, 2)
        now = [1_000_000.0]
        anchoring = Anchoring(
            trail,
            DirectoryAnchorSink(tmp_path / "a"),
            self.key,
            interval_seconds=60,
            clock=lambda: now[0],
        )
        assert anchoring.anchor_if_due() is not None, "nothing anchored yet"
        now[0] += 59
        assert anchoring.anchor_if_due() is None
        now[0] += 1
        second = anchoring.anchor_if_due()
        assert second is not None and second.number == 2
        assert verify_audit(trail, anchoring).ok
        (tmp_path / "a" / "digest-000000000001.json").unlink()
        report = verify_audit(trail, anchoring)
        assert not report.ok and "digest 1 is missing" in report.problem


class TestSQLiteAuditTrail(AuditTrailContract):
    @pytest.fixture
    def trail(self, tmp_path: Path) -> Iterator[AuditTrail]:
        self.path = tmp_path / "recovery.db"
        database: Database = SQLiteDatabase(self.path)
        self.key = AuditKey.generate()
        trail = AuditTrail(database, self.key)
        trail.create_tables()
        yield trail
        database.close()

    def tamper(self, statement: str, params: Any = ()) -> None:
        from safereplay.recovery.database import sqlite_statement

        with sqlite3.connect(self.path) as conn:
            triggers = conn.execute(
                "SELECT name, sql FROM sqlite_master WHERE type = 'trigger'"
            ).fetchall()
            for name, _ in triggers:
                conn.execute(f'DROP TRIGGER "{name}"')
            conn.execute(sqlite_statement(statement), params)
            for _, ddl in triggers:
                with contextlib.suppress(sqlite3.OperationalError):  # its table was dropped
                    conn.execute(ddl)


class TestPostgresAuditTrail(AuditTrailContract):
    @pytest.fixture
    def trail(self, postgres_dsn: str, pg_schema: str) -> Iterator[AuditTrail]:
        self.dsn, self.schema = postgres_dsn, pg_schema
        database: Database = PostgresDatabase(postgres_dsn, schema=pg_schema)
        self.key = AuditKey.generate()
        trail = AuditTrail(database, self.key)
        trail.create_tables()
        yield trail
        database.close()

    def test_the_database_refuses_truncate_of_both_tables(self, trail: AuditTrail) -> None:
        self.fill(trail, 2)
        for template in ("TRUNCATE {audit_entries}", "TRUNCATE {audit_head}"):
            with (
                pytest.raises(psycopg.errors.RaiseException, match="append-only") as refused,
                trail.database.transaction(write=True) as tx,
            ):
                tx.execute(template)
            assert trail.database.is_refused_by_database(refused.value)
        assert len(trail.entries()) == 2
        assert trail.verify().ok

    def tamper(self, statement: str, params: Any = ()) -> None:
        from safereplay.recovery.database import postgres_statement

        with psycopg.connect(self.dsn) as conn:
            # A superuser can switch triggers off for the session: exactly the
            # attacker that verification exists for.
            conn.execute("SET session_replication_role = replica")
            conn.execute(postgres_statement(statement, self.schema), params or None)
        assert sql  # keep the import for readers looking for identifier handling

    def test_first_appenders_together_take_one_seq_each(self, trail: AuditTrail) -> None:
        """Two processes bootstrapping a new store append their first entries together:
        both read an empty head (held at a barrier until both have), and still take
        seq 1 and 2. (SQLite's write transactions are serial: no such interleaving.)"""
        both_read = threading.Barrier(2, timeout=60)

        class MeetAfterReadingTheHead(PostgresDatabase):
            @contextmanager
            def transaction(self, *, write: bool) -> Iterator[Any]:
                with super().transaction(write=write) as tx:
                    rows, met = tx.rows, []

                    def meeting_rows(template: str, *args: Any, **kwargs: Any) -> Any:
                        result = rows(template, *args, **kwargs)
                        if "FROM {audit_head}" in template and not result and not met:
                            met.append(True)  # the first read only: the re-read waits
                            both_read.wait()
                        return result

                    tx.rows = meeting_rows  # type: ignore[method-assign]
                    yield tx

        errors: list[BaseException] = []
        key = AuditKey.generate()
        fresh = AuditTrail(trail.database, key)  # the fixture's tables, still empty

        def append(n: int) -> None:
            database = MeetAfterReadingTheHead(self.dsn, schema=self.schema)
            try:
                AuditTrail(database, key).append(record(n))
            except BaseException as exc:
                errors.append(exc)
            finally:
                database.close()

        threads = [threading.Thread(target=append, args=(n,)) for n in (1, 2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not errors, errors
        assert sorted(e.seq for e in fresh.entries()) == [1, 2]
        assert fresh.verify().ok


def test_audit_key_problems_are_clear(tmp_path: Path) -> None:
    with pytest.raises(AuditKeyError, match="cannot be read"):
        AuditKey.load(tmp_path / "missing")
    short = tmp_path / "short"
    short.write_text("c2hvcnQ=")
    short.chmod(0o600)
    with pytest.raises(AuditKeyError, match="at least 32 bytes"):
        AuditKey.load(short)
    key = AuditKey.generate()
    good = tmp_path / "audit.key"
    key.save(good)
    assert oct(good.stat().st_mode & 0o777) == "0o600"
    assert AuditKey.load(good).sign("x") == key.sign("x")
    assert "hidden" in repr(key)
    good.chmod(0o644)
    with pytest.raises(AuditKeyError, match="chmod 600"):
        AuditKey.load(good)

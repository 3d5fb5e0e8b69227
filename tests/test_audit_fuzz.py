"""Verification never raises: a trail mutated at random is either untouched and intact,
or reported with the first bad entry named (Hypothesis; SQLite and PostgreSQL)."""

from __future__ import annotations

import contextlib
import sqlite3
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import require_postgres
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg import sql

from safereplay.recovery.database import (
    Database,
    PostgresDatabase,
    SQLiteDatabase,
    postgres_statement,
    sqlite_statement,
)
from safereplay.recovery.security.anchors import DirectoryAnchorSink
from safereplay.recovery.security.audit import AuditKey, AuditRecord, AuditTrail
from safereplay.recovery.security.audit_verify import Anchoring, verify_audit

KEY = AuditKey.generate()
COLUMNS = [
    "entry_id",
    "at",
    "actor",
    "action",
    "scope",
    "reason",
    "outcome",
    "parameters",
    "job_id",
    "prev_hash",
    "hash",
    "mac",
]
E, H = "{audit_entries}", "{audit_head}"
#: Any text a column can hold on both backends (PostgreSQL text refuses NUL).
TEXT = st.text(alphabet=st.characters(blacklist_characters="\x00"), max_size=8)

mutations = st.one_of(
    st.just(("none",)),
    st.tuples(st.just("change"), st.integers(1, 6), st.sampled_from(COLUMNS), TEXT),
    st.tuples(st.just("delete"), st.integers(1, 6)),
    st.tuples(st.just("swap"), st.integers(1, 6), st.integers(1, 6)),
    st.tuples(st.just("insert"), st.integers(7, 9)),
    st.tuples(st.just("json"), st.integers(1, 6)),
    st.tuples(st.just("cut"), st.integers(0, 5)),
    st.just(("no head",)),
    st.just(("old head",)),
    st.just(("empty",)),
    st.just(("drop",)),
)

#: Runs a statement template (``{audit_entries}`` slots, ``%(name)s`` parameters) as a
#: database owner, guards bypassed; returns the rows it selects.
Execute = Callable[[str, dict[str, Any]], list[tuple[Any, ...]]]


def mutate(execute: Execute, mutation: tuple[Any, ...]) -> bool:
    """Apply ``mutation``; False if it changed nothing."""
    kind = mutation[0]
    if kind == "none":
        return False
    if kind == "change":
        _, seq, column, value = mutation
        [(old,)] = execute(f"SELECT {column} FROM {E} WHERE seq = %(seq)s", {"seq": seq})
        if old == value:
            return False
        execute(f"UPDATE {E} SET {column} = %(v)s WHERE seq = %(seq)s", {"v": value, "seq": seq})
    elif kind == "delete":
        execute(f"DELETE FROM {E} WHERE seq = %(seq)s", {"seq": mutation[1]})
    elif kind == "swap":
        a, b = mutation[1], mutation[2]
        if a == b:
            return False
        execute(f"UPDATE {E} SET seq = -1 WHERE seq = %(a)s", {"a": a})
        execute(f"UPDATE {E} SET seq = %(a)s WHERE seq = %(b)s", {"a": a, "b": b})
        execute(f"UPDATE {E} SET seq = %(b)s WHERE seq = -1", {"b": b})
    elif kind == "insert":
        execute(
            f"INSERT INTO {E} SELECT %(seq)s, 'forged', at, actor, action, scope, reason, "
            f"outcome, parameters, job_id, hash, hash, mac FROM {E} WHERE seq = 6",
            {"seq": mutation[1]},
        )
    elif kind == "json":
        execute(f"UPDATE {E} SET parameters = '{{{{oops' WHERE seq = %(seq)s", {"seq": mutation[1]})
    elif kind == "cut":
        execute(f"DELETE FROM {E} WHERE seq > %(seq)s", {"seq": mutation[1]})
    elif kind == "no head":
        execute(f"DELETE FROM {H}", {})
    elif kind == "old head":
        execute(f"UPDATE {H} SET seq = 3, hash = (SELECT hash FROM {E} WHERE seq = 3)", {})
        execute(f"DELETE FROM {E} WHERE seq > 3", {})
    elif kind == "empty":
        execute(f"DELETE FROM {E}", {})
        execute(f"DELETE FROM {H}", {})
    elif kind == "drop":
        execute(f"DROP TABLE {E}", {})
        execute(f"DROP TABLE {H}", {})
    return True


class AuditFuzzContract:
    """Both backends; subclasses give a fresh database per example and owner access."""

    def fresh_database(self, directory: Path) -> contextlib.AbstractContextManager[Database]:
        raise NotImplementedError

    def as_owner(self, database: Database) -> contextlib.AbstractContextManager[Execute]:
        raise NotImplementedError

    def check(self, mutation: tuple[Any, ...]) -> None:
        with (
            tempfile.TemporaryDirectory() as directory,
            self.fresh_database(Path(directory)) as database,
        ):
            trail = AuditTrail(database, KEY)
            trail.create_tables()
            for n in range(1, 7):
                trail.append(AuditRecord("ada", "swap", "*", f"r{n}", "succeeded", {"n": n}))
            anchoring = Anchoring(
                trail, DirectoryAnchorSink(Path(directory) / "anchor"), KEY, interval_seconds=1
            )
            anchoring.anchor()
            with self.as_owner(database) as execute:
                changed = mutate(execute, mutation)
            report = verify_audit(trail, anchoring)
            if changed:
                assert not report.ok, (mutation, str(report))
                assert report.first_bad_seq is not None
                assert f"at entry {report.first_bad_seq}" in str(report)
            else:
                assert report.ok, str(report)
            with contextlib.suppress(Exception):
                trail.append(AuditRecord("ada", "audit.verify", "audit", "", "succeeded", {}))


class TestSQLiteAuditFuzz(AuditFuzzContract):
    @contextlib.contextmanager
    def fresh_database(self, directory: Path) -> Iterator[Database]:
        database = SQLiteDatabase(directory / "recovery.db")
        try:
            yield database
        finally:
            database.close()

    @contextlib.contextmanager
    def as_owner(self, database: Database) -> Iterator[Execute]:
        assert isinstance(database, SQLiteDatabase)
        with sqlite3.connect(database.path) as conn:
            for (name,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'trigger'"
            ).fetchall():
                conn.execute(f'DROP TRIGGER "{name}"')

            def execute(template: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
                return conn.execute(sqlite_statement(template), params).fetchall()

            yield execute

    @settings(max_examples=60, deadline=None)
    @given(mutation=mutations)
    def test_verification_reports_every_mutation_and_never_raises(
        self, mutation: tuple[Any, ...]
    ) -> None:
        self.check(mutation)


@pytest.mark.postgres
class TestPostgresAuditFuzz(AuditFuzzContract):
    """A schema of its own per example, dropped after it."""

    @contextlib.contextmanager
    def fresh_database(self, directory: Path) -> Iterator[Database]:
        dsn = require_postgres()
        schema = f"fuzz_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        database = PostgresDatabase(dsn, schema=schema, pool_size=1)
        try:
            yield database
        finally:
            database.close()
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(
                    sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
                )

    @contextlib.contextmanager
    def as_owner(self, database: Database) -> Iterator[Execute]:
        assert isinstance(database, PostgresDatabase)
        with psycopg.connect(require_postgres()) as conn:
            # A superuser can switch triggers off for the session: exactly the
            # attacker that verification exists for.
            conn.execute("SET session_replication_role = replica")

            def execute(template: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
                cursor = conn.execute(postgres_statement(template, database.schema), params or None)
                return cursor.fetchall() if cursor.description else []

            yield execute

    @settings(max_examples=50, deadline=None)
    @given(mutation=mutations)
    def test_verification_reports_every_mutation_and_never_raises(
        self, mutation: tuple[Any, ...]
    ) -> None:
        self.check(mutation)

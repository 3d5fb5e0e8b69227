"""Verification never raises: a trail mutated at random is either untouched and intact,
or reported with the first bad entry named (Hypothesis, SQLite)."""

from __future__ import annotations

import contextlib
import sqlite3
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from safereplay.recovery.database import SQLiteDatabase
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
E, H = "safereplay_audit_entries", "safereplay_audit_head"

mutations = st.one_of(
    st.just(("none",)),
    st.tuples(st.just("change"), st.integers(1, 6), st.sampled_from(COLUMNS), st.text(max_size=8)),
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


def mutate(path: Path, mutation: tuple[object, ...]) -> bool:
    """Apply ``mutation`` as a database owner; False if it changed nothing."""
    with sqlite3.connect(path) as conn:
        for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'trigger'"
        ).fetchall():
            conn.execute(f'DROP TRIGGER "{name}"')
        kind = mutation[0]
        if kind == "none":
            return False
        if kind == "change":
            _, seq, column, value = mutation
            old = conn.execute(f"SELECT {column} FROM {E} WHERE seq = ?", (seq,)).fetchone()[0]
            if old == value:
                return False
            conn.execute(f"UPDATE {E} SET {column} = ? WHERE seq = ?", (value, seq))
        elif kind == "delete":
            conn.execute(f"DELETE FROM {E} WHERE seq = ?", (mutation[1],))
        elif kind == "swap":
            a, b = mutation[1], mutation[2]
            if a == b:
                return False
            conn.execute(f"UPDATE {E} SET seq = -1 WHERE seq = ?", (a,))
            conn.execute(f"UPDATE {E} SET seq = ? WHERE seq = ?", (a, b))
            conn.execute(f"UPDATE {E} SET seq = ? WHERE seq = -1", (b,))
        elif kind == "insert":
            conn.execute(
                f"INSERT INTO {E} SELECT ?, 'forged', at, actor, action, scope, reason, outcome, "
                f"parameters, job_id, hash, hash, mac FROM {E} WHERE seq = 6",
                (mutation[1],),
            )
        elif kind == "json":
            conn.execute(f"UPDATE {E} SET parameters = '{{oops' WHERE seq = ?", (mutation[1],))
        elif kind == "cut":
            conn.execute(f"DELETE FROM {E} WHERE seq > ?", (mutation[1],))
        elif kind == "no head":
            conn.execute(f"DELETE FROM {H}")
        elif kind == "old head":
            conn.execute(f"UPDATE {H} SET seq = 3, hash = (SELECT hash FROM {E} WHERE seq = 3)")
            conn.execute(f"DELETE FROM {E} WHERE seq > 3")
        elif kind == "empty":
            conn.execute(f"DELETE FROM {E}")
            conn.execute(f"DELETE FROM {H}")
        elif kind == "drop":
            conn.execute(f"DROP TABLE {E}")
            conn.execute(f"DROP TABLE {H}")
    return True


@settings(max_examples=60, deadline=None)
@given(mutation=mutations)
def test_verification_reports_every_mutation_and_never_raises(mutation: tuple[object, ...]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "recovery.db"
        database = SQLiteDatabase(path)
        try:
            trail = AuditTrail(database, KEY)
            trail.create_tables()
            for n in range(1, 7):
                trail.append(AuditRecord("ada", "swap", "*", f"r{n}", "succeeded", {"n": n}))
            anchoring = Anchoring(
                trail, DirectoryAnchorSink(Path(directory) / "anchor"), KEY, interval_seconds=1
            )
            anchoring.anchor()
            changed = mutate(path, mutation)
            report = verify_audit(trail, anchoring)
            if changed:
                assert not report.ok, (mutation, str(report))
                assert report.first_bad_seq is not None
                assert f"at entry {report.first_bad_seq}" in str(report)
            else:
                assert report.ok, str(report)
            with contextlib.suppress(Exception):
                trail.append(AuditRecord("ada", "audit.verify", "audit", "", "succeeded", {}))
        finally:
            database.close()

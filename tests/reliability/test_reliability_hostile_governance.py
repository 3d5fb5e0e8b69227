"""Tampering with the governance records behind the code's back (SQLite, PostgreSQL).

**Audit rows.** Each trial builds a real audit trail through the operations
(principals, grants, tokens, a few more), then, as the database owner with the
append-only guards switched off, does one thing drawn at random: changes a column
of a random entry, deletes an entry, swaps two entries (reorders), inserts a
forged entry in the middle (the later ones shifted) or at the end. ``safereplay
audit verify`` must exit 1 naming exactly that entry; every other row is as it was
(the damage stays where it was put); no key, token or audit key shows in its output.

**Change requests.** A grant of ``admin`` waits for a second person. Before it is
approved, its stored parameters are rewritten in the database (another principal,
another role or scope), either alone or with their SHA-256 recomputed to match. The
approval must be refused naming the request, the grant must not happen (the grants
table in the database holds neither the asked-for nor the forged grant), the
request stays undecided, and no secret shows in the error.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hostile_support import leaks, select
from projection_fixtures import Log, OnPostgres, OnSQLite, PostgresBackend
from recovery_fixtures import principals_world
from typer.testing import CliRunner

from safereplay.recovery.cli.app import app
from safereplay.recovery.database import postgres_statement, sqlite_statement
from safereplay.recovery.errors import ChangeRequestConflict
from safereplay.recovery.operations.approvals import AwaitingApproval
from safereplay.recovery.operations.catalog import open_operations
from safereplay.recovery.operations.context import RecoveryContext
from safereplay.recovery.security.access import Principal
from safereplay.recovery.security.audit import AuditKey
from safereplay.recovery.settings import DEFAULT_APPROVAL_REQUIRED, RecoverySettings

COLUMNS = (
    "entry_id", "at", "actor", "action", "scope", "reason", "outcome",
    "parameters", "job_id", "prev_hash", "hash", "mac",
)  # fmt: skip
Execute = Callable[[str, dict[str, Any]], list[tuple[Any, ...]]]
E = "{audit_entries}"


@contextlib.contextmanager
def as_owner(log: Log) -> Iterator[Execute]:
    """Statements run as the database's owner, the append-only guards off."""
    if isinstance(log.backend, PostgresBackend):
        schema = log.settings.postgres_schema
        with psycopg.connect(log.backend.dsn) as conn:
            conn.execute("SET session_replication_role = replica")

            def execute(template: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
                cursor = conn.execute(postgres_statement(template, schema), params or None)
                return cursor.fetchall() if cursor.description else []

            yield execute
        return
    with sqlite3.connect(log.settings.sqlite_path) as conn:
        triggers = conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'trigger'"
        ).fetchall()
        for name, _ in triggers:
            conn.execute(f'DROP TRIGGER "{name}"')

        def execute(template: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
            return conn.execute(sqlite_statement(template), params).fetchall()

        yield execute
        for _, text in triggers:  # the guards back, as they were
            conn.execute(text)


def audit_rows(log: Log) -> dict[int, dict[str, Any]]:
    return {r["seq"]: r for r in select(log, "SELECT * FROM {audit_entries} ORDER BY seq")}


def tamper_audit(execute: Execute, rng: Any, last: int) -> tuple[str, int, set[int]]:
    """One random change; returns (what, the entry verification must name, seqs touched)."""
    kind = rng.choice(["change", "delete", "swap", "insert", "append"])
    seq = rng.randint(1, last)
    if kind == "change":
        column = rng.choice(COLUMNS)
        [(old,)] = execute(f"SELECT {column} FROM {E} WHERE seq = %(s)s", {"s": seq})
        new = rng.choice(["", "x", "{}", '{"n": 1}', "succeeded", "ada", str(old or "") + " "])
        if new == old:
            new = f"{old}!"
        execute(f"UPDATE {E} SET {column} = %(v)s WHERE seq = %(s)s", {"v": new, "s": seq})
        return f"{column} of entry {seq} changed", seq, {seq}
    if kind == "delete":
        execute(f"DELETE FROM {E} WHERE seq = %(s)s", {"s": seq})
        return f"entry {seq} deleted", seq, {seq}
    if kind == "swap":
        first, second = sorted(rng.sample(range(1, last + 1), 2))
        execute(f"UPDATE {E} SET seq = -1 WHERE seq = %(a)s", {"a": first})
        execute(f"UPDATE {E} SET seq = %(a)s WHERE seq = %(b)s", {"a": first, "b": second})
        execute(f"UPDATE {E} SET seq = %(b)s WHERE seq = -1", {"b": second})
        return f"entries {first} and {second} swapped", first, {first, second}
    if kind == "insert":
        # Entries from seq on move up by one; a forged copy of the one before goes in.
        source = max(1, seq - 1)
        for moved in range(last, seq - 1, -1):
            execute(f"UPDATE {E} SET seq = %(n)s WHERE seq = %(o)s", {"n": -moved - 1, "o": moved})
        for moved in range(last, seq - 1, -1):
            execute(
                f"UPDATE {E} SET seq = %(n)s WHERE seq = %(o)s", {"n": moved + 1, "o": -moved - 1}
            )
        forge(execute, source, seq)
        return f"entry forged at {seq}", seq, set(range(seq, last + 2))
    forge(execute, last, last + 1)
    return f"entry forged at {last + 1} (the end)", last + 1, {last + 1}


def forge(execute: Execute, source: int, seq: int) -> None:
    execute(
        f"INSERT INTO {E} (seq, entry_id, at, actor, action, scope, reason, outcome, "
        f"parameters, job_id, prev_hash, hash, mac) SELECT %(seq)s, 'forged', at, actor, "
        f"action, scope, 'forged', outcome, parameters, job_id, hash, hash, mac FROM {E} "
        f"WHERE seq = %(src)s",
        {"seq": seq, "src": source},
    )


class GovernanceContract:
    @pytest.fixture
    def world(self, backend: Any, tmp_path: Path) -> Iterator[tuple[Log, dict[str, Any], Path]]:
        with backend.fresh() as log:
            key = tmp_path / "audit.key"
            AuditKey.generate().save(key)
            context, envs = principals_world(log.settings, key)
            context.close()
            yield log, envs, key

    def test_audit_rows_tampered(self, backend: Any, trials: Any, tmp_path: Path) -> None:
        for trial in trials(default=1):
            rng = trial.random
            with backend.fresh() as log:
                key = tmp_path / f"audit-{trial.index}.key"
                AuditKey.generate().save(key)
                context, envs = principals_world(log.settings, key)
                try:
                    run = open_operations(context).run
                    admin = Principal("ada", "person")
                    for n in range(rng.randint(1, 4)):
                        run(admin, "principals.add", reason=f"r{n}", name=f"p{n}", kind="person")
                        if rng.random() < 0.3:
                            run(admin, "token.issue", reason="t", name=f"p{n}")
                finally:
                    context.close()
                before = audit_rows(log)
                last = max(before)
                with as_owner(log) as execute:
                    what, named, touched = tamper_audit(execute, rng, last)
                trial.fault()
                after = audit_rows(log)
                result = CliRunner().invoke(app, ["audit", "verify", "--json"], env=envs["admin"])
                assert result.exit_code == 1, (what, result.output)
                report = json.loads(result.stdout)
                assert report["first_bad_seq"] == named, (what, report)
                human = CliRunner().invoke(app, ["audit", "verify"], env=envs["admin"])
                assert human.exit_code == 1, (what, human.output)
                assert f"at entry {named}" in human.output, (what, human.output)
                untouched = [s for s in before if s not in touched and s <= last]
                changed = [s for s in untouched if after.get(s) != before[s]]
                assert changed == [], (what, changed)
                hidden = [envs["admin"]["SAFEREPLAY_TOKEN"], key.read_text().strip().rstrip("=")]
                assert leaks(result.output + human.output, hidden) == []
                trial.checked(len(before), losses=len(changed))

    def test_change_request_tampered(self, backend: Any, trials: Any, tmp_path: Path) -> None:
        for trial in trials(default=1):
            rng = trial.random
            with backend.fresh() as log:
                key = tmp_path / f"audit-{trial.index}.key"
                AuditKey.generate().save(key)
                setup, envs = principals_world(log.settings, key)
                setup.close()
                context = RecoveryContext(
                    domain=log.settings,
                    recovery=RecoverySettings(
                        audit_key_file=key, approval_required=DEFAULT_APPROVAL_REQUIRED
                    ),
                )
                try:
                    access = context.access
                    access.add_principal("ann", kind="person", created_by="ada")
                    access.grant("ann", "approver", "*", granted_by="ada")
                    run = open_operations(context).run
                    waiting = run(
                        Principal("ada", "person"), "grant", reason="on call",
                        name="vic", role="admin", grant_scope="*",
                    )  # fmt: skip
                    assert isinstance(waiting, AwaitingApproval)
                    request_id = waiting.change_request.request_id
                    forged = rng.choice(
                        [
                            {"name": "mallory", "role": "admin", "grant_scope": "*"},
                            {"name": "vic", "role": "admin", "grant_scope": "*", "x": 1},
                            {"name": "vic", "role": "admin", "grant_scope": "projection:*"},
                        ]
                    )
                    text = json.dumps(forged, sort_keys=True, separators=(",", ":"))
                    rehash = trial.index % 2 == 1  # the digest recomputed to match, or not
                    with as_owner(log) as execute:
                        execute(
                            "UPDATE {change_requests} SET parameters = %(p)s"
                            + (", parameters_sha256 = %(h)s" if rehash else "")
                            + " WHERE request_id = %(id)s",
                            {
                                "p": text,
                                "h": hashlib.sha256(text.encode()).hexdigest(),
                                "id": request_id,
                            },
                        )
                    trial.fault()
                    with pytest.raises(ChangeRequestConflict) as caught:
                        run(
                            Principal("ann", "person"), "requests.approve",
                            reason="looks fine", request_id=request_id,
                        )  # fmt: skip
                    message = str(caught.value)
                    assert request_id in message, message
                    assert ("signed audit entry" if rehash else "no longer match") in message
                    [stored] = select(
                        log,
                        "SELECT state FROM {change_requests} WHERE request_id = %(id)s",
                        {"id": request_id},
                    )
                    assert stored["state"] == "pending", (rehash, stored)
                    admins = select(
                        log,
                        "SELECT principal FROM {grants} WHERE role = 'admin'",
                    )
                    assert [a["principal"] for a in admins] == ["ada"], (rehash, admins)
                    hidden = [envs["admin"]["SAFEREPLAY_TOKEN"], key.read_text().strip()]
                    assert leaks(message, hidden) == []
                    trial.checked(1)
                finally:
                    context.close()


class TestSQLiteGovernance(OnSQLite, GovernanceContract):
    pass


@pytest.mark.postgres
class TestPostgresGovernance(OnPostgres, GovernanceContract):
    pass

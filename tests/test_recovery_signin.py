"""Failed sign-ins are audited — who the token claimed to be, why it failed, from
where — never with the token's secret, and a flood is aggregated per window so it
cannot fill the database. Through the command line too, where a token given as an
argument is refused without being echoed. SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher
from recovery_fixtures import bootstrap_args, bootstrapped_token
from typer.testing import CliRunner

from safereplay.recovery.cli.app import app
from safereplay.recovery.database import Database, PostgresDatabase, SQLiteDatabase
from safereplay.recovery.errors import AuthenticationFailed
from safereplay.recovery.operations.context import RecoveryContext
from safereplay.recovery.security.access import AccessControl
from safereplay.recovery.security.audit import AuditEntry, AuditKey, AuditTrail
from safereplay.recovery.security.signin import UNKNOWN_PRINCIPAL, SignInAudit
from safereplay.recovery.settings import RecoverySettings

FAST = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
ORIGIN = {"command": "keys.usage", "via": "test"}


class Clock:
    """The time the sign-in audit sees: moved by the test, never read from a machine."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def failures(trail: AuditTrail) -> list[AuditEntry]:
    return trail.entries(action="authenticate")


class SignInContract:
    database: Database

    @pytest.fixture
    def parts(self, database: Database) -> tuple[AccessControl, AuditTrail, Clock, SignInAudit]:
        access = AccessControl(database, hasher=FAST)
        access.create_tables()
        trail = AuditTrail(database, AuditKey.generate())
        trail.create_tables()
        clock = Clock()
        sign_ins = SignInAudit(database, trail, audited=3, window=60.0, clock=clock)
        sign_ins.create_tables()
        return access, trail, clock, sign_ins

    def refused(self, access: AccessControl, token: str) -> AuthenticationFailed:
        with pytest.raises(AuthenticationFailed, match="not valid") as refused:
            access.authenticate(token)
        return refused.value

    def test_each_failure_is_audited_with_who_and_why_never_the_secret(
        self, parts: tuple[AccessControl, AuditTrail, Clock, SignInAudit]
    ) -> None:
        access, trail, _, sign_ins = parts
        access.add_principal("bob", kind="person", created_by="setup")
        access.add_principal("old-bot", kind="service", created_by="setup")
        token = access.issue_token("bob")
        revoked = access.issue_token("old-bot")
        access.revoke_tokens("old-bot")
        token_id, secret = token.removeprefix("sr_").split(".", 1)
        attempts = {
            "wrong-secret": f"sr_{token_id}.{'x' * 43}",
            "unknown-token": "sr_0123456789abcdef." + secret,
            "malformed-token": f"sr_{token_id}.{secret}!",
            "revoked-token": revoked,
        }
        for failure, attempt in attempts.items():
            error = self.refused(access, attempt)
            assert error.failure == failure
            assert str(error) == "the token is not valid (unknown, revoked or malformed)"
            assert sign_ins.failed(error, ORIGIN)

        entries = failures(trail)
        assert [(e.actor, e.parameters["failure"]) for e in entries] == [
            ("bob", "wrong-secret"),
            (UNKNOWN_PRINCIPAL, "unknown-token"),
            ("bob", "malformed-token"),
            ("old-bot", "revoked-token"),
        ]
        assert [e.parameters["token_id"] for e in entries] == [
            token_id,
            "0123456789abcdef",
            token_id,
            revoked.removeprefix("sr_").split(".")[0],
        ]
        for entry in entries:
            assert (entry.action, entry.scope, entry.outcome) == ("authenticate", "auth", "failed")
            assert entry.reason == f"sign-in failed: {entry.parameters['failure']}"
            assert entry.parameters["command"] == "keys.usage"
        text = repr(trail.entries())
        for credential in (secret, revoked.split(".", 1)[1], "x" * 43):
            assert credential not in text
        assert trail.verify().ok

    def test_a_flood_is_audited_up_to_the_limit_then_summed_up_once(
        self, parts: tuple[AccessControl, AuditTrail, Clock, SignInAudit]
    ) -> None:
        access, trail, clock, sign_ins = parts
        access.add_principal("bob", kind="person", created_by="setup")
        token_id = access.issue_token("bob").removeprefix("sr_").split(".")[0]
        wrong = self.refused(access, f"sr_{token_id}.{'y' * 43}")
        recorded = [sign_ins.failed(wrong, ORIGIN) for _ in range(10)]
        # Random tokens all count as one claimed principal: no counter per token.
        for n in range(5):
            unknown = self.refused(access, f"sr_{n:016x}.{'z' * 43}")
            recorded.append(sign_ins.failed(unknown, ORIGIN))
        assert recorded == [True] * 3 + [False] * 7 + [True] * 3 + [False] * 2
        assert len(failures(trail)) == 6
        assert sign_ins.flush() == 0, "the window is still open"
        with trail.database.transaction(write=False) as tx:
            assert len(tx.rows("SELECT * FROM {auth_failures}")) == 2

        clock.now += 60.0  # the next window
        assert sign_ins.flush() == 2
        assert sign_ins.flush() == 0, "each window is summed up once"
        summed = failures(trail)[6:]
        assert [(e.actor, e.parameters["more_failures"]) for e in summed] == [
            (UNKNOWN_PRINCIPAL, 2),
            ("bob", 7),
        ]
        assert "7 more failed sign-ins (wrong-secret)" in summed[1].reason
        with trail.database.transaction(write=False) as tx:
            assert tx.rows("SELECT * FROM {auth_failures}") == [], "closed windows are deleted"
        assert sign_ins.failed(wrong, ORIGIN), "a new window audits again"
        assert trail.verify().ok

    def test_a_failure_in_a_later_window_sums_up_the_earlier_one(
        self, parts: tuple[AccessControl, AuditTrail, Clock, SignInAudit]
    ) -> None:
        access, trail, clock, sign_ins = parts
        unknown = self.refused(access, "not a token")
        for _ in range(5):
            sign_ins.failed(unknown, ORIGIN)
        clock.now += 600.0
        assert sign_ins.failed(unknown, ORIGIN)
        entries = failures(trail)
        assert [e.parameters.get("more_failures") for e in entries] == [None] * 3 + [2, None]


class TestSQLiteSignIns(SignInContract):
    @pytest.fixture
    def database(self, tmp_path: Path) -> Iterator[Database]:
        database = SQLiteDatabase(tmp_path / "recovery.db")
        yield database
        database.close()


@pytest.mark.postgres
class TestPostgresSignIns(SignInContract):
    @pytest.fixture
    def database(self, postgres_dsn: str, pg_schema: str) -> Iterator[Database]:
        database = PostgresDatabase(postgres_dsn, schema=pg_schema)
        yield database
        database.close()


def test_the_limit_and_window_are_settings(tmp_path: Path, key_file: Path) -> None:
    from safereplay.domain import DomainSettings

    audit_key = tmp_path / "audit.key"
    AuditKey.generate().save(audit_key)
    context = RecoveryContext(
        domain=DomainSettings.from_env(sqlite_path=tmp_path / "e.db", key_file=key_file),
        recovery=RecoverySettings.from_env(
            audit_key_file=audit_key, auth_failures_audited=7, auth_failure_window_seconds=30
        ),
    )
    try:
        assert (context.sign_ins.audited, context.sign_ins.window) == (7, 30.0)
    finally:
        context.close()
    assert RecoverySettings().auth_failures_audited == 20
    assert RecoverySettings().auth_failure_window_seconds == 300.0


# -- through the command line (SQLite) ---------------------------------------------------------


def run(env: dict[str, str], *args: str, token: str | None = None) -> tuple[int, str]:
    full_env = dict(env)
    if token is not None:
        full_env["SAFEREPLAY_TOKEN"] = token
    result = CliRunner().invoke(app, list(args), env=full_env)
    return result.exit_code, result.output


def bootstrap(env: dict[str, str]) -> str:
    code, out = run(env, *bootstrap_args("root"))
    assert code == 0, out
    return bootstrapped_token(out)


def audited_failures(env: dict[str, str], admin: str) -> list[dict[str, Any]]:
    code, out = run(env, "audit", "list", "--json", "--action", "authenticate", token=admin)
    assert code == 0, out
    entries: list[dict[str, Any]] = json.loads(out)
    return entries


def test_every_failed_sign_in_through_the_cli_is_audited(
    sqlite_cli_env: dict[str, str], tmp_path: Path
) -> None:
    env = sqlite_cli_env
    admin = bootstrap(env)
    assert run(env, "principals", "add", "bob", "-r", "team", token=admin)[0] == 0
    bob = run(env, "token", "issue", "bob", "-r", "team", token=admin)[1].strip().splitlines()[-1]
    bob_id, bob_secret = bob.removeprefix("sr_").split(".", 1)
    token_file = tmp_path / "token"
    token_file.write_text(bob + "\n", encoding="ascii")
    token_file.chmod(0o644)

    attempts: list[tuple[dict[str, str], str | None]] = [
        (env, None),
        (env, "sr_0123456789abcdef." + "a" * 43),
        (env, "garbage"),
        (env, f"sr_{bob_id}.{'b' * 43}"),
        ({**env, "SAFEREPLAY_TOKEN_FILE": str(token_file)}, None),
    ]
    for attempt_env, token in attempts:
        code, out = run(attempt_env, "keys", "usage", token=token)
        assert code == 4, out
        assert bob_secret not in out and "a" * 43 not in out and "b" * 43 not in out
    assert run(env, "token", "revoke", "bob", "-r", "left", token=admin)[0] == 0
    assert run(env, "keys", "usage", token=bob)[0] == 4

    entries = audited_failures(env, admin)
    assert [(e["actor"], e["parameters"]["failure"]) for e in entries] == [
        (UNKNOWN_PRINCIPAL, "no-token"),
        (UNKNOWN_PRINCIPAL, "unknown-token"),
        (UNKNOWN_PRINCIPAL, "malformed-token"),
        ("bob", "wrong-secret"),
        (UNKNOWN_PRINCIPAL, "token-file"),
        ("bob", "revoked-token"),
    ]
    for entry in entries:
        parameters = entry["parameters"]
        assert (parameters["command"], parameters["via"]) == ("keys.usage", "cli")
        assert parameters["host"] and parameters["pid"]
    assert "mode 644" in entries[4]["parameters"]["message"]
    code, out = run(env, "audit", "list", "--json", token=admin)
    assert bob_secret not in out
    assert run(env, "audit", "verify", token=admin)[0] == 0


@pytest.mark.parametrize(
    "place",
    [
        ("keys", "usage", "{token}"),  # an unexpected extra argument
        ("{token}",),  # no such command
        ("keys", "{token}"),  # no such subcommand
        ("keys", "reencrypt", "-r", "x", "--batch-size", "{token}"),  # an invalid value
        ("grant", "bob", "viewer", "*", "--reason", "token {token}"),  # inside a value
        ("keys", "usage", "--token={token}"),  # an unknown option
    ],
    ids=["extra", "command", "subcommand", "value", "inside", "option"],
)
def test_a_token_on_the_command_line_is_refused_never_echoed_and_audited(
    sqlite_cli_env: dict[str, str], place: tuple[str, ...]
) -> None:
    env = sqlite_cli_env
    admin = bootstrap(env)
    token_id, secret = admin.removeprefix("sr_").split(".", 1)

    code, out = run(env, *(part.format(token=admin) for part in place), token=admin)

    assert code == 4, out
    assert "given as a command-line argument" in out
    assert secret not in out and token_id not in out and "sr_" not in out
    [entry] = audited_failures(env, admin)
    assert (entry["actor"], entry["parameters"]["failure"]) == ("root", "token-on-command-line")
    assert entry["parameters"]["token_id"] == token_id
    code, out = run(env, "audit", "list", "--json", token=admin)
    assert secret not in out

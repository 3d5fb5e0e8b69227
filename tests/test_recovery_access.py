"""Access control: least privilege, scoped roles, and tokens stored only as hashes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from safereplay.recovery.database import Database, PostgresDatabase, SQLiteDatabase
from safereplay.recovery.errors import InvalidRequest
from safereplay.recovery.security.access import (
    AccessControl,
    AccessDenied,
    AuthenticationFailed,
    Permission,
    Role,
    scope_covers,
)

# Fast hashing parameters keep the suite quick; production uses argon2-cffi's defaults.
FAST = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


class AccessControlContract:
    @pytest.fixture
    def access(self) -> Iterator[AccessControl]:
        raise NotImplementedError

    def test_nothing_is_allowed_until_granted(self, access: AccessControl) -> None:
        access.add_principal("carol", kind="person", created_by="setup")
        for permission in Permission:
            assert not access.allows("carol", permission, "projection:run_status")
        with pytest.raises(AccessDenied, match="'carol' may not operate on 'projection:x'"):
            access.require("carol", Permission.OPERATE, "projection:x")

    @pytest.mark.parametrize(
        ("role", "allowed"),
        [
            (Role.VIEWER, {Permission.VIEW}),
            (Role.OPERATOR, {Permission.VIEW, Permission.OPERATE}),
            (
                Role.ADMIN,
                {Permission.VIEW, Permission.OPERATE, Permission.ADMINISTER, Permission.APPROVE},
            ),
            (Role.KEY_CUSTODIAN, {Permission.VIEW, Permission.MANAGE_KEYS}),
            (Role.APPROVER, {Permission.VIEW, Permission.APPROVE}),
        ],
    )
    def test_each_role_allows_exactly_its_permissions(
        self, access: AccessControl, role: Role, allowed: set[Permission]
    ) -> None:
        access.add_principal("dave", kind="person", created_by="setup")
        access.grant("dave", role, "*", granted_by="setup")
        assert {p for p in Permission if access.allows("dave", p, "projection:a")} == allowed

    def test_scopes_limit_a_grant(self, access: AccessControl) -> None:
        access.add_principal("erin", kind="person", created_by="setup")
        access.grant("erin", Role.OPERATOR, "projection:run_status", granted_by="setup")
        assert access.allows("erin", Permission.OPERATE, "projection:run_status")
        assert not access.allows("erin", Permission.OPERATE, "projection:workflow_stats")
        assert access.revoke("erin", Role.OPERATOR, "projection:run_status")
        assert not access.allows("erin", Permission.OPERATE, "projection:run_status")
        assert not access.revoke("erin", Role.OPERATOR, "projection:run_status")

    def test_tokens_authenticate_and_are_stored_only_as_hashes(self, access: AccessControl) -> None:
        access.add_principal("ci-bot", kind="service", created_by="setup")
        token = access.issue_token("ci-bot")
        assert access.authenticate(token).name == "ci-bot"
        with access.database.transaction(write=False) as tx:
            stored = tx.rows("SELECT * FROM {tokens}")
        secret = token.split(".", 1)[1]
        assert secret not in repr(stored)
        assert stored[0]["secret_hash"].startswith("$argon2id$")

    @pytest.mark.parametrize(
        "mangle",
        [
            lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),
            lambda t: "sr_0000000000000000." + t.split(".", 1)[1],
            lambda t: "not a token",
            lambda t: "",
        ],
    )
    def test_wrong_tokens_fail_with_one_message(
        self, access: AccessControl, mangle: Callable[[str], str]
    ) -> None:
        access.add_principal("ci-bot", kind="service", created_by="setup")
        token = access.issue_token("ci-bot")
        with pytest.raises(AuthenticationFailed, match="not valid"):
            access.authenticate(mangle(token))

    def test_revoked_tokens_stop_working(self, access: AccessControl) -> None:
        access.add_principal("ci-bot", kind="service", created_by="setup")
        token = access.issue_token("ci-bot")
        assert access.revoke_tokens("ci-bot") == 1
        with pytest.raises(AuthenticationFailed):
            access.authenticate(token)

    def test_bad_names_roles_and_scopes_are_rejected(self, access: AccessControl) -> None:
        with pytest.raises(InvalidRequest, match="principal name"):
            access.add_principal("Robert'); DROP", kind="person", created_by="setup")
        access.add_principal("frank", kind="person", created_by="setup")
        with pytest.raises(InvalidRequest, match="already exists"):
            access.add_principal("frank", kind="person", created_by="setup")
        with pytest.raises(InvalidRequest, match="role 'god'"):
            access.grant("frank", "god", "*", granted_by="setup")
        with pytest.raises(InvalidRequest, match="scope"):
            access.grant("frank", Role.VIEWER, "projection:Bad Name", granted_by="setup")
        with pytest.raises(InvalidRequest, match="no principal"):
            access.grant("ghost", Role.VIEWER, "*", granted_by="setup")

    def test_the_system_actors_names_are_reserved(self, access: AccessControl) -> None:
        # An audit entry by `system` (an SLO breach, an automatic recovery under a flag)
        # or `safereplay` (an alert) must never be a person's.
        for name in ("system", "safereplay"):
            with pytest.raises(InvalidRequest, match=f"{name!r} is reserved"):
                access.add_principal(name, kind="person", created_by="setup")
            assert access.principal(name) is None


class TestSQLiteAccessControl(AccessControlContract):
    @pytest.fixture
    def access(self, tmp_path: Path) -> Iterator[AccessControl]:
        database: Database = SQLiteDatabase(tmp_path / "recovery.db")
        access = AccessControl(database, hasher=FAST)
        access.create_tables()
        yield access
        database.close()


class TestPostgresAccessControl(AccessControlContract):
    @pytest.fixture
    def access(self, postgres_dsn: str, pg_schema: str) -> Iterator[AccessControl]:
        database: Database = PostgresDatabase(postgres_dsn, schema=pg_schema)
        access = AccessControl(database, hasher=FAST)
        access.create_tables()
        yield access
        database.close()


@pytest.mark.parametrize(
    ("granted", "wanted", "covers"),
    [
        ("*", "keys", True),
        ("projection:*", "projection:a", True),
        ("projection:*", "keys", False),
        ("projection:a", "projection:a", True),
        ("projection:a", "projection:ab", False),
        ("keys", "projection:a", False),
    ],
)
def test_scope_matching(granted: str, wanted: str, covers: bool) -> None:
    assert scope_covers(granted, wanted) is covers

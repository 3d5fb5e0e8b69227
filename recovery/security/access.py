"""Access control: principals, roles scoped to projections, and API tokens.

Roles and what they allow::

    viewer         view        read status, jobs, parked events, audit entries
    operator       + operate   run and steer jobs: rebuild, catch-up, replay, pause,
                               resume, abort, swap, rollback, redrive, drill, worker
    admin          + administer  policies, templates, grants, principals, drop versions,
                               audit verification
    key-custodian  view + manage-keys   key ring operations only
    approver       view + approve   approve or reject change requests (four-eyes
                               approval, docs/security.md); admin holds approve too

A grant gives a role over a scope: ``projection:NAME``, ``projection:*``,
``reaction:NAME``, ``reaction:*``, ``keys`` or ``*``. Nothing is allowed until
granted (least privilege by default).

Tokens look like ``sr_<id>.<secret>``; only an Argon2id hash of the secret is
stored (argon2-cffi, the reference implementation's binding), so a database dump
yields no usable credential. The plaintext is returned once, when issued.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from safereplay.recovery.database import Database
from safereplay.recovery.errors import AccessDenied, AuthenticationFailed, InvalidRequest

__all__ = [
    "ALERTS_ACTOR",
    "RESERVED_ACTORS",
    "ROLE_PERMISSIONS",
    "SYSTEM_ACTOR",
    "TOKEN_SHAPE",
    "AccessControl",
    "AccessDenied",
    "AuthenticationFailed",
    "Grant",
    "Permission",
    "Principal",
    "Role",
    "VerifiedSecrets",
    "claimed_token_id",
    "scope_covers",
]


class Role(StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"
    KEY_CUSTODIAN = "key-custodian"
    APPROVER = "approver"


class Permission(StrEnum):
    VIEW = "view"
    OPERATE = "operate"
    ADMINISTER = "administer"
    MANAGE_KEYS = "manage-keys"
    APPROVE = "approve"


ROLE_PERMISSIONS: Mapping[Role, frozenset[Permission]] = {
    Role.VIEWER: frozenset({Permission.VIEW}),
    Role.OPERATOR: frozenset({Permission.VIEW, Permission.OPERATE}),
    Role.ADMIN: frozenset(
        {Permission.VIEW, Permission.OPERATE, Permission.ADMINISTER, Permission.APPROVE}
    ),
    Role.KEY_CUSTODIAN: frozenset({Permission.VIEW, Permission.MANAGE_KEYS}),
    Role.APPROVER: frozenset({Permission.VIEW, Permission.APPROVE}),
}

_NAME = re.compile(r"^[a-z0-9][a-z0-9._@-]{0,99}$")
_SCOPE = re.compile(
    r"^(\*|keys|audit|projection:(\*|[a-z0-9_]{1,63})|reaction:(\*|[a-z][a-z0-9_]{0,29}))$"
)
_TOKEN = re.compile(r"^sr_([0-9a-f]{16})\.([A-Za-z0-9_-]{20,100})$")
#: How every token starts, whatever follows: ``sr_``, its 16-hex-digit id, a dot.
TOKEN_SHAPE = re.compile(r"sr_([0-9a-f]{16})\.")


def scope_covers(granted: str, wanted: str) -> bool:
    """Does a grant on ``granted`` cover an operation on ``wanted``?"""
    if granted in ("*", wanted):
        return True
    if granted == "projection:*":
        return wanted.startswith("projection:")
    return granted == "reaction:*" and wanted.startswith("reaction:")


@dataclass(frozen=True)
class Principal:
    name: str
    kind: str  # "person" or "service"


@dataclass(frozen=True)
class Grant:
    principal: str
    role: Role
    scope: str
    granted_by: str


_CREATE = [
    """CREATE TABLE IF NOT EXISTS {principals} (
        name TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        created_by TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS {grants} (
        principal TEXT NOT NULL,
        role TEXT NOT NULL,
        scope TEXT NOT NULL,
        granted_by TEXT NOT NULL,
        granted_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (principal, role, scope)
    )""",
    """CREATE TABLE IF NOT EXISTS {tokens} (
        token_id TEXT PRIMARY KEY,
        principal TEXT NOT NULL,
        secret_hash TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        revoked_at DOUBLE PRECISION
    )""",
]


#: The audit trail's actor of alert rules raised and cleared.
ALERTS_ACTOR = "safereplay"
#: The audit trail's actor of what the system does by itself otherwise: SLO breaches,
#: conflicts raised by the work, automatic recovery under a flag.
SYSTEM_ACTOR = "system"
#: No principal may take these names, so an entry by them is never a person's.
RESERVED_ACTORS = frozenset({ALERTS_ACTOR, SYSTEM_ACTOR})


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise InvalidRequest(
            f"principal name {name!r} is not valid: lower-case letters, digits, '.', '_', '@' "
            "and '-', up to 100 characters"
        )
    if name in RESERVED_ACTORS:
        raise InvalidRequest(
            f"principal name {name!r} is reserved: the audit trail names the system's own "
            "actions with it"
        )
    return name


def check_scope(scope: str) -> str:
    if not _SCOPE.match(scope):
        raise InvalidRequest(
            f"scope {scope!r} is not valid: use projection:NAME, projection:*, reaction:NAME, "
            "reaction:*, keys, audit or *"
        )
    return scope


class VerifiedSecrets:
    """Token secrets this process has already checked against their stored hash.

    Argon2id is slow on purpose (tens of milliseconds a check), which is right for
    one command but not for a dashboard that calls the API every few seconds. A
    long-running server shares one of these between its requests: a secret whose
    SHA-256, with the stored hash it matched, is remembered here skips the Argon2
    check. The token's row is still read on every call, so a revoked token or a
    re-issued hash is refused at once; nothing here leaves the process's memory.
    """

    def __init__(self, *, capacity: int = 1024) -> None:
        self._capacity = capacity
        self._known: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _digest(secret: str) -> str:
        return hashlib.sha256(secret.encode()).hexdigest()

    def matches(self, token_id: str, secret: str, secret_hash: str) -> bool:
        with self._lock:
            return self._known.get((token_id, self._digest(secret))) == secret_hash

    def remember(self, token_id: str, secret: str, secret_hash: str) -> None:
        with self._lock:
            if len(self._known) >= self._capacity:
                self._known.clear()  # a bounded cache: forgetting only costs a slow check
            self._known[(token_id, self._digest(secret))] = secret_hash


class AccessControl:
    """Principals, grants and tokens in the recovery database.

    ``verified``: secrets already checked by this process (see
    :class:`VerifiedSecrets`); ``None`` (the default) checks every token in full.
    """

    def __init__(
        self,
        database: Database,
        *,
        hasher: PasswordHasher | None = None,
        verified: VerifiedSecrets | None = None,
    ) -> None:
        self.database = database
        self._hasher = hasher or PasswordHasher()
        self._verified = verified

    @staticmethod
    def schema_statements() -> list[str]:
        """The tables' DDL (templates), run by the ``recovery`` schema step."""
        return list(_CREATE)

    def create_tables(self) -> None:
        """Run the DDL directly (tools and tests); processes go through the schema
        catalog (:mod:`safereplay.recovery.migrations`)."""
        with self.database.transaction(write=True) as tx:
            for statement in self.schema_statements():
                tx.execute(statement)

    # -- principals and grants ----------------------------------------------------------

    def principals(self) -> list[Principal]:
        with self.database.transaction(write=False) as tx:
            rows = tx.rows("SELECT name, kind FROM {principals} ORDER BY name")
        return [Principal(name=r["name"], kind=r["kind"]) for r in rows]

    def principal(self, name: str) -> Principal | None:
        with self.database.transaction(write=False) as tx:
            rows = tx.rows("SELECT name, kind FROM {principals} WHERE name = %(n)s", {"n": name})
        return Principal(name=rows[0]["name"], kind=rows[0]["kind"]) if rows else None

    def add_principal(self, name: str, *, kind: str, created_by: str) -> Principal:
        check_name(name)
        if kind not in ("person", "service"):
            raise InvalidRequest(f"principal kind {kind!r} is not valid: person or service")
        try:
            with self.database.transaction(write=True) as tx:
                tx.execute(
                    "INSERT INTO {principals} (name, kind, created_by, created_at) "
                    "VALUES (%(name)s, %(kind)s, %(by)s, %(now)s)",
                    {"name": name, "kind": kind, "by": created_by, "now": tx.now()},
                )
        except Exception as exc:
            if self.database.is_unique_violation(exc):
                raise InvalidRequest(f"principal {name!r} already exists") from None
            raise
        return Principal(name=name, kind=kind)

    def grant(self, name: str, role: Role | str, scope: str, *, granted_by: str) -> Grant:
        role = self._role(role)
        check_scope(scope)
        if self.principal(name) is None:
            raise InvalidRequest(f"no principal {name!r}: create it first")
        with self.database.transaction(write=True) as tx:
            exists = tx.rows(
                "SELECT 1 AS one FROM {grants} WHERE principal = %(p)s AND role = %(r)s "
                "AND scope = %(s)s",
                {"p": name, "r": str(role), "s": scope},
            )
            if not exists:
                tx.execute(
                    "INSERT INTO {grants} (principal, role, scope, granted_by, granted_at) "
                    "VALUES (%(p)s, %(r)s, %(s)s, %(by)s, %(now)s)",
                    {"p": name, "r": str(role), "s": scope, "by": granted_by, "now": tx.now()},
                )
        return Grant(principal=name, role=role, scope=scope, granted_by=granted_by)

    def revoke(self, name: str, role: Role | str, scope: str) -> bool:
        role = self._role(role)
        with self.database.transaction(write=True) as tx:
            changed = tx.execute(
                "DELETE FROM {grants} WHERE principal = %(p)s AND role = %(r)s AND scope = %(s)s",
                {"p": name, "r": str(role), "s": scope},
            )
        return changed > 0

    def grants(self, name: str | None = None) -> list[Grant]:
        template = "SELECT principal, role, scope, granted_by FROM {grants}"
        params: dict[str, Any] = {}
        if name is not None:
            template += " WHERE principal = %(p)s"
            params["p"] = name
        template += " ORDER BY principal, role, scope"
        with self.database.transaction(write=False) as tx:
            rows = tx.rows(template, params)
        return [
            Grant(
                principal=r["principal"],
                role=Role(r["role"]),
                scope=r["scope"],
                granted_by=r["granted_by"],
            )
            for r in rows
        ]

    def allows(self, name: str, permission: Permission, scope: str) -> bool:
        return any(
            permission in ROLE_PERMISSIONS[g.role] and scope_covers(g.scope, scope)
            for g in self.grants(name)
        )

    def require(self, name: str, permission: Permission, scope: str) -> None:
        if not self.allows(name, permission, scope):
            raise AccessDenied(f"{name!r} may not {permission} on {scope!r}: no grant covers it")

    @staticmethod
    def _role(role: Role | str) -> Role:
        try:
            return Role(role)
        except ValueError:
            raise InvalidRequest(
                f"role {role!r} is not valid: {', '.join(r.value for r in Role)}"
            ) from None

    # -- tokens ---------------------------------------------------------------------------

    def issue_token(self, name: str) -> str:
        """A new token for ``name``; the plaintext is returned here and never again."""
        if self.principal(name) is None:
            raise InvalidRequest(f"no principal {name!r}: create it first")
        token_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        with self.database.transaction(write=True) as tx:
            tx.execute(
                "INSERT INTO {tokens} (token_id, principal, secret_hash, created_at) "
                "VALUES (%(id)s, %(p)s, %(h)s, %(now)s)",
                {"id": token_id, "p": name, "h": self._hasher.hash(secret), "now": tx.now()},
            )
        return f"sr_{token_id}.{secret}"

    def token_owner(self, token_id: str) -> str | None:
        """The principal a token id was issued to (revoked or not), if any."""
        with self.database.transaction(write=False) as tx:
            rows = tx.rows(
                "SELECT principal FROM {tokens} WHERE token_id = %(id)s", {"id": token_id}
            )
        return str(rows[0]["principal"]) if rows else None

    def revoke_tokens(self, name: str) -> int:
        with self.database.transaction(write=True) as tx:
            return tx.execute(
                "UPDATE {tokens} SET revoked_at = %(now)s WHERE principal = %(p)s "
                "AND revoked_at IS NULL",
                {"p": name, "now": tx.now()},
            )

    def authenticate(self, token: str) -> Principal:
        """The principal a token belongs to; one error for every way it can be wrong.

        The error's message never says which way (or quotes the token); its
        ``failure``, ``token_id`` and ``claimed`` say it for the audit trail.
        """
        message = "the token is not valid (unknown, revoked or malformed)"
        match = _TOKEN.match(token.strip())
        if not match:
            token_id = claimed_token_id(token)
            raise AuthenticationFailed(
                message,
                failure="malformed-token",
                token_id=token_id,
                claimed=self.token_owner(token_id) if token_id else None,
            )
        token_id, secret = match.groups()
        with self.database.transaction(write=False) as tx:
            rows = tx.rows(
                "SELECT t.principal, t.secret_hash, t.revoked_at, p.kind FROM {tokens} t "
                "JOIN {principals} p ON p.name = t.principal "
                "WHERE t.token_id = %(id)s",
                {"id": token_id},
            )
        if not rows:
            raise AuthenticationFailed(message, failure="unknown-token", token_id=token_id)
        row = rows[0]
        known = self._verified is not None and self._verified.matches(
            token_id, secret, row["secret_hash"]
        )
        if not known:
            try:
                self._hasher.verify(row["secret_hash"], secret)
            except (VerifyMismatchError, VerificationError, InvalidHashError):
                raise AuthenticationFailed(
                    message, failure="wrong-secret", token_id=token_id, claimed=row["principal"]
                ) from None
            if self._verified is not None:
                self._verified.remember(token_id, secret, row["secret_hash"])
        if row["revoked_at"] is not None:
            raise AuthenticationFailed(
                message, failure="revoked-token", token_id=token_id, claimed=row["principal"]
            )
        return Principal(name=row["principal"], kind=row["kind"])


def claimed_token_id(text: str) -> str | None:
    """The token id a token-shaped text claims (``sr_<16 hex>.``...), never its secret.

    Only a text that starts like a real token gives one: a malformed token could
    be anything, a pasted secret included, so nothing else of it is kept.
    """
    match = TOKEN_SHAPE.match(text.strip())
    return match.group(1) if match else None

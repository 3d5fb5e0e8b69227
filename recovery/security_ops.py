"""Operations on principals, grants, tokens, the audit trail and the key ring."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recovery.access import Permission, Role
from recovery.errors import InvalidRequest
from recovery.keys import activate_key, add_key, key_usage, reencrypt, retire_key
from recovery.operations import OperationContext, Operations

if TYPE_CHECKING:
    from recovery.context import RecoveryContext

__all__ = ["bootstrap_admin", "register_security_operations"]


def bootstrap_admin(context: RecoveryContext, name: str) -> str:
    """Create the first admin (only while there are no principals); returns its token.

    Whoever can run this can already write to the recovery database, so it adds
    no power; once any principal exists it is refused, and it is audited.
    """
    from recovery.audit import AuditRecord

    access = context.access
    if access.principals():
        raise InvalidRequest("principals already exist: ask an admin for a grant instead")
    access.add_principal(name, kind="person", created_by="bootstrap")
    access.grant(name, Role.ADMIN, "*", granted_by="bootstrap")
    access.grant(name, Role.KEY_CUSTODIAN, "*", granted_by="bootstrap")
    token = access.issue_token(name)
    context.audit.append(
        AuditRecord(
            actor=name,
            action="principals.bootstrap",
            scope="*",
            reason="first administrator",
            outcome="succeeded",
            parameters={"principal": name, "roles": ["admin", "key-custodian"]},
        )
    )
    return token


def _key_file(context: RecoveryContext) -> Path:
    path = context.domain.key_file
    if path is None:
        raise InvalidRequest(
            "key ring operations need a key file (SAFEREPLAY_KEY_FILE); a ring given in "
            "SAFEREPLAY_KEYS is managed where that variable is set"
        )
    return path


def register_security_operations(operations: Operations, context: RecoveryContext) -> None:
    access = context.access
    audit = context.audit

    def principals_list(ctx: OperationContext, p: Mapping[str, Any]) -> list[dict[str, Any]]:
        grants = access.grants()
        return [
            {
                "name": pr.name,
                "kind": pr.kind,
                "grants": [f"{g.role}@{g.scope}" for g in grants if g.principal == pr.name],
            }
            for pr in access.principals()
        ]

    def principals_add(ctx: OperationContext, p: Mapping[str, Any]) -> dict[str, str]:
        principal = access.add_principal(p["name"], kind=p["kind"], created_by=ctx.principal.name)
        return {"name": principal.name, "kind": principal.kind}

    def grant(ctx: OperationContext, p: Mapping[str, Any]) -> dict[str, str]:
        g = access.grant(p["name"], p["role"], p["grant_scope"], granted_by=ctx.principal.name)
        return {"principal": g.principal, "role": str(g.role), "scope": g.scope}

    def revoke(ctx: OperationContext, p: Mapping[str, Any]) -> dict[str, Any]:
        return {"revoked": access.revoke(p["name"], p["role"], p["grant_scope"])}

    def token_issue(ctx: OperationContext, p: Mapping[str, Any]) -> str:
        return access.issue_token(p["name"])

    def token_revoke(ctx: OperationContext, p: Mapping[str, Any]) -> dict[str, int]:
        return {"revoked": access.revoke_tokens(p["name"])}

    def audit_list(ctx: OperationContext, p: Mapping[str, Any]) -> list[dict[str, Any]]:
        entries = audit.entries(
            actor=p.get("actor"),
            scope=p.get("filter_scope"),
            job_id=p.get("job_id"),
            action=p.get("action"),
            since=p.get("since"),
            until=p.get("until"),
            limit=p.get("limit"),
        )
        return [asdict(e) for e in entries]

    def audit_verify(ctx: OperationContext, p: Mapping[str, Any]) -> Any:
        return audit.verify()

    def keys_add(ctx: OperationContext, p: Mapping[str, Any]) -> dict[str, Any]:
        ring = add_key(_key_file(context), p["key_id"], activate=bool(p.get("activate")))
        return {"key_ids": list(ring.key_ids), "active": ring.active_key_id}

    def keys_activate(ctx: OperationContext, p: Mapping[str, Any]) -> dict[str, Any]:
        ring = activate_key(_key_file(context), p["key_id"])
        return {"key_ids": list(ring.key_ids), "active": ring.active_key_id}

    def keys_usage(ctx: OperationContext, p: Mapping[str, Any]) -> dict[str, Any]:
        usage = key_usage(context.app)
        return {"by_key": dict(usage.by_key), "plaintext": usage.plaintext, "rows": usage.rows}

    def keys_reencrypt(ctx: OperationContext, p: Mapping[str, Any]) -> dict[str, Any]:
        from domain import KeyRing

        ring = KeyRing.load(_key_file(context))
        context.app.envelope_mapper.key_ring = ring
        progress = reencrypt(
            context.app,
            ring,
            batch_size=int(p.get("batch_size") or 500),
            events_per_second=p.get("events_per_second"),
        )
        return {"tables": [asdict(x) for x in progress], "active": ring.active_key_id}

    def keys_retire(ctx: OperationContext, p: Mapping[str, Any]) -> dict[str, Any]:
        ring = retire_key(_key_file(context), p["key_id"], context.app)
        return {"key_ids": list(ring.key_ids), "active": ring.active_key_id}

    admin, keys = Permission.ADMINISTER, Permission.MANAGE_KEYS
    operations.register(
        "principals.list",
        permission=Permission.VIEW,
        handler=principals_list,
        scope="*",
        summary="list principals and their grants",
    )
    operations.register(
        "principals.add",
        permission=admin,
        handler=principals_add,
        scope="*",
        summary="create a principal",
    )
    operations.register(
        "grant",
        permission=admin,
        handler=grant,
        scope=lambda p: str(p.get("grant_scope", "*")),
        summary="grant a role",
    )
    operations.register(
        "revoke",
        permission=admin,
        handler=revoke,
        scope=lambda p: str(p.get("grant_scope", "*")),
        summary="revoke a role",
    )
    operations.register(
        "token.issue",
        permission=admin,
        handler=token_issue,
        scope="*",
        summary="issue an API token (shown once)",
    )
    operations.register(
        "token.revoke",
        permission=admin,
        handler=token_revoke,
        scope="*",
        summary="revoke a principal's tokens",
    )
    operations.register(
        "audit.list",
        permission=Permission.VIEW,
        handler=audit_list,
        scope="audit",
        summary="list audit entries",
    )
    operations.register(
        "audit.verify",
        permission=admin,
        handler=audit_verify,
        scope="audit",
        summary="verify the audit chain",
        changes_state=False,
    )
    for name, handler, summary in (
        ("keys.add", keys_add, "add a key to the ring"),
        ("keys.activate", keys_activate, "make a key the one new events use"),
        ("keys.usage", keys_usage, "count stored rows per key"),
        ("keys.reencrypt", keys_reencrypt, "re-seal stored events under the active key"),
        ("keys.retire", keys_retire, "remove an unused key from the ring"),
    ):
        operations.register(
            name,
            permission=keys,
            handler=handler,
            scope="keys",
            summary=summary,
            changes_state=name != "keys.usage",
        )

"""Operations on principals, grants, tokens, the audit trail and the key ring."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import UUID

from safereplay.recovery.errors import InvalidRequest
from safereplay.recovery.jobs.conflicts import NewConflict
from safereplay.recovery.operations.dispatch import Handler, OperationContext, Operations
from safereplay.recovery.security.access import Permission, Role
from safereplay.recovery.security.audit_verify import verify_audit
from safereplay.recovery.security.keys import (
    activate_key,
    add_key,
    key_usage,
    reencrypt,
    retire_key,
)

if TYPE_CHECKING:
    from safereplay.recovery.operations.context import RecoveryContext

__all__ = ["audit_list_parameters", "bootstrap_admin", "register_security_operations"]

# (name, permission, handler, scope, summary) of one operation.
_Registration = tuple[str, Permission, Handler, str | Callable[[Mapping[str, Any]], str], str]


def bootstrap_admin(context: RecoveryContext, name: str) -> str:
    """Create the first admin (only while there are no principals); returns its token.

    Whoever can run this can already write to the recovery database, so it adds
    no power; once any principal exists it is refused, and it is audited.
    """
    from safereplay.recovery.security.audit import AuditRecord

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


def audit_list_parameters(
    *,
    actor: str | None,
    projection: str | None,
    job: UUID | None,
    action: str | None,
    since: datetime | None,
    until: datetime | None,
    limit: int | None,
) -> dict[str, Any]:
    """``audit.list``'s parameters for the filters the CLI and the API both take: a
    projection narrows to the scope ``projection:NAME``, a job to its id."""
    return {
        "actor": actor,
        "action": action,
        "limit": limit,
        "since": since,
        "until": until,
        "filter_scope": f"projection:{projection}" if projection else None,
        "job_id": job,
    }


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
        # A row rewritten so it cannot be read is listed, marked (`unreadable`), not raised.
        entries = audit.listing(
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
        report = verify_audit(audit, context.anchoring)
        if not report.ok and context.recovery.on_integrity_failure == "pause":
            # A chain that no longer verifies pauses recovery: no new job starts
            # until an operator resolves the conflict (see operations.conflicts).
            context.conflicts.raise_conflict(
                NewConflict(
                    subject="audit",
                    kind="audit",
                    reason=(
                        f"the audit trail does not verify ({report.status}, first bad entry "
                        f"{report.first_bad_seq}): {report.problem}"
                    ),
                )
            )
        return report

    def audit_anchor(ctx: OperationContext, p: Mapping[str, Any]) -> dict[str, Any]:
        if context.anchoring is None:
            raise InvalidRequest(
                "no anchor configured: set SAFEREPLAY_AUDIT_ANCHOR_DIR to a directory outside "
                "the events database"
            )
        digest = context.anchoring.anchor()
        return {**asdict(digest), "where": context.anchoring.sink.where}

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
        from safereplay.domain import KeyRing

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

    def grant_scope(p: Mapping[str, Any]) -> str:
        return str(p.get("grant_scope", "*"))

    view, admin, keys = Permission.VIEW, Permission.ADMINISTER, Permission.MANAGE_KEYS
    table: tuple[_Registration, ...] = (
        ("principals.list", view, principals_list, "*", "list principals and their grants"),
        ("principals.add", admin, principals_add, "*", "create a principal"),
        ("grant", admin, grant, grant_scope, "grant a role"),
        ("revoke", admin, revoke, grant_scope, "revoke a role"),
        ("token.issue", admin, token_issue, "*", "issue an API token (shown once)"),
        ("token.revoke", admin, token_revoke, "*", "revoke a principal's tokens"),
        ("audit.list", view, audit_list, "audit", "list audit entries"),
        ("audit.verify", admin, audit_verify, "audit", "verify the audit chain"),
        ("audit.anchor", admin, audit_anchor, "audit", "anchor the audit head outside the db"),
        ("keys.add", keys, keys_add, "keys", "add a key to the ring"),
        ("keys.activate", keys, keys_activate, "keys", "make a key the one new events use"),
        ("keys.usage", keys, keys_usage, "keys", "count stored rows per key"),
        (
            "keys.reencrypt",
            keys,
            keys_reencrypt,
            "keys",
            "re-seal stored events under the active key",
        ),
        ("keys.retire", keys, keys_retire, "keys", "remove an unused key from the ring"),
    )
    # Read-only although they need more than the view permission.
    # (Anchoring writes outside the database only, and is audited like any attempt.)
    read_only = {"audit.verify", "audit.anchor", "keys.usage"}
    for name, permission, handler, scope, summary in table:
        operations.register(
            name,
            permission=permission,
            handler=handler,
            scope=scope,
            summary=summary,
            changes_state=False if name in read_only else None,
            scope_reads=False,
        )

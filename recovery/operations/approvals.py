"""Four-eyes approval: the gate that turns a dangerous call into a change request,
and the operations that list, show, approve and reject requests.

``SAFEREPLAY_APPROVAL_REQUIRED`` names the operations that need a second person
(see :class:`~safereplay.recovery.settings.RecoverySettings`). A call matching one
of its rules, permitted and with its reason, is not run: the gate records a
:class:`~safereplay.recovery.security.approvals.ChangeRequest` (the exact
parameters, their hash, the scope, the subject's fingerprint) and the caller gets
it back (the audit entry's outcome is ``deferred``). A *different* principal with
the ``approve`` permission on the request's scope then approves it, with a reason:
the request is claimed atomically, its subject is checked unchanged, and the
stored operation runs **as the requester** (whose permission is checked again)
with ``approval`` naming the request and the approver, so its audit entries name
both. Or the approver rejects it, with a reason.

A request whose subject changed since it was asked for is *stale* and refused:
its fingerprint, recomputed at approval, differs (another build live for a swap
or rollback, another template version, another key ring, other grants).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from safereplay.domain import KeyRing
from safereplay.recovery.errors import (
    AccessDenied,
    ChangeRequestConflict,
    InvalidRequest,
)
from safereplay.recovery.operations.context import RecoveryContext
from safereplay.recovery.operations.dispatch import (
    Diverted,
    GateCall,
    OperationContext,
    Operations,
    limit_parameter,
)
from safereplay.recovery.operations.shapes import to_jsonable
from safereplay.recovery.security.access import Permission, scope_covers
from safereplay.recovery.security.approvals import (
    STATES,
    ChangeRequest,
    ChangeRequestStore,
    NewChangeRequest,
    parameters_digest,
)
from safereplay.recovery.security.audit import AuditEntry, AuditTrail
from safereplay.recovery.templates.store import TemplateStore

__all__ = ["AwaitingApproval", "approval_gate", "register_approval_operations", "waiting_for"]

Fingerprint = Callable[[Mapping[str, Any]], str]
#: A rule of SAFEREPLAY_APPROVAL_REQUIRED: operation, parameter, value.
Rule = tuple[str, str | None, str | None]


@dataclass(frozen=True)
class AwaitingApproval:
    """What a gated call returns instead of running: the change request it made, and
    a sentence saying what it waits for (the CLI prints it and exits 0; the API
    answers 202 with both)."""

    change_request: ChangeRequest
    message: str


def waiting_for(request: ChangeRequest) -> str:
    """One sentence: what the request waits for, and the commands that decide it."""
    return (
        f"{request.operation} needs a second person's approval: change request "
        f"{request.request_id} waits for a principal other than {request.requester} with the "
        f"approve permission on {request.scope} (safereplay requests approve "
        f"{request.request_id} --reason ...) until it expires"
    )


def _no_subject(parameters: Mapping[str, Any]) -> str:
    """The fingerprint of an operation whose subject is not tracked: never stale."""
    return ""


def _matches(rule: Rule, call: GateCall) -> bool:
    operation, name, value = rule
    if operation != call.operation:
        return False
    if name is None:
        return True
    given = call.parameters.get(name)
    if value is None:
        return bool(given)
    return str(given).lower() == value.lower() if given is not None else False


def _fingerprints(context: RecoveryContext) -> dict[str, Fingerprint]:
    """What each gated operation acts on, as text: a change makes a request stale."""

    def builds(p: Mapping[str, Any]) -> str:
        name = str(p.get("projection"))
        live = context.projection_store.live_build(name)
        newest = max((b.build for b in context.projection_store.builds(name)), default=None)
        return f"projection {name}: live build {live}, newest build {newest}"

    def template(p: Mapping[str, Any]) -> str:
        name = str(p.get("template"))
        latest = TemplateStore(context.database).latest(name)
        return f"template {name}: version {latest.version if latest else 0}"

    def key_ring(p: Mapping[str, Any]) -> str:
        path = context.domain.key_file
        if path is None:
            return "no key file"
        ring = KeyRing.load(path)
        return f"key ring {sorted(ring.key_ids)}, active {ring.active_key_id}"

    def grants(p: Mapping[str, Any]) -> str:
        held = sorted(f"{g.role}@{g.scope}" for g in context.access.grants(str(p.get("name"))))
        return f"principal {p.get('name')}: grants {held}"

    return {
        "swap": builds,
        "rollback": builds,
        "replay": builds,
        "drop-version": builds,
        "templates.add": template,
        "templates.update": template,
        "keys.retire": key_ring,
        "keys.activate": key_ring,
        "grant": grants,
        "revoke": grants,
    }


def approval_gate(
    operations: Operations,
    context: RecoveryContext,
    store: ChangeRequestStore,
    fingerprints: Mapping[str, Fingerprint],
) -> Callable[[GateCall], None]:
    """The gate diverting calls that ``SAFEREPLAY_APPROVAL_REQUIRED`` names."""
    rules = context.recovery.approval_rules()
    unknown = sorted({r[0] for r in rules} - set(operations.specs))
    if unknown:
        raise InvalidRequest(
            f"SAFEREPLAY_APPROVAL_REQUIRED names unknown operations {', '.join(unknown)}; "
            f"known: {', '.join(sorted(operations.specs))}"
        )
    ttl = context.recovery.approval_ttl_seconds()
    if ttl <= 0:
        raise InvalidRequest("SAFEREPLAY_APPROVAL_TTL must be more than 0 seconds")

    def gate(call: GateCall) -> None:
        if call.approval is not None or not any(_matches(r, call) for r in rules):
            return
        fingerprint = fingerprints.get(call.operation, _no_subject)(call.parameters)
        context.ensure_schema()
        request = store.create(
            NewChangeRequest(
                operation=call.operation,
                parameters=call.parameters,
                scope=call.scope,
                requester=call.principal.name,
                reason=call.reason,
                fingerprint=fingerprint,
                ttl_seconds=ttl,
            )
        )
        raise Diverted(
            AwaitingApproval(request, waiting_for(request)),
            {
                "change_request": request.request_id,
                "parameters_sha256": request.parameters_sha256,
            },
        )

    return gate


def register_approval_operations(operations: Operations, context: RecoveryContext) -> None:
    """``requests.list|show|approve|reject``, and the gate (registered last, so every
    operation it may name is known: see :data:`~.catalog.REGISTRARS`)."""
    store = ChangeRequestStore(context.database)
    fingerprints = _fingerprints(context)
    operations.add_gate(approval_gate(operations, context, store, fingerprints))

    def request_scope(p: Mapping[str, Any]) -> str:
        return store.get(_request_id(p)).scope

    def listed(ctx: OperationContext, p: Mapping[str, Any]) -> list[ChangeRequest]:
        state = p.get("state")
        if state is not None and state not in STATES:
            raise InvalidRequest(f"state {state!r} is not valid: {', '.join(STATES)}")
        store.expire_due()
        limit = limit_parameter(p, most=10_000)
        within = str(p.get("filter_scope") or "*")  # checked on projection:* (see below)
        return [
            r
            for r in store.list(state=state, limit=limit)
            if scope_covers(within, r.scope)
            and context.access.allows(ctx.principal.name, Permission.VIEW, r.scope)
        ]

    def show(ctx: OperationContext, p: Mapping[str, Any]) -> ChangeRequest:
        store.expire_due()
        return store.get(_request_id(p))

    def approve(ctx: OperationContext, p: Mapping[str, Any]) -> ChangeRequest:
        store.expire_due()
        request = store.get(_request_id(p))
        if request.requester == ctx.principal.name:
            raise AccessDenied(
                f"{ctx.principal.name!r} asked for change request {request.request_id}: "
                "another principal must approve it (no self-approval)"
            )
        if not request.intact:
            raise ChangeRequestConflict(
                f"change request {request.request_id}: its parameters no longer match their "
                "hash; it cannot be approved"
            )
        if not _recorded_as_stored(context.audit, request):
            raise ChangeRequestConflict(
                f"change request {request.request_id}: its stored operation, requester, "
                "reason or parameters differ from the signed audit entry that recorded it "
                "(changed in the database); it cannot be approved"
            )
        if request.state == "pending":
            now = fingerprints.get(request.operation, _no_subject)(request.parameters)
            if now != request.fingerprint:
                raise ChangeRequestConflict(
                    f"change request {request.request_id} is stale: its subject changed since "
                    f"it was asked for (then: {request.fingerprint}; now: {now}); ask again"
                )
        requester = context.access.principal(request.requester)
        if requester is None:
            raise ChangeRequestConflict(
                f"change request {request.request_id}: its requester {request.requester!r} "
                "no longer exists"
            )
        decided = store.decide(
            request.request_id, state="approved", by=ctx.principal.name, reason=ctx.reason
        )
        try:
            result = operations.run(
                requester,
                decided.operation,
                reason=decided.reason,
                approval={
                    "request": decided.request_id,
                    "approved_by": ctx.principal.name,
                    "approval_reason": ctx.reason,
                },
                **decided.parameters,
            )
        except Exception as exc:
            return store.finish(decided.request_id, error=f"{type(exc).__name__}: {exc}")
        return store.finish(decided.request_id, outcome=to_jsonable(result))

    def reject(ctx: OperationContext, p: Mapping[str, Any]) -> ChangeRequest:
        return store.decide(
            _request_id(p), state="rejected", by=ctx.principal.name, reason=ctx.reason
        )

    view, approve_permission = Permission.VIEW, Permission.APPROVE
    table: tuple[tuple[str, Permission, Any, Any, str], ...] = (
        (
            "requests.list",
            view,
            listed,
            _list_scope,
            "change requests waiting for (or given) a second person's approval",
        ),
        ("requests.show", view, show, request_scope, "one change request"),
        (
            "requests.approve",
            approve_permission,
            approve,
            request_scope,
            "approve a change request: its operation runs as the requester",
        ),
        ("requests.reject", approve_permission, reject, request_scope, "reject a change request"),
    )
    for name, permission, handler, scope, summary in table:
        operations.register(
            name,
            permission=permission,
            handler=handler,
            scope=scope,
            summary=summary,
            scope_reads=name != "requests.list",
            # Polled by the dashboard's Requests tab: its successes are not audited.
            monitoring=name == "requests.list",
        )


def _recorded_as_stored(audit: AuditTrail, request: ChangeRequest) -> bool:
    """Is the request as stored the one its signed ``deferred`` audit entry recorded?

    The digest beside the parameters in the table proves nothing against a writer
    of the table (who recomputes it too); the audit entry is signed with the audit
    key, which the database does not hold. Unreadable entries are skipped: they are
    :meth:`~AuditTrail.verify`'s to report, and cannot be this request's record.
    """
    for entry in audit.listing(action=request.operation, actor=request.requester):
        if (
            isinstance(entry, AuditEntry)
            and entry.outcome == "deferred"
            and entry.parameters.get("change_request") == request.request_id
        ):
            return (
                audit.authentic(entry)
                and entry.parameters.get("parameters_sha256")
                == parameters_digest(request.parameters)
                and (entry.scope, entry.reason) == (request.scope, request.reason)
            )
    return False


def _list_scope(parameters: Mapping[str, Any]) -> str:
    """The scope ``requests.list`` is checked on: the one it lists within, or by default
    ``projection:*`` (where most requests are; those it lists are still only the ones
    the caller may view: a grant on ``keys`` alone lists with ``filter_scope=keys``)."""
    return str(parameters.get("filter_scope") or "projection:*")


def _request_id(p: Mapping[str, Any]) -> str:
    request_id = p.get("request_id")
    if not isinstance(request_id, str) or not request_id.strip():
        raise InvalidRequest("this operation needs a change request's id")
    return request_id

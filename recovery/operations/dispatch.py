"""One entry point per operation, through one dispatch layer.

Every recovery operation (rebuild, swap, pause, redrive, grant, key rotation...)
is registered here with the permission it needs and how its scope is derived
from its parameters. :meth:`Operations.run` is the only way to call one: it
checks the caller's permission *before* the handler runs, and appends an audit
entry for every attempt — denied, failed or succeeded — so no operation can
bypass access control or the audit trail.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from safereplay.recovery.errors import InvalidRequest
from safereplay.recovery.security.access import AccessControl, AccessDenied, Permission, Principal
from safereplay.recovery.security.audit import AuditRecord, AuditTrail

__all__ = ["OperationContext", "OperationSpec", "Operations", "int_parameter"]


@dataclass(frozen=True)
class OperationContext:
    """What a handler gets besides its parameters: who asked, and why."""

    principal: Principal
    reason: str
    operation: str


Handler = Callable[[OperationContext, Mapping[str, Any]], Any]
#: Read-only work done before the permission check, whose result joins the
#: parameters (and so the audit entry of every attempt, denied ones included).
Preparer = Callable[[Mapping[str, Any]], Mapping[str, Any]]


@dataclass(frozen=True)
class OperationSpec:
    name: str
    permission: Permission
    scope_of: Callable[[Mapping[str, Any]], str]
    handler: Handler
    summary: str = ""
    changes_state: bool = True
    prepare: Preparer | None = None
    #: Runs until stopped (a worker, a follower): audited when it starts, as well
    #: as when it ends, so the trail shows what is running now.
    long_running: bool = False

    @property
    def needs_reason(self) -> bool:
        """Reading needs no reason; anything that changes state does."""
        return self.changes_state


def int_parameter(
    parameters: Mapping[str, Any], name: str, default: int | None = None
) -> int | None:
    """An optional whole-number parameter (an int, or its text from the CLI)."""
    value = parameters.get(name, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InvalidRequest(f"{name} must be a whole number, not {value!r}")
    try:
        return int(value)
    except ValueError:
        raise InvalidRequest(f"{name} must be a whole number, not {value!r}") from None


def projection_scope(parameters: Mapping[str, Any]) -> str:
    projection = parameters.get("projection")
    if not isinstance(projection, str) or not projection:
        raise InvalidRequest("this operation needs a projection name")
    return f"projection:{projection}"


class Operations:
    """The registry and dispatcher of every operation."""

    def __init__(self, *, access: AccessControl, audit: AuditTrail) -> None:
        self.access = access
        self.audit = audit
        self._specs: dict[str, OperationSpec] = {}

    def register(
        self,
        name: str,
        *,
        permission: Permission,
        handler: Handler,
        scope: str | Callable[[Mapping[str, Any]], str] = projection_scope,
        summary: str = "",
        changes_state: bool | None = None,
        prepare: Preparer | None = None,
        long_running: bool = False,
    ) -> None:
        """Register an operation; ``changes_state`` defaults to "needs more than view".

        ``prepare`` (optional) derives more parameters from the given ones before
        the permission check: it must only read (a template's diff, say).
        ``long_running`` operations get an audit entry when they start, too.
        """
        if name in self._specs:
            raise ValueError(f"operation {name!r} is registered twice")
        scope_of = scope if callable(scope) else (lambda _params, fixed=scope: fixed)
        if changes_state is None:
            changes_state = permission != Permission.VIEW
        self._specs[name] = OperationSpec(
            name, permission, scope_of, handler, summary, changes_state, prepare, long_running
        )

    @property
    def specs(self) -> Mapping[str, OperationSpec]:
        return dict(self._specs)

    def run(
        self,
        principal: Principal,
        operation: str,
        /,
        *,
        reason: str = "",
        **parameters: Any,
    ) -> Any:
        spec = self._specs.get(operation)
        if spec is None:
            raise InvalidRequest(
                f"unknown operation {operation!r}; known: {', '.join(sorted(self._specs))}"
            )
        unprepared: InvalidRequest | None = None
        if spec.prepare is not None:
            try:
                parameters = {**parameters, **spec.prepare(parameters)}
            except InvalidRequest as exc:
                unprepared = exc  # said after the permission check: a denial comes first
        scope = spec.scope_of(parameters)
        record: dict[str, Any] = {
            "actor": principal.name,
            "action": operation,
            "scope": scope,
            "reason": reason,
            "parameters": parameters,
            "job_id": _job_id_of(parameters),
        }
        if not self.access.allows(principal.name, spec.permission, scope):
            self.audit.append(AuditRecord(**record, outcome="denied"))
            raise AccessDenied(
                f"{principal.name!r} may not {operation} on {scope!r}: it needs the "
                f"{spec.permission} permission there (ask an admin for a grant)"
            )
        if spec.needs_reason and not reason.strip():
            self.audit.append(AuditRecord(**{**record, "reason": "(none given)"}, outcome="failed"))
            raise InvalidRequest(f"{operation} changes state: give a reason (--reason)")
        if unprepared is not None:
            failed = {**parameters, "error": f"{type(unprepared).__name__}: {unprepared}"}
            self.audit.append(AuditRecord(**{**record, "parameters": failed}, outcome="failed"))
            raise unprepared
        context = OperationContext(principal=principal, reason=reason, operation=operation)
        if spec.long_running:
            self.audit.append(AuditRecord(**record, outcome="started"))
        try:
            result = spec.handler(context, parameters)
        except Exception as exc:
            self.audit.append(
                AuditRecord(
                    **{
                        **record,
                        "parameters": {**parameters, "error": f"{type(exc).__name__}: {exc}"},
                    },
                    outcome="failed",
                )
            )
            raise
        self.audit.append(
            AuditRecord(
                **{**record, "job_id": record["job_id"] or _job_id_of(result)},
                outcome="succeeded",
            )
        )
        return result


def _job_id_of(value: Any) -> UUID | None:
    if isinstance(value, Mapping):
        candidate = value.get("job_id")
    else:
        candidate = getattr(value, "job_id", None)
        if candidate is None and hasattr(value, "job"):
            candidate = getattr(value.job, "job_id", None)
    if isinstance(candidate, UUID):
        return candidate
    if isinstance(candidate, str):
        try:
            return UUID(candidate)
        except ValueError:
            return None
    return None

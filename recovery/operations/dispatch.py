"""One entry point per operation, through one dispatch layer.

Every recovery operation (rebuild, swap, pause, redrive, grant, key rotation...)
is registered here with the permission it needs and how its scope is derived
from its parameters. :meth:`Operations.run` is the only way to call one: it
checks the caller's permission *before* the handler runs, and appends an audit
entry for every attempt — denied, failed or succeeded — so no operation can
bypass access control or the audit trail. (The one exception: a successful
*monitoring* read — status, positions, job progress, metrics, alerts, polled
by dashboards and scrapers — is not audited; its denials and failures are.)

The check comes first in two steps. A principal holding the operation's
permission on no scope at all is refused before anything else: before its scope
is derived (which may read a job or resolve a template) and before ``prepare``.
Only then is the scope derived and checked exactly.

An operation that changes state gets an *intent* entry (outcome ``started``)
before its handler runs, and its outcome entry (naming the intent's ``seq`` in
``intent_seq``) after. Handlers commit through their stores' own connections,
so the outcome cannot share their transaction; a crash between the change and
the outcome entry leaves the intent, whose outcome is then unknown — never a
change without any entry (docs/security.md).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from uuid import UUID

from safereplay.recovery.errors import InvalidRequest, RecoveryError
from safereplay.recovery.security.access import (
    ROLE_PERMISSIONS,
    AccessControl,
    AccessDenied,
    Permission,
    Principal,
)
from safereplay.recovery.security.audit import AuditEntry, AuditRecord, AuditTrail

_log = logging.getLogger(__name__)
#: The scope recorded when a denial comes before the scope is derived.
_NOT_DERIVED = "(not derived: no grant with the permission)"

__all__ = [
    "Diverted",
    "Gate",
    "GateCall",
    "OperationContext",
    "OperationSpec",
    "Operations",
    "int_parameter",
    "limit_parameter",
]


class AnchorsWhenDue(Protocol):
    """Anchors the audit trail's head outside the database when an interval has passed."""

    def anchor_if_due(self) -> object: ...


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
    #: Deriving the scope reads the database (a job, a template): not done for a
    #: principal without the permission anywhere.
    scope_reads: bool = True
    #: A routine monitoring read (status, positions, job progress, metrics, alerts),
    #: polled by dashboards and scrapers every few seconds: its denials and failures
    #: are audited, its successes are not (they would bury every other entry).
    monitoring: bool = False

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


def limit_parameter(parameters: Mapping[str, Any], *, most: int, default: int = 100) -> int:
    """The ``limit`` parameter (``default`` if not given), refused unless 1 to ``most``."""
    limit = int_parameter(parameters, "limit", default)
    assert limit is not None  # the default is a number
    if not 1 <= limit <= most:
        raise InvalidRequest(f"limit must be between 1 and {most}, not {limit}")
    return limit


@dataclass(frozen=True)
class GateCall:
    """What a gate sees of one call: who asks, which operation, where, why, with what.

    ``approval``: set when the call runs an approved change request (who approved
    it, which request): a gate that asks for approvals lets it through.
    """

    principal: Principal
    operation: str
    spec: OperationSpec
    scope: str
    reason: str
    parameters: Mapping[str, Any]
    approval: Mapping[str, Any] | None = None


#: Consulted for every call after its permission and reason checks, before its
#: intent entry: returns to let it run, raises to refuse it (a RecoveryError: the
#: attempt is audited as denied, naming the error), or raises :class:`Diverted`
#: when it takes the call another way (a change request waiting for approval).
Gate = Callable[[GateCall], None]


class Diverted(Exception):
    """A gate took the call another way: ``result`` is what the caller gets, ``note``
    joins the audit entry's parameters (outcome ``deferred``)."""

    def __init__(self, result: Any, note: Mapping[str, Any]) -> None:
        super().__init__("diverted")
        self.result = result
        self.note = dict(note)


def projection_scope(parameters: Mapping[str, Any]) -> str:
    projection = parameters.get("projection")
    if not isinstance(projection, str) or not projection:
        raise InvalidRequest("this operation needs a projection name")
    return f"projection:{projection}"


class Operations:
    """The registry and dispatcher of every operation."""

    def __init__(
        self,
        *,
        access: AccessControl,
        audit: AuditTrail,
        anchoring: AnchorsWhenDue | None = None,
    ) -> None:
        self.access = access
        self.audit = audit
        self.anchoring = anchoring
        self._specs: dict[str, OperationSpec] = {}
        self._gates: list[Gate] = []

    def add_gate(self, gate: Gate) -> None:
        """Consult ``gate`` for every call from now on, after those added before it
        (see :data:`Gate`)."""
        self._gates.append(gate)

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
        scope_reads: bool | None = None,
        monitoring: bool = False,
    ) -> None:
        """Register an operation; ``changes_state`` defaults to "needs more than view".

        ``prepare`` (optional) derives more parameters from the given ones before
        the permission check: it must only read (a template's diff, say).
        ``long_running`` operations get an audit entry when they start, too.
        ``scope_reads``: does ``scope`` read the database? (By default: a fixed scope
        or the projection parameter's does not, any other function may.)
        ``monitoring``: a routine read whose successes are not audited (see
        :attr:`OperationSpec.monitoring`); only for operations that change nothing.
        """
        if monitoring and permission != Permission.VIEW:
            raise ValueError(f"operation {name!r}: only a view operation can be monitoring")
        if name in self._specs:
            raise ValueError(f"operation {name!r} is registered twice")
        scope_of = scope if callable(scope) else (lambda _params, fixed=scope: fixed)
        if changes_state is None:
            changes_state = permission != Permission.VIEW
        if scope_reads is None:
            scope_reads = callable(scope) and scope is not projection_scope
        self._specs[name] = OperationSpec(
            name,
            permission,
            scope_of,
            handler,
            summary,
            changes_state,
            prepare,
            long_running,
            scope_reads,
            monitoring,
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
        approval: Mapping[str, Any] | None = None,
        **parameters: Any,
    ) -> Any:
        """Run ``operation`` for ``principal`` (see the module's docstring).

        ``approval``: this call runs an approved change request (who approved it and
        which request); it is recorded in the audit entries' parameters.
        """
        spec = self._specs.get(operation)
        if spec is None:
            raise InvalidRequest(
                f"unknown operation {operation!r}; known: {', '.join(sorted(self._specs))}"
            )
        if not self.may_hold(principal, spec.permission):
            # Nothing is read, resolved or prepared for a principal who may do this nowhere.
            scope = _NOT_DERIVED
            if not spec.scope_reads:
                with contextlib.suppress(InvalidRequest):
                    scope = spec.scope_of(parameters)
            self._append(
                AuditRecord(
                    actor=principal.name,
                    action=operation,
                    scope=scope,
                    reason=reason,
                    parameters=parameters,
                    job_id=_job_id_of(parameters),
                    outcome="denied",
                )
            )
            where = "any scope" if scope == _NOT_DERIVED else repr(scope)
            raise AccessDenied(
                f"{principal.name!r} may not {operation} on {where}: it holds no grant with "
                f"the {spec.permission} permission (ask an admin for a grant)"
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
            self._append(AuditRecord(**record, outcome="denied"))
            raise AccessDenied(
                f"{principal.name!r} may not {operation} on {scope!r}: it needs the "
                f"{spec.permission} permission there (ask an admin for a grant)"
            )
        if spec.needs_reason and not reason.strip():
            self._append(AuditRecord(**{**record, "reason": "(none given)"}, outcome="failed"))
            raise InvalidRequest(f"{operation} changes state: give a reason (--reason)")
        if unprepared is not None:
            failed = {**parameters, "error": f"{type(unprepared).__name__}: {unprepared}"}
            self._append(AuditRecord(**{**record, "parameters": failed}, outcome="failed"))
            raise unprepared
        if approval is not None:
            record["parameters"] = {**parameters, "approval": dict(approval)}
        call = GateCall(principal, operation, spec, scope, reason, parameters, approval)
        for gate in self._gates:
            try:
                gate(call)
            except Diverted as diverted:
                noted = {**record["parameters"], **diverted.note}
                self._append(AuditRecord(**{**record, "parameters": noted}, outcome="deferred"))
                return diverted.result
            except RecoveryError as exc:
                refused = {**record["parameters"], "error": f"{type(exc).__name__}: {exc}"}
                self._append(AuditRecord(**{**record, "parameters": refused}, outcome="denied"))
                raise
        context = OperationContext(principal=principal, reason=reason, operation=operation)
        outcome_parameters = dict(record["parameters"])
        if spec.long_running or spec.changes_state:
            intent = self.audit.append(AuditRecord(**record, outcome="started"))
            outcome_parameters["intent_seq"] = intent.seq
        try:
            result = spec.handler(context, parameters)
        except Exception as exc:
            self._append(
                AuditRecord(
                    **{
                        **record,
                        "parameters": {
                            **outcome_parameters,
                            "error": f"{type(exc).__name__}: {exc}",
                        },
                    },
                    outcome="failed",
                )
            )
            raise
        if spec.monitoring:
            return result
        self._append(
            AuditRecord(
                **{
                    **record,
                    "parameters": outcome_parameters,
                    "job_id": record["job_id"] or _job_id_of(result),
                },
                outcome="succeeded",
            )
        )
        return result

    def require_any(
        self,
        principal: Principal,
        action: str,
        operations: Sequence[str],
        *,
        reason: str,
        parameters: Mapping[str, Any],
    ) -> None:
        """Refuse (and audit) ``action`` — a command made of ``operations``, such as
        ``apply`` — before it reads anything, when ``principal`` may run none of them
        anywhere; each operation is then checked exactly when it runs."""
        if any(self.may_hold(principal, self._specs[name].permission) for name in operations):
            return
        self._append(
            AuditRecord(
                actor=principal.name,
                action=action,
                scope=_NOT_DERIVED,
                reason=reason,
                parameters=parameters,
                outcome="denied",
            )
        )
        raise AccessDenied(
            f"{principal.name!r} may not {action} on any scope: it holds no grant to run "
            f"{' or '.join(sorted(set(operations)))} (ask an admin for a grant)"
        )

    def may_hold(self, principal: Principal, permission: Permission) -> bool:
        """Does ``principal`` hold ``permission`` on any scope at all?"""
        return any(
            permission in ROLE_PERMISSIONS[g.role] for g in self.access.grants(principal.name)
        )

    def _append(self, record: AuditRecord) -> AuditEntry:
        entry = self.audit.append(record)
        if self.anchoring is not None:
            try:
                self.anchoring.anchor_if_due()
            except (RecoveryError, OSError) as exc:
                # The operation is done and audited; the anchor is retried after the
                # next one. `audit anchor` and `audit verify` say what is wrong.
                _log.warning("audit trail not anchored: %s", exc)
        return entry


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

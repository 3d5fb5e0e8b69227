"""Recovery flags and the operations switch through the dispatch layer.

Operations: ``flags.list``, ``flags.history`` and ``switch.status`` (view on
``projection:*``); ``flags.set`` and ``flags.unset`` (operate on the flag's
target); ``switch.freeze`` and ``switch.unfreeze`` (operate on ``*``: a global
switch needs a global grant; unfreezing is further limited to the holder or an
admin, ``administer`` on ``*``). Each change's audit entries carry the value
before (``old_value``, read when the call is prepared) and after
(``new_value``); the flag history (:mod:`safereplay.recovery.security.flags`)
keeps the exact old and new value under its lock.

The **freeze gate** (added to the dispatcher by the registrar): while the switch is
frozen, every operation that changes state is refused with
:class:`~safereplay.recovery.errors.OperationsFrozen` for everyone but the holder
(audited as denied); reads run, and ``switch.unfreeze`` passes to its own check.

Automatic actions (:func:`run_automatic`) are audited with the actor ``system``
and the flag that allowed them in their parameters; the switch stops them too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from safereplay.recovery.errors import InvalidRequest
from safereplay.recovery.operations.dispatch import (
    GateCall,
    OperationContext,
    Operations,
    int_parameter,
    limit_parameter,
)
from safereplay.recovery.operations.shapes import iso_time
from safereplay.recovery.security.access import SYSTEM_ACTOR, Permission
from safereplay.recovery.security.audit import AuditRecord, AuditTrail
from safereplay.recovery.security.flags import (
    Flag,
    FlagName,
    FlagStore,
    HistoryEntry,
    Rollout,
    SwitchState,
    check_target,
    parse_partitions,
)

if TYPE_CHECKING:
    from safereplay.recovery.operations.context import RecoveryContext

__all__ = [
    "MAX_HISTORY",
    "SYSTEM_ACTOR",
    "flag_store",
    "register_flag_operations",
    "run_automatic",
]

#: The most history entries one ``flags.history`` read lists.
MAX_HISTORY = 10_000
#: The one operation the freeze gate lets through for anyone (its handler decides).
_UNFREEZE = "switch.unfreeze"


def flag_store(context: RecoveryContext) -> FlagStore:
    """The flag store of ``context``'s recovery database (schema checked)."""
    context.ensure_schema()
    return FlagStore(context.database)


def _switch_json(state: SwitchState) -> dict[str, Any]:
    shown = state.to_json()
    shown["since"] = None if state.since is None else iso_time(state.since)
    return shown


def _entry_json(entry: HistoryEntry) -> dict[str, Any]:
    return {
        "seq": entry.seq,
        "subject": entry.subject,
        "actor": entry.actor,
        "at": iso_time(entry.at),
        "reason": entry.reason,
        "old_value": entry.old_value,
        "new_value": entry.new_value,
    }


def _flag_parameter(parameters: Mapping[str, Any]) -> FlagName:
    value = parameters.get("flag")
    try:
        return FlagName(str(value))
    except ValueError:
        known = ", ".join(n.value for n in FlagName)
        raise InvalidRequest(f"unknown flag {value!r}; known: {known}") from None


def _target_parameter(parameters: Mapping[str, Any]) -> str:
    target = parameters.get("target")
    if not isinstance(target, str):
        raise InvalidRequest("this operation needs a target (projection:NAME or reaction:NAME)")
    return check_target(target)


def _bool_parameter(parameters: Mapping[str, Any], name: str) -> bool | None:
    value = parameters.get(name)
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "on", "yes", "1"):
        return True
    if isinstance(value, str) and value.lower() in ("false", "off", "no", "0"):
        return False
    raise InvalidRequest(f"{name} must be true or false, not {value!r}")


def _updated(current: Flag, parameters: Mapping[str, Any]) -> Flag:
    """``current`` with the fields ``parameters`` give changed (the others kept)."""
    changes: dict[str, Any] = {}
    enabled = _bool_parameter(parameters, "enabled")
    if enabled is not None:
        changes["enabled"] = enabled
    partitions = parse_partitions(parameters.get("partitions"))
    share = int_parameter(parameters, "share")
    if _bool_parameter(parameters, "all_partitions"):
        if partitions is not None or share is not None:
            raise InvalidRequest("all partitions, listed partitions or a share: one of them")
        changes["rollout"] = Rollout()
    elif partitions is not None or share is not None:
        changes["rollout"] = Rollout(partitions=partitions, share=share)
    for threshold in ("backlog_threshold", "max_restarts", "window_seconds"):
        value = int_parameter(parameters, threshold)
        if value is not None:
            changes[threshold] = value
    fields = {**current.to_json(), **changes}
    fields["rollout"] = changes.get("rollout", current.rollout)
    return Flag(
        name=current.name,
        target=current.target,
        enabled=bool(fields["enabled"]),
        rollout=fields["rollout"],
        backlog_threshold=fields["backlog_threshold"],
        max_restarts=fields["max_restarts"],
        window_seconds=fields["window_seconds"],
    )


def run_automatic(
    context: RecoveryContext,
    *,
    flag: Flag,
    action: str,
    parameters: Mapping[str, Any],
    work: Callable[[], Any],
    audit: AuditTrail | None = None,
) -> Any:
    """Run ``work`` as the system, allowed by ``flag``: audited (actor ``system``, the
    flag in the parameters) when it starts and ends; refused (audited as denied, None
    returned) while operations are frozen."""
    trail = audit or context.audit
    record: dict[str, Any] = {
        "actor": SYSTEM_ACTOR,
        "action": action,
        "scope": flag.target,
        "reason": f"automatic: recovery flag {flag.name} is on for {flag.target}",
        "parameters": {**parameters, "flag": flag.to_json()},
    }
    switch = flag_store(context).switch()
    if switch.frozen:
        refused = switch.refusal(action)
        denied = {**record["parameters"], "error": f"{type(refused).__name__}: {refused}"}
        trail.append(AuditRecord(**{**record, "parameters": denied}, outcome="denied"))
        return None
    intent = trail.append(AuditRecord(**record, outcome="started"))
    done = {**record["parameters"], "intent_seq": intent.seq}
    try:
        result = work()
    except Exception as exc:
        failed = {**done, "error": f"{type(exc).__name__}: {exc}"}
        trail.append(AuditRecord(**{**record, "parameters": failed}, outcome="failed"))
        raise
    trail.append(AuditRecord(**{**record, "parameters": done}, outcome="succeeded"))
    return result


def register_flag_operations(operations: Operations, context: RecoveryContext) -> None:
    def store() -> FlagStore:
        return flag_store(context)

    def freeze_gate(call: GateCall) -> None:
        if not call.spec.changes_state or call.operation == _UNFREEZE:
            return
        switch = store().switch()
        if switch.frozen and switch.held_by != call.principal.name:
            raise switch.refusal(call.operation)

    operations.add_gate(freeze_gate)

    def check_registered(target: str) -> None:
        kind, _, name = target.partition(":")
        if kind == "projection":
            context.registry[name]
        else:
            context.reactions[name]

    def prepare_set(p: Mapping[str, Any]) -> Mapping[str, Any]:
        name, target = _flag_parameter(p), _target_parameter(p)
        check_registered(target)
        current = store().get(name, target)
        new = _updated(current or Flag(name, target), p)
        old_value = None if current is None else current.to_json()
        return {"old_value": old_value, "new_value": new.to_json()}

    def prepare_unset(p: Mapping[str, Any]) -> Mapping[str, Any]:
        current = store().get(_flag_parameter(p), _target_parameter(p))
        return {"old_value": None if current is None else current.to_json(), "new_value": None}

    def prepare_freeze(p: Mapping[str, Any]) -> Mapping[str, Any]:
        return {"old_value": store().switch().to_json(), "new_value": {"frozen": True}}

    def prepare_unfreeze(p: Mapping[str, Any]) -> Mapping[str, Any]:
        return {"old_value": store().switch().to_json(), "new_value": SwitchState().to_json()}

    def target_scope(p: Mapping[str, Any]) -> str:
        return _target_parameter(p)

    def flags_list(ctx: OperationContext, p: Mapping[str, Any]) -> dict[str, Any]:
        flags = store()
        return {
            "flags": [f.to_json() for f in flags.flags()],
            "names": [n.value for n in FlagName],
            "switch": _switch_json(flags.switch()),
        }

    def flags_set(ctx: OperationContext, p: Mapping[str, Any]) -> dict[str, Any]:
        change = store().set(
            Flag.from_json(p["new_value"]), actor=ctx.principal.name, reason=ctx.reason
        )
        return _entry_json(change.entry)

    def flags_unset(ctx: OperationContext, p: Mapping[str, Any]) -> dict[str, Any]:
        change = store().unset(
            _flag_parameter(p), _target_parameter(p), actor=ctx.principal.name, reason=ctx.reason
        )
        return _entry_json(change.entry)

    def flags_history(ctx: OperationContext, p: Mapping[str, Any]) -> dict[str, Any]:
        limit = limit_parameter(p, most=MAX_HISTORY)
        subject: str | None = None
        if p.get("flag") or p.get("target"):
            subject = f"flag:{_flag_parameter(p).value}:{_target_parameter(p)}"
        elif _bool_parameter(p, "switch_only"):
            subject = "switch"
        return {"history": [_entry_json(e) for e in store().history(subject=subject, limit=limit)]}

    def switch_status(ctx: OperationContext, p: Mapping[str, Any]) -> dict[str, Any]:
        return _switch_json(store().switch())

    def freeze(ctx: OperationContext, p: Mapping[str, Any]) -> dict[str, Any]:
        state = store().freeze(actor=ctx.principal.name, reason=ctx.reason, operation=ctx.operation)
        return _switch_json(state)

    def unfreeze(ctx: OperationContext, p: Mapping[str, Any]) -> dict[str, Any]:
        admin = context.access.allows(ctx.principal.name, Permission.ADMINISTER, "*")
        ended = store().unfreeze(actor=ctx.principal.name, reason=ctx.reason, may_override=admin)
        return {"unfrozen": True, "was": _switch_json(ended)}

    operations.register(
        "flags.list",
        permission=Permission.VIEW,
        handler=flags_list,
        scope="projection:*",
        summary="the recovery flags that are set, and the operations switch",
        monitoring=True,
    )
    operations.register(
        "flags.history",
        permission=Permission.VIEW,
        handler=flags_history,
        scope="projection:*",
        summary="every change of a flag, a threshold or the switch, newest first",
    )
    operations.register(
        "flags.set",
        permission=Permission.OPERATE,
        handler=flags_set,
        scope=target_scope,
        scope_reads=False,
        prepare=prepare_set,
        summary="turn a recovery flag on or off, or change its rollout or thresholds",
    )
    operations.register(
        "flags.unset",
        permission=Permission.OPERATE,
        handler=flags_unset,
        scope=target_scope,
        scope_reads=False,
        prepare=prepare_unset,
        summary="unset a recovery flag (back to its default: off)",
    )
    operations.register(
        "switch.status",
        permission=Permission.VIEW,
        handler=switch_status,
        scope="projection:*",
        summary="the operations switch: frozen or not, by whom, since when, why",
        monitoring=True,
    )
    operations.register(
        "switch.freeze",
        permission=Permission.OPERATE,
        handler=freeze,
        scope="*",
        prepare=prepare_freeze,
        summary="freeze operations: refuse every change for everyone but the holder",
    )
    operations.register(
        _UNFREEZE,
        permission=Permission.OPERATE,
        handler=unfreeze,
        scope="*",
        prepare=prepare_unfreeze,
        summary="unfreeze operations (the holder, or an admin)",
    )

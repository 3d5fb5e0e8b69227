"""A command's dry run: ``rebuild``, ``catch-up``, ``replay`` or ``parked redrive``
with ``--dry-run``, said as the template that command amounts to.

The plan machinery (:func:`~safereplay.recovery.templates.plan.plan_template`)
then says what it would do, exactly as ``safereplay plan`` says it for a
template: there is one planner, not one per command.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from safereplay.recovery.errors import InvalidRequest
from safereplay.recovery.templates.model import RecoveryTemplate

__all__ = ["COMMAND_KINDS", "command_template"]

#: The template kind of each operation a dry run can plan.
COMMAND_KINDS: Mapping[str, str] = {
    "rebuild": "rebuild",
    "catch-up": "catch-up",
    "replay": "replay-range",
    "parked.redrive": "redrive-parked",
}


def _partition(value: Any) -> tuple[int, int]:
    index, _, count = str(value).partition("/")
    try:
        return int(index), int(count)
    except ValueError:
        raise InvalidRequest(
            f"partition {value!r} is not INDEX/COUNT with 0 <= INDEX < COUNT (e.g. 2/4)"
        ) from None


def command_template(
    operation: str, parameters: Mapping[str, Any], *, default_partitions: int = 1
) -> RecoveryTemplate:
    """The template ``operation`` run with ``parameters`` amounts to (for its plan)."""
    kind = COMMAND_KINDS.get(operation)
    if kind is None:
        raise InvalidRequest(
            f"there is no dry run of {operation!r} (only of {', '.join(COMMAND_KINDS)})"
        )
    projection = parameters.get("projection")
    if not projection:
        raise InvalidRequest(f"a dry run of {operation} needs the projection")
    scope: dict[str, Any] = {"projections": [str(projection)]}
    if kind == "redrive-parked":
        scope["aggregates"] = list(parameters.get("aggregates") or [])
    else:
        scope["partitions"] = int(parameters.get("partitions") or default_partitions)
    if kind == "replay-range":
        scope["positions"] = {"from": parameters.get("start"), "to": parameters.get("end")}
        scope["aggregates"] = list(parameters.get("aggregates") or [])
        if parameters.get("partition"):
            index, count = _partition(parameters["partition"])
            scope["partitions"], scope["only_partitions"] = count, [index]
        elif parameters.get("only_partitions") is not None:
            scope["only_partitions"] = list(parameters["only_partitions"])
    throttle = {
        "events_per_second": parameters.get("events_per_second"),
        "max_concurrent_partitions": parameters.get("max_concurrent_partitions"),
    }
    document = {
        "template": {
            "name": f"dry-run-{kind}",
            "kind": kind,
            "description": f"`safereplay {operation.replace('.', ' ')} {projection}`, run dry",
        },
        "scope": scope,
        "throttle": {k: v for k, v in throttle.items() if v is not None},
    }
    try:
        return RecoveryTemplate.model_validate(document)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {str(e['msg']).removeprefix('Value error, ')}"
            for e in exc.errors(include_url=False, include_input=False)
        )
        raise InvalidRequest(f"the dry run of {operation} is not valid: {problems}") from None

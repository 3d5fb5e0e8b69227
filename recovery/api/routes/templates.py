"""The recovery console's templates: list them, describe their parameters, plan,
apply without waiting, rehearse as a drill; and a job's staged rollout.

Settings are the values an operator sets on a template, as ``--set NAME=VALUE``
on the command line: each must be a parameter the template declares, within its
bounds, checked by the same model (:meth:`RecoveryTemplate.with_settings`) before
anything is planned or run; a refusal is a 422 naming the parameter and the bound.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr

from safereplay.recovery.api.callers import Caller, CallerDep
from safereplay.recovery.api.routes.bodies import Reasoned
from safereplay.recovery.api.routes.paths import JobId
from safereplay.recovery.operations.shapes import to_jsonable
from safereplay.recovery.operations.templates import planned_template
from safereplay.recovery.templates.apply import (
    STEP_OPERATIONS,
    rehearse_template,
    start_template,
)

__all__ = ["router"]

router = APIRouter(prefix="/api", tags=["templates"])

TemplateName = Annotated[
    str,
    Path(
        description="A stored template's or a shipped runbook's name.",
        pattern=r"^[a-z0-9][a-z0-9-]{0,62}$",
    ),
]
#: A value as a form or a script sends it: checked as its ``--set`` text would be.
SettingValue = StrictStr | StrictInt | StrictFloat
Settings = Annotated[
    dict[str, SettingValue],
    Field(
        default_factory=dict,
        max_length=32,
        description="Parameter values (NAME: value), each one the template declares.",
        examples=[{"partitions": 4, "projection": "workflow_stats"}],
    ),
]


class Planned(BaseModel):
    """The body of a plan: the values set on the template."""

    model_config = ConfigDict(extra="forbid")

    settings: Settings


class Applied(Reasoned):
    """The body of an apply or a rehearsal: why, and the values set on the template."""

    settings: Settings


def _texts(settings: dict[str, SettingValue]) -> dict[str, str]:
    # A whole number sent as 4.0 is the 4 an operator typed.
    return {
        name: str(int(value) if isinstance(value, float) and value.is_integer() else value)
        for name, value in settings.items()
    }


@router.get("/templates", summary="stored templates and shipped runbooks, with their parameters")
def templates_list(caller: CallerDep) -> Any:
    return caller.run("templates.list")


@router.get(
    "/templates/{name}/parameters",
    summary="what an operator may set on a template: type, default, bounds (JSON Schema)",
)
def template_parameters(caller: CallerDep, name: TemplateName) -> Any:
    return caller.run("templates.parameters", template=name)


@router.post(
    "/templates/{name}/plan",
    summary="what applying a template with these settings would do, changing nothing",
)
def template_plan(caller: CallerDep, name: TemplateName, body: Planned) -> Any:
    return caller.run("plan", template=name, settings=_texts(body.settings))


def _loaded(caller: Caller, action: str, operations: list[str], name: str, body: Applied) -> Any:
    """The template with its settings, once the caller may run one of ``operations``
    somewhere (a principal who may not is refused, and audited, before any read)."""
    settings = _texts(body.settings)
    caller.operations.require_any(
        caller.principal,
        action,
        operations,
        reason=body.reason,
        parameters={"template": name, "settings": settings},
    )
    caller.context.ensure_schema()
    return planned_template(caller.context, {"template": name, "settings": settings})


@router.post(
    "/templates/{name}/apply",
    summary="start a template's jobs, canary partitions first; returns without waiting",
)
def template_apply(caller: CallerDep, name: TemplateName, body: Applied) -> Any:
    """Each step runs through the dispatch layer (checked and audited) and makes its
    job with the partitions after the canary held; workers run it. Release the rest
    with ``POST /api/jobs/{job_id}/continue`` once ``/rollout`` says it verified."""
    template, origin = _loaded(caller, "apply", list(STEP_OPERATIONS.values()), name, body)
    steps = start_template(caller.operations, caller.principal, template, reason=body.reason)
    return {"template": template.template.name, "origin": origin, "steps": to_jsonable(steps)}


@router.post(
    "/templates/{name}/drill",
    summary="rehearse a template: its projections rebuilt in a sandbox, compared with live",
)
def template_drill(caller: CallerDep, name: TemplateName, body: Applied) -> Any:
    template, origin = _loaded(caller, "drill", ["drill"], name, body)
    drills = rehearse_template(caller.operations, caller.principal, template, reason=body.reason)
    return {"template": template.template.name, "origin": origin, "drills": to_jsonable(drills)}


@router.get(
    "/jobs/{job_id}/rollout",
    tags=["jobs"],
    summary="a job's staged rollout: canary and held partitions, whether the canary verified",
)
def job_rollout(caller: CallerDep, job_id: JobId) -> Any:
    return caller.run("rollout.status", job_id=job_id)

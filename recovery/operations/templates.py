"""Template operations: plan a template, and add, update, list and show stored ones.

``plan`` plans a template (a file, a stored one or a shipped runbook) with the
values an operator set on it (``settings``, each a parameter the template
declares, within its bounds), or, with ``dry_run``, the template a command
(``rebuild``, ``catch-up``, ``replay``, ``parked.redrive``) amounts to: the
commands' ``--dry-run`` is this same plan.

For the dashboard's console: ``templates.parameters`` describes what an operator
may set on a template (the same rules ``--set`` is checked with), and
``rollout.status`` says where a job's staged rollout is: whether its canary
verified, so that the rest may be released (``rollout.continue``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from safereplay.projections import open_source
from safereplay.recovery.errors import InvalidRequest, JobConflict, RecoveryError
from safereplay.recovery.jobs.store import SQLJobStore
from safereplay.recovery.operations.dispatch import Handler, OperationContext, Operations
from safereplay.recovery.operations.drills import live_reader
from safereplay.recovery.operations.job_ids import job_id_preparer, resolve_job_id
from safereplay.recovery.security.access import Permission, Principal
from safereplay.recovery.templates.apply import RolloutState, rollout_state
from safereplay.recovery.templates.commands import command_template
from safereplay.recovery.templates.model import RecoveryTemplate, parse_template
from safereplay.recovery.templates.parameters import ParameterDescription, parse_settings
from safereplay.recovery.templates.plan import TemplatePlan, plan_template
from safereplay.recovery.templates.store import (
    ListedTemplate,
    StoredTemplate,
    TemplateChange,
    TemplateStore,
    listed_templates,
    resolve_template,
    shipped_runbooks,
    template_change,
)

if TYPE_CHECKING:
    from safereplay.recovery.operations.approvals import AwaitingApproval
    from safereplay.recovery.operations.context import RecoveryContext

__all__ = [
    "TemplateForm",
    "change_template",
    "planned_template",
    "register_template_operations",
]


@dataclass(frozen=True)
class TemplateForm:
    """What an operator may set on a template, and what it does: a console's form."""

    template: str
    kind: str
    description: str
    origin: str
    projections: tuple[str, ...]
    canary_partitions: tuple[int, ...]
    parameters: tuple[ParameterDescription, ...]


def change_template(
    operations: Operations, principal: Principal, *, text: str, reason: str, update: bool
) -> TemplateChange | AwaitingApproval:
    """Add (or update) a template as ``principal``: admin only, audited with the diff
    (or, where four-eyes approval applies, the change request waiting for it)."""
    operation = "templates.update" if update else "templates.add"
    result: TemplateChange | AwaitingApproval = operations.run(
        principal, operation, reason=reason, toml=text
    )
    return result


def planned_template(
    context: RecoveryContext, parameters: Mapping[str, Any]
) -> tuple[RecoveryTemplate, str]:
    """What ``plan`` plans, and where it came from: the ``dry_run`` of a command, or
    the ``template`` referred to with the operator's ``settings`` on it."""
    dry_run = parameters.get("dry_run")
    if isinstance(dry_run, Mapping):
        operation = str(dry_run.get("operation"))
        default = context.recovery.partitions if operation == "rebuild" else 1
        template = command_template(operation, dry_run, default_partitions=default)
        return template, f"dry run of `safereplay {operation.replace('.', ' ')}`"
    template, origin = resolve_template(
        str(parameters.get("template", "")), TemplateStore(context.database)
    )
    settings = parse_settings(parameters.get("settings"))
    if settings:
        template = template.with_settings(settings, registered=list(context.registry))
        origin += " with " + ", ".join(f"{k}={v}" for k, v in settings.items())
    return template, origin


def _plan_scope(context: RecoveryContext) -> Callable[[Mapping[str, Any]], str]:
    def scope(parameters: Mapping[str, Any]) -> str:
        try:
            # The projection an operator set is the one checked, not the template's.
            template, _ = planned_template(context, parameters)
        except RecoveryError:
            # Projections unknown: a viewer of every projection hears what is wrong
            # (the handler raises it again, and the attempt is audited).
            return "projection:*"
        if template.template.kind == "reencrypt":
            return "keys"
        names = template.scope.projections
        return f"projection:{names[0]}" if len(names) == 1 else "projection:*"

    return scope


def register_template_operations(operations: Operations, context: RecoveryContext) -> None:
    templates = TemplateStore(context.database)

    def plan(ctx: OperationContext, p: Mapping[str, Any]) -> TemplatePlan:
        template, origin = planned_template(context, p)
        dry_run = p.get("dry_run")
        into = str(dry_run.get("into") or "sandbox") if isinstance(dry_run, Mapping) else "sandbox"
        with open_source(context.domain, settings=context.projection_settings) as source:
            return plan_template(
                template,
                origin=origin,
                reader=live_reader(context),
                source=source,
                registry=context.registry,
                jobs=SQLJobStore(context.database),
                into=into,
                settings=parse_settings(p.get("settings")),
            )

    def save(update: bool) -> Callable[[OperationContext, Mapping[str, Any]], TemplateChange]:
        def handler(ctx: OperationContext, p: Mapping[str, Any]) -> TemplateChange:
            text = str(p["toml"])
            template = parse_template(text, source=f"template {p.get('template')!r}")
            name = template.template.name
            if not update and name in shipped_runbooks():
                raise InvalidRequest(
                    f"{name!r} is the name of a shipped runbook: give the template another name"
                )
            context.ensure_schema()
            expected = template_change(templates, text)
            if any(p.get(k) != expected[k] for k in ("template", "base_version", "diff")):
                raise JobConflict(
                    f"template {name!r} changed since the diff was made: run the command again"
                )
            base = int(expected["base_version"])
            if not update and base:
                raise InvalidRequest(
                    f"template {name!r} exists (version {base}): use `templates update`"
                )
            if update and not base:
                raise InvalidRequest(f"there is no template {name!r}: use `templates add`")
            stored = templates.save(text, template, author=ctx.principal.name, base_version=base)
            return TemplateChange(template=stored, diff=str(expected["diff"]))

        return handler

    def diff_of_change(p: Mapping[str, Any]) -> Mapping[str, Any]:
        toml = p.get("toml")
        if not isinstance(toml, str):
            raise InvalidRequest("adding or changing a template needs its TOML text")
        return template_change(templates, toml)

    def form(ctx: OperationContext, p: Mapping[str, Any]) -> TemplateForm:
        template, origin = planned_template(context, {"template": p.get("template", "")})
        return TemplateForm(
            template=template.template.name,
            kind=template.template.kind,
            description=template.template.description,
            origin=origin,
            projections=tuple(template.scope.projections),
            canary_partitions=tuple(sorted(template.rollout.canary_partitions)),
            parameters=tuple(template.described_parameters(registered=list(context.registry))),
        )

    def rollout(ctx: OperationContext, p: Mapping[str, Any]) -> RolloutState:
        return rollout_state(context.jobs.status(resolve_job_id(context.jobs, p["job_id"])))

    def job_scope(parameters: Mapping[str, Any]) -> str:
        job = context.jobs.get_job(resolve_job_id(context.jobs, parameters.get("job_id")))
        return f"projection:{job.projection}"

    def listed(ctx: OperationContext, p: Mapping[str, Any]) -> list[ListedTemplate]:
        return listed_templates(templates)

    def show(ctx: OperationContext, p: Mapping[str, Any]) -> StoredTemplate:
        version = p.get("version")
        return templates.get(str(p["name"]), None if version is None else int(version))

    view, admin = Permission.VIEW, Permission.ADMINISTER
    table: list[tuple[str, Permission, Handler, Any, str]] = [
        ("plan", view, plan, _plan_scope(context), "dry run of a template, changing nothing"),
        ("templates.add", admin, save(update=False), "*", "add a template (audited with a diff)"),
        ("templates.update", admin, save(update=True), "*", "change a template (with a diff)"),
        (
            "templates.list",
            view,
            listed,
            "projection:*",
            "list stored templates (latest) and shipped runbooks",
        ),
        ("templates.show", view, show, "projection:*", "show a stored template"),
        (
            "templates.parameters",
            view,
            form,
            _plan_scope(context),
            "what an operator may set on a template, within which bounds",
        ),
    ]
    for name, permission, handler, scope, summary in table:
        # Reading or planning changes nothing; adding and updating do (and need a reason),
        # and their audit entries carry the diff, computed before the permission check.
        operations.register(
            name,
            permission=permission,
            handler=handler,
            scope=scope,
            summary=summary,
            prepare=diff_of_change if name in ("templates.add", "templates.update") else None,
        )
    operations.register(
        "rollout.status",
        permission=view,
        handler=rollout,
        scope=job_scope,
        prepare=job_id_preparer(context),
        summary="a job's staged rollout: canary, held partitions, whether it verified",
        # Polled by the console while a canary runs.
        monitoring=True,
    )

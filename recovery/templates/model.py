"""Recovery templates: declarative recovery scenarios, validated by pydantic.

A template is a TOML file (see ``recovery/runbooks/`` for the shipped ones)::

    [template]
    name = "rebuild-after-bad-deploy"
    kind = "rebuild"            # rebuild | catch-up | replay-range | redrive-parked | reencrypt
    description = "..."

    [scope]
    projections = ["run_status"]
    partitions = 4              # how many partitions to split the work into
    only_partitions = [0, 2]    # optional: a subset
    positions = { from = 1, to = 5000 }   # replay-range only
    aggregates = []             # optional: only these aggregate ids

    [policy]
    on_error = "retry-then-fail"   # fail | park | retry-then-fail | retry-then-park
    attempts = 3
    backoff = { initial = 0.1, multiplier = 2.0, maximum = 30.0, jitter = 0.5 }

    [breaker]                   # optional; defaults shown in docs/recovery.md
    failure_threshold = 5

    [throttle]
    events_per_second = 20000   # optional cap
    max_concurrent_partitions = 2

    [rollout]                   # staged rollout: canary partitions first
    canary_partitions = [0]
    require_verified_canary = true

    [parameters]                # what an operator may set: plan/apply --set NAME=VALUE
    projection = { type = "projection", allowed = "*" }
    partitions = { type = "integer", min = 1, max = 16 }
    max_rate = { type = "number", min = 100, max = 50000 }

An invalid template is rejected with every problem listed, each naming where it is.
Parameters are described in :mod:`safereplay.recovery.templates.parameters`.
"""

from __future__ import annotations

import tomllib
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Literal, Self
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from safereplay.recovery.errors import InvalidRequest, InvalidTemplate
from safereplay.recovery.resilience.breaker import BreakerSettings
from safereplay.recovery.resilience.policies import ErrorRules
from safereplay.recovery.resilience.specs import BreakerSpec, PolicySpec
from safereplay.recovery.templates.parameters import (
    ParameterDescription,
    ParameterSpec,
    current_value,
    declaration_problems,
    default_problems,
    describe_parameter,
    revalidation_error,
    set_values,
    typed_value,
)

__all__ = [
    "RUNBOOKS",
    "InvalidTemplate",
    "BreakerSpec",
    "PolicySpec",
    "RecoveryTemplate",
    "load_template",
    "parse_template",
]

RUNBOOKS = Path(__file__).parent / "runbooks"
TemplateKind = Literal["rebuild", "catch-up", "replay-range", "redrive-parked", "reencrypt"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TemplateHeader(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    kind: TemplateKind
    description: str = Field(default="", max_length=2000)


class PositionRange(_Strict):
    start: int = Field(alias="from", ge=1)
    end: int = Field(alias="to", ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.end < self.start:
            raise ValueError(f"'to' ({self.end}) is before 'from' ({self.start})")
        return self


class TemplateScope(_Strict):
    projections: list[str] = Field(default_factory=list)
    partitions: int = Field(default=1, ge=1, le=256)
    only_partitions: list[int] | None = None
    positions: PositionRange | None = None
    aggregates: list[UUID] = Field(default_factory=list)

    @model_validator(mode="after")
    def _partitions_in_range(self) -> Self:
        bad = [p for p in self.only_partitions or [] if not 0 <= p < self.partitions]
        if bad:
            raise ValueError(
                f"only_partitions {bad} are outside 0..{self.partitions - 1} "
                f"(partitions = {self.partitions})"
            )
        return self


class ThrottleSpec(_Strict):
    events_per_second: float | None = Field(default=None, gt=0)
    max_concurrent_partitions: int | None = Field(default=None, ge=1)


class RolloutSpec(_Strict):
    canary_partitions: list[int] = Field(default_factory=list)
    require_verified_canary: bool = True


class RecoveryTemplate(_Strict):
    template: TemplateHeader
    scope: TemplateScope = Field(default_factory=TemplateScope)
    policy: PolicySpec = Field(default_factory=PolicySpec)
    breaker: BreakerSpec = Field(default_factory=BreakerSpec)
    throttle: ThrottleSpec = Field(default_factory=ThrottleSpec)
    rollout: RolloutSpec = Field(default_factory=RolloutSpec)
    parameters: dict[str, ParameterSpec] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        kind = self.template.kind
        scope = self.scope
        problems = declaration_problems(kind, self.parameters)
        problems += default_problems(self.model_dump(by_alias=True), self.parameters)
        if kind == "reencrypt":
            if scope.projections:
                problems.append(
                    "scope.projections: a reencrypt template touches events, "
                    "not projections; remove it"
                )
        elif not scope.projections:
            problems.append(f"scope.projections: a {kind} template needs at least one projection")
        if kind == "replay-range" and scope.positions is None:
            problems.append("scope.positions: a replay-range template needs {from, to}")
        if kind != "replay-range" and scope.positions is not None:
            problems.append(
                f"scope.positions: only replay-range templates take positions, not {kind}"
            )
        outside = [p for p in self.rollout.canary_partitions if not 0 <= p < scope.partitions]
        if outside:
            problems.append(
                f"rollout.canary_partitions: {outside} are outside 0..{scope.partitions - 1}"
            )
        if scope.only_partitions is not None:
            stray = sorted(set(self.rollout.canary_partitions) - set(scope.only_partitions))
            if stray:
                problems.append(
                    f"rollout.canary_partitions: {stray} are not in scope.only_partitions"
                )
        if self.rollout.canary_partitions and len(self.rollout.canary_partitions) >= len(
            self.partitions_in_scope()
        ):
            problems.append(
                "rollout.canary_partitions: the canary must leave some partitions "
                "for the rest of the rollout"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def with_settings(
        self, settings: Mapping[str, str], *, registered: Collection[str]
    ) -> RecoveryTemplate:
        """This template with operator-set values (``--set NAME=VALUE``), each one a
        parameter it declares and within that parameter's bounds; else refused
        (:class:`InvalidRequest`), naming the parameter and the bound."""
        if not settings:
            return self
        name = self.template.name
        for parameter in settings:
            if parameter not in self.parameters:
                declared = ", ".join(self.parameters) or "none"
                raise InvalidRequest(
                    f"template {name!r} does not declare a parameter {parameter!r} (it "
                    f"declares: {declared}; see its [parameters] table)"
                )
        values = {
            parameter: typed_value(
                parameter, self.parameters[parameter], text, registered=registered
            )
            for parameter, text in settings.items()
        }
        document = self.model_dump(by_alias=True, exclude_none=True)
        set_values(document, values)
        try:
            return RecoveryTemplate.model_validate(document)
        except ValidationError as exc:
            raise revalidation_error(settings, exc) from None

    def described_parameters(self, *, registered: Collection[str]) -> list[ParameterDescription]:
        """The parameters an operator may set, with their bounds and this template's
        values as defaults: the rules :meth:`with_settings` applies, for a form."""
        document = self.model_dump(by_alias=True)
        return [
            describe_parameter(name, spec, current_value(document, name), registered=registered)
            for name, spec in self.parameters.items()
        ]

    def partitions_in_scope(self) -> list[int]:
        if self.scope.only_partitions is not None:
            return sorted(set(self.scope.only_partitions))
        return list(range(self.scope.partitions))

    def failure_rules(self) -> ErrorRules:
        return self.policy.rules()

    def breaker_settings(self) -> BreakerSettings:
        return self.breaker.settings()


def _problems(exc: ValidationError) -> list[tuple[str, str]]:
    problems = []
    for error in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(part) for part in error["loc"]) or "(template)"
        message = str(error["msg"]).removeprefix("Value error, ")
        for part in message.split("; "):
            if ": " in part and where == "(template)":
                location, _, what = part.partition(": ")
                problems.append((location, what))
            else:
                problems.append((where, part))
    return problems


def parse_template(text: str, *, source: str = "<text>") -> RecoveryTemplate:
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidTemplate(source, [("(toml)", str(exc))]) from None
    try:
        return RecoveryTemplate.model_validate(document)
    except ValidationError as exc:
        raise InvalidTemplate(source, _problems(exc)) from None


def load_template(path: Path | str) -> RecoveryTemplate:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidTemplate(str(path), [("(file)", f"cannot be read: {exc}")]) from None
    return parse_template(text, source=str(path))

"""Template parameters: what an operator may set on the command line, within bounds.

A template declares, in its ``[parameters]`` table, which of its values an
operator may change with ``--set NAME=VALUE`` on ``plan`` and ``apply``, each
with a type and bounds::

    [parameters]
    projection = { type = "projection", allowed = "*" }     # or ["run_status", ...]
    partitions = { type = "integer", min = 1, max = 16 }
    max_rate = { type = "number", min = 100, max = 50000 }

The names form a closed vocabulary, each setting one value of the template
(:data:`SETTABLE`): a template cannot declare a parameter that sets nothing, nor
give one the wrong type. A value outside its bounds, or a parameter the template
does not declare, is refused (:class:`~safereplay.recovery.errors.InvalidRequest`)
naming the parameter and the bound; the template with the values set is validated
again as a whole, so a value that breaks another rule (a canary partition outside
fewer partitions) is refused too. Nothing is run before every value passed.

:func:`describe_parameter` says the same rules as a JSON Schema (the type, the
bounds, the allowed projections and the template's own value as the default),
for a form that shows them: the form's hints come from these rules, and the
values it sends are checked again by :func:`typed_value`, as ``--set`` ones are.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from safereplay.recovery.errors import InvalidRequest

__all__ = [
    "SETTABLE",
    "IntegerParameter",
    "ParameterDescription",
    "NumberParameter",
    "ParameterSpec",
    "ProjectionParameter",
    "Settable",
    "describe_parameter",
    "parse_settings",
]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProjectionParameter(Strict):
    """A projection's name: one of ``allowed``, or any registered one (``"*"``)."""

    type: Literal["projection"]
    allowed: Literal["*"] | list[str] = "*"
    description: str = Field(default="", max_length=500)

    def bounds(self) -> str:
        return "any registered projection" if self.allowed == "*" else f"one of {self.allowed}"


class _Ranged(Strict):
    @model_validator(mode="after")
    def _ordered(self) -> Self:
        low, high = getattr(self, "min"), getattr(self, "max")  # noqa: B009 - both subclasses
        if low is not None and high is not None and high < low:
            raise ValueError(f"max ({high}) is below min ({low})")
        return self

    def bounds(self) -> str:
        low, high = getattr(self, "min"), getattr(self, "max")  # noqa: B009
        if low is None and high is None:
            return "any value"
        if high is None:
            return f"at least {low:g}"
        if low is None:
            return f"at most {high:g}"
        return f"between {low:g} and {high:g}"


class IntegerParameter(_Ranged):
    type: Literal["integer"]
    min: int | None = None
    max: int | None = None
    description: str = Field(default="", max_length=500)


class NumberParameter(_Ranged):
    type: Literal["number"]
    min: float | None = None
    max: float | None = None
    description: str = Field(default="", max_length=500)


ParameterSpec = Annotated[
    ProjectionParameter | IntegerParameter | NumberParameter, Field(discriminator="type")
]


@dataclass(frozen=True)
class Settable:
    """One name of the vocabulary: its type, the template value it sets, and the
    kinds of template that have that value."""

    type: str
    sets: tuple[str, ...]
    kinds: frozenset[str]


_PROJECTION_KINDS = frozenset({"rebuild", "catch-up", "replay-range", "redrive-parked"})
_JOB_KINDS = frozenset({"rebuild", "catch-up", "replay-range"})

#: Every parameter a template may declare: ``sets`` is where in the template it goes.
SETTABLE: Mapping[str, Settable] = {
    "projection": Settable("projection", ("scope", "projections"), _PROJECTION_KINDS),
    "partitions": Settable("integer", ("scope", "partitions"), _JOB_KINDS),
    "from": Settable("integer", ("scope", "positions", "from"), frozenset({"replay-range"})),
    "to": Settable("integer", ("scope", "positions", "to"), frozenset({"replay-range"})),
    "max_rate": Settable("number", ("throttle", "events_per_second"), _JOB_KINDS | {"reencrypt"}),
    "max_concurrent": Settable("integer", ("throttle", "max_concurrent_partitions"), _JOB_KINDS),
}


def declaration_problems(
    kind: str, declared: Mapping[str, ProjectionParameter | IntegerParameter | NumberParameter]
) -> list[str]:
    """What is wrong with a template's ``[parameters]`` (called by its validation)."""
    problems = []
    for name, spec in declared.items():
        settable = SETTABLE.get(name)
        if settable is None:
            problems.append(
                f"parameters.{name}: not a parameter a template can declare (known: "
                f"{', '.join(SETTABLE)})"
            )
        elif kind not in settable.kinds:
            problems.append(f"parameters.{name}: a {kind} template has no {name} to set")
        elif spec.type != settable.type:
            problems.append(f"parameters.{name}: is of type {settable.type!r}, not {spec.type!r}")
    return problems


def parse_settings(values: Iterable[str] | Mapping[str, Any] | None) -> dict[str, str]:
    """``["NAME=VALUE", ...]`` (``--set`` options, or a mapping) into a mapping."""
    if values is None:
        return {}
    if isinstance(values, Mapping):
        return {str(k): str(v) for k, v in values.items()}
    settings: dict[str, str] = {}
    for item in values:
        name, equals, value = str(item).partition("=")
        name = name.strip()
        if not equals or not name:
            raise InvalidRequest(f"--set takes NAME=VALUE (e.g. --set partitions=4), not {item!r}")
        if name in settings:
            raise InvalidRequest(f"--set {name}=... is given twice: give each parameter once")
        settings[name] = value.strip()
    return settings


def typed_value(
    name: str,
    spec: ProjectionParameter | IntegerParameter | NumberParameter,
    text: str,
    *,
    registered: Collection[str],
) -> str | int | float:
    """``text`` as the parameter's type, within its bounds, or refused naming both."""
    if isinstance(spec, ProjectionParameter):
        allowed = registered if spec.allowed == "*" else spec.allowed
        if text not in allowed or text not in registered:
            what = (
                "a registered projection"
                if text not in registered
                else "one of the projections this template allows"
            )
            raise InvalidRequest(
                f"parameter {name!r} = {text!r} is refused: it is not {what} "
                f"(allowed: {', '.join(sorted(set(allowed) & set(registered))) or 'none'})"
            )
        return text
    value: int | float
    try:
        value = int(text) if isinstance(spec, IntegerParameter) else float(text)
    except ValueError:
        kind = "a whole number" if isinstance(spec, IntegerParameter) else "a number"
        raise InvalidRequest(f"parameter {name!r} must be {kind}, not {text!r}") from None
    if not math.isfinite(value):
        raise InvalidRequest(f"parameter {name!r} must be a finite number, not {text!r}")
    if (spec.min is not None and value < spec.min) or (spec.max is not None and value > spec.max):
        raise InvalidRequest(
            f"parameter {name!r} = {text} is out of bounds: it must be {spec.bounds()}"
        )
    return value


def current_value(document: Mapping[str, Any], name: str) -> Any:
    """The value a parameter sets, as the template has it (None: not set)."""
    node: Any = document
    for key in SETTABLE[name].sets:
        if not isinstance(node, Mapping):
            return None
        node = node.get(key)
    return node


def default_problems(
    document: Mapping[str, Any],
    declared: Mapping[str, ProjectionParameter | IntegerParameter | NumberParameter],
) -> list[str]:
    """The template's own values must lie within the bounds it declares."""
    problems = []
    for name, spec in declared.items():
        if name not in SETTABLE:
            continue  # reported by declaration_problems
        value = current_value(document, name)
        if value is None:
            continue
        if isinstance(spec, ProjectionParameter):
            outside = [p for p in value if spec.allowed != "*" and p not in spec.allowed]
            if outside:
                problems.append(f"parameters.{name}: the template's {outside} are not allowed")
        elif (spec.min is not None and value < spec.min) or (
            spec.max is not None and value > spec.max
        ):
            problems.append(
                f"parameters.{name}: the template's own value {value} is not {spec.bounds()}"
            )
    return problems


def set_values(document: dict[str, Any], values: Mapping[str, str | int | float]) -> None:
    """Write each value where its parameter goes in a template's ``document``."""
    for name, value in values.items():
        *path, last = SETTABLE[name].sets
        node = document
        for key in path:
            node = node.setdefault(key, {})
        node[last] = [value] if name == "projection" else value


def revalidation_error(settings: Mapping[str, str], exc: ValidationError) -> InvalidRequest:
    """A template that, with these values set, breaks one of its own rules."""
    given = " ".join(f"--set {k}={v}" for k, v in settings.items())
    problems = "; ".join(
        str(e["msg"]).removeprefix("Value error, ")
        for e in exc.errors(include_url=False, include_input=False)
    )
    return InvalidRequest(f"with {given} the template is not valid: {problems}")


@dataclass(frozen=True)
class ParameterDescription:
    """A declared parameter as a form shows it: ``bounds`` in words (as a refusal
    says them) and ``schema``, a JSON Schema of the values it accepts."""

    name: str
    type: str
    default: str | int | float | None
    bounds: str
    description: str
    schema: Mapping[str, Any]


def describe_parameter(
    name: str,
    spec: ProjectionParameter | IntegerParameter | NumberParameter,
    current: Any,
    *,
    registered: Collection[str],
) -> ParameterDescription:
    """``spec`` described, with the template's own value ``current`` as its default."""
    schema: dict[str, Any]
    if isinstance(spec, ProjectionParameter):
        allowed = set(registered) if spec.allowed == "*" else set(spec.allowed) & set(registered)
        schema = {"type": "string", "enum": sorted(allowed)}
        # A template names its projections as a list; the parameter sets one.
        default = current[0] if isinstance(current, list) and len(current) == 1 else None
    else:
        schema = {"type": spec.type}
        if spec.min is not None:
            schema["minimum"] = spec.min
        if spec.max is not None:
            schema["maximum"] = spec.max
        default = current
    if default is not None:
        schema["default"] = default
    if spec.description:
        schema["description"] = spec.description
    return ParameterDescription(
        name=name,
        type=spec.type,
        default=default,
        bounds=spec.bounds(),
        description=spec.description,
        schema=schema,
    )

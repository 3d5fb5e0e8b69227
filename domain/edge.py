"""Validation of external input (JSON messages) before any aggregate sees it.

A message is a JSON object ``{"type": NAME, "schema_version": N, ...fields}``.
Each (type, version) pair is registered with a pydantic model; the registry
rejects messages that break an edge limit (:mod:`safereplay.domain.limits`: size,
string length, keys, items, depth, non-finite numbers) before anything else,
then malformed JSON, unknown types and unknown versions, and lists every
invalid field of a known message in one :class:`~safereplay.domain.errors.InvalidInput`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, ValidationError

from safereplay.domain.errors import (
    FieldProblem,
    InvalidInput,
    MalformedJSON,
    UnknownEventType,
    UnknownSchemaVersion,
)
from safereplay.domain.limits import EdgeLimits, check_document, check_size

__all__ = ["EdgeModel", "MessageRegistry", "ParsedMessage", "problems_of"]

M = TypeVar("M", bound="EdgeModel")


class EdgeModel(BaseModel):
    """Base of edge models: unknown fields are errors, values are not coerced loosely.

    Strict: ``true`` is not an integer, ``"30"`` is not a number and ``0`` is not a
    boolean. :meth:`MessageRegistry.parse` validates in JSON mode, where strict
    still accepts what JSON cannot express natively (a UUID as a string).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True, strict=True)


def problems_of(exc: ValidationError) -> list[FieldProblem]:
    """Every invalid field of a pydantic error, as (location, message)."""
    problems = []
    for error in exc.errors(include_url=False, include_input=False):
        location = ".".join(str(part) for part in error["loc"]) or "(message)"
        problems.append(FieldProblem(location, error["msg"]))
    return problems


@dataclass(frozen=True)
class ParsedMessage(Generic[M]):
    """A validated message, upgraded to the newest schema version of its type."""

    type: str
    schema_version: int
    body: M


@dataclass
class MessageRegistry:
    """Known message types, each with one model per schema version.

    ``upgrades[(type, v)]`` converts a validated version-``v`` body (as a dict) to
    version ``v + 1``, so handlers only ever see the newest version.
    """

    models: dict[str, dict[int, type[EdgeModel]]] = field(default_factory=dict)
    upgrades: dict[tuple[str, int], Callable[[dict[str, Any]], dict[str, Any]]] = field(
        default_factory=dict
    )
    #: Bounds on every message (the documented defaults unless given).
    limits: EdgeLimits = field(default_factory=EdgeLimits.defaults)

    def register(self, type_name: str, version: int, model: type[EdgeModel]) -> None:
        self.models.setdefault(type_name, {})[version] = model

    def register_upgrade(
        self, type_name: str, from_version: int, upgrade: Callable[[dict[str, Any]], dict[str, Any]]
    ) -> None:
        self.upgrades[(type_name, from_version)] = upgrade

    def parse(
        self, raw: bytes | str | Mapping[str, Any], *, limits: EdgeLimits | None = None
    ) -> ParsedMessage[EdgeModel]:
        """Validate ``raw`` (JSON text or an already-decoded mapping) within ``limits``
        (default: the registry's)."""
        limits = limits or self.limits
        if isinstance(raw, (bytes, str)):
            check_size(_utf8_size(raw, limits.max_message_bytes), limits)
            try:
                document = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise MalformedJSON("message", [FieldProblem("(json)", str(exc))]) from None
            check_document(document, limits)
        else:
            document = dict(raw)
            check_document(document, limits)  # first: a huge mapping is not serialised
            # Not JSON at all (a TypeError): said by _validate, naming the problem.
            with contextlib.suppress(TypeError):
                check_size(len(orjson.dumps(document)), limits)
        if not isinstance(document, dict):
            raise InvalidInput("message", [FieldProblem("(message)", "must be a JSON object")])
        type_name = document.pop("type", None)
        version = document.pop("schema_version", 1)
        if not isinstance(type_name, str):
            raise InvalidInput(
                "message", [FieldProblem("type", "required: a string naming the message type")]
            )
        versions = self.models.get(type_name)
        if versions is None:
            raise UnknownEventType(
                "message",
                [
                    FieldProblem(
                        "type",
                        f"unknown type {type_name!r}; known: {', '.join(sorted(self.models))}",
                    )
                ],
            )
        if isinstance(version, bool) or not isinstance(version, int) or version not in versions:
            raise UnknownSchemaVersion(
                f"{type_name} message",
                [
                    FieldProblem(
                        "schema_version",
                        f"unknown schema version {version!r}; known: "
                        f"{', '.join(str(v) for v in sorted(versions))}",
                    )
                ],
            )
        try:
            body = _validate(versions[version], document)
        except ValidationError as exc:
            raise InvalidInput(f"{type_name} message", problems_of(exc)) from None
        newest = max(versions)
        current = version
        while current < newest:
            upgraded = self.upgrades[(type_name, current)](body.model_dump())
            current += 1
            body = _validate(versions[current], upgraded)
        return ParsedMessage(type=type_name, schema_version=current, body=body)


def _utf8_size(raw: bytes | str, limit: int) -> int:
    """The size of ``raw`` in UTF-8 bytes (exact up to ``limit``; text that is
    certainly larger is not encoded to find out by how much)."""
    if isinstance(raw, bytes):
        return len(raw)
    if len(raw) > limit:
        return len(raw)  # at least one byte per character
    return len(raw.encode("utf-8", errors="surrogatepass"))


def _validate(model: type[M], document: Mapping[str, Any]) -> M:
    """Validate ``document`` as JSON, whether it arrived as text or as a mapping.

    JSON mode gives a mapping and a JSON text the same (strict) treatment: a
    UUID may be given as a string (or, in process, as a UUID), an integer may not.
    """
    try:
        text = orjson.dumps(document)
    except TypeError as exc:
        # Only reachable from in-process callers passing non-JSON values.
        raise InvalidInput(
            "message", [FieldProblem("(message)", f"not representable as JSON: {exc}")]
        ) from None
    return model.model_validate_json(text)

"""Bounds on external input at the edge: size, string length, keys, items, depth.

A message is refused *before* it is validated against its model (and long
before anything is recorded) when it is larger than the edge allows — anywhere
in it, free-form JSON fields such as ``trigger_payload`` included:

=======================  =======================================  ==============
setting                  bounds                                   default
=======================  =======================================  ==============
``max_message_bytes``    the message as UTF-8 JSON text           1 MiB
``max_string_length``    each string, object keys included        65,536 chars
``max_keys``             the keys of each JSON object             1,000
``max_items``            the items of each JSON array             10,000
``max_depth``            nesting of objects and arrays            32 levels
=======================  =======================================  ==============

(the message object itself is depth 1). Numbers must be finite: ``inf``,
``-inf`` and ``nan`` are refused (JSON has no such values; orjson would write
them as ``null``). Each refusal is an
:class:`~safereplay.domain.errors.InputTooLarge` (or
:class:`~safereplay.domain.errors.InvalidInput` for a non-finite number) that
names where, the limit and the variable that sets it
(``SAFEREPLAY_EDGE_MAX_KEYS``...), never the value.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from safereplay.domain.errors import FieldProblem, InputTooLarge, InvalidInput
from safereplay.domain.settings import settings_error, variable_names

__all__ = ["EDGE_PREFIX", "EdgeLimits", "check_document", "check_size"]

EDGE_PREFIX = "SAFEREPLAY_EDGE_"


class EdgeLimits(BaseSettings):
    """Limits on each message at the edge. See ``docs/configuration.md`` ("Edge limits")."""

    model_config = SettingsConfigDict(
        env_prefix=EDGE_PREFIX, extra="forbid", frozen=True, hide_input_in_errors=True
    )

    max_message_bytes: int = Field(
        default=1_048_576, ge=64, description="Largest message, as UTF-8 JSON text (bytes)."
    )
    max_string_length: int = Field(
        default=65_536, ge=1, description="Longest string (object keys included), in characters."
    )
    max_keys: int = Field(default=1_000, ge=1, description="Most keys in one JSON object.")
    max_items: int = Field(default=10_000, ge=1, description="Most items in one JSON array.")
    max_depth: int = Field(
        default=32, ge=2, description="Deepest nesting of objects and arrays (the message is 1)."
    )

    @classmethod
    def from_env(cls, **overrides: Any) -> EdgeLimits:
        """Read ``SAFEREPLAY_EDGE_*`` (plus ``overrides``); errors become ConfigurationError."""
        try:
            return cls(**overrides)
        except ValidationError as exc:
            raise settings_error(exc, prefix=EDGE_PREFIX, known=variable_names(cls)) from None

    @classmethod
    def defaults(cls) -> EdgeLimits:
        """The documented defaults, whatever the environment says."""
        return cls.model_construct()


def _variable(setting: str) -> str:
    return f"{EDGE_PREFIX}{setting.upper()}"


def _too_large(location: str, what: str, limit: int, setting: str) -> InputTooLarge:
    return InputTooLarge(
        "message",
        [FieldProblem(location, f"{what}; the limit is {limit:,} ({_variable(setting)})")],
    )


def check_size(size: int, limits: EdgeLimits) -> None:
    """Refuse a message of ``size`` bytes (its JSON text) above ``max_message_bytes``."""
    if size > limits.max_message_bytes:
        raise _too_large(
            "(message)",
            f"{size:,} bytes of JSON",
            limits.max_message_bytes,
            "max_message_bytes",
        )


def _where(path: tuple[str | int, ...]) -> str:
    return ".".join(str(part) for part in path) or "(message)"


def check_document(document: Any, limits: EdgeLimits) -> None:
    """Refuse a decoded message that breaks a limit anywhere, or holds a number that is
    not finite. Iterative (a deep document cannot exhaust the stack), and it stops at
    the first problem, so a huge document costs no more than the walk up to it."""
    stack: list[tuple[Any, tuple[str | int, ...], int]] = [(document, (), 1)]
    while stack:
        value, path, depth = stack.pop()
        if isinstance(value, str):
            if len(value) > limits.max_string_length:
                raise _too_large(
                    _where(path),
                    f"a string of {len(value):,} characters",
                    limits.max_string_length,
                    "max_string_length",
                )
        elif isinstance(value, float):
            if not math.isfinite(value):
                problem = FieldProblem(_where(path), "numbers must be finite (not inf or nan)")
                raise InvalidInput("message", [problem])
        elif isinstance(value, dict | list | tuple):
            if depth > limits.max_depth:
                raise _too_large(
                    _where(path),
                    f"nested {depth} levels deep",
                    limits.max_depth,
                    "max_depth",
                )
            if isinstance(value, dict):
                if len(value) > limits.max_keys:
                    raise _too_large(
                        _where(path), f"{len(value):,} keys", limits.max_keys, "max_keys"
                    )
                for key, item in value.items():
                    key_text = str(key)
                    if len(key_text) > limits.max_string_length:
                        raise _too_large(
                            _where(path),
                            f"a key of {len(key_text):,} characters",
                            limits.max_string_length,
                            "max_string_length",
                        )
                    stack.append((item, (*path, key_text), depth + 1))
            else:
                if len(value) > limits.max_items:
                    raise _too_large(
                        _where(path), f"{len(value):,} items", limits.max_items, "max_items"
                    )
                stack.extend((item, (*path, index), depth + 1) for index, item in enumerate(value))

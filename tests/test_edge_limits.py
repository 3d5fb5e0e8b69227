"""Bounded input at the edge: each limit accepts what is within it and refuses, naming
the limit and its setting, what is beyond it; numbers must be finite."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from safereplay.domain import (
    AutomationApp,
    DomainSettings,
    EdgeLimits,
    InputTooLarge,
    InvalidInput,
)
from safereplay.domain.messages import automation_messages

REGISTRY = automation_messages()
WORKFLOW = "8f14e45f-ceea-467a-9af0-6a1b8c2b3a51"
PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def start_run(payload: Any) -> dict[str, Any]:
    return {
        "type": "StartRun",
        "workflow_id": WORKFLOW,
        "started_by": "ops",
        "trigger_payload": payload,
    }


def nested(depth: int) -> Any:
    """An object ``depth`` levels deep (1: ``{}``)."""
    value: Any = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def verdict(message: Any, limits: EdgeLimits) -> InvalidInput | None:
    """None if the message is accepted, else the error (as text and as a mapping alike)."""
    outcomes = []
    for raw in (orjson.dumps(message), message):
        try:
            REGISTRY.parse(raw, limits=limits)
            outcomes.append(None)
        except InvalidInput as exc:
            outcomes.append(exc)
    text, mapping = outcomes
    assert type(text) is type(mapping), "JSON text and a mapping are bounded alike"
    return text


@PROPERTY
@given(limit=st.integers(4, 40), keys=st.integers(0, 50))
def test_keys_per_object(limit: int, keys: int) -> None:
    error = verdict(start_run({f"k{i}": i for i in range(keys)}), EdgeLimits(max_keys=limit))
    if keys <= limit:
        assert error is None
    else:
        assert isinstance(error, InputTooLarge)
        assert f"trigger_payload: {keys:,} keys; the limit is {limit:,}" in str(error)
        assert "SAFEREPLAY_EDGE_MAX_KEYS" in str(error)


@PROPERTY
@given(limit=st.integers(1, 40), items=st.integers(0, 50))
def test_items_per_array(limit: int, items: int) -> None:
    error = verdict(start_run({"xs": list(range(items))}), EdgeLimits(max_items=limit))
    if items <= limit:
        assert error is None
    else:
        assert isinstance(error, InputTooLarge)
        assert f"trigger_payload.xs: {items:,} items; the limit is {limit:,}" in str(error)
        assert "SAFEREPLAY_EDGE_MAX_ITEMS" in str(error)


@PROPERTY
@given(limit=st.integers(40, 300), length=st.integers(0, 400), in_key=st.booleans())
def test_string_length(limit: int, length: int, in_key: bool) -> None:
    text = "é" * length  # characters, not bytes
    payload = {text: 1} if in_key else {"s": text}
    error = verdict(start_run(payload), EdgeLimits(max_string_length=limit))
    if length <= limit:
        assert error is None
    else:
        assert isinstance(error, InputTooLarge)
        assert f"of {length:,} characters; the limit is {limit:,}" in str(error)
        assert "SAFEREPLAY_EDGE_MAX_STRING_LENGTH" in str(error)


@PROPERTY
@given(limit=st.integers(2, 30), depth=st.integers(1, 40))
def test_depth(limit: int, depth: int) -> None:
    # The message is level 1, trigger_payload's object level 2, and so on.
    levels = 1 + depth
    error = verdict(start_run(nested(depth)), EdgeLimits(max_depth=limit))
    if levels <= limit:
        assert error is None
    else:
        assert isinstance(error, InputTooLarge)
        assert f"nested {limit + 1} levels deep; the limit is {limit:,}" in str(error)
        assert "SAFEREPLAY_EDGE_MAX_DEPTH" in str(error)


@PROPERTY
@given(limit=st.integers(150, 2000), length=st.integers(0, 2500))
def test_message_size(limit: int, length: int) -> None:
    message = start_run({"s": "x" * length})
    size = len(orjson.dumps(message))
    limits = EdgeLimits(max_message_bytes=limit)
    try:
        REGISTRY.parse(orjson.dumps(message), limits=limits)
        error: InvalidInput | None = None
    except InvalidInput as exc:
        error = exc
    if size <= limit:
        assert error is None
    else:
        assert isinstance(error, InputTooLarge)
        assert f"{size:,} bytes of JSON; the limit is {limit:,}" in str(error)
        assert "SAFEREPLAY_EDGE_MAX_MESSAGE_BYTES" in str(error)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=8,
)


@PROPERTY
@given(
    finite=st.floats(allow_nan=False, allow_infinity=False),
    bad=st.sampled_from([math.inf, -math.inf, math.nan]),
    around=JSON_VALUES,
    in_list=st.booleans(),
)
def test_numbers_must_be_finite(finite: float, bad: float, around: Any, in_list: bool) -> None:
    limits = EdgeLimits.defaults()
    assert verdict(start_run({"n": finite, "rest": around}), limits) is None
    placed = {"rest": around, "deep": [1, bad] if in_list else {"n": bad}}
    with pytest.raises(InvalidInput, match="must be finite") as refused:
        REGISTRY.parse(start_run(placed), limits=limits)
    where = "trigger_payload.deep.1" if in_list else "trigger_payload.deep.n"
    assert refused.value.problems[0].location == where


def test_the_reported_inputs_are_refused_and_nothing_is_recorded(
    sqlite_settings: Callable[..., DomainSettings], monkeypatch: pytest.MonkeyPatch
) -> None:
    app = AutomationApp(sqlite_settings())
    workflow = app.submit(
        {"type": "CreateWorkflow", "name": "w", "owner": "ops", "trigger": {"kind": "cron"}},
        source="test",
    )
    head = app.head_position()
    huge = {"x": "y" * (20 * 1024 * 1024)}
    wide = {str(i): i for i in range(300_000)}
    for payload, limit in ((huge, "MAX_STRING_LENGTH"), (wide, "MAX_KEYS")):
        message = {
            "type": "StartRun",
            "workflow_id": str(workflow),
            "started_by": "ops",
            "trigger_payload": payload,
        }
        with pytest.raises(InputTooLarge, match=f"SAFEREPLAY_EDGE_{limit}"):
            app.submit(message, source="test")
        with pytest.raises(InputTooLarge, match="SAFEREPLAY_EDGE_MAX_MESSAGE_BYTES"):
            app.submit(orjson.dumps(message), source="test")
    with pytest.raises(InvalidInput, match="must be finite"):
        app.submit(start_run({"a": float("inf")}) | {"workflow_id": str(workflow)}, source="t")
    assert app.head_position() == head, "nothing was recorded"

    monkeypatch.setenv("SAFEREPLAY_EDGE_MAX_KEYS", "4")
    strict = AutomationApp(sqlite_settings())
    assert strict.edge_limits.max_keys == 4
    with pytest.raises(InputTooLarge, match="trigger_payload: 5 keys; the limit is 4"):
        strict.submit(
            start_run(dict.fromkeys("abcde", 1)) | {"workflow_id": str(workflow)}, source="t"
        )


def test_limits_are_validated_settings(tmp_path: Path) -> None:
    from safereplay.domain import ConfigurationError

    defaults = EdgeLimits.defaults()
    assert (
        defaults.max_message_bytes,
        defaults.max_string_length,
        defaults.max_keys,
        defaults.max_items,
        defaults.max_depth,
    ) == (1_048_576, 65_536, 1_000, 10_000, 32)
    with pytest.raises(ConfigurationError, match="SAFEREPLAY_EDGE_MAX_DEPTH"):
        EdgeLimits.from_env(max_depth=0)
    with pytest.raises(ConfigurationError, match="did you mean SAFEREPLAY_EDGE_MAX_KEYS"):
        EdgeLimits.from_env(max_key=3)

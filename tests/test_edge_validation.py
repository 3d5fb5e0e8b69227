"""Validation at the edge: bad messages are refused with every problem named, and
nothing is recorded; valid messages that break a domain rule are refused too.

Each test submits to an app on SQLite and compares the store before and after
(highest position and row count). The backends' own behaviour is covered by
the contract tests in ``test_event_store_contract.py``.
"""

from __future__ import annotations

import base64
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing
from typing import Any
from uuid import UUID, uuid4

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from safereplay.domain import (
    AggregateNotFound,
    AutomationApp,
    CommandRejected,
    DomainError,
    DomainSettings,
    InvalidInput,
    KeyRing,
    MalformedJSON,
    UnknownEventType,
    UnknownSchemaVersion,
)
from safereplay.domain.automation import Run
from safereplay.domain.messages import automation_messages

# -- fixtures and helpers ------------------------------------------------------------------


@pytest.fixture
def app(sqlite_settings: Callable[..., DomainSettings]) -> Iterator[AutomationApp]:
    app = AutomationApp(sqlite_settings())
    yield app
    app.close()


def store_state(app: AutomationApp) -> tuple[int, int]:
    """(highest position, number of rows) read straight from the database file."""
    with closing(sqlite3.connect(app.settings.sqlite_path)) as connection:
        (rows,) = connection.execute("SELECT COUNT(*) FROM stored_events").fetchone()
    return app.head_position(), int(rows)


def key_texts(ring: KeyRing | None) -> list[str]:
    assert ring is not None
    texts = []
    for key in ring.keys.values():
        texts += [base64.b64encode(key).decode().rstrip("="), key.hex()]
    return texts


def rejected(
    app: AutomationApp, message: Any, error: type[DomainError] = InvalidInput
) -> DomainError:
    """Submit ``message``; it must raise ``error`` and leave the store as it was."""
    before = store_state(app)
    with pytest.raises(error) as caught:
        app.submit(message, source="test")
    assert store_state(app) == before, "a rejected message recorded something"
    for text in key_texts(app.key_ring):
        assert text not in str(caught.value)
    return caught.value


def locations(error: DomainError) -> set[str]:
    assert isinstance(error, InvalidInput)
    named = {problem.location for problem in error.problems}
    for location in named:
        assert location in str(error), "the message names every problem"
    return named


def create_workflow(app: AutomationApp, **fields: Any) -> UUID:
    message = {"type": "CreateWorkflow", "name": "Lead routing", "owner": "ops@example.com"}
    message["trigger"] = {"kind": "webhook", "path": "/hooks/leads"}
    message.update(fields)
    return app.submit(message, source="test")


def add_step(app: AutomationApp, workflow_id: UUID, step_name: str = "notify") -> None:
    app.submit(
        {
            "type": "AddStep",
            "workflow_id": str(workflow_id),
            "step_name": step_name,
            "action": "slack.post",
            "config": {"channel": "#sales"},
        },
        source="test",
    )


def published_workflow(app: AutomationApp) -> UUID:
    workflow_id = create_workflow(app)
    add_step(app, workflow_id)
    app.submit({"type": "PublishWorkflow", "workflow_id": str(workflow_id)}, source="test")
    return workflow_id


def start_run(app: AutomationApp, workflow_id: UUID) -> UUID:
    return app.submit(
        {"type": "StartRun", "workflow_id": str(workflow_id), "started_by": "webhook"},
        source="test",
    )


# -- not JSON, not a message -------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    ["", "{", '{"type": "CreateWorkflow",}', "{'type': 'CreateWorkflow'}", b"\xff\xfe", "NaN x"],
    ids=["empty", "unclosed", "trailing comma", "single quotes", "not UTF-8", "garbage"],
)
def test_malformed_json_is_refused(app: AutomationApp, raw: str | bytes) -> None:
    error = rejected(app, raw, MalformedJSON)

    assert locations(error) == {"(json)"}
    assert str(error).startswith("invalid message: (json): ")


@pytest.mark.parametrize("raw", ["[]", "42", '"CreateWorkflow"', "null"])
def test_json_that_is_not_an_object_is_refused(app: AutomationApp, raw: str) -> None:
    error = rejected(app, raw)

    assert str(error) == "invalid message: (message): must be a JSON object"


@pytest.mark.parametrize("message", [{"name": "x"}, {"type": 7}, {"type": None}])
def test_a_message_must_name_its_type(app: AutomationApp, message: dict[str, Any]) -> None:
    error = rejected(app, message)

    assert locations(error) == {"type"}


def test_an_unknown_message_type_is_refused_with_the_known_ones(app: AutomationApp) -> None:
    error = rejected(
        app, {"type": "DeleteEverything", "workflow_id": str(uuid4())}, UnknownEventType
    )

    assert "unknown type 'DeleteEverything'" in str(error)
    assert "CreateWorkflow" in str(error) and "StepFailed" in str(error)


@pytest.mark.parametrize(
    ("message", "known"),
    [
        ({"type": "StepFailed", "schema_version": 3}, "known: 1, 2"),
        ({"type": "CreateWorkflow", "schema_version": 2}, "known: 1"),
        ({"type": "CreateWorkflow", "schema_version": 0}, "known: 1"),
        ({"type": "CreateWorkflow", "schema_version": "1"}, "known: 1"),
        ({"type": "CreateWorkflow", "schema_version": True}, "known: 1"),
        ({"type": "CreateWorkflow", "schema_version": 1.0}, "known: 1"),
    ],
    ids=["newer", "only v1", "zero", "string", "boolean", "float"],
)
def test_an_unknown_schema_version_is_refused(
    app: AutomationApp, message: dict[str, Any], known: str
) -> None:
    error = rejected(app, message, UnknownSchemaVersion)

    assert locations(error) == {"schema_version"}
    assert known in str(error)


def test_a_mapping_with_values_json_cannot_hold_is_refused(app: AutomationApp) -> None:
    message = {"type": "CreateWorkflow", "name": "n", "owner": "o", "trigger": {"at": {1, 2}}}

    error = rejected(app, message)

    assert locations(error) == {"(message)"}
    assert "not representable as JSON" in str(error)


def test_an_in_process_mapping_may_carry_uuid_objects(app: AutomationApp) -> None:
    workflow_id = create_workflow(app)

    app.submit({"type": "ArchiveWorkflow", "workflow_id": workflow_id, "reason": "r"}, source="t")

    assert app.workflow(workflow_id).archived


# -- every invalid field is named ----------------------------------------------------------------


def test_missing_fields_are_all_named(app: AutomationApp) -> None:
    error = rejected(app, {"type": "CreateWorkflow", "description": "no name, owner or trigger"})

    assert locations(error) == {"name", "owner", "trigger"}
    assert "Field required" in str(error)


def test_extra_fields_are_all_named(app: AutomationApp) -> None:
    message = {"type": "PublishWorkflow", "workflow_id": str(uuid4()), "force": True, "by": "me"}

    error = rejected(app, message)

    assert locations(error) == {"force", "by"}
    assert "Extra inputs are not permitted" in str(error)


def test_mistyped_and_out_of_range_fields_are_all_named(app: AutomationApp) -> None:
    message = {
        "type": "AddStep",
        "workflow_id": "not-a-uuid",
        "step_name": "",
        "action": "Send Email!",
        "config": ["not", "an", "object"],
        "timeout_seconds": 0,
    }

    error = rejected(app, message)

    assert locations(error) == {"workflow_id", "step_name", "action", "config", "timeout_seconds"}


def test_missing_extra_and_mistyped_fields_are_named_together(app: AutomationApp) -> None:
    message = {
        "type": "StepFailed",
        "schema_version": 2,
        "run_id": str(uuid4()),
        "attempt": "2",
        "duration_ms": -1,
        "error_code": "HTTP_502",
        "error_message": "bad gateway",
        "retryable": "yes",
        "stack_trace": "...",
    }

    error = rejected(app, message)

    assert locations(error) == {"step_name", "attempt", "duration_ms", "retryable", "stack_trace"}
    assert str(error).startswith("invalid StepFailed message: ")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("timeout_seconds", "30"),
        ("timeout_seconds", True),
        ("timeout_seconds", 30.0),
        ("step_name", 12),
        ("config", "{}"),
    ],
)
def test_values_are_not_coerced_loosely(app: AutomationApp, field: str, value: Any) -> None:
    """A JSON true is not the integer 1 and "30" is not a number: strict validation."""
    message = {
        "type": "AddStep",
        "workflow_id": str(create_workflow(app)),
        "step_name": "notify",
        "action": "slack.post",
        "timeout_seconds": 30,
        field: value,
    }

    error = rejected(app, message)

    assert locations(error) == {field}


@pytest.mark.parametrize("value", [0, 1, "true", "no"])
def test_a_boolean_must_be_a_json_boolean(app: AutomationApp, value: Any) -> None:
    message = {
        "type": "StepFailed",
        "schema_version": 2,
        "run_id": str(uuid4()),
        "step_name": "notify",
        "attempt": 1,
        "duration_ms": 10,
        "error_code": "HTTP_502",
        "error_message": "bad gateway",
        "retryable": value,
    }

    error = rejected(app, message)

    assert locations(error) == {"retryable"}


CREATE_FIELDS = {
    "name": ("Lead routing", 12),
    "owner": ("ops@example.com", ["ops"]),
    "trigger": ({"kind": "webhook"}, "webhook"),
}
OPTIONAL = {"description": ("Routes leads", 3.5)}
extra_names = st.from_regex(r"[a-z][a-z_]{0,12}", fullmatch=True).filter(
    lambda n: n not in CREATE_FIELDS and n not in OPTIONAL and n not in ("type", "schema_version")
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    missing=st.sets(st.sampled_from(sorted(CREATE_FIELDS))),
    mistyped=st.sets(st.sampled_from(sorted(CREATE_FIELDS) + sorted(OPTIONAL))),
    extras=st.sets(extra_names, max_size=3),
)
def test_every_invalid_field_is_named_and_nothing_is_recorded(
    app: AutomationApp, missing: set[str], mistyped: set[str], extras: set[str]
) -> None:
    fields = {**CREATE_FIELDS, **OPTIONAL}
    message: dict[str, Any] = {"type": "CreateWorkflow"}
    for name, (good, bad) in fields.items():
        if name not in missing:
            message[name] = bad if name in mistyped else good
    message.update(dict.fromkeys(extras, "surplus"))
    expected = missing | (mistyped - missing) | extras

    if not expected:
        before = store_state(app)[0]
        app.submit(message, source="test")
        assert store_state(app)[0] == before + 1
        return
    error = rejected(app, message)

    assert locations(error) == expected


def test_the_registry_reports_problems_with_locations_and_messages() -> None:
    registry = automation_messages()

    with pytest.raises(InvalidInput) as caught:
        registry.parse({"type": "CompleteRun", "run_id": str(uuid4()), "status": "exploded"})

    (duration, status) = sorted(caught.value.problems)
    assert duration.location == "duration_ms" and duration.message == "Field required"
    assert status.location == "status"
    assert "'succeeded', 'failed' or 'cancelled'" in status.message
    assert caught.value.what == "CompleteRun message"


# -- the edge upgrades old message versions -------------------------------------------------------


def test_a_version_1_step_failed_message_is_recorded_as_retryable(app: AutomationApp) -> None:
    run_id = start_run(app, published_workflow(app))
    report = {
        "type": "StepFailed",
        "run_id": str(run_id),
        "step_name": "notify",
        "attempt": 1,
        "duration_ms": 31,
        "error_code": "HTTP_502",
        "error_message": "bad gateway",
    }

    app.submit(report, source="executor-legacy")

    (envelope,) = app.read(after=app.head_position() - 1)
    assert isinstance(envelope.event, Run.StepFailed)
    assert envelope.event.retryable is True
    assert envelope.schema_version == 2, "recorded by this code, as a version-2 event"


def test_whitespace_around_strings_is_stripped(app: AutomationApp) -> None:
    workflow_id = create_workflow(app, name="  Lead routing \n")

    assert app.workflow(workflow_id).name == "Lead routing"


# -- valid messages that the domain refuses --------------------------------------------------------


def test_a_command_for_a_missing_aggregate_is_refused(app: AutomationApp) -> None:
    missing = uuid4()

    error = rejected(
        app, {"type": "PublishWorkflow", "workflow_id": str(missing)}, AggregateNotFound
    )

    assert str(error) == f"workflow {missing} does not exist"


def test_a_command_for_the_wrong_kind_of_aggregate_is_refused(app: AutomationApp) -> None:
    run_id = start_run(app, published_workflow(app))

    error = rejected(
        app, {"type": "PublishWorkflow", "workflow_id": str(run_id)}, AggregateNotFound
    )

    assert str(error) == f"{run_id} is a run, not a workflow"


def test_a_workflow_without_steps_cannot_be_published(app: AutomationApp) -> None:
    workflow_id = create_workflow(app)

    error = rejected(
        app, {"type": "PublishWorkflow", "workflow_id": str(workflow_id)}, CommandRejected
    )

    assert str(error) == f"workflow {workflow_id} has no steps: add one before publishing"
    assert app.workflow(workflow_id).published is False


def test_a_run_cannot_start_on_an_unpublished_workflow(app: AutomationApp) -> None:
    workflow_id = create_workflow(app)
    add_step(app, workflow_id)

    error = rejected(
        app,
        {"type": "StartRun", "workflow_id": str(workflow_id), "started_by": "webhook"},
        CommandRejected,
    )

    assert "is not published: cannot start a run" in str(error)


def test_step_names_are_unique_within_a_workflow(app: AutomationApp) -> None:
    workflow_id = create_workflow(app)
    add_step(app, workflow_id, "notify")

    error = rejected(
        app,
        {
            "type": "AddStep",
            "workflow_id": str(workflow_id),
            "step_name": "notify",
            "action": "send.email",
        },
        CommandRejected,
    )

    assert "already has a step named 'notify'" in str(error)


def test_an_archived_workflow_accepts_no_further_commands(app: AutomationApp) -> None:
    workflow_id = published_workflow(app)
    app.submit(
        {"type": "ArchiveWorkflow", "workflow_id": str(workflow_id), "reason": "replaced"},
        source="test",
    )

    for message in (
        {"type": "ArchiveWorkflow", "workflow_id": str(workflow_id), "reason": "again"},
        {"type": "PublishWorkflow", "workflow_id": str(workflow_id)},
        {"type": "StartRun", "workflow_id": str(workflow_id), "started_by": "webhook"},
    ):
        assert "is archived" in str(rejected(app, message, CommandRejected))


def test_a_completed_run_accepts_no_further_reports(app: AutomationApp) -> None:
    run_id = start_run(app, published_workflow(app))
    app.submit(
        {"type": "CompleteRun", "run_id": str(run_id), "status": "succeeded", "duration_ms": 5},
        source="test",
    )

    error = rejected(
        app,
        {
            "type": "StepSucceeded",
            "run_id": str(run_id),
            "step_name": "notify",
            "attempt": 1,
            "duration_ms": 3,
        },
        CommandRejected,
    )

    assert str(error) == f"run {run_id} is succeeded: cannot record a step result"

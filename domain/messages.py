"""Edge models of the reference domain's messages (commands and executor reports)."""

from __future__ import annotations

from typing import Any, Literal
from uuid import UUID

from pydantic import Field

from safereplay.domain.edge import EdgeModel, MessageRegistry

__all__ = [
    "AddStep",
    "ArchiveWorkflow",
    "CompleteRun",
    "CreateWorkflow",
    "PublishWorkflow",
    "StartRun",
    "StepFailedV1",
    "StepFailedV2",
    "StepRetried",
    "StepSucceeded",
    "automation_messages",
]

Name = Field(min_length=1, max_length=200)
JSONObject = dict[str, Any]


class CreateWorkflow(EdgeModel):
    name: str = Field(min_length=1, max_length=200)
    owner: str = Field(min_length=1, max_length=200)
    description: str = Field(default="", max_length=4000)
    trigger: JSONObject


class AddStep(EdgeModel):
    workflow_id: UUID
    step_name: str = Field(min_length=1, max_length=200)
    action: str = Field(min_length=1, max_length=200, pattern=r"^[a-z0-9_.-]+$")
    config: JSONObject = Field(default_factory=dict)
    timeout_seconds: int = Field(default=300, ge=1, le=86_400)


class PublishWorkflow(EdgeModel):
    workflow_id: UUID
    note: str = Field(default="", max_length=2000)


class ArchiveWorkflow(EdgeModel):
    workflow_id: UUID
    reason: str = Field(min_length=1, max_length=2000)


class StartRun(EdgeModel):
    workflow_id: UUID
    trigger_payload: JSONObject = Field(default_factory=dict)
    started_by: str = Field(min_length=1, max_length=200)


class StepSucceeded(EdgeModel):
    run_id: UUID
    step_name: str = Field(min_length=1, max_length=200)
    attempt: int = Field(ge=1, le=1000)
    duration_ms: int = Field(ge=0)
    output: JSONObject = Field(default_factory=dict)


class StepFailedV1(EdgeModel):
    run_id: UUID
    step_name: str = Field(min_length=1, max_length=200)
    attempt: int = Field(ge=1, le=1000)
    duration_ms: int = Field(ge=0)
    error_code: str = Field(min_length=1, max_length=100)
    error_message: str = Field(max_length=4000)


class StepFailedV2(StepFailedV1):
    retryable: bool


class StepRetried(EdgeModel):
    run_id: UUID
    step_name: str = Field(min_length=1, max_length=200)
    attempt: int = Field(ge=2, le=1000)
    delay_ms: int = Field(ge=0)


class CompleteRun(EdgeModel):
    run_id: UUID
    status: Literal["succeeded", "failed", "cancelled"]
    duration_ms: int = Field(ge=0)
    summary: JSONObject = Field(default_factory=dict)


def _step_failed_v1_to_v2(body: dict[str, Any]) -> dict[str, Any]:
    # Executors that predate 'retryable' only reported retryable failures.
    return {**body, "retryable": True}


def automation_messages() -> MessageRegistry:
    """The registry of every message the reference domain accepts."""
    registry = MessageRegistry()
    simple: list[tuple[str, type[EdgeModel]]] = [
        ("CreateWorkflow", CreateWorkflow),
        ("AddStep", AddStep),
        ("PublishWorkflow", PublishWorkflow),
        ("ArchiveWorkflow", ArchiveWorkflow),
        ("StartRun", StartRun),
        ("StepSucceeded", StepSucceeded),
        ("StepRetried", StepRetried),
        ("CompleteRun", CompleteRun),
    ]
    for name, model in simple:
        registry.register(name, 1, model)
    registry.register("StepFailed", 1, StepFailedV1)
    registry.register("StepFailed", 2, StepFailedV2)
    registry.register_upgrade("StepFailed", 1, _step_failed_v1_to_v2)
    return registry

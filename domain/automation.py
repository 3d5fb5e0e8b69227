"""Reference domain: a no-code automation platform (workflows and their runs).

Used by the demo, the tests, the docs and the benchmarks. Payloads are shaped
like a real platform's: step configurations, trigger payloads, step outputs and
error details, a few hundred bytes per event.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from safereplay.domain.errors import CommandRejected
from safereplay.domain.events import EnvelopedAggregate

__all__ = ["Run", "Workflow"]


class Workflow(EnvelopedAggregate):
    """A workflow definition: a trigger and ordered steps; published, then archived."""

    class Created(EnvelopedAggregate.Created):
        name: str
        owner: str
        description: str
        trigger: dict[str, Any]

    class StepAdded(EnvelopedAggregate.Event):
        step_name: str
        action: str
        config: dict[str, Any]
        timeout_seconds: int

        def apply(self, aggregate: Any) -> None:
            aggregate.steps.append(
                {"name": self.step_name, "action": self.action, "config": self.config}
            )

    class Published(EnvelopedAggregate.Event):
        revision: int
        note: str

        def apply(self, aggregate: Any) -> None:
            aggregate.revision = self.revision
            aggregate.published = True

    class Archived(EnvelopedAggregate.Event):
        reason: str

        def apply(self, aggregate: Any) -> None:
            aggregate.archived = True

    def __init__(self, name: str, owner: str, description: str, trigger: dict[str, Any]) -> None:
        self.name = name
        self.owner = owner
        self.description = description
        self.trigger = trigger
        self.steps: list[dict[str, Any]] = []
        self.revision = 0
        self.published = False
        self.archived = False

    @classmethod
    def create(
        cls, *, name: str, owner: str, description: str, trigger: dict[str, Any]
    ) -> Workflow:
        workflow: Workflow = cls._create(
            cls.Created, name=name, owner=owner, description=description, trigger=trigger
        )
        return workflow

    def _require_active(self, action: str) -> None:
        if self.archived:
            raise CommandRejected(f"workflow {self.id} is archived: cannot {action}")

    def add_step(
        self, *, step_name: str, action: str, config: dict[str, Any], timeout_seconds: int
    ) -> None:
        self._require_active("add a step")
        if any(step["name"] == step_name for step in self.steps):
            raise CommandRejected(f"workflow {self.id} already has a step named {step_name!r}")
        self.trigger_event(
            self.StepAdded,
            step_name=step_name,
            action=action,
            config=config,
            timeout_seconds=timeout_seconds,
        )

    def publish(self, *, note: str) -> None:
        self._require_active("publish")
        if not self.steps:
            raise CommandRejected(f"workflow {self.id} has no steps: add one before publishing")
        self.trigger_event(self.Published, revision=self.revision + 1, note=note)

    def archive(self, *, reason: str) -> None:
        self._require_active("archive it again")
        self.trigger_event(self.Archived, reason=reason)


class Run(EnvelopedAggregate):
    """One execution of a published workflow."""

    class Started(EnvelopedAggregate.Created):
        workflow_id: UUID
        workflow_revision: int
        trigger_payload: dict[str, Any]
        started_by: str

    class StepSucceeded(EnvelopedAggregate.Event):
        step_name: str
        attempt: int
        duration_ms: int
        output: dict[str, Any]

        def apply(self, aggregate: Any) -> None:
            aggregate.succeeded_steps.append(self.step_name)
            aggregate.attempts[self.step_name] = self.attempt

    class StepFailed(EnvelopedAggregate.Event):
        # Version 2 added 'retryable'; version-1 events read as retryable=True.
        class_version = 2
        step_name: str
        attempt: int
        duration_ms: int
        error_code: str
        error_message: str
        retryable: bool

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state["retryable"] = True

        def apply(self, aggregate: Any) -> None:
            aggregate.failures += 1
            aggregate.attempts[self.step_name] = self.attempt

    class StepRetried(EnvelopedAggregate.Event):
        step_name: str
        attempt: int
        delay_ms: int

        def apply(self, aggregate: Any) -> None:
            aggregate.attempts[self.step_name] = self.attempt

    class Completed(EnvelopedAggregate.Event):
        status: str
        duration_ms: int
        summary: dict[str, Any]

        def apply(self, aggregate: Any) -> None:
            aggregate.status = self.status

    def __init__(
        self,
        workflow_id: UUID,
        workflow_revision: int,
        trigger_payload: dict[str, Any],
        started_by: str,
    ) -> None:
        self.workflow_id = workflow_id
        self.workflow_revision = workflow_revision
        self.trigger_payload = trigger_payload
        self.started_by = started_by
        self.status = "running"
        self.succeeded_steps: list[str] = []
        self.attempts: dict[str, int] = {}
        self.failures = 0

    @classmethod
    def start(cls, *, workflow: Workflow, trigger_payload: dict[str, Any], started_by: str) -> Run:
        if workflow.archived:
            raise CommandRejected(f"workflow {workflow.id} is archived: cannot start a run")
        if not workflow.published:
            raise CommandRejected(f"workflow {workflow.id} is not published: cannot start a run")
        run: Run = cls._create(
            cls.Started,
            workflow_id=workflow.id,
            workflow_revision=workflow.revision,
            trigger_payload=trigger_payload,
            started_by=started_by,
        )
        return run

    def _require_running(self, action: str) -> None:
        if self.status != "running":
            raise CommandRejected(f"run {self.id} is {self.status}: cannot {action}")

    def step_succeeded(
        self, *, step_name: str, attempt: int, duration_ms: int, output: dict[str, Any]
    ) -> None:
        self._require_running("record a step result")
        self.trigger_event(
            self.StepSucceeded,
            step_name=step_name,
            attempt=attempt,
            duration_ms=duration_ms,
            output=output,
        )

    def step_failed(
        self,
        *,
        step_name: str,
        attempt: int,
        duration_ms: int,
        error_code: str,
        error_message: str,
        retryable: bool,
    ) -> None:
        self._require_running("record a step failure")
        self.trigger_event(
            self.StepFailed,
            step_name=step_name,
            attempt=attempt,
            duration_ms=duration_ms,
            error_code=error_code,
            error_message=error_message,
            retryable=retryable,
        )

    def retry_step(self, *, step_name: str, attempt: int, delay_ms: int) -> None:
        self._require_running("retry a step")
        self.trigger_event(
            self.StepRetried, step_name=step_name, attempt=attempt, delay_ms=delay_ms
        )

    def complete(self, *, status: str, duration_ms: int, summary: dict[str, Any]) -> None:
        self._require_running("complete it")
        self.trigger_event(self.Completed, status=status, duration_ms=duration_ms, summary=summary)

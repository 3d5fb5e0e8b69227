"""The reference application: validated messages in, enveloped sealed events out."""

from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property
from typing import Any, TypeVar
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError

from safereplay.domain.application import EventStoreApplication
from safereplay.domain.automation import Run, Workflow
from safereplay.domain.edge import EdgeModel
from safereplay.domain.envelope import recording
from safereplay.domain.errors import AggregateNotFound
from safereplay.domain.limits import EdgeLimits
from safereplay.domain.messages import (
    AddStep,
    ArchiveWorkflow,
    CompleteRun,
    CreateWorkflow,
    PublishWorkflow,
    StartRun,
    StepFailedV2,
    StepRetried,
    StepSucceeded,
    automation_messages,
)

__all__ = ["AutomationApp"]

A = TypeVar("A", Workflow, Run)


class AutomationApp(EventStoreApplication):
    """Workflows and runs of the no-code automation platform.

    :meth:`submit` is the edge: JSON in, validated with pydantic, then handled.
    The typed methods are for trusted in-process callers and take the same models.
    """

    messages = automation_messages()

    def submit(
        self,
        raw: bytes | str | Mapping[str, Any],
        *,
        source: str,
        correlation_id: UUID | None = None,
        causation_id: UUID | None = None,
    ) -> UUID:
        """Validate and handle one message; returns the id of the aggregate it touched.

        Raises :class:`~safereplay.domain.errors.InvalidInput` (every bad field listed; its
        :class:`~safereplay.domain.errors.InputTooLarge` for a message beyond
        :attr:`edge_limits`) or
        :class:`~safereplay.domain.errors.CommandRejected`; in both cases nothing is recorded.
        """
        message = self.messages.parse(raw, limits=self.edge_limits)
        with recording(source=source, correlation_id=correlation_id, causation_id=causation_id):
            return self.handle(message.body)

    @cached_property
    def edge_limits(self) -> EdgeLimits:
        """Bounds on each submitted message (``SAFEREPLAY_EDGE_*``, read once)."""
        return EdgeLimits.from_env()

    def handle(self, body: EdgeModel) -> UUID:
        """Handle an already validated message body."""
        if isinstance(body, CreateWorkflow):
            workflow = Workflow.create(
                name=body.name,
                owner=body.owner,
                description=body.description,
                trigger=body.trigger,
            )
            self.save(workflow)
            return workflow.id
        if isinstance(body, AddStep):
            workflow = self._get(Workflow, body.workflow_id)
            workflow.add_step(
                step_name=body.step_name,
                action=body.action,
                config=body.config,
                timeout_seconds=body.timeout_seconds,
            )
            self.save(workflow)
            return workflow.id
        if isinstance(body, PublishWorkflow):
            workflow = self._get(Workflow, body.workflow_id)
            workflow.publish(note=body.note)
            self.save(workflow)
            return workflow.id
        if isinstance(body, ArchiveWorkflow):
            workflow = self._get(Workflow, body.workflow_id)
            workflow.archive(reason=body.reason)
            self.save(workflow)
            return workflow.id
        if isinstance(body, StartRun):
            run = Run.start(
                workflow=self._get(Workflow, body.workflow_id),
                trigger_payload=body.trigger_payload,
                started_by=body.started_by,
            )
            self.save(run)
            return run.id
        if isinstance(body, StepSucceeded):
            run = self._get(Run, body.run_id)
            run.step_succeeded(
                step_name=body.step_name,
                attempt=body.attempt,
                duration_ms=body.duration_ms,
                output=body.output,
            )
            self.save(run)
            return run.id
        if isinstance(body, StepFailedV2):
            run = self._get(Run, body.run_id)
            run.step_failed(
                step_name=body.step_name,
                attempt=body.attempt,
                duration_ms=body.duration_ms,
                error_code=body.error_code,
                error_message=body.error_message,
                retryable=body.retryable,
            )
            self.save(run)
            return run.id
        if isinstance(body, StepRetried):
            run = self._get(Run, body.run_id)
            run.retry_step(step_name=body.step_name, attempt=body.attempt, delay_ms=body.delay_ms)
            self.save(run)
            return run.id
        if isinstance(body, CompleteRun):
            run = self._get(Run, body.run_id)
            run.complete(status=body.status, duration_ms=body.duration_ms, summary=body.summary)
            self.save(run)
            return run.id
        raise TypeError(f"no handler for {type(body).__qualname__}")

    def _get(self, kind: type[A], aggregate_id: UUID) -> A:
        try:
            aggregate: object = self.repository.get(aggregate_id)
        except AggregateNotFoundError:
            raise AggregateNotFound(
                f"{kind.__name__.lower()} {aggregate_id} does not exist"
            ) from None
        if not isinstance(aggregate, kind):
            raise AggregateNotFound(
                f"{aggregate_id} is a {type(aggregate).__name__.lower()}, "
                f"not a {kind.__name__.lower()}"
            )
        return aggregate

    def workflow(self, workflow_id: UUID) -> Workflow:
        return self._get(Workflow, workflow_id)

    def run(self, run_id: UUID) -> Run:
        return self._get(Run, run_id)

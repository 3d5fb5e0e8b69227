"""Reference projections over the reference domain (workflows and their runs).

- :class:`RunStatusBoard` (``run_status``): one row per run, written by that
  run's events only.
- :class:`WorkflowStatistics` (``workflow_stats``): one row per workflow,
  aggregated across all its runs with commutative merges, so partitions of the
  log (runs of one workflow fall in different partitions) can be applied
  concurrently and still add up.
- :class:`FailedSteps` (``failed_steps``): one row per failed step attempt.

Documented in ``docs/projections.md``.
"""

from __future__ import annotations

from safereplay.domain.automation import Run, Workflow
from safereplay.domain.envelope import Envelope, payload_value
from safereplay.projections.batch import BatchState
from safereplay.projections.projection import Projection, handles
from safereplay.projections.tables import Table

__all__ = ["REFERENCE_PROJECTIONS", "FailedSteps", "RunStatusBoard", "WorkflowStatistics"]


#: ``envelope.payload[name]``, without copying the state into a payload first.
_payload = payload_value


class RunStatusBoard(Projection):
    """One row per run: its workflow, status, steps succeeded, failures, last error."""

    name = "run_status"
    version = 1
    tables = (
        Table(
            "runs",
            key={"run_id": "text"},
            values={
                "workflow_id": "text",
                "status": "text",
                "steps_succeeded": "integer",
                "failures": "integer",
                "last_error_code": "text",
                "updated_at": "timestamp",
            },
        ),
    )

    @handles(Run.Started)
    def started(self, envelope: Envelope, state: BatchState) -> None:
        state.put(
            "runs",
            envelope.aggregate_id,
            {
                "workflow_id": _payload(envelope, "workflow_id"),
                "status": "running",
                "steps_succeeded": 0,
                "failures": 0,
                "last_error_code": None,
                "updated_at": envelope.occurred_at,
            },
        )

    @handles(Run.StepSucceeded)
    def step_succeeded(self, envelope: Envelope, state: BatchState) -> None:
        state.merge(
            "runs",
            envelope.aggregate_id,
            add={"steps_succeeded": 1},
            set={"updated_at": envelope.occurred_at},
        )

    @handles(Run.StepFailed)
    def step_failed(self, envelope: Envelope, state: BatchState) -> None:
        state.merge(
            "runs",
            envelope.aggregate_id,
            add={"failures": 1},
            set={
                "last_error_code": _payload(envelope, "error_code"),
                "updated_at": envelope.occurred_at,
            },
        )

    @handles(Run.Completed)
    def completed(self, envelope: Envelope, state: BatchState) -> None:
        state.merge(
            "runs",
            envelope.aggregate_id,
            set={"status": _payload(envelope, "status"), "updated_at": envelope.occurred_at},
        )


_COUNTERS = (
    "runs_started",
    "runs_succeeded",
    "runs_failed",
    "runs_cancelled",
    "step_failures",
    "retries",
    "total_duration_ms",
)


class WorkflowStatistics(Projection):
    """Per workflow, across all its runs: runs started / succeeded / failed /
    cancelled, step failures, retries, total run duration, last run start.

    Run events other than ``Started`` do not carry the workflow id; the
    ``run_workflows`` table (one row per run, written by that run's ``Started``)
    maps a run to its workflow. Every ``workflows`` row is written with merges
    only, so the projection is partitionable.
    """

    name = "workflow_stats"
    version = 1
    tables = (
        Table(
            "workflows",
            key={"workflow_id": "text"},
            values={
                "name": "text",
                "runs_started": "integer",
                "runs_succeeded": "integer",
                "runs_failed": "integer",
                "runs_cancelled": "integer",
                "step_failures": "integer",
                "retries": "integer",
                "total_duration_ms": "integer",
                "last_run_at": "timestamp",
            },
        ),
        Table("run_workflows", key={"run_id": "text"}, values={"workflow_id": "text"}),
    )

    @handles(Workflow.Created)
    def workflow_created(self, envelope: Envelope, state: BatchState) -> None:
        # Adding 0 makes the counters 0 rather than null, and commutes with the runs.
        state.merge(
            "workflows",
            envelope.aggregate_id,
            set={"name": _payload(envelope, "name")},
            add=dict.fromkeys(_COUNTERS, 0),
        )

    @handles(Run.Started)
    def run_started(self, envelope: Envelope, state: BatchState) -> None:
        workflow_id = _payload(envelope, "workflow_id")
        state.put("run_workflows", envelope.aggregate_id, {"workflow_id": workflow_id})
        state.merge(
            "workflows",
            workflow_id,
            add={"runs_started": 1},
            maximum={"last_run_at": envelope.occurred_at},
        )

    def _workflow_of(self, envelope: Envelope, state: BatchState) -> str | None:
        row = state.get("run_workflows", envelope.aggregate_id)
        return None if row is None else row["workflow_id"]

    @handles(Run.StepFailed)
    def step_failed(self, envelope: Envelope, state: BatchState) -> None:
        workflow_id = self._workflow_of(envelope, state)
        if workflow_id is not None:
            state.merge("workflows", workflow_id, add={"step_failures": 1})

    @handles(Run.StepRetried)
    def step_retried(self, envelope: Envelope, state: BatchState) -> None:
        workflow_id = self._workflow_of(envelope, state)
        if workflow_id is not None:
            state.merge("workflows", workflow_id, add={"retries": 1})

    @handles(Run.Completed)
    def run_completed(self, envelope: Envelope, state: BatchState) -> None:
        workflow_id = self._workflow_of(envelope, state)
        if workflow_id is None:
            return
        outcome = {
            "succeeded": "runs_succeeded",
            "failed": "runs_failed",
            "cancelled": "runs_cancelled",
        }.get(_payload(envelope, "status"))
        add = {"total_duration_ms": int(_payload(envelope, "duration_ms"))}
        if outcome is not None:
            add[outcome] = 1
        state.merge("workflows", workflow_id, add=add)


class FailedSteps(Projection):
    """One row per failed step attempt: run, step, attempt, error code, retryable."""

    name = "failed_steps"
    version = 1
    #: Each row is put whole, keyed by its event: applying an event again is a no-op.
    replay_safe = True
    tables = (
        Table(
            "failures",
            key={"run_id": "text", "step_name": "text", "attempt": "integer"},
            values={
                "error_code": "text",
                "error_message": "text",
                "retryable": "boolean",
                "duration_ms": "integer",
                "failed_at": "timestamp",
            },
        ),
    )

    @handles(Run.StepFailed)
    def step_failed(self, envelope: Envelope, state: BatchState) -> None:
        state.put(
            "failures",
            (envelope.aggregate_id, _payload(envelope, "step_name"), _payload(envelope, "attempt")),
            {
                "error_code": _payload(envelope, "error_code"),
                "error_message": _payload(envelope, "error_message"),
                "retryable": _payload(envelope, "retryable"),
                "duration_ms": _payload(envelope, "duration_ms"),
                "failed_at": envelope.occurred_at,
            },
        )


#: The reference projections, in the order the demo builds them.
REFERENCE_PROJECTIONS: tuple[type[Projection], ...] = (
    RunStatusBoard,
    WorkflowStatistics,
    FailedSteps,
)

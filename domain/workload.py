"""Deterministic workloads of the reference domain, for the demo, tests and benchmarks.

One plan, two ways to play it:

- **planning** (:func:`plan_workflow`, :func:`plan_run`): what happens, drawn from a
  seeded :class:`random.Random` (actions, payload sizes, a 15 % step failure rate,
  retries), with no I/O;
- **builder** (:func:`build_workflow`, :class:`RunBuilder`): the plan played on
  in-memory ``Workflow`` / ``Run`` aggregates inside
  :func:`~safereplay.domain.envelope.recording`, events left pending for the caller to save
  (the benchmarks seed their stores this way, with many runs interleaved);
- **submitter** (:func:`record_workload`): the plan sent as JSON-shaped messages
  through :meth:`AutomationApp.submit <safereplay.domain.automation_app.AutomationApp.submit>`,
  the validated edge, one run after the other.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal
from uuid import UUID

from safereplay.domain.automation import Run, Workflow
from safereplay.domain.automation_app import AutomationApp
from safereplay.domain.envelope import recording

__all__ = [
    "ACTIONS",
    "ERRORS",
    "RunAction",
    "RunBuilder",
    "WorkflowPlan",
    "WorkloadSummary",
    "build_workflow",
    "plan_run",
    "plan_workflow",
    "record_workload",
    "submit_run",
    "submit_workflow",
]

_ACTIONS: list[tuple[str, dict[str, Any]]] = [
    (
        "http.request",
        {
            "method": "POST",
            "url": "https://hooks.example.com/crm/contacts",
            "headers": {"content-type": "application/json"},
            "retries": 3,
        },
    ),
    (
        "send.email",
        {
            "template": "welcome-v3",
            "to": "{{trigger.email}}",
            "from": "noreply@example.com",
            "track_opens": True,
        },
    ),
    (
        "sheets.append",
        {
            "spreadsheet": "1BxiMVs0XRA5nFMdKvBdBZjgmUUqptlbs74OgvE2upms",
            "range": "Leads!A:F",
            "value_input": "USER_ENTERED",
        },
    ),
    (
        "slack.post",
        {"channel": "#sales-alerts", "text": "New lead {{trigger.name}}", "unfurl_links": False},
    ),
    (
        "transform.map",
        {
            "mapping": {
                "full_name": "{{trigger.first}} {{trigger.last}}",
                "company": "{{trigger.company | upper}}",
            }
        },
    ),
]
_ERRORS = [
    ("HTTP_502", "upstream returned 502 Bad Gateway after 30012 ms (hooks.example.com)"),
    ("RATE_LIMITED", "429 Too Many Requests: retry after 12 s (quota 600/min exceeded)"),
    ("AUTH_EXPIRED", "OAuth token for connection 'sheets-prod' expired at 2026-11-28T23:00Z"),
]


#: (action, step configuration) of the steps workflows are made of.
ACTIONS = _ACTIONS
#: (error code, message) of failed steps.
ERRORS = _ERRORS

RunActionKind = Literal["start", "step_succeeded", "step_failed", "retry_step", "complete"]


@dataclass(frozen=True)
class WorkflowPlan:
    """One workflow: its creation fields and its steps ``(action, config)``."""

    index: int
    steps: tuple[tuple[str, dict[str, Any]], ...]
    note: str = "first release"

    @property
    def name(self) -> str:
        return f"Lead routing #{self.index}"

    @property
    def owner(self) -> str:
        return f"ops-{self.index % 3}@example.com"

    @property
    def description(self) -> str:
        return (
            "Route inbound leads from the web form to CRM, email and Slack, "
            "with enrichment and a spreadsheet audit row."
        )

    @property
    def trigger(self) -> dict[str, Any]:
        return {
            "kind": "webhook",
            "path": f"/hooks/leads/{self.index}",
            "secret_ref": "vault:webhooks/leads",
            "dedupe_window_s": 300,
        }

    def step_fields(self) -> list[dict[str, Any]]:
        """The ``add_step`` / ``AddStep`` fields of each step, in order."""
        return [
            {
                "step_name": f"step-{i + 1}-{action}",
                "action": action,
                "config": config,
                "timeout_seconds": 30 + 30 * i,
            }
            for i, (action, config) in enumerate(self.steps)
        ]


@dataclass(frozen=True)
class RunAction:
    """One event of a run: which ``Run`` method, recorded by which source, with what."""

    kind: RunActionKind
    source: str
    fields: dict[str, Any]


def plan_workflow(index: int, rng: random.Random) -> WorkflowPlan:
    """Workflow number ``index``: 2 to 4 steps, actions taken in turn from :data:`ACTIONS`."""
    count = rng.randint(2, 4)
    return WorkflowPlan(
        index=index,
        steps=tuple(_ACTIONS[(index + i) % len(_ACTIONS)] for i in range(count)),
    )


def plan_run(workflow: WorkflowPlan, rng: random.Random, *, source: str) -> list[RunAction]:
    """The events of one run of ``workflow``: start, step results and retries, completion.

    Each step fails with probability 0.15; a failure is retried (up to attempt 3)
    unless its error is ``AUTH_EXPIRED``, and a failure not retried fails the run.
    """
    actions = [
        RunAction(
            "start",
            source,
            {
                "started_by": "webhook",
                "trigger_payload": {
                    "email": f"lead{rng.randint(1, 10**6)}@example.org",
                    "first": "Ada",
                    "last": "Lovelace",
                    "company": "Analytical Engines Ltd",
                    "utm": {"source": "newsletter", "campaign": "q4"},
                },
            },
        )
    ]
    total_ms = 0
    failed = False
    for i, (action, _config) in enumerate(workflow.steps):
        step_name = f"step-{i + 1}-{action}"
        attempt = 1
        while True:
            duration = rng.randint(20, 2500)
            total_ms += duration
            if rng.random() < 0.15:
                code, message = rng.choice(_ERRORS)
                retryable = attempt < 3 and code != "AUTH_EXPIRED"
                failure = {
                    "step_name": step_name,
                    "attempt": attempt,
                    "duration_ms": duration,
                    "error_code": code,
                    "error_message": message,
                    "retryable": retryable,
                }
                actions.append(RunAction("step_failed", f"executor-{rng.randint(1, 4)}", failure))
                if not retryable:
                    failed = True
                    break
                attempt += 1
                retry = {
                    "step_name": step_name,
                    "attempt": attempt,
                    "delay_ms": 1000 * 2 ** (attempt - 2),
                }
                actions.append(RunAction("retry_step", "scheduler", retry))
                continue
            success = {
                "step_name": step_name,
                "attempt": attempt,
                "duration_ms": duration,
                "output": {
                    "status": 200,
                    "id": f"obj_{rng.randint(10**8, 10**9)}",
                    "bytes": rng.randint(200, 9000),
                },
            }
            actions.append(RunAction("step_succeeded", f"executor-{rng.randint(1, 4)}", success))
            break
        if failed:
            break
    actions.append(
        RunAction(
            "complete",
            source,
            {
                "status": "failed" if failed else "succeeded",
                "duration_ms": total_ms,
                "summary": {"steps": len(workflow.steps), "failed": failed},
            },
        )
    )
    return actions


# -- builder: in-memory aggregates ---------------------------------------------------------


def build_workflow(plan: WorkflowPlan, *, source: str = "workload") -> Workflow:
    """The workflow created, its steps added and published; its events still pending."""
    with recording(source=source):
        workflow = Workflow.create(
            name=plan.name, owner=plan.owner, description=plan.description, trigger=plan.trigger
        )
        for fields in plan.step_fields():
            workflow.add_step(**fields)
        workflow.publish(note=plan.note)
    return workflow


class RunBuilder:
    """Plays a run's planned actions on an in-memory ``Run``, one per :meth:`play`."""

    def __init__(self, workflow: Workflow, actions: Sequence[RunAction]) -> None:
        self.workflow = workflow
        self.actions = actions
        self.run: Run | None = None
        self.next = 0

    def play(self) -> Run:
        """Trigger the next event; returns the run (with the event pending)."""
        action = self.actions[self.next]
        self.next += 1
        with recording(source=action.source):
            if action.kind == "start":
                self.run = Run.start(workflow=self.workflow, **action.fields)
            else:
                assert self.run is not None, "a run's first action starts it"
                getattr(self.run, action.kind)(**action.fields)
        assert self.run is not None
        return self.run

    @property
    def done(self) -> bool:
        return self.next >= len(self.actions)


# -- submitter: the validated edge -------------------------------------------------------

_MESSAGE_TYPES: dict[RunActionKind, dict[str, Any]] = {
    "step_succeeded": {"type": "StepSucceeded"},
    "step_failed": {"type": "StepFailed", "schema_version": 2},
    "retry_step": {"type": "StepRetried"},
    "complete": {"type": "CompleteRun"},
}


def submit_workflow(app: AutomationApp, plan: WorkflowPlan, *, source: str) -> UUID:
    """Create, fill and publish the workflow through ``app.submit``; returns its id."""
    workflow_id = app.submit(
        {
            "type": "CreateWorkflow",
            "name": plan.name,
            "owner": plan.owner,
            "description": plan.description,
            "trigger": plan.trigger,
        },
        source=source,
    )
    for fields in plan.step_fields():
        app.submit(
            {"type": "AddStep", "workflow_id": str(workflow_id), **fields},
            source=source,
        )
    app.submit(
        {"type": "PublishWorkflow", "workflow_id": str(workflow_id), "note": plan.note},
        source=source,
    )
    return workflow_id


def submit_run(app: AutomationApp, workflow_id: UUID, actions: Sequence[RunAction]) -> UUID:
    """Submit one run's actions through ``app.submit``; returns the run id."""
    run_id: UUID | None = None
    for action in actions:
        if action.kind == "start":
            run_id = app.submit(
                {"type": "StartRun", "workflow_id": str(workflow_id), **action.fields},
                source=action.source,
            )
            continue
        assert run_id is not None, "a run's first action starts it"
        app.submit(
            {**_MESSAGE_TYPES[action.kind], "run_id": str(run_id), **action.fields},
            source=action.source,
        )
    assert run_id is not None
    return run_id


@dataclass(frozen=True)
class WorkloadSummary:
    workflows: int
    runs: int
    events: int
    head_position: int


def record_workload(
    app: AutomationApp,
    *,
    workflows: int = 5,
    runs_per_workflow: int = 10,
    seed: int = 7,
    source: str = "workload",
) -> WorkloadSummary:
    """Record a realistic, reproducible workload through the validated edge."""
    rng = random.Random(seed)
    events = 0
    run_count = 0
    for w in range(workflows):
        plan = plan_workflow(w, rng)
        workflow_id = submit_workflow(app, plan, source=source)
        events += len(plan.steps) + 2
        for _ in range(runs_per_workflow):
            actions = plan_run(plan, rng, source=source)
            submit_run(app, workflow_id, actions)
            events += len(actions)
            run_count += 1
    return WorkloadSummary(
        workflows=workflows, runs=run_count, events=events, head_position=app.head_position()
    )

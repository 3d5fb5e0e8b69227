"""Deterministic workloads of the reference domain, for the demo, tests and benchmarks."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from domain.automation_app import AutomationApp

__all__ = ["WorkloadSummary", "record_workload"]

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
        workflow_id = app.submit(
            {
                "type": "CreateWorkflow",
                "name": f"Lead routing #{w}",
                "owner": f"ops-{w % 3}@example.com",
                "description": "Route inbound leads from the web form to CRM, email and Slack, "
                "with enrichment and a spreadsheet audit row.",
                "trigger": {
                    "kind": "webhook",
                    "path": f"/hooks/leads/{w}",
                    "secret_ref": "vault:webhooks/leads",
                    "dedupe_window_s": 300,
                },
            },
            source=source,
        )
        events += 1
        steps = [_ACTIONS[(w + i) % len(_ACTIONS)] for i in range(rng.randint(2, 4))]
        for i, (action, config) in enumerate(steps):
            app.submit(
                {
                    "type": "AddStep",
                    "workflow_id": str(workflow_id),
                    "step_name": f"step-{i + 1}-{action}",
                    "action": action,
                    "config": config,
                    "timeout_seconds": 30 + 30 * i,
                },
                source=source,
            )
            events += 1
        app.submit(
            {"type": "PublishWorkflow", "workflow_id": str(workflow_id), "note": "first release"},
            source=source,
        )
        events += 1
        for _ in range(runs_per_workflow):
            events += _record_run(app, workflow_id, steps, rng, source)
            run_count += 1
    return WorkloadSummary(
        workflows=workflows, runs=run_count, events=events, head_position=app.head_position()
    )


def _record_run(
    app: AutomationApp,
    workflow_id: UUID,
    steps: list[tuple[str, dict[str, Any]]],
    rng: random.Random,
    source: str,
) -> int:
    run_id = app.submit(
        {
            "type": "StartRun",
            "workflow_id": str(workflow_id),
            "started_by": "webhook",
            "trigger_payload": {
                "email": f"lead{rng.randint(1, 10**6)}@example.org",
                "first": "Ada",
                "last": "Lovelace",
                "company": "Analytical Engines Ltd",
                "utm": {"source": "newsletter", "campaign": "q4"},
            },
        },
        source=source,
    )
    events = 1
    total_ms = 0
    failed = False
    for i, (action, _config) in enumerate(steps):
        step_name = f"step-{i + 1}-{action}"
        attempt = 1
        while True:
            duration = rng.randint(20, 2500)
            total_ms += duration
            if rng.random() < 0.15:
                code, message = rng.choice(_ERRORS)
                retryable = attempt < 3 and code != "AUTH_EXPIRED"
                app.submit(
                    {
                        "type": "StepFailed",
                        "schema_version": 2,
                        "run_id": str(run_id),
                        "step_name": step_name,
                        "attempt": attempt,
                        "duration_ms": duration,
                        "error_code": code,
                        "error_message": message,
                        "retryable": retryable,
                    },
                    source=f"executor-{rng.randint(1, 4)}",
                )
                events += 1
                if not retryable:
                    failed = True
                    break
                attempt += 1
                app.submit(
                    {
                        "type": "StepRetried",
                        "run_id": str(run_id),
                        "step_name": step_name,
                        "attempt": attempt,
                        "delay_ms": 1000 * 2 ** (attempt - 2),
                    },
                    source="scheduler",
                )
                events += 1
                continue
            app.submit(
                {
                    "type": "StepSucceeded",
                    "run_id": str(run_id),
                    "step_name": step_name,
                    "attempt": attempt,
                    "duration_ms": duration,
                    "output": {
                        "status": 200,
                        "id": f"obj_{rng.randint(10**8, 10**9)}",
                        "bytes": rng.randint(200, 9000),
                    },
                },
                source=f"executor-{rng.randint(1, 4)}",
            )
            events += 1
            break
        if failed:
            break
    app.submit(
        {
            "type": "CompleteRun",
            "run_id": str(run_id),
            "status": "failed" if failed else "succeeded",
            "duration_ms": total_ms,
            "summary": {"steps": len(steps), "failed": failed},
        },
        source=source,
    )
    return events + 1

"""The recovery half of ``safereplay demo``: poison, crash, parallel blue/green rebuild,
a downstream outage and its re-delivery.

Every step goes through the dispatch layer as a named principal, so the story
ends with an audit trail that verifies. Worker processes are real OS processes
(``python -m safereplay.recovery.cli.app worker``) that authenticate with the operator's token,
passed in their environment (never on a command line).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

from rich import box
from rich.console import Console
from rich.table import Table

from safereplay.domain import AutomationApp, DomainSettings
from safereplay.domain.workload import record_workload
from safereplay.projections import (
    ProjectionRunner,
    RunStatusBoard,
    WorkflowStatistics,
)
from safereplay.recovery.cli.demo_integrity import (
    IntegrityStory,
    corrupt_one_event,
    restore_event,
    tell_integrity_story,
)
from safereplay.recovery.cli.demo_reactions import (
    DEMO_REACTION_SETTINGS,
    ReactionStory,
    tell_reaction_story,
)
from safereplay.recovery.cli.local_workers import start_workers, watch_job, worker_failures
from safereplay.recovery.errors import RecoveryError
from safereplay.recovery.jobs.model import JobStatus
from safereplay.recovery.jobs.worker import WorkerOptions
from safereplay.recovery.operations.approvals import AwaitingApproval
from safereplay.recovery.operations.catalog import open_operations
from safereplay.recovery.operations.context import RecoveryContext
from safereplay.recovery.operations.security import bootstrap_admin
from safereplay.recovery.resilience.backoff import Backoff
from safereplay.recovery.resilience.policies import (
    ErrorRules,
    IntegrityPolicy,
    RetryThenPark,
    RulesPolicy,
)
from safereplay.recovery.security.access import AccessDenied, Principal
from safereplay.recovery.security.audit import AuditKey
from safereplay.recovery.settings import DEFAULT_APPROVAL_REQUIRED, RecoverySettings

__all__ = ["StoryResult", "tell_recovery_story"]

#: Short leases so that a killed worker's partition is taken over within seconds.
DEMO_LEASE_SECONDS = 2.0


@dataclass(frozen=True)
class StoryResult:
    parked: int
    redriven: int
    rebuild: JobStatus
    live_build: int
    audit_entries: int
    reactions: ReactionStory | None = None
    #: The demo operator's token, for the demo to hand over in a 0600 file.
    operator_token: str = ""
    integrity: IntegrityStory | None = None


@dataclass
class _Cast:
    admin: Principal
    admin_token: str
    operator: Principal
    operator_token: str
    viewer: Principal
    approver: Principal


def _cast(context: RecoveryContext, console: Console) -> _Cast:
    admin_token = bootstrap_admin(context, "demo-admin")
    admin = context.access.authenticate(admin_token)
    run = open_operations(context).run
    tokens = {}
    for name, role in (
        ("demo-operator", "operator"),
        ("demo-viewer", "viewer"),
        ("demo-approver", "approver"),
    ):
        run(admin, "principals.add", reason="demo cast", name=name, kind="person")
        for scope in ("projection:*", "reaction:*"):
            run(admin, "grant", reason="demo cast", name=name, role=role, grant_scope=scope)
        tokens[name] = run(admin, "token.issue", reason="demo cast", name=name)
    console.print(
        "principals: [bold]demo-admin[/] (admin, key custodian), [bold]demo-operator[/] "
        "(operator on projection:* and reaction:*), [bold]demo-viewer[/] (viewer), "
        "[bold]demo-approver[/] (approver: the second person a swap needs); tokens "
        "are shown once and stored only as Argon2id hashes"
    )
    return _Cast(
        admin=admin,
        admin_token=admin_token,
        operator=context.access.authenticate(tokens["demo-operator"]),
        operator_token=tokens["demo-operator"],
        viewer=context.access.authenticate(tokens["demo-viewer"]),
        approver=context.access.authenticate(tokens["demo-approver"]),
    )


def _parked_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="parked events (no payloads)", box=box.SIMPLE_HEAD)
    for column in ("pos", "run", "event", "error", "tries", "behind"):
        table.add_column(column, no_wrap=True)
    for r in rows:
        table.add_row(
            str(r["position"]),
            str(r["aggregate_id"])[:8],
            r["event_type"],
            r["error_type"],
            str(r["attempts"]),
            str(r["blocked_by"] or "-"),
        )
    return table


def _jobs_table(status: JobStatus, now: float) -> Table:
    table = Table(
        title=f"job {str(status.job.job_id)[:8]} ({status.job.state})", box=box.SIMPLE_HEAD
    )
    for column in ("partition", "status", "position", "target", "lease holder", "lease"):
        table.add_column(column)
    for part in status.partitions:
        lease = "-"
        if part.lease_expires_at is not None:
            left = part.lease_expires_at - now
            lease = f"expires in {left:.1f}s" if left > 0 else "[red]expired[/]"
        table.add_row(
            str(part.partition_index),
            part.status,
            str(part.position),
            str(part.target_position),
            part.lease_owner or "-",
            lease,
        )
    return table


def _worker_env(settings: DomainSettings, audit_key: Path, token: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAFEREPLAY_")}
    env.update(
        {
            "SAFEREPLAY_BACKEND": "sqlite",
            "SAFEREPLAY_SQLITE_PATH": str(settings.sqlite_path),
            "SAFEREPLAY_KEY_FILE": str(settings.key_file),
            "SAFEREPLAY_AUDIT_KEY_FILE": str(audit_key),
            "SAFEREPLAY_LEASE_SECONDS": str(DEMO_LEASE_SECONDS),
            "SAFEREPLAY_TOKEN": token,
            "SAFEREPLAY_PROJECTIONS_BATCH_SIZE": "50",
        }
    )
    return env


def tell_recovery_story(
    directory: Path, settings: DomainSettings, app: AutomationApp, *, console: Console
) -> StoryResult:
    audit_key = directory / "audit.key"
    if not audit_key.exists():  # run_demo made it to migrate the database
        AuditKey.generate().save(audit_key)
    context = RecoveryContext(
        domain=settings,
        recovery=RecoverySettings(
            audit_key_file=audit_key,
            lease_seconds=DEMO_LEASE_SECONDS,
            partitions=3,
            # The default four-eyes rules, whatever the environment says: the swap
            # below waits for demo-approver.
            approval_required=DEFAULT_APPROVAL_REQUIRED,
            **DEMO_REACTION_SETTINGS,
        ),
    )
    try:
        return _story(directory, settings, app, context, audit_key, console)
    finally:
        context.close()


def _story(
    directory: Path,
    settings: DomainSettings,
    app: AutomationApp,
    context: RecoveryContext,
    audit_key: Path,
    console: Console,
) -> StoryResult:
    run = open_operations(context).run
    console.rule("[bold]access control")
    cast = _cast(context, console)
    try:
        run(cast.viewer, "rebuild", reason="curious", projection="workflow_stats")
    except AccessDenied as exc:
        console.print(f"[yellow]denied (and audited):[/] {exc}")

    console.rule("[bold]a poison event")
    head = app.head_position()
    record_workload(app, workflows=2, runs_per_workflow=10, source="demo", seed=77)
    position, backup = corrupt_one_event(settings, app, head)
    console.print(
        f"position {position} is damaged on disk (one bit of its AES-GCM tag flipped): "
        "it can no longer be decrypted"
    )
    # A live follower that must not stop: integrity failures are parked here, on
    # purpose (on_integrity_failure = park); the rebuild below pauses instead.
    live_policy = IntegrityPolicy(
        RulesPolicy(
            ErrorRules(default=RetryThenPark(attempts=3, backoff=Backoff(initial=0.01, jitter=0)))
        ),
        action="park",
    )
    live = ProjectionRunner(
        RunStatusBoard(),
        source=context.source,
        store=context.projection_store,
        policy=live_policy,
    )
    # Its warnings (each retry, the park) are the story told below, without the noise.
    runner_log = logging.getLogger("safereplay.projections.runner")
    level = runner_log.level
    runner_log.setLevel(logging.ERROR)
    try:
        result = live.catch_up()
    finally:
        runner_log.setLevel(level)
    parked = run(cast.viewer, "parked.list", projection="run_status")
    console.print(
        f"the live follower of run_status (on_integrity_failure = park) parked it and that "
        f"run's later events; {result.applied} events of other runs were applied meanwhile"
    )
    console.print(_parked_table(parked))

    restore_event(settings, app, position, backup)
    console.print(f"position {position} restored from backup; re-driving the parked events")
    started = run(cast.operator, "parked.redrive", reason="row restored", projection="run_status")
    context.worker(
        options=WorkerOptions(lease_seconds=DEMO_LEASE_SECONDS, exit_when_idle=True)
    ).run(job_id=UUID(started["job_id"]))
    left = run(cast.viewer, "parked.list", projection="run_status")
    console.print(
        f"re-drive: {len(parked) - len(left)} events applied in order, {len(left)} still parked"
    )

    console.rule("[bold]blue/green rebuild in 3 partitions, with a crash")
    more = record_workload(app, workflows=10, runs_per_workflow=40, source="demo", seed=79)
    console.print(f"meanwhile {more.events} more events arrived")
    started = run(
        cast.operator,
        "rebuild",
        reason="demo: rebuild after a projection fix",
        projection="workflow_stats",
        partitions=3,
        # Throttled (about 100 events/s per partition, after a one-second burst) so
        # that every partition is still running when the crash is staged.
        events_per_second=300,
    )
    job_id = UUID(started["job_id"])
    console.print(
        f"job {str(job_id)[:8]}: build {started['build']} of workflow_stats beside live build "
        f"{context.projection_store.live_build('workflow_stats')}, to position "
        f"{started['target_position']}, 2 worker processes"
    )
    env = _worker_env(settings, audit_key, cast.operator_token)
    workers = start_workers(str(job_id), 2, env=env)
    victim = _wait_for_progress(context, job_id)
    holder = next(w for w in workers if victim.lease_owner and f":{w.pid}:" in victim.lease_owner)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    time.sleep(0.5)
    console.print(
        f"[red]crash:[/] worker process {holder.pid} killed (SIGKILL) while it held "
        f"partition {victim.partition_index}: that partition is stalled until its lease expires"
    )
    console.print(_jobs_table(context.jobs.status(job_id), time.time()))
    workers += start_workers(str(job_id), 1, env=env)
    console.print("a replacement worker joins; the expired lease is taken over")
    survivors = [w for w in workers if w is not holder]
    status = watch_job(context.jobs, job_id, workers=survivors)
    for failure in worker_failures(survivors):
        console.print(f"[red]error:[/] {failure}", highlight=False)
    console.print(_jobs_table(status, time.time()))

    console.rule("[bold]verify and swap, approved by a second person")
    swapped = _approved_swap(run, cast, console)
    # The old build as its live follower would have left it: caught up to the same head.
    ProjectionRunner(
        WorkflowStatistics(),
        source=context.source,
        store=context.projection_store,
        build=swapped["previous"],
    ).catch_up(until=swapped["position"])
    old = context.projection_store.rows(WorkflowStatistics, "workflows", build=swapped["previous"])
    new = context.projection_store.rows(WorkflowStatistics, "workflows")
    console.print(
        f"job {status.job.state}: every position up to {status.job.target_position} accounted "
        f"for; build {swapped['live']} is live (swapped in one transaction at position "
        f"{swapped['position']}), build {swapped['previous']} kept for rollback; "
        f"{'[green]row for row equal[/]' if old == new else '[red]different[/]'} to the "
        f"previous build ({len(new)} workflows)"
    )

    console.rule("[bold]an integrity pause")
    integrity = tell_integrity_story(
        settings,
        app,
        context,
        run,
        operator=cast.operator,
        viewer=cast.viewer,
        lease_seconds=DEMO_LEASE_SECONDS,
        console=console,
    )

    console.rule("[bold]a downstream service was down")
    reactions = tell_reaction_story(
        directory, app, run, operator=cast.operator, viewer=cast.viewer, console=console
    )

    console.rule("[bold]keys and audit")
    ring = run(cast.admin, "keys.add", reason="demo rotation", key_id="demo-2", activate=True)
    record_workload(app, workflows=1, runs_per_workflow=2, source="demo", seed=78)
    usage = run(cast.admin, "keys.usage")
    console.print(f"key rotated: active {ring['active']!r}; rows per key: {usage['by_key']}")
    report = run(cast.admin, "audit.verify")
    console.print(f"audit trail: {report}")
    entries = run(cast.admin, "audit.list", limit=10_000)
    return StoryResult(
        parked=len(parked),
        redriven=len(parked) - len(left),
        rebuild=status,
        live_build=int(swapped["live"]),
        audit_entries=len(entries),
        reactions=reactions,
        operator_token=cast.operator_token,
        integrity=integrity,
    )


def _approved_swap(run: Any, cast: _Cast, console: Console) -> dict[str, Any]:
    """The swap, asked for by the operator and approved by the approver (four-eyes)."""
    waiting = run(cast.operator, "swap", reason="rebuild verified", projection="workflow_stats")
    assert isinstance(waiting, AwaitingApproval), "the demo's rules make a swap wait"
    request = waiting.change_request
    console.print(
        f"demo-operator asks to swap: change request {request.request_id[:8]} waits for a "
        "second person (a swap changes the live build)"
    )
    approved = run(
        cast.approver, "requests.approve", reason="job verified", request_id=request.request_id
    )
    if approved.error is not None:
        raise RecoveryError(f"the approved swap failed: {approved.error}")
    console.print(
        "demo-approver approves it; the swap runs as demo-operator, and its audit entry names both"
    )
    return dict(approved.outcome)


def _wait_for_progress(context: RecoveryContext, job_id: UUID) -> Any:
    """The first partition that a worker holds and has moved (to kill its worker)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for part in context.jobs.partitions(job_id):
            if part.status == "running" and part.position > part.start_position:
                return part
        time.sleep(0.05)
    parts = [
        (p.partition_index, p.status, p.position, p.lease_owner)
        for p in context.jobs.partitions(job_id)
    ]
    raise TimeoutError(
        f"no worker made progress on job {job_id} within 60 s "
        f"({context.jobs.get_job(job_id).state}: {parts})"
    )

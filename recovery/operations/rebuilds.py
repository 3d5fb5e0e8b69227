"""The recovery operations, each one entry in the dispatch layer.

rebuild, catch-up, parked.redrive, swap, rollback, drop-version, retry-partition
and worker: every one takes the acting principal and a reason and goes through
:meth:`~safereplay.recovery.operations.dispatch.Operations.run`, which checks the permission first
and audits every attempt. Job state changes that workers make (running →
completed, failed, aborted) are audited too, as ``job.state`` entries of the
worker's principal.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC
from typing import TYPE_CHECKING, Any
from uuid import UUID

from safereplay.projections import ParkedEvent, Partition, open_source, open_store
from safereplay.recovery.drills.drill import DrillStore, require_matching_drill
from safereplay.recovery.errors import InvalidRequest, JobConflict
from safereplay.recovery.jobs.builds import drop_version, rollback, swap
from safereplay.recovery.jobs.conflicts import NewConflict
from safereplay.recovery.jobs.follow import FollowReport, follow_projections
from safereplay.recovery.jobs.heartbeats import FollowerHeartbeats
from safereplay.recovery.jobs.model import Job, JobKind, JobState, JobStatus
from safereplay.recovery.jobs.plans import (
    CatchUpPlan,
    JobRequest,
    start_catch_up,
    start_rebuild,
    start_redrive,
    start_replay,
)
from safereplay.recovery.jobs.store import JobStore
from safereplay.recovery.jobs.worker import WorkerOptions, WorkerReport
from safereplay.recovery.operations.auto_rebuild import auto_rebuild
from safereplay.recovery.operations.automation import (
    StallRestarts,
    auto_catch_up,
    auto_redrive,
)
from safereplay.recovery.operations.dispatch import OperationContext, Operations, int_parameter
from safereplay.recovery.operations.job_ids import job_id_preparer, resolve_job_id
from safereplay.recovery.operations.metrics_process import serving_metrics
from safereplay.recovery.security.access import AccessDenied, Permission
from safereplay.recovery.security.audit import AuditRecord
from safereplay.recovery.settings import AlertSettings
from safereplay.recovery.templates.apply import rollout_state

if TYPE_CHECKING:
    from safereplay.recovery.operations.context import RecoveryContext

__all__ = ["register_recovery_operations"]


def _partition(value: Any) -> Partition:
    """``"i/n"`` (as the CLI and status print partitions) into a Partition."""
    index, _, count = str(value).partition("/")
    try:
        return Partition(int(index), int(count))
    except ValueError:
        raise InvalidRequest(
            f"partition {value!r} is not INDEX/COUNT with 0 <= INDEX < COUNT (e.g. 2/4)"
        ) from None


def _request(ctx: OperationContext, p: Mapping[str, Any], default_partitions: int) -> JobRequest:
    # A template's rollout is kept with its job: the console reads its canary from it.
    extra = {key: p[key] for key in ("policy", "breaker", "rollout") if p.get(key) is not None}
    rate = p.get("events_per_second")
    held = p.get("held_partitions") or ()
    return JobRequest(
        principal=ctx.principal.name,
        reason=ctx.reason,
        partitions=int_parameter(p, "partitions", default_partitions) or default_partitions,
        max_concurrent_partitions=int_parameter(p, "max_concurrent_partitions"),
        events_per_second=None if rate is None else float(rate),
        parameters=extra,
        held_partitions=tuple(int(i) for i in held),
    )


def _job_summary(job: Job | None) -> dict[str, Any]:
    if job is None:
        return {"job_id": None, "state": "not needed: the projection is not behind"}
    return {
        "job_id": str(job.job_id),
        "kind": str(job.kind),
        "projection": job.projection,
        "build": job.build,
        "partitions": job.partition_count,
        "target_position": job.target_position,
        "state": str(job.state),
    }


def _catch_up_summary(plan: CatchUpPlan) -> dict[str, Any]:
    """The job, or why there is none; and what is held back above its target.

    A projection at the safe head with events held back above it is behind: the
    summary says so (``held_back`` > 0), never "not behind".
    """
    safe = plan.safe_head
    summary = _job_summary(plan.job)
    summary |= {
        "head": safe.head,
        "safe_head": safe.mark,
        "held_back": safe.held_back,
        # ISO 8601 UTC, as the command line writes every time (cli.support).
        "held_back_since": (
            None
            if safe.held_back_since is None
            else safe.held_back_since.astimezone(UTC).isoformat(timespec="microseconds")
        ),
        "waited_seconds": round(safe.waited, 3),
    }
    if safe.held_back:
        since = (
            ""
            if safe.held_back_since is None
            else f" since {safe.held_back_since.astimezone(UTC):%H:%M:%SZ}"
        )
        held = (
            f"{safe.held_back} position(s) up to the head {safe.head} are held back above the "
            f"safe head {safe.mark} by a position still in doubt{since} (waited "
            f"{safe.waited:.1f}s, SAFEREPLAY_CATCH_UP_WAIT)"
        )
        if plan.job is None:
            summary["state"] = f"held back: the projection is at the safe head; {held}"
        summary["held_back_detail"] = held
    return summary


def resumable_job(jobs: JobStore, projection: str, kind: JobKind) -> Job | None:
    """The projection's unfinished job of ``kind`` that the same command resumes.

    Planned or running only: a paused job waits for ``safereplay resume`` (someone
    paused it on purpose), and anything else active is a conflict, as before.
    """
    for job in jobs.list_jobs(projection=projection, active_only=True):
        if job.kind == kind and job.state in (JobState.PLANNED, JobState.RUNNING):
            return job
    return None


def _same_redrive(job: Job, build: int, aggregates: list[str]) -> bool:
    """Whether an unfinished redrive job is the one these parameters would start."""
    planned = {str(a) for a in job.parameters.get("aggregates") or []}
    return job.build == build and planned == set(aggregates)


def job_state_auditor(context: RecoveryContext, actor: str) -> Callable[[Job, Job], None]:
    """Audit a job's state change made by a worker."""

    def audit(before: Job, after: Job) -> None:
        context.audit.append(
            AuditRecord(
                actor=actor,
                action="job.state",
                scope=f"projection:{after.projection}",
                reason=after.reason,
                outcome="succeeded",
                parameters={
                    "from": str(before.state),
                    "to": str(after.state),
                    "kind": str(after.kind),
                    "build": after.build,
                    "error": after.error,
                },
                job_id=after.job_id,
            )
        )

    return audit


def park_auditor(
    context: RecoveryContext, actor: str
) -> Callable[[Sequence[ParkedEvent], UUID | None], None]:
    """Audit events a runner parked: where and why, never a payload."""

    def audit(parked: Sequence[ParkedEvent], job_id: UUID | None = None) -> None:
        for event in parked:
            context.audit.append(
                AuditRecord(
                    actor=actor,
                    action="park",
                    scope=f"projection:{event.projection}",
                    reason=event.reason,
                    outcome="succeeded",
                    parameters={
                        "build": event.build,
                        "position": event.position,
                        "partition": str(event.partition),
                        "aggregate_id": str(event.aggregate_id),
                        "event_type": event.event_type,
                        "error_type": event.error_type,
                        "attempts": event.attempts,
                        "blocked_by": event.blocked_by,
                    },
                    job_id=job_id,
                )
            )

    return audit


def register_recovery_operations(operations: Operations, context: RecoveryContext) -> None:
    partitions = context.recovery.partitions

    def job_starter(start: Any, default_partitions: int, kind: JobKind) -> Any:
        """The handler of ``rebuild`` or ``catch-up``: plan the job, return its summary."""

        def handler(ctx: OperationContext, p: Mapping[str, Any]) -> dict[str, Any]:
            job = resumable_job(context.jobs, p["projection"], kind)
            if job is not None:
                # The same command, run again after an interruption: it resumes the
                # job (its partitions from where they stopped), as the runbook says.
                summary = {**_job_summary(job), "resumed": True}
            else:
                job = start(
                    _request(ctx, p, default_partitions),
                    projection=p["projection"],
                    store=context.projection_store,
                    source=context.source,
                    jobs=context.jobs,
                    registry=context.registry,
                )
                summary = _job_summary(job)
            if kind == JobKind.REBUILD:
                # A never-built projection's first build is built in its live build 1
                # (resumed or not: what to do once it completes depends on it).
                summary["live"] = context.projection_store.live_build(job.projection) == job.build
            return summary

        return handler

    rebuild = job_starter(start_rebuild, partitions, JobKind.REBUILD)

    def catch_up(ctx: OperationContext, p: Mapping[str, Any]) -> dict[str, Any]:
        interrupted = resumable_job(context.jobs, p["projection"], JobKind.CATCH_UP)
        if interrupted is not None:
            return {**_job_summary(interrupted), "resumed": True}  # as job_starter does
        plan = start_catch_up(
            _request(ctx, p, 1),
            projection=p["projection"],
            store=context.projection_store,
            source=context.log,
            jobs=context.jobs,
            registry=context.registry,
            wait=context.recovery.catch_up_wait,
        )
        summary = _catch_up_summary(plan)
        if plan.safe_head.held_back and context.recovery.on_integrity_failure == "pause":
            # A hole still in doubt after SAFEREPLAY_CATCH_UP_WAIT: nothing above it is
            # applied (the mark holds there); an operator looks at the writer holding it.
            conflict = context.conflicts.raise_conflict(
                NewConflict(
                    subject=f"hole:{p['projection']}",
                    kind="hole",
                    reason=summary["held_back_detail"],
                    projection=p["projection"],
                    position=plan.safe_head.mark + 1,
                )
            )
            summary["conflict_id"] = conflict.conflict_id
        return summary

    def redrive(ctx: OperationContext, p: Mapping[str, Any]) -> dict[str, Any]:
        aggregates = [str(UUID(str(a))) for a in p.get("aggregates") or []]
        name = p["projection"]
        context.registry[name]  # an unknown projection is refused, clearly
        build = context.projection_store.resolve_build(name, int_parameter(p, "build"))
        interrupted = resumable_job(context.jobs, name, JobKind.REDRIVE)
        if interrupted is not None and _same_redrive(interrupted, build, aggregates):
            # The same command, run again after an interruption (its command or its
            # worker killed), resumes its job, as a rebuild or a catch-up does: the
            # interruption's message says to run it again, so it must not be refused.
            # A redrive of another build or other aggregates is not the same command:
            # start_redrive refuses it as busy, naming the job in the way.
            return {**_job_summary(interrupted), "resumed": True}
        if not context.projection_store.parked(name, build=build):
            # Nothing parked is nothing to do, as a catch-up that is not behind: the
            # runbook's redrive can be run again (idempotently), exit code 0.
            return _job_summary(None) | {
                "projection": name,
                "build": build,
                "state": f"not needed: build {build} of {name} has no parked events",
            }
        job = start_redrive(
            JobRequest(principal=ctx.principal.name, reason=ctx.reason),
            projection=p["projection"],
            store=context.projection_store,
            jobs=context.jobs,
            registry=context.registry,
            build=build,
            aggregates=aggregates,
        )
        return _job_summary(job)

    def replay(ctx: OperationContext, p: Mapping[str, Any]) -> dict[str, Any]:
        start, end = int_parameter(p, "start"), int_parameter(p, "end")
        if start is None or end is None:
            raise InvalidRequest("replay needs a range: --from and --to")
        partition = p.get("partition")
        job = start_replay(
            _request(ctx, p, 1),
            projection=p["projection"],
            start=start,
            end=end,
            store=context.projection_store,
            source=context.source,
            jobs=context.jobs,
            registry=context.registry,
            into=str(p.get("into") or "sandbox"),
            partition=_partition(partition) if partition else None,
            only_partitions=p.get("only_partitions"),
            aggregates=[str(UUID(str(a))) for a in p.get("aggregates") or []],
            confirmed=bool(p.get("confirmed")),
        )
        return _job_summary(job)

    def swap_in(ctx: OperationContext, p: Mapping[str, Any]) -> dict[str, Any]:
        name = p["projection"]

        def drill_gate(build: int) -> None:
            drills = DrillStore(context.database)
            context.ensure_schema()
            require_matching_drill(
                drills,
                required=context.recovery.drill_required(name),
                projection=name,
                build=build,
            )

        result = swap(
            store=context.projection_store,
            source=context.source,
            jobs=context.jobs,
            registry=context.registry,
            projection=name,
            build=int_parameter(p, "build"),
            gate=drill_gate,
        )
        return asdict(result)

    def roll_back(ctx: OperationContext, p: Mapping[str, Any]) -> dict[str, Any]:
        return asdict(rollback(store=context.projection_store, projection=p["projection"]))

    def drop(ctx: OperationContext, p: Mapping[str, Any]) -> dict[str, Any]:
        build = int_parameter(p, "build")
        if build is None:
            raise InvalidRequest("drop-version needs the build to drop (--build)")
        drop_version(
            store=context.projection_store,
            jobs=context.jobs,
            projection=p["projection"],
            build=build,
        )
        return {"projection": p["projection"], "dropped": build}

    def retry_partition(ctx: OperationContext, p: Mapping[str, Any]) -> dict[str, Any]:
        job_id = resolve_job_id(context.jobs, p["job_id"])
        index = int_parameter(p, "partition")
        if index is None:
            raise InvalidRequest("retry-partition needs the partition (--partition)")
        context.jobs.retry_partition(job_id, index)
        return {"job_id": str(job_id), "partition": index, "status": "pending"}

    def worker(ctx: OperationContext, p: Mapping[str, Any]) -> WorkerReport:
        principal = ctx.principal.name
        only = p.get("projection")

        def may_run(job: Job) -> bool:
            if only is not None and job.projection != only:
                return False
            return context.access.allows(
                principal, Permission.OPERATE, f"projection:{job.projection}"
            )

        options = WorkerOptions(
            lease_seconds=context.recovery.lease_seconds,
            exit_when_idle=bool(p.get("exit_when_idle")),
        )
        parks = park_auditor(context, principal)
        job_id = p.get("job_id")
        with serving_metrics("worker", int_parameter(p, "metrics_port")) as observer:
            instance = context.worker(
                options=options,
                may_run=may_run,
                on_job_state=job_state_auditor(context, principal),
                on_parked=lambda job, parked: parks(parked, job.job_id),
                observer=observer,
            )
            with stop_on_signals() as stop:
                return instance.run(
                    stop, job_id=resolve_job_id(context.jobs, job_id) if job_id else None
                )

    def continue_rollout(ctx: OperationContext, p: Mapping[str, Any]) -> dict[str, Any]:
        job_id = resolve_job_id(context.jobs, p["job_id"])
        rollout = rollout_state(context.jobs.status(job_id))
        if rollout.staged and not rollout.verified:
            # The rest runs only after a verified canary, whoever asks (the console,
            # the API, `apply`): otherwise abort the job, or wait for the canary.
            raise JobConflict(
                f"job {job_id} keeps its partitions {list(rollout.held_partitions)} held: "
                f"{rollout.detail}"
            )
        released = context.jobs.release_held(job_id)
        return {"job_id": str(job_id), "released_partitions": released}

    def show_job(ctx: OperationContext, p: Mapping[str, Any]) -> JobStatus:
        return context.jobs.status(resolve_job_id(context.jobs, p["job_id"]))

    def follow(ctx: OperationContext, p: Mapping[str, Any]) -> list[FollowReport]:
        names = list(p.get("projections") or []) or list(context.registry)
        for name in names:
            context.registry[name]  # unknown names are refused before anything starts
            if not context.access.allows(
                ctx.principal.name, Permission.OPERATE, f"projection:{name}"
            ):
                raise AccessDenied(
                    f"{ctx.principal.name!r} may not follow {name!r}: it needs the operate "
                    f"permission on projection:{name}"
                )
        # Recovery flag auto_catch_up: a long backlog goes to a partitioned job instead.
        auto_catch_up(context, names)
        # Recovery flag auto_redrive: parked events re-driven after a code version change.
        auto_redrive(context, names)
        # Recovery flag auto_rebuild: a new code version rebuilt, drilled, then swapped.
        auto_rebuild(context, names)
        # After each heartbeat (each flag off by default: nothing is done).
        restarts = StallRestarts(
            context, names, after_seconds=AlertSettings.from_env().stalled_after_seconds
        )

        def after_beat(restart: Callable[[str], None]) -> None:
            restarts(restart)
            auto_rebuild(context, names)

        port = int_parameter(p, "metrics_port")
        with serving_metrics("follow", port) as observer, stop_on_signals() as stop:
            if p.get("stop_after") is not None:  # tests and smoke runs
                threading.Timer(float(p["stop_after"]), stop.set).start()
            parks = park_auditor(context, ctx.principal.name)
            context.ensure_schema()  # the followers' heartbeats table
            return follow_projections(
                [context.registry[name] for name in names],
                open_store=lambda: open_store(context.domain, context.projection_settings),
                open_source=lambda: open_source(context.app, settings=context.projection_settings),
                options=context.runner_options(),
                stop=stop,
                on_parked=lambda parked: parks(parked, None),
                observer=observer,
                heartbeats=FollowerHeartbeats(context.database),
                on_integrity_failure=context.recovery.on_integrity_failure,
                conflicts=context.conflicts,
                after_beat=after_beat,
            )

    def follow_scope(parameters: Mapping[str, Any]) -> str:
        names = list(parameters.get("projections") or [])
        return f"projection:{names[0]}" if len(names) == 1 else "projection:*"

    def worker_scope(parameters: Mapping[str, Any]) -> str:
        only = parameters.get("projection")
        return f"projection:{only}" if only else "projection:*"

    def job_scope(parameters: Mapping[str, Any]) -> str:
        job = context.jobs.get_job(resolve_job_id(context.jobs, parameters.get("job_id")))
        return f"projection:{job.projection}"

    table: list[tuple[str, Any, str, Any]] = [
        (
            "rebuild",
            rebuild,
            "rebuild a projection blue/green into a new build, in partitions",
            None,
        ),
        ("catch-up", catch_up, "catch the live build up to the head, in partitions", None),
        ("parked.redrive", redrive, "re-apply parked events in order after a fix", None),
        ("replay", replay, "re-apply a range of positions, into a sandbox or live", None),
        ("swap", swap_in, "make a completed rebuild live, in one transaction", None),
        ("rollback", roll_back, "make the previously live build live again", None),
        ("drop-version", drop, "drop a build that is not live", None),
        ("retry-partition", retry_partition, "run a failed partition of a job again", job_scope),
        (
            "rollout.continue",
            continue_rollout,
            "release a staged rollout's held partitions after its canary verified",
            job_scope,
        ),
        ("worker", worker, "run job partitions this principal may operate on", worker_scope),
        ("follow", follow, "follow projections' live builds (retry, then park)", follow_scope),
        ("jobs.show", show_job, "one job with its partitions' progress", job_scope),
    ]
    for name, handler, summary, scope in table:
        operations.register(
            name,
            permission=Permission.VIEW if name == "jobs.show" else Permission.OPERATE,
            handler=handler,
            summary=summary,
            **({} if scope is None else {"scope": scope}),
            prepare=job_id_preparer(context, optional=name == "worker")
            if name in _TAKES_A_JOB
            else None,
            long_running=name in ("worker", "follow"),
            monitoring=name == "jobs.show",
        )


#: Operations with a ``job_id`` parameter (a whole id or a prefix of one).
_TAKES_A_JOB = frozenset({"retry-partition", "rollout.continue", "worker", "jobs.show"})


@contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """An event set by SIGTERM, SIGINT or SIGHUP (in the main thread): a worker stops
    at the next batch boundary and gives its partition back instead of dying
    mid-lease (SIGHUP: the ssh session it ran in was dropped)."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {
        sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    }

    def handle(signum: int, frame: object) -> None:
        stop.set()

    for sig in previous:
        signal.signal(sig, handle)
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

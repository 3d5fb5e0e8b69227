"""Workers: claim a partition of a job, run it to the job's target, report, repeat.

A worker is one OS process (``safereplay worker``; ``rebuild --workers N``
starts N of them). Any number of workers on any machines share the jobs of one
database: a partition is leased through the job store (a row lock and a fencing
token in the database itself, no coordinator), and every batch a worker commits
is fenced by that lease *inside the commit's transaction*
(:class:`~safereplay.projections.store.Fence`). A worker whose lease expired and was taken
over can therefore never commit another batch of that partition: two workers
never both apply it.

Per batch the worker reads the job's state: ``paused`` or ``aborting`` gives the
partition back at the batch boundary; the partition's position and its applied
and parked counters move inside each batch's commit (the lease fence's
:class:`~safereplay.projections.store.Tally`), so they never disagree with the rows
after a crash; it reports retries and conflicts, pays the job's throttle, and
renews its lease every third of the lease time. A partition is finished when its committed position
reaches the job's target and the completeness check (:mod:`safereplay.recovery.jobs.completeness`)
accounts for every position up to it; a handler failure the policy does not park
fails the partition (the others go on; ``retry_partition`` re-runs it alone).
An integrity failure (a stored event that fails authentication or decryption,
names a key not in the ring, or cannot be decoded) follows ``on_integrity_failure``
instead: ``pause`` (the default) gives the partition back as ``conflict`` at the
failing position with a conflict recorded (:mod:`safereplay.recovery.jobs.conflicts`);
no worker claims it until an operator resolves it.

A worker killed at any instant loses nothing: its lease expires, another worker
claims the partition and goes on from the last committed position. A worker that
fails with a partition claimed (an error, not a kill) gives it back first, so
that no one waits for the lease to expire.

Why this module is long (about 720 lines): one class whose three partition loops
(runner batches, replay writes, redrive) share the claim, lease renewal, release
and settling, and the integrity pause that the first two take the same way; the
lease fence and the throttle it builds are a few lines each.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from safereplay.projections import (
    BatchState,
    EventSource,
    Fence,
    FencedOff,
    HandlerFailed,
    ParkedEvent,
    Partition,
    PositionConflict,
    ProjectionRunner,
    ProjectionStore,
    ReplayContext,
    ReplayReason,
    RunnerOptions,
    Tally,
    replaying,
)
from safereplay.projections.errors import DatabaseUnavailable, error_summary
from safereplay.projections.failure import Decision, EventFailure, FailFast, FailurePolicy
from safereplay.projections.runner import FaultHook
from safereplay.recovery.errors import IncompleteJob
from safereplay.recovery.jobs.builds import seal_job
from safereplay.recovery.jobs.completeness import check_log_accounted, check_partition
from safereplay.recovery.jobs.conflicts import ConflictStore, NewConflict, job_subject
from safereplay.recovery.jobs.model import Claim, Job, JobKind, JobState, settled_state
from safereplay.recovery.jobs.observer import NO_WORK_OBSERVER, WorkObserver
from safereplay.recovery.jobs.redrive import redrive_parked
from safereplay.recovery.jobs.store import JobStore, LeaseLost, SQLJobStore
from safereplay.recovery.registry import ProjectionRegistry
from safereplay.recovery.resilience.breaker import BreakerSettings, CircuitBreaker
from safereplay.recovery.resilience.policies import (
    IntegrityAction,
    IntegrityPolicy,
    PolicySet,
    RulesPolicy,
    integrity_kind,
)
from safereplay.recovery.resilience.specs import BreakerSpec, PolicySpec
from safereplay.recovery.resilience.throttle import RecentRate, Throttle

__all__ = [
    "JOB_REASONS",
    "BreakerPolicy",
    "PartitionOutcome",
    "Worker",
    "WorkerOptions",
    "WorkerReport",
    "default_worker_id",
    "job_replay_context",
]

logger = logging.getLogger(__name__)

#: The table whose lease row fences a worker's commits (see recovery.jobstore).
LEASE_TABLE = "safereplay_job_partitions"


@dataclass(frozen=True)
class WorkerOptions:
    """How a worker paces itself. ``exit_when_idle``: stop when nothing is claimable."""

    lease_seconds: float = 30.0
    idle_interval: float = 0.5
    exit_when_idle: bool = False
    breaker: BreakerSettings = field(default_factory=BreakerSettings)

    def __post_init__(self) -> None:
        if self.lease_seconds <= 0 or self.idle_interval <= 0:
            raise ValueError("lease_seconds and idle_interval must be positive")


class PartitionOutcome(StrEnum):
    COMPLETED = "completed"
    FAILED = "failed"
    RELEASED = "released"  # paused, aborting, or the worker was stopped
    PAUSED = "paused"  # an integrity conflict holds it (see conflicts)
    LOST = "lost"  # the lease was taken over


@dataclass
class WorkerReport:
    """What one :meth:`Worker.run` did."""

    worker_id: str
    outcomes: list[tuple[str, int, PartitionOutcome]] = field(default_factory=list)

    def count(self, outcome: PartitionOutcome) -> int:
        return sum(1 for _, _, o in self.outcomes if o == outcome)


class BreakerPolicy:
    """A job's circuit breaker around its failure policy.

    Every failure is recorded; while the breaker is open the decision is "retry
    after the cool-down" whatever the policy says, so a failing dependency is
    not hammered and no event is parked or failed because of a storm.
    """

    def __init__(
        self,
        policy: FailurePolicy,
        breaker: CircuitBreaker,
        on_change: Callable[[CircuitBreaker], None],
    ) -> None:
        self.policy = policy
        self.breaker = breaker
        self._on_change = on_change

    def decide(self, failure: EventFailure) -> Decision:
        before = self.breaker.state
        self.breaker.record_failure()
        if self.breaker.state != before:
            self._on_change(self.breaker)
        if not self.breaker.allow():
            return Decision.retry(
                max(self.breaker.wait_time(), 0.01), "circuit breaker open: waiting to probe"
            )
        return self.policy.decide(failure)

    def record_success(self) -> None:
        """A batch went through: a half-open breaker closes (and says so)."""
        before = self.breaker.state
        self.breaker.record_success()
        if self.breaker.state != before:
            self._on_change(self.breaker)


class _Outage:
    """A worker's wait for a database that went away: the runner's back-off, and its
    ``give_up_after`` (unset: wait for as long as it takes)."""

    def __init__(self, options: RunnerOptions) -> None:
        self._options = options
        self._since: float | None = None
        self._attempts = 0

    def wait(self, exc: DatabaseUnavailable, worker_id: str) -> float:
        """Seconds to wait before trying again; raises ``exc`` once it is time to give up."""
        now = time.monotonic()
        if self._since is None:
            self._since = now
        give_up = self._options.give_up_after
        if give_up is not None and now - self._since >= give_up:
            raise exc
        self._attempts += 1
        delay = min(
            self._options.retry_max,
            self._options.retry_initial * 2.0 ** min(self._attempts - 1, 30),
        )
        logger.warning("worker %s: %s; trying again in %.2fs", worker_id, exc, delay)
        return delay

    def over(self) -> None:
        self._since = None
        self._attempts = 0


class _ActiveJobs:
    """The jobs a worker looks at in one poll: listed once, on first use.

    With ``job_id``, just that job (whatever its state); otherwise the active ones.
    """

    def __init__(self, jobs: JobStore, job_id: uuid.UUID | None) -> None:
        self.job_id = job_id
        self._store = jobs
        self._jobs: list[Job] | None = None

    def jobs(self) -> list[Job]:
        if self._jobs is None:
            if self.job_id is not None:
                self._jobs = [self._store.get_job(self.job_id)]
            else:
                self._jobs = self._store.list_jobs(active_only=True)
        return self._jobs


def default_worker_id(host: str | None = None) -> str:
    """``HOST:PID:RANDOM``: the name a worker's leases carry. ``host`` (default: the
    machine's hostname) is the operator's name for the machine
    (``SAFEREPLAY_WORKER_HOST``, ``worker --host``): containers often share a hostname,
    and the random part tells apart two processes that reuse a pid."""
    return f"{host or socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Worker:
    """Claims and runs partitions of jobs until stopped (or idle, if so configured)."""

    def __init__(
        self,
        *,
        jobs: JobStore,
        store: ProjectionStore,
        open_source: Callable[[], EventSource],
        registry: ProjectionRegistry,
        worker_id: str | None = None,
        options: WorkerOptions | None = None,
        runner_options: RunnerOptions | None = None,
        policies: PolicySet | None = None,
        may_run: Callable[[Job], bool] | None = None,
        on_job_state: Callable[[Job, Job], None] | None = None,
        on_parked: Callable[[Job, Sequence[ParkedEvent]], None] | None = None,
        faults: FaultHook | None = None,
        observer: WorkObserver = NO_WORK_OBSERVER,
        on_integrity_failure: IntegrityAction = "pause",
        conflicts: ConflictStore | None = None,
    ) -> None:
        self.jobs = jobs
        self.on_integrity_failure: IntegrityAction = on_integrity_failure
        if conflicts is None and isinstance(jobs, SQLJobStore):
            conflicts = ConflictStore(jobs.database)
        self.conflicts = conflicts
        self.store = store
        self.registry = registry
        self.worker_id = worker_id or default_worker_id()
        self.options = options or WorkerOptions()
        self.runner_options = runner_options or RunnerOptions()
        self.policies = policies or PolicySet()
        self._open_source = open_source
        self._source: EventSource | None = None
        self._may_run = may_run
        self._on_job_state = on_job_state
        self._on_parked = on_parked
        self._faults = faults
        self.observer = observer

    @property
    def source(self) -> EventSource:
        if self._source is None:
            self._source = self._open_source()
        return self._source

    def close(self) -> None:
        if self._source is not None:
            self._source.close()
            self._source = None

    # -- the loop -------------------------------------------------------------------------

    def run(
        self, stop: threading.Event | None = None, *, job_id: uuid.UUID | None = None
    ) -> WorkerReport:
        """Claim and run partitions until ``stop`` (or nothing is left, when idle exits)."""
        stop = stop or threading.Event()
        report = WorkerReport(self.worker_id)
        outage = _Outage(self.runner_options)
        while not stop.is_set():
            self.observer.heartbeat()
            # One listing of the active jobs per poll, shared by the claim, the
            # settling of orphans and the idle check (each used to list them again).
            active = _ActiveJobs(self.jobs, job_id)
            try:
                claim = self._claim(active)
                if claim is None:
                    self._settle_orphans(active)
                    if self.options.exit_when_idle and not self._work_pending(active):
                        break
                    stop.wait(self.options.idle_interval)
                    continue
                outcome = self.run_claim(claim, stop)
            except DatabaseUnavailable as exc:
                # The database went away under the job store or the runner (a restart,
                # a terminated connection): wait and go on, as the runner does for its
                # own connections. The partition was given back if it could be; else
                # its lease expires and it is claimed again, from its committed position.
                stop.wait(outage.wait(exc, self.worker_id))
                continue
            outage.over()
            report.outcomes.append(
                (str(claim.job.job_id), claim.partition.partition_index, outcome)
            )
        return report

    def _claim(self, active: _ActiveJobs) -> Claim | None:
        lease = self.options.lease_seconds
        job_id = active.job_id
        if self._may_run is None:
            return self.jobs.claim(self.worker_id, lease_seconds=lease, job_id=job_id)
        # Only jobs this worker's principal may run (its grants' scopes).
        for job in active.jobs():
            if self._may_run(job):
                claim = self.jobs.claim(self.worker_id, lease_seconds=lease, job_id=job.job_id)
                if claim is not None:
                    return claim
        return None

    def _settle(self, job: Job) -> Job:
        """Settle the job's state from its partitions; report a change."""
        before = self.jobs.get_job(job.job_id)
        after = self.jobs.finalize(job.job_id)
        if after.state != before.state and self._on_job_state is not None:
            self._on_job_state(before, after)
        return after

    def _settle_orphans(self, active: _ActiveJobs) -> None:
        """Settle (and seal) a job whose partitions have all ended but whose state did
        not follow: the worker that ended the last one died before settling it. An
        aborting job is settled too: the leases of dead workers expire (see finalize)."""
        for job in active.jobs():
            if job.state not in (JobState.RUNNING, JobState.ABORTING):
                continue
            if self._may_run is not None and not self._may_run(job):
                continue
            if job.state == JobState.RUNNING and (
                settled_state(job, self.jobs.partitions(job.job_id)) is None
            ):
                continue
            settled = self._settle(job)
            if settled.state == JobState.COMPLETED:
                seal_job(settled, store=self.store)

    def _work_pending(self, active: _ActiveJobs) -> bool:
        """A running job still has partitions someone else holds (they may expire).

        A job settled in this poll is still listed as running; its partitions have
        all ended, so it counts as no work.
        """
        for job in active.jobs():
            if job.state not in (JobState.PLANNED, JobState.RUNNING):
                continue
            if any(
                p.status in ("held", "pending", "running") for p in self.jobs.partitions(job.job_id)
            ):
                return True
        return False

    # -- one partition --------------------------------------------------------------------

    def run_claim(self, claim: Claim, stop: threading.Event) -> PartitionOutcome:
        job = claim.job
        index = claim.partition.partition_index
        logger.info(
            "worker %s: job %s (%s) partition %d", self.worker_id, job.job_id, job.kind, index
        )
        try:
            if job.kind == JobKind.REDRIVE:
                return self._redrive(claim)
            if job.kind == JobKind.REPLAY and job.parameters.get("into") == "live":
                return self._replay_writes(claim, stop)
            return self._run_partition(claim, stop)
        except LeaseLost as exc:
            logger.warning("worker %s: %s", self.worker_id, exc)
            return PartitionOutcome.LOST
        except BaseException as exc:
            # The worker is dying with the partition claimed (its event source would
            # not open, the database refused it, it was interrupted...): give the
            # partition back now, so that another worker takes it at once instead of
            # after the lease expires. If even that fails, the lease still expires.
            try:
                self.jobs.release(claim)
            except Exception as release_error:
                logger.warning(
                    "worker %s: could not give partition %d of job %s back (%s); its "
                    "lease will expire",
                    self.worker_id,
                    index,
                    job.job_id,
                    release_error,
                )
            else:
                logger.warning(
                    "worker %s: gave partition %d of job %s back after %s",
                    self.worker_id,
                    index,
                    job.job_id,
                    error_summary(exc) if isinstance(exc, Exception) else type(exc).__name__,
                )
            raise

    def _integrity_policy(self, claim: Claim, policy: FailurePolicy) -> IntegrityPolicy:
        """``policy`` behind the integrity rule; positions an operator parked are parked."""
        parked: frozenset[int] = frozenset()
        if self.conflicts is not None:
            parked = self.conflicts.parked_positions(
                str(claim.job.job_id), claim.partition.partition_index
            )
        action = self.on_integrity_failure
        if action == "pause" and self.conflicts is None:
            action = "fail"  # nowhere to record a conflict: stop loudly instead
        return IntegrityPolicy(policy, action, parked)

    def _pause(
        self, claim: Claim, position: int, error: BaseException, kind: str
    ) -> PartitionOutcome:
        """Stop the partition at ``position`` with a conflict (see conflicts)."""
        assert self.conflicts is not None
        job = claim.job
        reason = f"{type(error).__name__}: {error_summary(error)}"
        conflict = self.conflicts.pause_partition(
            claim,
            NewConflict(
                subject=job_subject(str(job.job_id), claim.partition.partition_index),
                kind=kind,
                reason=reason,
                projection=job.projection,
                build=job.build,
                job_id=str(job.job_id),
                partition_index=claim.partition.partition_index,
                position=position,
            ),
        )
        logger.error(
            "worker %s: job %s partition %d paused by conflict %s: %s",
            self.worker_id,
            job.job_id,
            claim.partition.partition_index,
            conflict.conflict_id,
            conflict.describe(),
        )
        return PartitionOutcome.PAUSED

    def _policy(self, job: Job, breaker: CircuitBreaker) -> BreakerPolicy:
        rules = self.policies.live if job.kind == JobKind.CATCH_UP else self.policies.rebuild
        configured = job.parameters.get("policy")
        if isinstance(configured, Mapping):
            rules = PolicySpec.model_validate(configured).rules()

        def persist(current: CircuitBreaker) -> None:
            snapshot = current.snapshot()
            self.jobs.set_breaker(
                job.job_id, {"state": snapshot.state, "opened_count": snapshot.opened_count}
            )
            self.observer.breaker_changed(job.projection, snapshot.state)

        return BreakerPolicy(RulesPolicy(rules), breaker, persist)

    def _run_partition(self, claim: Claim, stop: threading.Event) -> PartitionOutcome:
        job = claim.job
        index = claim.partition.partition_index
        target = job.target_position
        if target is None:
            raise IncompleteJob(f"job {job.job_id} has no target position")
        projection = self.registry[job.projection]
        configured_breaker = job.parameters.get("breaker")
        breaker = CircuitBreaker(
            BreakerSpec.model_validate(configured_breaker).settings()
            if isinstance(configured_breaker, Mapping)
            else self.options.breaker
        )
        policy = self._policy(job, breaker)
        integrity = self._integrity_policy(claim, policy)
        self.observer.breaker_changed(job.projection, breaker.state)
        runner = ProjectionRunner(
            projection(),
            source=self.source,
            store=self.store,
            partition=Partition(index, job.partition_count),
            build=job.build,
            options=self.runner_options,
            policy=integrity,
            # The partition's position and its applied/parked counters move in each
            # batch's own commit: after a crash they agree with the rows they count.
            fence=lease_fence(claim, tally=True),
            on_parked=self._parked_hook(job),
            faults=self._faults,
            observer=self.observer.runner(str(job.kind)),
            replay=job_replay_context(job),
        )
        throttle = _throttle(job)
        recent = RecentRate()
        renew_every = self.options.lease_seconds / 3
        renewed_at = time.monotonic()
        counted = 0
        while True:
            released = self._yield_if_asked(claim, stop)
            if released is not None:
                return released
            try:
                result = runner.run_batch(stop, until=target)
            except PositionConflict as exc:
                logger.warning("worker %s: %s", self.worker_id, exc)
                if isinstance(exc, FencedOff):
                    return PartitionOutcome.LOST  # our lease is gone: nothing was written
                # Another writer (a live follower of a one-partition catch-up) moved
                # the position: count it, re-read the position, go on.
                self.jobs.report(claim, position=runner.checkpoint().position, conflicts=1)
                continue
            except HandlerFailed as exc:
                cause = exc.__cause__
                kind = integrity_kind(cause)
                if cause is not None and kind is not None and integrity.action == "pause":
                    # Stopped before the failing position: the runner committed the
                    # events before it, nothing at or past it.
                    return self._pause(claim, exc.position, cause, kind)
                self.jobs.report(
                    claim,
                    position=runner.checkpoint().position,
                    last_error=error_summary(exc),
                )
                self.jobs.finish_partition(claim, succeeded=False, error=error_summary(exc))
                self._settle(job)
                return PartitionOutcome.FAILED
            retries = runner.retries + runner.connection_retries
            # The throttle is paid before the rate is sampled: the rate shown is what
            # the cap allowed, never the burst of a batch applied before its pause.
            throttle.acquire(result.applied)
            # Applied and parked events were counted by the commits (the lease's tally).
            self.jobs.report(
                claim,
                position=result.position,
                retries=retries - counted,
                target_position=target,
                recent_rate=recent.add(result.applied + result.parked),
            )
            counted = retries
            if not result.retried:
                policy.record_success()
            if result.position >= target:
                return self._finish(claim, runner)
            if time.monotonic() - renewed_at >= renew_every:
                claim = self.jobs.renew(claim, lease_seconds=self.options.lease_seconds)
                renewed_at = time.monotonic()
            if not result.read and not result.retried:
                # The safe head is still below the target (a writer is committing): wait.
                stop.wait(self.runner_options.poll_interval)

    def _finish(self, claim: Claim, runner: ProjectionRunner) -> PartitionOutcome:
        job = claim.job
        try:
            check_partition(
                job,
                claim.partition.partition_index,
                start=claim.partition.start_position,
                store=self.store,
                source=self.source,
                topics=list(type(runner.projection).topics),
            )
        except IncompleteJob as exc:
            self.jobs.finish_partition(claim, succeeded=False, error=str(exc))
            self._settle(job)
            return PartitionOutcome.FAILED
        self.jobs.finish_partition(claim, succeeded=True)
        settled = self._settle(job)
        if settled.state == JobState.COMPLETED:
            seal_job(settled, store=self.store)
        return PartitionOutcome.COMPLETED

    def _parked_hook(self, job: Job) -> Callable[[Sequence[ParkedEvent]], None] | None:
        hook = self._on_parked
        if hook is None:
            return None
        return lambda parked: hook(job, parked)

    def _yield_if_asked(self, claim: Claim, stop: threading.Event) -> PartitionOutcome | None:
        """Give the partition back if the worker stops or the job is paused or aborted."""
        if stop.is_set():
            self.jobs.release(claim)
            return PartitionOutcome.RELEASED
        state = self.jobs.get_job(claim.job.job_id).state
        if state in (JobState.PAUSED, JobState.ABORTING, JobState.ABORTED):
            self.jobs.release(claim)
            if state == JobState.ABORTING:
                self._settle(claim.job)
            return PartitionOutcome.RELEASED
        return None

    def _replay_writes(self, claim: Claim, stop: threading.Event) -> PartitionOutcome:
        """Re-apply a range into a build of a replay-safe projection, moving no position.

        Progress is the job partition's position: a worker that dies between a
        write and its report re-applies that batch, which a replay-safe projection
        absorbs (that is why only those may be replayed this way).
        """
        job = claim.job
        index = claim.partition.partition_index
        target = job.target_position or 0
        cls = self.registry[job.projection]
        handlers = cls().handlers()
        wanted = {uuid.UUID(str(a)) for a in job.parameters.get("aggregates") or []}
        partition = Partition(index, job.partition_count)
        fence = lease_fence(claim)
        throttle = _throttle(job)
        recent = RecentRate()
        position = claim.partition.position
        renewed_at = time.monotonic()
        integrity = self._integrity_policy(claim, FailFast())
        while position < target:
            released = self._yield_if_asked(claim, stop)
            if released is not None:
                return released
            limit = self.runner_options.batch_size
            batch = self.source.read(
                after=position,
                upto=target,
                limit=limit,
                topics=list(cls.topics),
                partition=partition,
            )
            upto = batch[-1].id if len(batch) >= limit else target
            state = BatchState(cls.table_map, self.store.row_reader(cls.name, job.build))
            applied = 0
            with replaying(job_replay_context(job)):
                for notification in batch:
                    if wanted and notification.originator_id not in wanted:
                        continue
                    try:
                        envelope = self.source.decode(notification)
                    except Exception as exc:
                        kind = integrity_kind(exc)
                        if kind is not None and (
                            notification.id in integrity.park_positions
                            or integrity.action == "park"
                        ):
                            continue  # parked: by an operator's resolution, or the policy
                        if kind is not None and integrity.action == "pause":
                            # Nothing of this batch is written: the partition stays at
                            # ``position``, before the failing event.
                            return self._pause(claim, notification.id, exc, kind)
                        error = f"position {notification.id}: {error_summary(exc)}"
                        self.jobs.report(claim, position=position, last_error=error)
                        self.jobs.finish_partition(claim, succeeded=False, error=error)
                        self._settle(job)
                        return PartitionOutcome.FAILED
                    try:
                        handlers[notification.topic](envelope, state)
                    except Exception as exc:
                        error = f"position {notification.id}: {error_summary(exc)}"
                        self.jobs.report(claim, position=position, last_error=error)
                        self.jobs.finish_partition(claim, succeeded=False, error=error)
                        self._settle(job)
                        return PartitionOutcome.FAILED
                    applied += 1
            try:
                self.store.write(cls.name, job.build, state.writes(), fence=fence)
            except FencedOff:
                return PartitionOutcome.LOST
            throttle.acquire(applied)
            self.jobs.report(
                claim,
                position=upto,
                events_applied=applied,
                target_position=target,
                recent_rate=recent.add(applied),
            )
            position = upto
            if time.monotonic() - renewed_at >= self.options.lease_seconds / 3:
                claim = self.jobs.renew(claim, lease_seconds=self.options.lease_seconds)
                renewed_at = time.monotonic()
        try:
            check_log_accounted(
                self.source,
                after=claim.partition.start_position,
                upto=target,
                where=f"job {job.job_id} partition {partition}",
            )
        except IncompleteJob as exc:
            self.jobs.finish_partition(claim, succeeded=False, error=str(exc))
            self._settle(job)
            return PartitionOutcome.FAILED
        self.jobs.finish_partition(claim, succeeded=True)
        self._settle(job)
        return PartitionOutcome.COMPLETED

    def _redrive(self, claim: Claim) -> PartitionOutcome:
        job = claim.job
        projection = self.registry[job.projection]
        aggregates = job.parameters.get("aggregates") or None
        with replaying(job_replay_context(job)):
            result = redrive_parked(
                projection(),
                build=job.build,
                store=self.store,
                source=self.source,
                aggregates=[str(a) for a in aggregates] if aggregates else None,
            )
        self.jobs.report(
            claim,
            position=job.target_position or 0,
            events_applied=result.resolved,
            parked=result.still_parked,
            last_error=result.last_error,
        )
        self.jobs.finish_partition(
            claim, succeeded=result.still_parked == 0, error=result.last_error
        )
        self._settle(job)
        return PartitionOutcome.COMPLETED if result.still_parked == 0 else PartitionOutcome.FAILED


#: Why a job's handlers run, by job kind (what they read from the replay context;
#: a redrive applies parked events again, as a replay does).
JOB_REASONS: Mapping[JobKind, ReplayReason] = {
    JobKind.REBUILD: "rebuild",
    JobKind.CATCH_UP: "catch-up",
    JobKind.REPLAY: "replay",
    JobKind.REDRIVE: "replay",
}


def job_replay_context(job: Job) -> ReplayContext:
    """The replay context a job's handlers run in: its kind's reason, its id."""
    return ReplayContext(JOB_REASONS[job.kind], job.projection, job_id=str(job.job_id))


#: The columns of a lease row that a tallying fence moves with each commit.
LEASE_TALLY = Tally(position="position", applied="events_applied", parked="parked")


def lease_fence(claim: Claim, *, tally: bool = False) -> Fence:
    """The commit fence of a claim: its lease row, with its token, still running.

    With ``tally``, each commit also moves the row's position and adds its applied
    and parked events to the partition's counters, in the commit's transaction.
    """
    return Fence(
        LEASE_TABLE,
        (
            ("job_id", str(claim.job.job_id)),
            ("partition_index", claim.partition.partition_index),
            ("lease_token", claim.token),
            ("status", "running"),
        ),
        f"the lease of job {claim.job.job_id} partition {claim.partition.partition_index} "
        f"(token {claim.token})",
        LEASE_TALLY if tally else None,
    )


def _throttle(job: Job) -> Throttle:
    """The job's events/s cap, shared by the partitions that may run at once, with no
    initial burst: each batch waits for its own events, so no window runs above it."""
    if job.events_per_second is None:
        return Throttle(None)
    running = job.max_concurrent_partitions or job.partition_count
    return Throttle(job.events_per_second / max(1, min(running, job.partition_count)), burst=0.0)

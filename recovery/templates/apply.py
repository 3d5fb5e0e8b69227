"""``safereplay apply TEMPLATE``: run a recovery template, with its staged rollout.

Each step is an ordinary operation of the dispatch layer (``rebuild``,
``catch-up``, ``replay``, ``parked.redrive``, ``keys.reencrypt``) run as the
caller, so it is checked and audited like any other; the template's name is in
every step's reason.

A **staged rollout** (``[rollout] canary_partitions``) creates the job with its
other partitions *held*: only the canary runs. The canary verified when every
canary partition completed — the completeness check accounted for every
position — and, with ``require_verified_canary``, parked nothing. Then
``rollout.continue`` releases the rest; otherwise the job is aborted and the
rollout stops there, with the live build untouched.

:func:`apply_template` (``safereplay apply``) runs the steps and waits on each,
continuing after a verified canary by itself. :func:`start_template` (the
dashboard's console) makes the same steps' jobs and returns at once: workers run
them, and the operator releases the rest of a rollout (``rollout.continue``) once
:func:`rollout_state` says the canary verified. Both build every step with
:func:`_start_step`, so both create the same jobs through the same checks.
:func:`rehearse_template` is the console's rehearsal: a ``drill`` of each
projection of the template, rebuilt into a sandbox and compared with live.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol
from uuid import UUID

from safereplay.recovery.errors import InvalidRequest
from safereplay.recovery.jobs.model import JobState, JobStatus, PartitionStatus
from safereplay.recovery.security.access import Principal
from safereplay.recovery.templates.model import RecoveryTemplate, RolloutSpec

__all__ = [
    "AppliedStep",
    "JobDriver",
    "RolloutState",
    "STEP_OPERATIONS",
    "OperationRunner",
    "StartedStep",
    "ThreadDriver",
    "apply_template",
    "canary_ended",
    "canary_verified",
    "rehearse_template",
    "rollout_state",
    "start_template",
    "wait_for_job",
]

ENDED = (JobState.COMPLETED, JobState.FAILED, JobState.ABORTED)


class OperationRunner(Protocol):
    """What applying a template needs of the dispatch layer: running an operation.

    (:class:`~safereplay.recovery.operations.dispatch.Operations` is one; a
    template step runs through it, so every step is checked and audited.)
    """

    def run(
        self, principal: Principal, operation: str, /, *, reason: str = "", **parameters: Any
    ) -> Any: ...


class JobDriver(Protocol):
    """Gets a job's partitions run (worker threads or processes) and waits on it."""

    def start(self, job_id: UUID) -> None: ...

    def wait(self, job_id: UUID, done: Callable[[JobStatus], bool]) -> JobStatus: ...


def wait_for_job(
    status: Callable[[UUID], JobStatus],
    job_id: UUID,
    done: Callable[[JobStatus], bool],
    *,
    poll: float,
    timeout: float | None = None,
) -> JobStatus:
    """Poll the job's status until ``done`` says so (or ``timeout`` seconds pass)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        current = status(job_id)
        if done(current):
            return current
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} did not get there within {timeout}s")
        time.sleep(poll)


@dataclass(frozen=True)
class AppliedStep:
    projection: str | None
    operation: str
    job_id: str | None
    outcome: str
    detail: str = ""


#: The operation each kind of template runs.
STEP_OPERATIONS: Mapping[str, str] = {
    "rebuild": "rebuild",
    "catch-up": "catch-up",
    "replay-range": "replay",
    "redrive-parked": "parked.redrive",
    "reencrypt": "keys.reencrypt",
}


def _operation(template: RecoveryTemplate) -> str:
    return STEP_OPERATIONS[template.template.kind]


def _parameters(template: RecoveryTemplate, projection: str | None) -> dict[str, Any]:
    kind = template.template.kind
    scope = template.scope
    if kind == "reencrypt":
        return {"events_per_second": template.throttle.events_per_second}
    parameters: dict[str, Any] = {"projection": projection}
    if kind == "redrive-parked":
        return parameters | {"aggregates": [str(a) for a in scope.aggregates]}
    parameters |= {
        "partitions": scope.partitions,
        "policy": template.policy.model_dump(),
        "breaker": template.breaker.model_dump(),
        "max_concurrent_partitions": template.throttle.max_concurrent_partitions,
        "events_per_second": template.throttle.events_per_second,
    }
    if kind == "replay-range":
        assert scope.positions is not None  # the template's validation requires it
        parameters |= {
            "start": scope.positions.start,
            "end": scope.positions.end,
            "aggregates": [str(a) for a in scope.aggregates],
            "only_partitions": scope.only_partitions,
        }
    elif scope.only_partitions is not None:
        raise InvalidRequest(
            f"scope.only_partitions: a {kind} must cover every partition (a part of a build "
            "would be incomplete); only replay-range templates take a subset"
        )
    return parameters


def _held(template: RecoveryTemplate) -> list[int]:
    canary = set(template.rollout.canary_partitions)
    if not canary:
        return []
    return [p for p in template.partitions_in_scope() if p not in canary]


def canary_verified(rollout: RolloutSpec, status: JobStatus) -> tuple[bool, str]:
    """Did the canary partitions of ``status``'s job verify, and why (not)."""
    canary = [p for p in status.partitions if p.partition_index in rollout.canary_partitions]
    failed = [p.partition_index for p in canary if p.status != PartitionStatus.COMPLETED]
    if failed:
        return False, f"canary partitions {failed} did not complete"
    parked = sum(p.parked for p in canary)
    if rollout.require_verified_canary and parked:
        return False, f"the canary parked {parked} events"
    return True, f"canary partitions {rollout.canary_partitions} verified"


def canary_ended(rollout: RolloutSpec, status: JobStatus) -> bool:
    """Has the canary stage ended: the job ended, or every canary partition did."""
    if status.job.state in ENDED:
        return True
    return all(
        p.status in (PartitionStatus.COMPLETED, PartitionStatus.FAILED)
        for p in status.partitions
        if p.partition_index in rollout.canary_partitions
    )


@dataclass(frozen=True)
class StartedStep:
    """A template step whose job was made (or, with no job, whose operation ran).

    ``held_partitions``: the partitions that wait for the canary; ``detail``: the
    result of a step that needed no job (a catch-up of a projection not behind).
    """

    projection: str | None
    operation: str
    job_id: str | None
    canary_partitions: tuple[int, ...] = ()
    held_partitions: tuple[int, ...] = ()
    detail: str = ""


def _because(template: RecoveryTemplate, reason: str) -> str:
    # The template's name is in every step's reason (and so in every audit entry).
    return f"{reason} (template {template.template.name})"


def _steps(template: RecoveryTemplate) -> Sequence[str | None]:
    return template.scope.projections or [None]


def _start_step(
    operations: OperationRunner,
    principal: Principal,
    template: RecoveryTemplate,
    projection: str | None,
    because: str,
) -> StartedStep:
    """Run one step's operation (checked and audited): a job, the rest held back."""
    operation = _operation(template)
    held = _held(template)
    parameters = _parameters(template, projection)
    if held:
        parameters["held_partitions"] = held
        # Kept with the job, so whoever looks at it later knows its canary.
        parameters["rollout"] = template.rollout.model_dump()
    result = operations.run(principal, operation, reason=because, **parameters)
    job_id = result.get("job_id") if isinstance(result, dict) else None
    if job_id is None:
        # (A step waiting for a second person's approval says so: its message.)
        detail = getattr(result, "message", None) or str(result)
        return StartedStep(projection, operation, None, detail=detail)
    canary = tuple(sorted(template.rollout.canary_partitions)) if held else ()
    return StartedStep(projection, operation, str(job_id), canary, tuple(held))


def start_template(
    operations: OperationRunner,
    principal: Principal,
    template: RecoveryTemplate,
    *,
    reason: str,
) -> list[StartedStep]:
    """Make every step's job (canary partitions runnable, the rest held) and return
    without waiting: workers run them; ``rollout.continue`` releases the rest."""
    because = _because(template, reason)
    return [
        _start_step(operations, principal, template, projection, because)
        for projection in _steps(template)
    ]


def apply_template(
    operations: OperationRunner,
    principal: Principal,
    template: RecoveryTemplate,
    *,
    reason: str,
    driver: JobDriver,
) -> list[AppliedStep]:
    """Run ``template`` step by step; stop at the first step that does not complete."""
    because = _because(template, reason)
    rollout = template.rollout
    steps: list[AppliedStep] = []
    for projection in _steps(template):
        started = _start_step(operations, principal, template, projection, because)
        operation = started.operation
        if started.job_id is None:
            steps.append(AppliedStep(projection, operation, None, "done", started.detail))
            continue
        job = UUID(started.job_id)
        driver.start(job)
        if started.held_partitions:
            status = driver.wait(job, lambda s: canary_ended(rollout, s))
            verified, detail = canary_verified(rollout, status)
            if not verified:
                operations.run(principal, "abort", reason=f"{because}: {detail}", job_id=str(job))
                steps.append(AppliedStep(projection, operation, str(job), "stopped", detail))
                return steps
            operations.run(
                principal, "rollout.continue", reason=f"{because}: {detail}", job_id=str(job)
            )
        status = driver.wait(job, lambda s: s.job.state in ENDED)
        steps.append(
            AppliedStep(
                projection, operation, str(job), str(status.job.state), status.job.error or ""
            )
        )
        if status.job.state != JobState.COMPLETED:
            return steps
    return steps


@dataclass(frozen=True)
class RolloutState:
    """Where a job's staged rollout is: what the console shows, and whether the
    rest may be released (``verified``, with ``detail`` saying why or why not)."""

    job_id: str
    state: str
    staged: bool
    canary_partitions: tuple[int, ...]
    held_partitions: tuple[int, ...]
    require_verified_canary: bool
    canary_ended: bool
    verified: bool
    #: The held partitions were released (``rollout.continue``).
    released: bool
    detail: str


def rollout_state(status: JobStatus) -> RolloutState:
    """The rollout of ``status``'s job, from the rollout kept with it (a job made
    by :func:`_start_step`); a job with no rollout is one stage, nothing held."""
    held = tuple(p.partition_index for p in status.partitions if p.status == PartitionStatus.HELD)
    kept = status.job.parameters.get("rollout")
    job_id, state = str(status.job.job_id), str(status.job.state)
    if not isinstance(kept, dict) or not kept.get("canary_partitions"):
        return RolloutState(
            job_id, state, False, (), held, False, True, False, False, "not a staged rollout"
        )
    rollout = RolloutSpec.model_validate(kept)
    ended = canary_ended(rollout, status)
    verified, detail = canary_verified(rollout, status) if ended else (False, "")
    if not ended:
        detail = f"canary partitions {rollout.canary_partitions} are still running"
    elif status.job.state in ENDED:
        verified = verified and status.job.state != JobState.ABORTED
        detail = f"the job is {state}" + (f": {detail}" if detail else "")
    return RolloutState(
        job_id=job_id,
        state=state,
        staged=True,
        canary_partitions=tuple(sorted(rollout.canary_partitions)),
        held_partitions=held,
        require_verified_canary=rollout.require_verified_canary,
        canary_ended=ended,
        verified=verified,
        released=not held,
        detail=detail,
    )


def rehearse_template(
    operations: OperationRunner,
    principal: Principal,
    template: RecoveryTemplate,
    *,
    reason: str,
) -> list[Any]:
    """Rehearse ``template`` as a drill: each of its projections rebuilt into a
    sandbox, in its partitions, and compared with the live build (``drill``,
    checked and audited); the live read model is not touched."""
    if not template.scope.projections:
        raise InvalidRequest(
            f"a {template.template.kind} template has no projection to rehearse in a sandbox"
        )
    because = f"{reason} (rehearsal of template {template.template.name})"
    return [
        operations.run(
            principal,
            "drill",
            reason=because,
            projection=projection,
            partitions=template.scope.partitions,
        )
        for projection in template.scope.projections
    ]


class ThreadDriver:
    """Worker threads in this process (tests, small jobs); :meth:`close` stops them."""

    def __init__(
        self,
        new_worker: Callable[[], Any],
        status: Callable[[UUID], JobStatus],
        *,
        workers: int = 2,
        poll: float = 0.05,
        timeout: float = 120.0,
    ) -> None:
        self._new_worker = new_worker
        self._status = status
        self._workers = workers
        self._poll = poll
        self._timeout = timeout
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self, job_id: UUID) -> None:
        for _ in range(self._workers):
            worker = self._new_worker()
            thread = threading.Thread(
                target=worker.run, args=(self._stop,), kwargs={"job_id": job_id}, daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def wait(self, job_id: UUID, done: Callable[[JobStatus], bool]) -> JobStatus:
        return wait_for_job(self._status, job_id, done, poll=self._poll, timeout=self._timeout)

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    @contextmanager
    def running(self) -> Iterator[ThreadDriver]:
        try:
            yield self
        finally:
            self.close()

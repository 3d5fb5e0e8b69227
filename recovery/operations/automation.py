"""Automatic recovery actions, each allowed by a recovery flag (see docs/security.md).

Each action runs through :func:`~safereplay.recovery.operations.flags.run_automatic`:
audited with the actor ``system`` and the flag that allowed it, and refused while
the operations switch is frozen.

- :func:`auto_catch_up` (flag ``auto_catch_up``): when ``safereplay follow`` starts
  and a projection is further behind the head than the flag's backlog threshold,
  a catch-up job of :data:`AUTO_CATCH_UP_PARTITIONS` partitions (one if the
  projection is not partitionable) is started for workers to run, instead of the
  follower applying the backlog event by event. Partitions outside the flag's
  rollout are *held*: they wait for ``safereplay jobs continue JOB -r REASON``
  (the staged rollout of a job), so a rollout to some partitions catches up those
  first.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from safereplay.projections.status import projection_status
from safereplay.recovery.errors import RecoveryError
from safereplay.recovery.jobs.plans import CatchUpPlan, JobRequest, start_catch_up
from safereplay.recovery.operations.flags import SYSTEM_ACTOR, flag_store, run_automatic
from safereplay.recovery.security.flags import FlagName

if TYPE_CHECKING:
    from safereplay.recovery.operations.context import RecoveryContext

__all__ = ["AUTO_CATCH_UP_PARTITIONS", "auto_catch_up", "backlog_of"]

_log = logging.getLogger(__name__)

#: The partitions of an automatic catch-up (of a partitionable projection).
AUTO_CATCH_UP_PARTITIONS = 4


def backlog_of(context: RecoveryContext, projection: str) -> int:
    """Events between ``projection``'s live build and the head (all of them: not built)."""
    log = context.log
    head = max(log.head(), mark := log.high_water_mark())
    store = context.projection_store
    if store.live_build(projection) is None:
        return mark + max(0, head - mark)
    return projection_status(store, projection, high_water_mark=mark, head=head).backlog


def _start_catch_up(
    context: RecoveryContext, name: str, partitions: int, held: tuple[int, ...], reason: str
) -> CatchUpPlan:
    request = JobRequest(
        principal=SYSTEM_ACTOR, reason=reason, partitions=partitions, held_partitions=held
    )
    return start_catch_up(
        request,
        projection=name,
        store=context.projection_store,
        source=context.log,
        jobs=context.jobs,
        registry=context.registry,
        wait=context.recovery.catch_up_wait,
    )


def auto_catch_up(context: RecoveryContext, projections: Sequence[str]) -> list[dict[str, Any]]:
    """Start a catch-up job for each of ``projections`` whose ``auto_catch_up`` flag is
    on and whose backlog is over its threshold; returns what each started (its job id,
    its backlog, its held partitions). A projection with an active job is left alone."""
    flags = flag_store(context)
    started: list[dict[str, Any]] = []
    for name in projections:
        flag = flags.effective(FlagName.AUTO_CATCH_UP, f"projection:{name}")
        if not flag.enabled or context.jobs.list_jobs(projection=name, active_only=True):
            continue
        threshold = flag.backlog_threshold or 0
        backlog = backlog_of(context, name)
        if backlog <= threshold:
            continue
        cls = context.registry[name]
        partitions = AUTO_CATCH_UP_PARTITIONS if cls.partitionable else 1
        held = tuple(i for i in range(partitions) if not flag.rollout.covers(flag.target, str(i)))
        if len(held) == partitions:
            continue  # the rollout covers none of them: nothing to start
        parameters = {
            "projection": name,
            "backlog": backlog,
            "backlog_threshold": threshold,
            "partitions": partitions,
            "held_partitions": list(held),
        }
        reason = f"auto_catch_up: backlog {backlog} events is over {threshold}"

        try:
            plan = run_automatic(
                context,
                flag=flag,
                action="auto.catch_up",
                parameters=parameters,
                work=partial(_start_catch_up, context, name, partitions, held, reason),
            )
        except RecoveryError as exc:  # audited as failed; the follower starts anyway
            _log.warning("auto_catch_up of %s did not start: %s", name, exc)
            continue
        if plan is not None and plan.job is not None:
            started.append({**parameters, "job_id": str(plan.job.job_id)})
    return started

"""Automatic recovery actions, each allowed by a recovery flag (see docs/security.md).

Each action runs through :func:`~safereplay.recovery.operations.flags.run_automatic`:
audited with the actor ``system`` and the flag that allowed it, and refused while
the operations switch is frozen.

- :func:`auto_catch_up` (flag ``auto_catch_up``): when ``safereplay follow`` starts
  and a projection is further behind the head than the flag's backlog threshold,
  a catch-up job of :data:`AUTO_CATCH_UP_PARTITIONS` partitions (one if the
  projection is not partitionable) is started for workers to run, instead of the
  follower applying the backlog event by event. Partitions outside the flag's
  rollout are *held* until ``rollout.continue`` releases them (the staged rollout
  of a job), so a rollout to some partitions catches up those first.
- :func:`auto_redrive` (flag ``auto_redrive``): when ``safereplay follow`` starts (a
  deploy restarts it), the parked events of a projection's live build are
  re-driven (a redrive job, for workers) if the projection's code version differs
  from the one they were last seen under: the cause may be fixed. The first
  check only records the version. With a rollout, only the parked events of the
  partitions in it are re-driven. For a reaction (:func:`auto_redrive_reaction`,
  after each cycle of ``safereplay react``): its parked deliveries to a
  destination whose breaker was seen open and is closed again are re-delivered.
- :class:`StallRestarts` (flag ``auto_restart_stalled``): a follower that the
  ``stalled`` rule finds stalled is restarted by its follow process, at most the
  flag's ``max_restarts`` per ``window_seconds``; then it is left for a human.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any

from safereplay.projections.status import projection_status
from safereplay.reactions import Reaction, ReactionRunner
from safereplay.reactions.redelivery import RedeliverySelection, redeliver
from safereplay.recovery.alerts.facts import RunnerFacts, Snapshot
from safereplay.recovery.alerts.rules import Stalled
from safereplay.recovery.errors import RecoveryError
from safereplay.recovery.jobs.heartbeats import FollowerHeartbeats
from safereplay.recovery.jobs.plans import (
    CatchUpPlan,
    JobRequest,
    start_catch_up,
    start_redrive,
)
from safereplay.recovery.operations.flags import SYSTEM_ACTOR, flag_store, run_automatic
from safereplay.recovery.security.audit import AuditRecord
from safereplay.recovery.security.flags import Flag, FlagName, Rollout

if TYPE_CHECKING:
    from safereplay.recovery.operations.context import RecoveryContext

__all__ = [
    "AUTO_CATCH_UP_PARTITIONS",
    "RESTART_ACTION",
    "StallRestarts",
    "auto_catch_up",
    "auto_redrive",
    "auto_redrive_reaction",
    "backlog_of",
]

_log = logging.getLogger(__name__)

#: The partitions of an automatic catch-up (of a partitionable projection).
AUTO_CATCH_UP_PARTITIONS = 4
#: The audit action of an automatic restart of a stalled follower.
RESTART_ACTION = "auto.restart_stalled"


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


def auto_redrive(context: RecoveryContext, projections: Sequence[str]) -> list[dict[str, Any]]:
    """Start a redrive job for each of ``projections`` whose ``auto_redrive`` flag is on
    and whose live build has parked events last seen under another code version;
    returns what each started. A projection with an active job is left alone."""
    flags = flag_store(context)
    started: list[dict[str, Any]] = []
    for name in projections:
        target = f"projection:{name}"
        flag = flags.effective(FlagName.AUTO_REDRIVE, target)
        if not flag.enabled or context.jobs.list_jobs(projection=name, active_only=True):
            continue
        store = context.projection_store
        if store.live_build(name) is None:
            continue
        version = str(context.registry[name].version)
        parked = [p for p in store.parked(name) if flag.applies_to(str(p.partition))]
        seen = flags.mark(FlagName.AUTO_REDRIVE, target)
        if not parked or seen is None or seen == version:
            if seen != version:
                flags.set_mark(FlagName.AUTO_REDRIVE, target, version)
            continue
        aggregates = sorted({str(p.aggregate_id) for p in parked})
        parameters = {
            "projection": name,
            "parked": len(parked),
            "parked_under_version": seen,
            "version": version,
        }
        request = JobRequest(
            principal=SYSTEM_ACTOR,
            reason=f"auto_redrive: code version {seen} -> {version}",
        )
        work = partial(
            start_redrive,
            request,
            projection=name,
            store=store,
            jobs=context.jobs,
            registry=context.registry,
            aggregates=aggregates if flag.rollout != Rollout() else None,
        )
        try:
            job = run_automatic(
                context, flag=flag, action="auto.redrive", parameters=parameters, work=work
            )
        except RecoveryError as exc:  # audited as failed; the follower starts anyway
            _log.warning("auto_redrive of %s did not start: %s", name, exc)
            continue
        if job is not None:
            flags.set_mark(FlagName.AUTO_REDRIVE, target, version)
            started.append({**parameters, "job_id": str(job.job_id)})
    return started


class StallRestarts:
    """``auto_restart_stalled`` for one follow process: called once per heartbeat with
    the process's ``restart(projection)``, it restarts each followed projection whose
    follower the ``stalled`` rule (:class:`~safereplay.recovery.alerts.rules.Stalled`,
    the operator surface's definition) finds stalled, if its flag is on for that
    partition, at most ``max_restarts`` times per ``window_seconds`` (counted in the
    audit trail, so across processes too). A restarted follower gets
    ``after_seconds`` to move before it can be restarted again. At the cap it is left
    for a human: a ``denied`` audit entry (once per window and process) says so; the ``stalled``
    alert stays open (``safereplay alerts``).
    """

    def __init__(
        self,
        context: RecoveryContext,
        projections: Sequence[str],
        *,
        after_seconds: float,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.context = context
        self.projections = frozenset(projections)
        self.after_seconds = after_seconds
        self._clock = clock or context.jobs.clock
        self._restarted_at: dict[str, float] = {}
        self._capped: dict[str, float] = {}

    def __call__(self, restart: Callable[[str], None]) -> list[str]:
        flags = flag_store(self.context)
        on = {
            name: flag
            for name in sorted(self.projections)
            if (
                flag := flags.effective(FlagName.AUTO_RESTART_STALLED, f"projection:{name}")
            ).enabled
        }
        if not on:
            return []
        now = self._clock()
        mark = self.context.log.high_water_mark()
        runners = [
            RunnerFacts(
                kind="follower",
                projection=beat.projection,
                partition=beat.partition,
                position=beat.position,
                heartbeat_at=beat.heartbeat_at,
                advanced_at=max(beat.advanced_at, self._restarted_at.get(beat.projection, 0.0)),
                backlog=max(0, mark - beat.position),
            )
            for beat in FollowerHeartbeats(self.context.database).beats()
            if beat.projection in on and beat.stopped_at is None
        ]
        restarted: list[str] = []
        for finding in Stalled(self.after_seconds).findings(Snapshot(now=now, runners=runners)):
            name = finding.projection or ""
            flag = on[name]
            partition = finding.subject.rpartition("/")[2]
            if name in restarted or not flag.applies_to(partition):
                continue
            window = float(flag.window_seconds or 0)
            done = self._restarts(flag.target, since=now - window)
            parameters = {
                "projection": name,
                "partition": partition,
                "stalled_for": finding.value,
                "restarts_in_window": done,
            }
            if done >= (flag.max_restarts or 0):
                if now - self._capped.get(name, -window - 1) > window:
                    self._capped[name] = now
                    self._left_for_a_human(flag, parameters)
                continue
            result = run_automatic(
                self.context,
                flag=flag,
                action=RESTART_ACTION,
                parameters=parameters,
                work=partial(_restarted, restart, name),
            )
            if result is not None:
                self._restarted_at[name] = now
                restarted.append(name)
        return restarted

    def _restarts(self, target: str, *, since: float) -> int:
        entries = self.context.audit.entries(
            actor=SYSTEM_ACTOR,
            action=RESTART_ACTION,
            scope=target,
            since=datetime.fromtimestamp(since, UTC),
        )
        return sum(1 for e in entries if e.outcome == "succeeded")

    def _left_for_a_human(self, flag: Flag, parameters: Mapping[str, Any]) -> None:
        message = (
            f"{flag.max_restarts} restarts in {flag.window_seconds}s already: left for a "
            "human (the stalled alert stays open)"
        )
        _log.warning("auto_restart_stalled of %s: %s", flag.target, message)
        self.context.audit.append(
            AuditRecord(
                actor=SYSTEM_ACTOR,
                action=RESTART_ACTION,
                scope=flag.target,
                reason=f"automatic: recovery flag {flag.name} is on for {flag.target}",
                parameters={**parameters, "flag": flag.to_json(), "error": message},
                outcome="denied",
            )
        )


def _restarted(restart: Callable[[str], None], name: str) -> bool:
    restart(name)
    return True


def auto_redrive_reaction(
    context: RecoveryContext, reaction: Reaction, runner: ReactionRunner
) -> list[dict[str, Any]]:
    """``auto_redrive`` for a reaction, after a cycle of its live runner: the parked
    deliveries to a destination whose breaker was seen open and is now closed (the
    destination is back) are re-delivered with ``runner``. For reactions the
    rollout's partitions are destination names."""
    flags = flag_store(context)
    target = f"reaction:{reaction.name}"
    flag = flags.effective(FlagName.AUTO_REDRIVE, target)
    if not flag.enabled:
        return []
    ledger = context.ledger
    seen: dict[str, str] = json.loads(flags.mark(FlagName.AUTO_REDRIVE, target) or "{}")
    before = dict(seen)
    parked = {s.destination: s.parked for s in ledger.summary(reaction.name)}
    done: list[dict[str, Any]] = []
    for destination, breaker in sorted(ledger.breaker_states(reaction.name).items()):
        if not flag.applies_to(destination):
            continue
        closed = breaker.state == "closed"
        was_open = seen.get(destination) == "open"
        seen[destination] = "closed" if closed else "open"
        if not (closed and was_open and parked.get(destination)):
            continue
        parameters = {
            "reaction": reaction.name,
            "destination": destination,
            "parked": parked[destination],
            "breaker_closed_at": breaker.changed_at,
        }
        selection = RedeliverySelection(reaction=reaction.name, destination=destination)
        work = partial(
            redeliver,
            reaction,
            source=context.source,
            ledger=ledger,
            selection=selection,
            runner=runner,
        )
        result = run_automatic(
            context, flag=flag, action="auto.redrive", parameters=parameters, work=work
        )
        if result is None:
            seen[destination] = "open"  # frozen: try again after the freeze
            continue
        done.append({**parameters, "delivered": result.delivered, "parked_again": result.parked})
    if seen != before:
        flags.set_mark(FlagName.AUTO_REDRIVE, target, json.dumps(seen, sort_keys=True))
    return done

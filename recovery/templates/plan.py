r"""Template plans: what applying a recovery template would do, changing nothing.

``plan`` reads a template — a TOML file, a template stored by an admin, or a
shipped runbook — and says what applying it would do: the projections and
partitions in scope, the events in scope per partition (counted in the database
with the projection's topic and partition filters), the physical tables that
would change, an estimated duration from the rates of completed jobs (or a
stated default rate), the failure policy, the throttle and the rollout stages.
Everything it reads goes through read-only connections or plain ``SELECT``\ s;
it creates no table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from safereplay.projections import EventSource, Partition, Projection, partition_of
from safereplay.projections.projection import physical_table_name
from safereplay.recovery.database import missing_table
from safereplay.recovery.drills.views import BuildRecord, ReadView, StoreReader
from safereplay.recovery.errors import InvalidRequest
from safereplay.recovery.jobs.model import JobState
from safereplay.recovery.jobs.store import JobStore
from safereplay.recovery.templates.model import RecoveryTemplate

__all__ = [
    "DEFAULT_EVENTS_PER_SECOND",
    "Estimate",
    "PartitionPlan",
    "ProjectionPlan",
    "RolloutStage",
    "TemplatePlan",
    "measured_rate",
    "plan_template",
]

#: The rate a plan assumes when no completed job has been measured (it says so).
DEFAULT_EVENTS_PER_SECOND = 2000.0


@dataclass(frozen=True)
class PartitionPlan:
    partition: int
    #: Events in scope have positions in (after, upto].
    after: int
    upto: int
    events: int


@dataclass(frozen=True)
class ProjectionPlan:
    projection: str
    live_build: int | None
    #: The build the template would write (a new one for a rebuild).
    writes_build: int | None
    tables: tuple[str, ...]
    partitions: tuple[PartitionPlan, ...]
    events: int
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class RolloutStage:
    stage: str
    partitions: tuple[int, ...]
    when: str


@dataclass(frozen=True)
class Estimate:
    events_per_second: float
    seconds: float
    basis: str


@dataclass(frozen=True)
class TemplatePlan:
    template: str
    kind: str
    origin: str
    description: str
    head: int
    partition_count: int
    projections: tuple[ProjectionPlan, ...]
    events: int
    tables: tuple[str, ...]
    estimate: Estimate
    failure_policy: Mapping[str, Any]
    throttle: Mapping[str, Any]
    stages: tuple[RolloutStage, ...]
    changes: str = "nothing: a plan is a dry run"
    #: The values an operator set (``--set NAME=VALUE``), as given.
    settings: Mapping[str, str] = field(default_factory=dict)


def measured_rate(jobs: JobStore | None, projections: Sequence[str]) -> tuple[float, str] | None:
    """Events per second over completed jobs: of these projections, else of any."""
    if jobs is None:
        return None
    for scope in [*projections, None] if projections else [None]:
        try:
            listed = jobs.list_jobs(projection=scope, limit=50)
        except Exception as exc:
            if missing_table(exc):
                return None  # no job was ever run here
            raise
        events = 0
        seconds = 0.0
        count = 0
        for job in listed:
            if job.state != JobState.COMPLETED:
                continue
            parts = jobs.partitions(job.job_id)
            started = [p.started_at for p in parts if p.started_at is not None]
            if not started:
                continue
            elapsed = max(p.updated_at for p in parts) - min(started)
            applied = sum(p.events_applied for p in parts)
            if elapsed > 0 and applied > 0:
                events, seconds, count = events + applied, seconds + elapsed, count + 1
        if count:
            of = "" if scope is None else f" of {scope}"
            return events / seconds, (
                f"measured: {events} events in {seconds:.1f} s over {count} completed job(s){of}"
            )
    return None


def _stages(template: RecoveryTemplate) -> tuple[RolloutStage, ...]:
    in_scope = template.partitions_in_scope()
    canary = sorted(template.rollout.canary_partitions)
    if not canary:
        return (RolloutStage("all", tuple(in_scope), "at once"),)
    rest = tuple(p for p in in_scope if p not in canary)
    when = (
        "only if the canary verified"
        if template.rollout.require_verified_canary
        else "after the canary"
    )
    return (RolloutStage("canary", tuple(canary), "first"), RolloutStage("rest", rest, when))


def _never_built(view: ReadView, cls: type[Projection], builds: Sequence[BuildRecord]) -> bool:
    """As :func:`safereplay.recovery.jobs.plans.never_built` decides it: no build, or
    only an empty live build 1 of this version at position 0 (read-only here)."""
    if not builds:
        return True
    if len(builds) > 1 or builds[0].status != "live" or builds[0].version != cls.version:
        return False
    return all(position == 0 for _, _, position in view.positions(cls.name, builds[0].build))


class _Planner:
    def __init__(
        self,
        template: RecoveryTemplate,
        view: ReadView,
        source: EventSource,
        head: int,
        *,
        into: str,
    ) -> None:
        self.template = template
        self.view = view
        self.source = source
        self.head = head
        self.count = template.scope.partitions
        self.into = into

    def _ranges(
        self, cls: type[Projection], live: BuildRecord | None
    ) -> tuple[dict[int, tuple[int, int]], list[str]]:
        kind = self.template.template.kind
        in_scope = self.template.partitions_in_scope()
        notes: list[str] = []
        if kind == "rebuild" or (kind == "catch-up" and live is None):
            return dict.fromkeys(in_scope, (0, self.head)), notes
        if live is None:
            raise InvalidRequest(f"projection {cls.name!r} has no live build to {kind}")
        if kind == "replay-range":
            positions = self.template.scope.positions
            assert positions is not None  # the template validates it
            upto = min(positions.end, self.head)
            if positions.end > self.head:
                notes.append(f"the range ends after the head ({self.head}): counted up to it")
            return dict.fromkeys(in_scope, (positions.start - 1, upto)), notes
        stored = self.view.positions(cls.name, live.build)
        by_partition = {i: p for i, c, p in stored if c == self.count}
        fallback = min((p for _, _, p in stored), default=0)
        if len(by_partition) != self.count and stored:
            notes.append(
                f"the live build keeps {stored[0][1]} partition(s), the template {self.count}: "
                f"every partition counted from the lowest position ({fallback})"
            )
        return {p: (by_partition.get(p, fallback), self.head) for p in in_scope}, notes

    def projection(self, cls: type[Projection]) -> ProjectionPlan:
        kind = self.template.template.kind
        if self.count > 1 and not cls.partitionable:
            raise InvalidRequest(
                f"projection {cls.name!r} is not partitionable: set scope.partitions = 1"
            )
        builds = self.view.builds(cls.name)
        live = next((b for b in builds if b.status == "live"), None)
        writes, said = self._writes(cls, builds, live)
        tables = tuple(physical_table_name(cls.name, t.name, writes) for t in cls.tables if writes)
        if kind == "redrive-parked":
            partitions, notes = self._parked(cls, live)
        else:
            ranges, notes = self._ranges(cls, live)
            partitions = tuple(
                PartitionPlan(
                    partition=p,
                    after=a,
                    upto=u,
                    events=self.source.count(
                        after=a, upto=u, topics=cls.topics, partition=Partition(p, self.count)
                    ),
                )
                for p, (a, u) in sorted(ranges.items())
            )
        notes.insert(0, said)
        if self.template.scope.aggregates:
            notes.append(
                f"only {len(self.template.scope.aggregates)} aggregate(s) are in scope: the "
                "counts include every aggregate of each partition (an upper bound)"
            )
        return ProjectionPlan(
            projection=cls.name,
            live_build=live.build if live else None,
            writes_build=writes,
            tables=tables,
            partitions=partitions,
            events=sum(p.events for p in partitions),
            notes=tuple(notes),
        )

    def _writes(
        self, cls: type[Projection], builds: Sequence[BuildRecord], live: BuildRecord | None
    ) -> tuple[int, str]:
        """The build the template would write, and what becomes of it."""
        kind = self.template.template.kind
        newest = max((b.build for b in builds), default=0)
        if kind == "rebuild" and not _never_built(self.view, cls, builds):
            beside = "" if live is None else f" beside the live build {live.build}"
            return newest + 1, (
                f"a new build {newest + 1}{beside}; `safereplay swap` makes it live once complete"
            )
        if kind in ("rebuild", "catch-up") and (live is None or kind == "rebuild"):
            build = live.build if live is not None else 1
            return build, (
                f"{cls.name} was never built: build {build} is built live, live when "
                "complete (nothing to swap)"
            )
        if live is None:
            raise InvalidRequest(f"projection {cls.name!r} has no live build to {kind}")
        if kind == "replay-range" and self.into != "live":
            return newest + 1, (
                f"a sandbox build {newest + 1} (never live, never swappable) gets the range; "
                f"the live build {live.build} is not touched"
            )
        return live.build, f"the live build {live.build} is written in place"

    def _parked(
        self, cls: type[Projection], live: BuildRecord | None
    ) -> tuple[tuple[PartitionPlan, ...], list[str]]:
        if live is None:
            raise InvalidRequest(f"projection {cls.name!r} has no live build to redrive")
        parked = self.view.parked(cls.name, live.build)
        plans = []
        for p in self.template.partitions_in_scope():
            mine = [pos for pos, aggregate in parked if partition_of(aggregate, self.count) == p]
            plans.append(
                PartitionPlan(
                    partition=p,
                    after=min(mine) - 1 if mine else 0,
                    upto=max(mine) if mine else 0,
                    events=len(mine),
                )
            )
        return tuple(plans), ["events in scope are the build's unresolved parked events"]


def plan_template(
    template: RecoveryTemplate,
    *,
    origin: str,
    reader: StoreReader,
    source: EventSource,
    registry: Mapping[str, type[Projection]],
    jobs: JobStore | None = None,
    into: str = "sandbox",
    settings: Mapping[str, str] | None = None,
) -> TemplatePlan:
    """What applying ``template`` would do; reads only.

    ``into``: where a replay-range goes (a sandbox build, as ``apply`` replays, or
    the live build, as ``safereplay replay --into live`` would); ``settings``: the
    values an operator set on the template, reported with the plan.
    """
    head = source.head()
    kind = template.template.kind
    with reader.view() as view:
        planner = _Planner(template, view, source, head, into=into)
        plans = tuple(planner.projection(registry[name]) for name in template.scope.projections)
    if kind == "reencrypt":
        events = source.count(after=0, upto=head)
        table = getattr(source, "table", "the events table")
        tables: tuple[str, ...] = (str(table), "its snapshots table, if snapshotting is on")
        count = 1
    else:
        events = sum(p.events for p in plans)
        tables = tuple(t for p in plans for t in p.tables)
        count = template.scope.partitions
    measured = measured_rate(jobs, template.scope.projections)
    rate, basis = measured or (
        DEFAULT_EVENTS_PER_SECOND,
        f"default {DEFAULT_EVENTS_PER_SECOND:.0f} events/s: no completed job to measure yet",
    )
    cap = template.throttle.events_per_second
    if cap is not None and cap < rate:
        rate, basis = cap, f"{basis}; capped by throttle.events_per_second = {cap:g}"
    return TemplatePlan(
        template=template.template.name,
        kind=kind,
        origin=origin,
        description=template.template.description,
        head=head,
        partition_count=count,
        projections=plans,
        events=events,
        tables=tables,
        estimate=Estimate(events_per_second=rate, seconds=events / rate, basis=basis),
        failure_policy={
            **template.policy.model_dump(),
            "breaker": template.breaker.model_dump(),
        },
        throttle=template.throttle.model_dump(),
        stages=_stages(template),
        settings=dict(settings or {}),
    )

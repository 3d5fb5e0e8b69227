"""The stall and anomaly rules: values with their thresholds, pure functions of facts.

Each rule is a frozen dataclass whose fields are its thresholds (read from
``SAFEREPLAY_ALERT_*`` by :func:`rules_from_settings`), and whose
:meth:`~Rule.findings` looks at a :class:`~safereplay.recovery.alerts.facts.Snapshot`
and nothing else: no clock, no database. :func:`evaluate` runs them all. Why each
rule matters is in its docstring, and in ``docs/alerts.md``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol

from safereplay.recovery.alerts.facts import Finding, ProjectionFacts, Sample, Snapshot
from safereplay.recovery.settings import AlertSettings

__all__ = [
    "LagGrowingWhileHeadIdle",
    "ParkedSpike",
    "RepeatedRebuilds",
    "ReplayVolume",
    "RetrySpike",
    "Rule",
    "Stalled",
    "evaluate",
    "history_seconds",
    "rules_from_settings",
    "sample_interval",
]


class Rule(Protocol):
    """A rule: its name, and its findings on a snapshot."""

    @property
    def name(self) -> str: ...

    def findings(self, snapshot: Snapshot) -> list[Finding]: ...


@dataclass(frozen=True)
class Stalled:
    """A worker or follower that heartbeats but has not advanced for ``after_seconds``
    while it has a backlog.

    Why it matters: a lease that is renewed looks healthy to the job's own
    bookkeeping (the partition is held, nobody takes it over), and a follower's
    process is up; yet nothing moves — a handler blocked on a lock or a remote call,
    a batch retried forever, a safe head that never passes a hole. The projection
    falls behind silently until someone notices stale reads. An idle runner with
    nothing to do is not stalled (no backlog), and a dead one is not either (its
    lease expires, and the job shows as stalled without a live worker).
    """

    after_seconds: float
    name: ClassVar[str] = "stalled"

    def findings(self, snapshot: Snapshot) -> list[Finding]:
        found = []
        for runner in snapshot.runners:
            beating = runner.alive and snapshot.now - runner.heartbeat_at <= self.after_seconds
            idle_for = snapshot.now - runner.advanced_at
            if beating and runner.backlog > 0 and idle_for > self.after_seconds:
                found.append(
                    Finding(
                        rule=self.name,
                        subject=runner.subject,
                        severity="critical",
                        message=(
                            f"{runner.kind} of {runner.projection} (partition "
                            f"{runner.partition}) heartbeats but has not advanced from "
                            f"position {runner.position} for {idle_for:.0f}s with "
                            f"{runner.backlog} to go"
                        ),
                        value=round(idle_for, 3),
                        threshold=self.after_seconds,
                        projection=runner.projection,
                        job_id=runner.job_id,
                    )
                )
        return found


def _at_or_before(samples: Sequence[Sample], moment: float) -> Sample | None:
    """The latest sample taken at or before ``moment`` (None: none is that old)."""
    found = None
    for sample in samples:
        if sample.at <= moment:
            found = sample
    return found


def _windows(
    snapshot: Snapshot, window_seconds: float
) -> Iterator[tuple[ProjectionFacts, list[Sample], Sample, Sample]]:
    """Each projection's samples oldest first, with the window's ends: the latest
    sample and the latest one at least ``window_seconds`` older. A projection with
    no sample that old yet is passed over: there is no window to compare."""
    for facts in snapshot.projections:
        samples = sorted(facts.samples, key=lambda s: s.at)
        if not samples:
            continue
        last = samples[-1]
        start = _at_or_before(samples, last.at - window_seconds)
        if start is not None:
            yield facts, samples, start, last


@dataclass(frozen=True)
class _Spike:
    """A count in the last window far above the projection's own usual rate.

    The usual rate is the count per window over the ``baseline_windows`` windows
    before the last one (or as much of them as was sampled). No finding without a
    sample at least one window old: there is nothing to compare with yet.
    """

    factor: float
    window_seconds: float
    minimum: int
    baseline_windows: int = 6

    name: ClassVar[str] = "spike"
    what: ClassVar[str] = "events"

    def _count(self, sample: Sample) -> int:
        raise NotImplementedError

    def findings(self, snapshot: Snapshot) -> list[Finding]:
        found = []
        for facts, samples, start, last in _windows(snapshot, self.window_seconds):
            # Counts only grow; a drop (a swap to a new build) starts again from 0.
            count = max(0, self._count(last) - self._count(start))
            horizon = start.at - self.window_seconds * self.baseline_windows
            base = _at_or_before(samples, horizon) or samples[0]
            span = start.at - base.at
            usual = (
                max(0, self._count(start) - self._count(base)) * self.window_seconds / span
                if span > 0
                else 0.0
            )
            threshold = max(float(self.minimum), self.factor * usual)
            if count >= self.minimum and count > self.factor * usual:
                found.append(
                    Finding(
                        rule=self.name,
                        subject=f"projection:{facts.projection}",
                        severity="warning",
                        message=(
                            f"{count} {self.what} of {facts.projection} in the last "
                            f"{self.window_seconds:.0f}s, against {usual:.1f} per window "
                            f"usually (alerting above {self.factor:g}x, at least "
                            f"{self.minimum})"
                        ),
                        value=float(count),
                        threshold=round(threshold, 3),
                        projection=facts.projection,
                    )
                )
        return found


@dataclass(frozen=True)
class ParkedSpike(_Spike):
    """Events parked in the last window far above the projection's own usual rate.

    Why it matters: a projection that parks now and then has a few poison events;
    one that suddenly parks many has a new kind of event its handlers reject (a
    deploy, a schema change upstream), and every parked event is a read model row
    that is wrong until it is re-driven. Measured against the projection's own rate,
    so a projection that always parks a little does not drown the signal.
    """

    name: ClassVar[str] = "parked_spike"
    what: ClassVar[str] = "events parked"

    def _count(self, sample: Sample) -> int:
        return sample.parked


@dataclass(frozen=True)
class RetrySpike(_Spike):
    """Retries (failure policy and lost connections) of a projection's workers and
    followers in the last window far above their usual rate.

    Why it matters: retries hide trouble until they run out — a flapping database,
    a dependency timing out, lock contention. A surge of them comes before the
    parks, the failed partitions and the stalls, while there is still time to act.
    """

    name: ClassVar[str] = "retry_spike"
    what: ClassVar[str] = "retries"

    def _count(self, sample: Sample) -> int:
        return sample.retries


@dataclass(frozen=True)
class RepeatedRebuilds:
    """The same projection rebuilt ``count`` times or more in ``window_seconds``.

    Why it matters: a rebuild is the heavy remedy. Rebuilding one projection again
    and again means the remedy is not working (the bug is in the code, not the
    data), or that someone or some automation is looping; each rebuild costs a
    full replay of the log and its build's storage.
    """

    count: int
    window_seconds: float
    name: ClassVar[str] = "repeated_rebuilds"

    def findings(self, snapshot: Snapshot) -> list[Finding]:
        since = snapshot.now - self.window_seconds
        by_projection: dict[str, int] = {}
        for job in snapshot.jobs:
            if job.kind == "rebuild" and job.created_at >= since:
                by_projection[job.projection] = by_projection.get(job.projection, 0) + 1
        return [
            Finding(
                rule=self.name,
                subject=f"projection:{projection}",
                severity="warning",
                message=(
                    f"{projection} was rebuilt {n} times in the last "
                    f"{self.window_seconds:.0f}s (alerting at {self.count})"
                ),
                value=float(n),
                threshold=float(self.count),
                projection=projection,
            )
            for projection, n in sorted(by_projection.items())
            if n >= self.count
        ]


@dataclass(frozen=True)
class ReplayVolume:
    """An active job that applied more than ``factor`` times the events it was
    planned for (its scope, counted when it was planned).

    Why it matters: a job reads a bounded range; applying far more than its scope
    means events are applied again and again (a position that does not stick, a
    partition taken over and restarted in a loop) or the plan was wrong. Either way
    the read model may hold effects applied more than once, and the job will not end
    when its ETA says.
    """

    factor: float
    name: ClassVar[str] = "replay_volume"

    def findings(self, snapshot: Snapshot) -> list[Finding]:
        return [
            Finding(
                rule=self.name,
                subject=f"job:{job.job_id}",
                severity="warning",
                message=(
                    f"{job.kind} job {job.job_id} of {job.projection} applied "
                    f"{job.events_applied} events for a scope of {job.events_in_scope} "
                    f"(alerting above {self.factor:g}x)"
                ),
                value=float(job.events_applied),
                threshold=self.factor * job.events_in_scope,
                projection=job.projection,
                job_id=job.job_id,
            )
            for job in snapshot.jobs
            if job.active
            and job.events_in_scope > 0
            and job.events_applied > self.factor * job.events_in_scope
        ]


@dataclass(frozen=True)
class LagGrowingWhileHeadIdle:
    """A projection's lag grew over ``window_seconds`` while the log's head stood still.

    Why it matters: with no new events, lag can only shrink or stay; if it grows,
    the live build's position went backwards — a rollback to an older build, a
    position reset, a restore of the projection store from an old backup. Readers
    are being served older data than a moment ago, which nobody asked for.
    """

    window_seconds: float
    name: ClassVar[str] = "lag_growing_while_head_idle"

    def findings(self, snapshot: Snapshot) -> list[Finding]:
        found = []
        for facts, samples, start, last in _windows(snapshot, self.window_seconds):
            idle = all(s.head == last.head for s in samples if s.at >= start.at)
            if idle and last.lag > start.lag:
                found.append(
                    Finding(
                        rule=self.name,
                        subject=f"projection:{facts.projection}",
                        severity="warning",
                        message=(
                            f"lag of {facts.projection} grew from {start.lag} to {last.lag} "
                            f"in {last.at - start.at:.0f}s while the head stayed at "
                            f"{last.head}"
                        ),
                        value=float(last.lag - start.lag),
                        threshold=0.0,
                        projection=facts.projection,
                    )
                )
        return found


def rules_from_settings(settings: AlertSettings) -> tuple[Rule, ...]:
    """Every rule, with its thresholds from ``settings``."""
    return (
        Stalled(after_seconds=settings.stalled_after_seconds),
        ParkedSpike(
            factor=settings.parked_spike_factor,
            window_seconds=settings.parked_spike_window_seconds,
            minimum=settings.parked_spike_minimum,
            baseline_windows=settings.spike_baseline_windows,
        ),
        RetrySpike(
            factor=settings.retry_spike_factor,
            window_seconds=settings.retry_spike_window_seconds,
            minimum=settings.retry_spike_minimum,
            baseline_windows=settings.spike_baseline_windows,
        ),
        RepeatedRebuilds(
            count=settings.repeated_rebuilds_count,
            window_seconds=settings.repeated_rebuilds_window_seconds,
        ),
        ReplayVolume(factor=settings.replay_volume_factor),
        LagGrowingWhileHeadIdle(window_seconds=settings.lag_growing_window_seconds),
    )


def evaluate(rules: Sequence[Rule], snapshot: Snapshot) -> list[Finding]:
    """Every rule's findings on ``snapshot``, in rule order (one per rule and subject)."""
    found: dict[tuple[str, str], Finding] = {}
    for rule in rules:
        for finding in rule.findings(snapshot):
            found.setdefault((finding.rule, finding.subject), finding)
    return list(found.values())


def history_seconds(rules: Sequence[Rule]) -> float:
    """How far back samples are needed by ``rules`` (older ones can be pruned)."""
    longest = 0.0
    for rule in rules:
        if isinstance(rule, _Spike):
            longest = max(longest, rule.window_seconds * (rule.baseline_windows + 1))
        elif isinstance(rule, LagGrowingWhileHeadIdle):
            longest = max(longest, rule.window_seconds)
    return longest


def sample_interval(rules: Sequence[Rule]) -> float:
    """How often samples are worth recording for ``rules``: a tenth of the shortest
    window they compare (at least a second), enough resolution for every window."""
    windows = [
        rule.window_seconds for rule in rules if isinstance(rule, _Spike | LagGrowingWhileHeadIdle)
    ]
    return max(1.0, min(windows, default=600.0) / 10)

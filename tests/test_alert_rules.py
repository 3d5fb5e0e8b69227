"""Issue #19 point 2, the rules alone: each stall and anomaly rule raises on crafted
facts and stays quiet below its threshold. Pure: no database, no clock — a
snapshot is plain values, and ``now`` is whatever the test says.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from safereplay.recovery.alerts.facts import (
    JobFacts,
    ProjectionFacts,
    RunnerFacts,
    Sample,
    Snapshot,
)
from safereplay.recovery.alerts.rules import (
    LagGrowingWhileHeadIdle,
    ParkedSpike,
    RepeatedRebuilds,
    ReplayVolume,
    RetrySpike,
    Stalled,
    evaluate,
    history_seconds,
    rules_from_settings,
)
from safereplay.recovery.settings import AlertSettings

NOW = 100_000.0


def worker(*, idle_for: float, beat_ago: float = 1.0, backlog: int = 10) -> RunnerFacts:
    return RunnerFacts(
        kind="worker",
        projection="run_status",
        partition="0/2",
        position=40,
        heartbeat_at=NOW - beat_ago,
        advanced_at=NOW - idle_for,
        backlog=backlog,
        job_id="j1",
    )


def parked_series(counts: list[int], *, every: float = 60.0) -> ProjectionFacts:
    """Cumulative parked counts sampled every ``every`` seconds, the last one at NOW."""
    start = NOW - every * (len(counts) - 1)
    return ProjectionFacts(
        "run_status",
        tuple(
            Sample(at=start + i * every, head=500, position=500, parked=c, retries=c)
            for i, c in enumerate(counts)
        ),
    )


# -- stalled ----------------------------------------------------------------------------------


def test_a_worker_that_beats_but_has_not_advanced_past_the_setting_is_stalled() -> None:
    rule = Stalled(after_seconds=300)

    [finding] = rule.findings(Snapshot(now=NOW, runners=[worker(idle_for=301)]))

    assert finding.rule == "stalled"
    assert finding.subject == "job:j1/partition:0/2"
    assert finding.severity == "critical"
    assert finding.value == 301 and finding.threshold == 300
    assert "has not advanced from position 40" in finding.message


def test_below_the_setting_idle_with_no_backlog_or_silent_it_is_not_stalled() -> None:
    rule = Stalled(after_seconds=300)
    quiet = [
        worker(idle_for=299),  # not long enough
        worker(idle_for=3_000, backlog=0),  # nothing to do: idle, not stalled
        worker(idle_for=3_000, beat_ago=3_000),  # not beating: dead, not stalled
    ]

    for runner in quiet:
        assert rule.findings(Snapshot(now=NOW, runners=[runner])) == []


@given(
    after=st.floats(min_value=1, max_value=86_400),
    idle=st.floats(min_value=0, max_value=200_000),
    backlog=st.integers(min_value=0, max_value=10**6),
)
def test_stalled_is_exactly_beating_with_a_backlog_and_idle_past_the_setting(
    after: float, idle: float, backlog: int
) -> None:
    runner = worker(idle_for=idle, beat_ago=0.0, backlog=backlog)

    found = Stalled(after_seconds=after).findings(Snapshot(now=NOW, runners=[runner]))

    idle_for = NOW - runner.advanced_at  # idle, as the clock's floats give it back
    assert bool(found) == (backlog > 0 and idle_for > after)


def test_a_follower_is_named_by_projection_and_partition() -> None:
    follower = RunnerFacts(
        kind="follower",
        projection="workflow_stats",
        partition="0/1",
        position=7,
        heartbeat_at=NOW,
        advanced_at=NOW - 900,
        backlog=3,
    )

    [finding] = Stalled(after_seconds=60).findings(Snapshot(now=NOW, runners=[follower]))

    assert finding.subject == "follower:workflow_stats/0/1"
    assert finding.job_id is None and finding.projection == "workflow_stats"


# -- spikes -----------------------------------------------------------------------------------


def test_parked_events_far_above_the_projections_usual_rate_spike() -> None:
    # 1 parked per minute for an hour, then 40 in the last five minutes.
    usual = list(range(0, 56))
    facts = parked_series([*usual, 65, 75, 85, 90, 95])
    rule = ParkedSpike(factor=5, window_seconds=300, minimum=10, baseline_windows=6)

    [finding] = rule.findings(Snapshot(now=NOW, projections=[facts]))

    assert finding.rule == "parked_spike" and finding.subject == "projection:run_status"
    assert finding.value == 95 - 55
    assert finding.threshold == 25.0  # 5 x the usual 5 per window


def test_a_projection_that_always_parks_this_much_does_not_spike() -> None:
    steady = parked_series([8 * i for i in range(60)])  # 40 per window, always
    rule = ParkedSpike(factor=5, window_seconds=300, minimum=10)

    assert rule.findings(Snapshot(now=NOW, projections=[steady])) == []


def test_fewer_than_the_minimum_never_spike_and_without_history_nothing_is_said() -> None:
    rule = ParkedSpike(factor=5, window_seconds=300, minimum=10)
    from_nothing = parked_series([0] * 50 + [1, 2, 3, 4, 5, 6, 7, 8, 9, 9])
    too_young = parked_series([0, 50, 100])  # two minutes of samples: no window yet

    assert rule.findings(Snapshot(now=NOW, projections=[from_nothing])) == []
    assert rule.findings(Snapshot(now=NOW, projections=[too_young])) == []


@given(
    usual=st.integers(min_value=0, max_value=50),
    burst=st.integers(min_value=0, max_value=2_000),
)
def test_a_retry_spike_is_the_window_count_against_factor_times_usual(
    usual: int, burst: int
) -> None:
    # Samples every 300 s: six usual windows, then the burst window.
    counts = [usual * i for i in range(7)]
    counts.append(counts[-1] + burst)
    facts = parked_series(counts, every=300.0)
    rule = RetrySpike(factor=4, window_seconds=300, minimum=20, baseline_windows=6)

    found = rule.findings(Snapshot(now=NOW, projections=[facts]))

    assert bool(found) == (burst >= 20 and burst > 4 * usual)
    if found:
        assert found[0].rule == "retry_spike" and found[0].value == burst


def test_a_swap_to_a_build_with_fewer_parked_events_is_no_negative_spike() -> None:
    facts = parked_series([100] * 10 + [0])
    rule = ParkedSpike(factor=2, window_seconds=300, minimum=1)

    assert rule.findings(Snapshot(now=NOW, projections=[facts])) == []


# -- rebuilds, volume, lag ----------------------------------------------------------------------


def job(
    n: int, *, kind: str = "rebuild", ago: float = 60.0, applied: int = 0, scope: int = 0
) -> JobFacts:
    return JobFacts(
        job_id=f"j{n}",
        projection="run_status",
        kind=kind,
        state="completed" if applied == 0 else "running",
        created_at=NOW - ago,
        active=applied > 0,
        events_applied=applied,
        events_in_scope=scope,
    )


def test_the_same_projection_rebuilt_count_times_in_the_window_alerts() -> None:
    rule = RepeatedRebuilds(count=3, window_seconds=3_600)
    three = [job(1), job(2, ago=1_000), job(3, ago=3_500)]
    two_and_old = [job(1), job(2), job(3, ago=3_700), job(4, kind="catch-up")]

    [finding] = rule.findings(Snapshot(now=NOW, jobs=three))
    assert finding.subject == "projection:run_status" and finding.value == 3
    assert rule.findings(Snapshot(now=NOW, jobs=two_and_old)) == []


def test_a_job_applying_far_above_its_scope_alerts() -> None:
    rule = ReplayVolume(factor=2)
    looping = job(1, kind="replay", applied=2_001, scope=1_000)
    heavy_but_fine = job(2, kind="replay", applied=2_000, scope=1_000)

    [finding] = rule.findings(Snapshot(now=NOW, jobs=[looping, heavy_but_fine]))
    assert finding.subject == "job:j1" and finding.job_id == "j1"
    assert finding.threshold == 2_000


def test_lag_growing_while_the_head_is_idle_alerts() -> None:
    def series(heads: list[int], positions: list[int]) -> ProjectionFacts:
        return ProjectionFacts(
            "run_status",
            tuple(
                Sample(at=NOW - 60 * (len(heads) - 1 - i), head=h, position=p, parked=0, retries=0)
                for i, (h, p) in enumerate(zip(heads, positions, strict=True))
            ),
        )

    rule = LagGrowingWhileHeadIdle(window_seconds=120)
    rolled_back = series([900, 900, 900], [900, 900, 400])
    busy_log = series([800, 850, 900], [800, 800, 800])
    caught_up = series([900, 900, 900], [800, 850, 900])

    [finding] = rule.findings(Snapshot(now=NOW, projections=[rolled_back]))
    assert finding.value == 500 and "while the head stayed at 900" in finding.message
    assert rule.findings(Snapshot(now=NOW, projections=[busy_log])) == []
    assert rule.findings(Snapshot(now=NOW, projections=[caught_up])) == []


# -- the set of rules -------------------------------------------------------------------------


def test_the_settings_make_every_rule_with_its_thresholds() -> None:
    settings = AlertSettings(stalled_after_seconds=42, replay_volume_factor=3)

    rules = rules_from_settings(settings)

    assert [r.name for r in rules] == [
        "stalled",
        "parked_spike",
        "retry_spike",
        "repeated_rebuilds",
        "replay_volume",
        "lag_growing_while_head_idle",
    ]
    assert Stalled(after_seconds=42) in rules and ReplayVolume(factor=3) in rules
    assert history_seconds(rules) == 300 * 7


def test_evaluating_the_same_snapshot_twice_gives_the_same_findings() -> None:
    rules = rules_from_settings(AlertSettings())
    snapshot = Snapshot(
        now=NOW,
        runners=[worker(idle_for=10_000)],
        jobs=[job(n) for n in range(4)],
    )

    first = evaluate(rules, snapshot)

    assert first == evaluate(rules, snapshot)
    assert {(f.rule, f.subject) for f in first} == {
        ("stalled", "job:j1/partition:0/2"),
        ("repeated_rebuilds", "projection:run_status"),
    }

"""Failure policies, back-off, circuit breaker and throttle: values with exact behaviour."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from recovery_fixtures import FakeClock

from safereplay.recovery.resilience.backoff import Backoff
from safereplay.recovery.resilience.breaker import BreakerSettings, CircuitBreaker
from safereplay.recovery.resilience.policies import (
    Decision,
    ErrorRules,
    Fail,
    Park,
    PolicySet,
    RetryThenFail,
    RetryThenPark,
)
from safereplay.recovery.resilience.throttle import Throttle


@given(
    initial=st.floats(0.001, 5),
    multiplier=st.floats(1, 4),
    maximum=st.floats(0.001, 120),
    jitter=st.floats(0, 1),
    attempt=st.integers(1, 500),
    seed=st.integers(0, 2**32),
)
def test_backoff_delay_stays_within_its_jitter_band_and_cap(
    initial: float, multiplier: float, maximum: float, jitter: float, attempt: int, seed: int
) -> None:
    backoff = Backoff(initial=initial, multiplier=multiplier, maximum=maximum, jitter=jitter)
    delay = backoff.delay(attempt, random.Random(seed))
    ceiling = backoff.ceiling(attempt)
    assert ceiling <= maximum
    assert ceiling * (1 - jitter) - 1e-9 <= delay <= ceiling + 1e-9


def test_backoff_grows_exponentially_until_the_cap() -> None:
    backoff = Backoff(initial=0.5, multiplier=2, maximum=3, jitter=0)
    assert [backoff.ceiling(a) for a in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]


@pytest.mark.parametrize(
    "bad", [{"initial": -1}, {"multiplier": 0.5}, {"jitter": 1.5}, {"maximum": -2}]
)
def test_backoff_rejects_nonsense(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Backoff(**bad)


def test_each_policy_decides_as_its_name_says() -> None:
    no_wait = Backoff(initial=0.01, jitter=0)
    assert Fail().decide(1).action == "fail"
    assert Park().decide(1).action == "park"
    retry_fail = RetryThenFail(attempts=3, backoff=no_wait)
    assert [retry_fail.decide(a).action for a in (1, 2, 3, 4)] == ["retry", "retry", "fail", "fail"]
    retry_park = RetryThenPark(attempts=2, backoff=no_wait)
    assert [retry_park.decide(a).action for a in (1, 2)] == ["retry", "park"]
    assert retry_fail.decide(1) == Decision.retry(0.01, "attempt 1/3")


def test_error_rules_pick_the_first_matching_type() -> None:
    rules = ErrorRules(
        default=Fail(), rules=((KeyError, Park()), (LookupError, RetryThenFail(attempts=2)))
    )
    assert rules.decide(KeyError("x"), 1).action == "park"
    assert rules.decide(IndexError("x"), 1).action == "retry"
    assert rules.decide(ValueError("x"), 1).action == "fail"


def test_rebuilds_stop_on_what_live_following_parks() -> None:
    policies = PolicySet()
    error = RuntimeError("poison")
    attempts = policies.live.default
    assert isinstance(attempts, RetryThenPark)
    last = attempts.attempts
    assert policies.live.decide(error, last).action == "park"
    assert policies.rebuild.decide(error, last).action == "fail"


def test_breaker_opens_after_consecutive_failures_and_probes_half_open() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(
        BreakerSettings(failure_threshold=3, cool_down=10, half_open_probes=1), clock=clock
    )
    for _ in range(2):
        assert breaker.allow()
        breaker.record_failure()
    assert breaker.state == "closed"
    breaker.record_failure()
    assert breaker.state == "open"
    assert not breaker.allow()
    assert breaker.wait_time() == pytest.approx(10)
    clock.now += 10
    assert breaker.state == "half-open"
    assert breaker.allow()
    assert not breaker.allow(), "only one probe in half-open"
    breaker.record_failure()
    assert breaker.state == "open", "a failed probe re-opens"
    clock.now += 10
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state == "closed"
    assert breaker.snapshot().opened_count == 2


def test_breaker_opens_on_error_rate_without_consecutive_failures() -> None:
    breaker = CircuitBreaker(
        BreakerSettings(failure_threshold=100, error_rate=0.5, window=10, min_samples=10),
        clock=FakeClock(),
    )
    for i in range(9):
        (breaker.record_failure if i % 2 == 0 else breaker.record_success)()
    assert breaker.state == "closed", "fewer samples than min_samples"
    breaker.record_success()
    breaker.record_failure()  # window of 10: 5 failures / 10 = 0.5
    assert breaker.state == "open"


@given(
    rate=st.floats(10, 10_000),
    batches=st.lists(st.integers(1, 2000), min_size=1, max_size=50),
)
def test_throttle_keeps_the_average_rate_under_the_cap(rate: float, batches: list[int]) -> None:
    clock = FakeClock()
    throttle = Throttle(rate, clock=clock, sleep=clock.sleep)
    start = clock.now
    for size in batches:
        throttle.acquire(size)
    elapsed = clock.now - start
    # Everything beyond the initial burst had to be paid for in time.
    assert sum(batches) - throttle.burst <= elapsed * rate + 1e-6


def test_unlimited_throttle_never_sleeps() -> None:
    clock = FakeClock()
    throttle = Throttle(None, clock=clock, sleep=clock.sleep)
    assert throttle.acquire(10**9) == 0.0
    assert clock.now == 1000.0

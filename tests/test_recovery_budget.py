"""Issue #20, the retry budget (a fake clock throughout):

- retries are capped to ``ratio`` of the requests of the last ``window`` seconds,
  plus a floor of ``min_retries_per_second`` x ``window``; a refused retry is not
  counted; requests and retries older than the window no longer count;
- property: whatever the sequence of requests, retries and waits, the retries let
  through in any window never exceed what the requests in it allow, and a retry is
  refused only when they would.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from safereplay.reactions.resilience import RetryBudget as RetryBudgetShape
from safereplay.recovery.resilience.budget import RetryBudget


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_retries_are_a_share_of_recent_requests_plus_a_floor() -> None:
    clock = Clock()
    budget = RetryBudget(ratio=0.2, window=10.0, min_retries_per_second=0.1, clock=clock)
    shape: RetryBudgetShape = budget  # the runner's protocol
    assert budget.available() == 1, "the floor: 0.1/s over 10 s"
    for _ in range(20):
        shape.record_request()
    assert budget.available() == 5, "0.2 x 20 + 1"
    assert [shape.try_retry() for _ in range(7)] == [True] * 5 + [False] * 2
    assert budget.available() == 0

    # Half a window later: the same requests and retries still count.
    clock.now += 5.0
    assert not budget.try_retry()
    for _ in range(10):
        budget.record_request()
    assert budget.try_retry() and budget.try_retry() and not budget.try_retry()

    # The first requests and retries leave the window; the later ones stay.
    clock.now += 5.0
    assert budget.allowed() == pytest.approx(0.2 * 10 + 1.0)
    assert budget.available() == 1, "3 allowed, 2 spent in the last 10 s"
    clock.now += 10.0
    assert budget.available() == 1, "nothing recent: the floor again"


def test_a_budget_needs_sensible_numbers() -> None:
    with pytest.raises(ValueError, match="window"):
        RetryBudget(window=0)
    with pytest.raises(ValueError, match="ratio"):
        RetryBudget(ratio=-0.1)


steps = st.lists(
    st.one_of(
        st.just(("request", 0.0)),
        st.just(("retry", 0.0)),
        st.tuples(st.just("wait"), st.floats(min_value=0.001, max_value=6.0)),
    ),
    max_size=200,
)


@settings(max_examples=200, deadline=None)
@given(
    steps=steps,
    ratio=st.sampled_from([0.0, 0.1, 0.2, 0.5, 1.0]),
    floor=st.sampled_from([0.0, 0.1, 1.0]),
)
def test_retries_never_exceed_what_the_window_allows(
    steps: list[tuple[str, float]], ratio: float, floor: float
) -> None:
    clock = Clock()
    window = 10.0
    budget = RetryBudget(ratio=ratio, window=window, min_retries_per_second=floor, clock=clock)
    requests: list[float] = []
    retries: list[float] = []
    for kind, wait in steps:
        if kind == "wait":
            clock.now += wait
        elif kind == "request":
            budget.record_request()
            requests.append(clock.now)
        else:
            recent = [t for t in requests if t > clock.now - window]
            spent = [t for t in retries if t > clock.now - window]
            room = ratio * len(recent) + floor * window - len(spent)
            granted = budget.try_retry()
            assert granted == (room >= 1), (room, granted)
            if granted:
                retries.append(clock.now)
    # In every window ending at a retry: no more retries than its requests allowed.
    for end in retries:
        in_window = [t for t in retries if end - window < t <= end]
        earned = [t for t in requests if end - window < t <= end]
        assert len(in_window) <= ratio * len(earned) + floor * window

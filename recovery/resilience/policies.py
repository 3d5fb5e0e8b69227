"""Failure policies as values: what to do when a handler fails on an event.

Akka Projections' four strategies, plus Marten's separate live/rebuild defaults
and per-error rules::

    Fail()                      stop at the first failure
    Park()                      park the event (and its aggregate's later events), move on
    RetryThenFail(attempts, b)  retry with back-off ``b``; after ``attempts`` tries, stop
    RetryThenPark(attempts, b)  retry with back-off ``b``; after ``attempts`` tries, park

A policy is asked for a :class:`Decision` given the attempt number (1 for the
first failure). :class:`ErrorRules` picks a policy by exception type, and
:class:`PolicySet` holds the defaults for live following and for rebuilds: a
rebuild stops on what live following would park, because a rebuild that parks
silently produces a read model that is quietly incomplete.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from safereplay.projections.failure import Decision, EventFailure
from safereplay.recovery.resilience.backoff import Backoff

__all__ = [
    "Decision",
    "ErrorRules",
    "Fail",
    "FailurePolicy",
    "Park",
    "PolicySet",
    "RetryThenFail",
    "RulesPolicy",
    "RetryThenPark",
]


@dataclass(frozen=True)
class FailurePolicy:
    """Base of the policy values."""

    def decide(self, attempt: int) -> Decision:
        raise NotImplementedError

    @property
    def kind(self) -> str:
        return type(self).__name__


@dataclass(frozen=True)
class Fail(FailurePolicy):
    def decide(self, attempt: int) -> Decision:
        return Decision.fail("policy is fail")


@dataclass(frozen=True)
class Park(FailurePolicy):
    def decide(self, attempt: int) -> Decision:
        return Decision.park("policy is park")


@dataclass(frozen=True)
class _Retrying(FailurePolicy):
    attempts: int = 3
    backoff: Backoff = field(default_factory=Backoff)

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"{type(self).__name__}.attempts must be >= 1")

    def _exhausted(self) -> Decision:
        raise NotImplementedError

    def decide(self, attempt: int) -> Decision:
        if attempt < self.attempts:
            return Decision.retry(self.backoff.delay(attempt), f"attempt {attempt}/{self.attempts}")
        return self._exhausted()


@dataclass(frozen=True)
class RetryThenFail(_Retrying):
    def _exhausted(self) -> Decision:
        return Decision.fail(f"still failing after {self.attempts} attempts")


@dataclass(frozen=True)
class RetryThenPark(_Retrying):
    def _exhausted(self) -> Decision:
        return Decision.park(f"still failing after {self.attempts} attempts")


@dataclass(frozen=True)
class ErrorRules:
    """The first rule whose exception type matches picks the policy; else ``default``."""

    default: FailurePolicy
    rules: tuple[tuple[type[BaseException], FailurePolicy], ...] = ()

    def policy_for(self, error: BaseException) -> FailurePolicy:
        for error_type, policy in self.rules:
            if isinstance(error, error_type):
                return policy
        return self.default

    def decide(self, error: BaseException, attempt: int) -> Decision:
        return self.policy_for(error).decide(attempt)


@dataclass(frozen=True)
class PolicySet:
    """Defaults for live following and for rebuilds/replays."""

    live: ErrorRules = field(default_factory=lambda: ErrorRules(default=RetryThenPark(attempts=3)))
    rebuild: ErrorRules = field(
        default_factory=lambda: ErrorRules(default=RetryThenFail(attempts=3))
    )


@dataclass(frozen=True)
class RulesPolicy:
    """Plugs :class:`ErrorRules` into the projection runner's failure-policy seam.

    :class:`~safereplay.projections.failure.Decision` is the one decision value both layers
    use; this adapter only picks the rule for the failure's error and attempt.
    """

    rules: ErrorRules

    def decide(self, failure: EventFailure) -> Decision:
        return self.rules.decide(failure.error, failure.attempt)

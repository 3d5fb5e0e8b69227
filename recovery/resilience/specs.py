"""Failure policies, back-off and circuit breakers as validated settings (TOML, JSON).

A recovery template's ``[policy]`` and ``[breaker]`` tables, and a job's stored
copy of them, are parsed by these models; :meth:`PolicySpec.rules` and
:meth:`BreakerSpec.settings` turn them into the values the runner uses. Unknown
keys are refused, every bound is checked, and an invalid value names its field.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from safereplay.recovery.resilience.backoff import Backoff
from safereplay.recovery.resilience.breaker import BreakerSettings
from safereplay.recovery.resilience.policies import (
    ErrorRules,
    Fail,
    FailurePolicy,
    Park,
    RetryThenFail,
    RetryThenPark,
)

__all__ = ["BackoffSpec", "BreakerSpec", "PolicySpec"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BackoffSpec(_Strict):
    initial: float = Field(default=0.1, ge=0)
    multiplier: float = Field(default=2.0, ge=1)
    maximum: float = Field(default=30.0, ge=0)
    jitter: float = Field(default=0.5, ge=0, le=1)


class PolicySpec(_Strict):
    on_error: Literal["fail", "park", "retry-then-fail", "retry-then-park"] = "retry-then-fail"
    attempts: int = Field(default=3, ge=1, le=100)
    backoff: BackoffSpec = Field(default_factory=BackoffSpec)

    def rules(self) -> ErrorRules:
        backoff = Backoff(**self.backoff.model_dump())
        policy: FailurePolicy = {
            "fail": Fail(),
            "park": Park(),
            "retry-then-fail": RetryThenFail(attempts=self.attempts, backoff=backoff),
            "retry-then-park": RetryThenPark(attempts=self.attempts, backoff=backoff),
        }[self.on_error]
        return ErrorRules(default=policy)


class BreakerSpec(_Strict):
    failure_threshold: int = Field(default=5, ge=1)
    error_rate: float = Field(default=0.5, gt=0, le=1)
    window: int = Field(default=20, ge=1)
    min_samples: int = Field(default=10, ge=1)
    cool_down: float = Field(default=5.0, ge=0)
    half_open_probes: int = Field(default=1, ge=1)

    def settings(self) -> BreakerSettings:
        return BreakerSettings(**self.model_dump())

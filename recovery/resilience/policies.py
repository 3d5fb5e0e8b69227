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

**Integrity failures** are decided apart, before those rules: a stored event that
fails AES-GCM authentication or decryption, names a key not in the ring, or cannot
be decoded into an envelope is not a handler's bug that a retry may cure but a
sign of tampering or of a missing key. :class:`IntegrityPolicy` applies the
``on_integrity_failure`` value (``SAFEREPLAY_ON_INTEGRITY_FAILURE``): ``pause``
(the default) stops at the failing position and the recovery worker records a
conflict for an operator to resolve; ``park`` parks the event (the old
behaviour); ``fail`` fails the partition loudly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from safereplay.domain.errors import EventDecryptionError, UndecodableEvent, UnknownKeyId
from safereplay.projections.failure import Decision, EventFailure
from safereplay.projections.failure import FailurePolicy as RunnerPolicy
from safereplay.recovery.resilience.backoff import Backoff

__all__ = [
    "INTEGRITY_ACTIONS",
    "Decision",
    "IntegrityAction",
    "IntegrityPolicy",
    "integrity_kind",
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


IntegrityAction = Literal["pause", "park", "fail"]
#: The values of ``on_integrity_failure``; the first is the default.
INTEGRITY_ACTIONS: tuple[IntegrityAction, ...] = ("pause", "park", "fail")


def integrity_kind(error: BaseException | None) -> str | None:
    """The kind of integrity failure ``error`` is, or None if it is none.

    ``unknown-key``: the ciphertext names a key the ring does not hold;
    ``authentication``: AES-GCM authentication or decryption failed (altered or
    moved blob, wrong key); ``envelope``: the stored state cannot be decoded into
    an envelope. A handler's own error is never one.
    """
    if isinstance(error, UnknownKeyId):
        return "unknown-key"
    if isinstance(error, EventDecryptionError):
        return "authentication"
    if isinstance(error, UndecodableEvent):
        return "envelope"
    return None


@dataclass(frozen=True)
class IntegrityPolicy:
    """Decides integrity failures by ``action``; hands every other failure to ``inner``.

    ``pause`` and ``fail`` both stop the runner at the failing position (nothing
    past it is applied); the worker tells them apart by ``action`` (a pause records
    a conflict and gives the partition back paused). ``park_positions``: positions
    an operator resolved a conflict of by parking (``conflicts resolve --action
    park``): they are parked with ``park_reason`` whatever ``action`` says.
    """

    inner: RunnerPolicy
    action: IntegrityAction = "pause"
    park_positions: frozenset[int] = frozenset()
    park_reason: str = "parked by an operator after an integrity conflict"

    def decide(self, failure: EventFailure) -> Decision:
        kind = integrity_kind(failure.error) if failure.stage == "decode" else None
        if kind is None:
            return self.inner.decide(failure)
        if failure.event.position in self.park_positions:
            return Decision.park(self.park_reason)
        if self.action == "park":
            return Decision.park(f"integrity failure ({kind}); on_integrity_failure is park")
        return Decision.fail(f"integrity failure ({kind}); on_integrity_failure is {self.action}")

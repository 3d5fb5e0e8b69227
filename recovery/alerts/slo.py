"""Replay SLOs as values: which targets apply, what a sample measured, the error budget.

A **target** is one figure of one projection or reaction that must stay at or
under a limit (``SAFEREPLAY_SLO_TARGETS``): ``lag_seconds``, ``lag_events``,
``undelivered_age_seconds`` (reactions) or ``rebuild_seconds`` (projections). A
**sample** is that figure measured at one moment; it is *good* when it is at or
under the target. The **objective** is the share of a window's samples that must
be good; ``1 - objective`` is the **error budget**. :func:`budget_of` turns a
window's counts into the share of good samples, the budget remaining and the burn
rate (how fast the budget is spent: 1 spends exactly the whole budget over the
window). The store (:mod:`.slo_store`) keeps samples and breaches; reading the
figures from the stores is the operations layer's (:mod:`...operations.slos`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from safereplay.recovery.settings import SLOSettings, SLOTargetSet

__all__ = [
    "METRICS",
    "Budget",
    "Measurement",
    "Target",
    "budget_of",
    "targets_for",
]

Kind = Literal["projection", "reaction"]

#: Every measured figure, in the order they are shown.
METRICS = ("lag_seconds", "lag_events", "undelivered_age_seconds", "rebuild_seconds")


@dataclass(frozen=True)
class Target:
    """One figure of one projection or reaction and its limit."""

    kind: Kind
    subject: str
    metric: str
    target: float
    objective: float

    @property
    def slo(self) -> str:
        """Its name: ``projection:orders/lag_seconds``."""
        return f"{self.kind}:{self.subject}/{self.metric}"


@dataclass(frozen=True)
class Measurement:
    """A target's figure at one moment; ``head`` and ``position``: the log's head and
    the subject's position then (what later lag in seconds is worked out from)."""

    target: Target
    value: float
    head: int
    position: int

    @property
    def good(self) -> bool:
        return self.value <= self.target.target


@dataclass(frozen=True)
class Budget:
    """A window's error budget: good samples of all, the share left, the burn rates."""

    samples: int
    good: int
    good_share: float
    budget_remaining: float
    burn_rate: float
    burn_rate_1h: float


def _targets_of(kind: Kind, name: str, spec: SLOTargetSet, objective: float) -> list[Target]:
    shown = spec.objective if spec.objective is not None else objective
    found = []
    for metric in METRICS:
        limit = getattr(spec, metric)
        if limit is not None:
            found.append(Target(kind, name, metric, float(limit), shown))
    return found


def targets_for(
    settings: SLOSettings, *, projections: Iterable[str], reactions: Iterable[str]
) -> list[Target]:
    """Every target that applies to ``projections`` and ``reactions`` (a name's own
    targets, else those of ``*``), sorted by name."""
    found: list[Target] = []
    groups: tuple[tuple[Kind, Mapping[str, SLOTargetSet], Iterable[str]], ...] = (
        ("projection", settings.targets.projections, projections),
        ("reaction", settings.targets.reactions, reactions),
    )
    for kind, specs, names in groups:
        for name in sorted(set(names)):
            spec = specs.get(name, specs.get("*"))
            if spec is not None:
                found.extend(_targets_of(kind, name, spec, settings.objective))
    return found


def budget_of(
    *, samples: int, good: int, recent: int, recent_good: int, objective: float
) -> Budget:
    """The budget of a window with ``samples`` of which ``good`` met the target, and
    of its last hour (``recent``, ``recent_good``). No samples: nothing spent."""
    allowed = 1.0 - objective
    bad_share = (samples - good) / samples if samples else 0.0
    recent_bad = (recent - recent_good) / recent if recent else 0.0
    return Budget(
        samples=samples,
        good=good,
        good_share=good / samples if samples else 1.0,
        budget_remaining=1.0 - bad_share / allowed,
        burn_rate=bad_share / allowed,
        burn_rate_1h=recent_bad / allowed,
    )

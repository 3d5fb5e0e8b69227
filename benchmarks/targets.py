"""Issue 23's targets, and each one's verdict in words.

A target is a bound on a ratio that the harness measured within rounds (the
median of per-round ratios). Rows come from two runs: the main run (ratios to the
floor, workers, encryption) and the cost-growth run (``--sizes``: events/s and
peak RSS at the largest N against the smallest). A row whose figure was not
measured says so (``pending``) and which command measures it. The eventsourcing
ratios are reported beside them, not gated: they follow eventsourcing's per-event
commit speed, which moves with the machine's disk.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["TARGETS", "Target", "main_targets", "sizes_targets", "verdict"]

X = "\u00d7"


@dataclass(frozen=True, kw_only=True)
class Target:
    """``value`` ``at_least`` / ``at_most`` ``bound``; ``unit``: ``%`` (a share shown in
    percent, misses in points), ``x`` (a factor) or ``ratio`` (a plain number)."""

    label: str
    bound: float | None  # None: reported, not gated
    at_least: bool = True
    unit: str = "%"

    def show(self, value: float) -> str:
        if self.unit == "%":
            return f"{100 * value:.0f} %"
        if self.unit == "x":
            return f"{value:.2f}{X}" if value < 10 else f"{value:.0f}{X}"
        return f"{value:.2f}"

    @property
    def wanted(self) -> str:
        if self.bound is None:
            return "reported"
        return ("≥ " if self.at_least else "≤ ") + self.show(self.bound)

    def gap(self, value: float) -> str:
        """How far ``value`` is from the bound, in the unit's words."""
        assert self.bound is not None
        diff = abs(value - self.bound)
        if self.unit == "%":
            return f"{100 * diff:.0f} point{'s' if round(100 * diff) != 1 else ''}"
        if self.unit == "x":
            return f"{diff:.2f}{X}"
        return f"{diff:.2f}"


#: Issue 23's rows (keys used by :func:`main_targets` and :func:`sizes_targets`).
TARGETS: dict[str, Target] = {
    "vs_floor": Target(label="safereplay ÷ raw floor, 1 worker, cipher on", bound=0.90),
    "workers": Target(label="safereplay 2 workers ÷ 1 worker, cipher on", bound=1.6, unit="x"),
    "growth_rate": Target(
        label="events/s at the largest N ÷ at the smallest N, safereplay", bound=0.9, unit="ratio"
    ),
    "growth_rss": Target(
        label="peak RSS at the largest N ÷ at the smallest N, safereplay",
        bound=1.1,
        at_least=False,
        unit="ratio",
    ),
    "encryption": Target(
        label="cost of encryption, safereplay 1 worker", bound=0.10, at_least=False
    ),
    "vs_es": Target(label="safereplay ÷ eventsourcing, 1 worker, cipher on", bound=None, unit="x"),
    "floor_vs_es": Target(label="raw floor ÷ eventsourcing, cipher on", bound=None, unit="x"),
}


def verdict(target: Target, value: float | None, *, pending: str) -> tuple[bool | None, str]:
    """``(met, words)``: met / missed and by how much, or why there is no figure."""
    if value is None:
        return None, f"pending: {pending}"
    shown = target.show(value)
    if target.bound is None:
        return None, f"{shown}: reported, not a target"
    met = value >= target.bound if target.at_least else value <= target.bound
    if met:
        return True, f"met: {shown} against {target.wanted} ({target.gap(value)} to spare)"
    return False, f"missed by {target.gap(value)}: {shown} against {target.wanted}"


def _row(
    key: str, backend: str, value: float | None, *, pending: str, note: str = ""
) -> dict[str, Any]:
    target = TARGETS[key]
    met, words = verdict(target, value, pending=pending)
    return {
        "key": key,
        "backend": backend,
        "target": f"{target.label}, {backend}" + (f" ({note})" if note else ""),
        "wanted": target.wanted,
        "measured": value,
        "shown": "pending" if value is None else target.show(value),
        "met": met,
        "gated": target.bound is not None,
        "verdict": words,
    }


def main_targets(
    ratios: dict[str, dict[str, float | None]], sizes: dict[str, Any] | None
) -> list[dict[str, Any]]:
    """Every row of issue 23, from the main run's ``ratios`` and a ``--sizes`` report."""
    rows: list[dict[str, Any]] = []
    main_pending = "not measured in this run (backend or loop left out)"
    for backend in ("sqlite", "postgres"):
        r = ratios.get(backend, {})
        rows.append(
            _row("vs_floor", backend, r.get("safereplay_vs_raw_floor"), pending=main_pending)
        )
    r = ratios.get("postgres", {})
    rows.append(_row("workers", "postgres", r.get("two_workers_vs_one"), pending=main_pending))
    rows += sizes_targets(sizes)
    for backend in ("sqlite", "postgres"):
        r = ratios.get(backend, {})
        rows.append(
            _row("encryption", backend, r.get("safereplay_encryption_cost"), pending=main_pending)
        )
    for backend in ("sqlite", "postgres"):
        r = ratios.get(backend, {})
        rows.append(
            _row("vs_es", backend, r.get("safereplay_vs_eventsourcing"), pending=main_pending)
        )
        rows.append(
            _row("floor_vs_es", backend, r.get("raw_floor_vs_eventsourcing"), pending=main_pending)
        )
    return rows


def sizes_targets(sizes: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The cost-growth rows, from a ``--sizes`` report (its ``growth`` entries).

    Issue 23 gates events/s on SQLite and peak RSS on both backends; the events/s
    ratio on PostgreSQL is reported beside them.
    """
    pending = "run `python -m benchmarks.catchup --sizes 100000,1000000,5000000`"
    growth = {}
    note = ""
    if sizes is not None:
        growth = {(g["backend"], g["loop"]): g for g in sizes.get("growth", [])}
        base, top = min(sizes["meta"]["sizes"]), max(sizes["meta"]["sizes"])
        note = f"N = {top:,} ÷ N = {base:,}, measured {sizes['meta']['when']}"
    rows = []
    for backend in ("sqlite", "postgres"):
        g = growth.get((backend, "safereplay"), {})
        row = _row("growth_rate", backend, g.get("events_per_s_ratio"), pending=pending, note=note)
        if backend == "postgres":
            row["gated"] = False
            row["wanted"] = "reported"
            if row["measured"] is not None:
                row["met"] = None
                row["verdict"] = f"{row['shown']}: reported (issue 23 gates SQLite)"
        rows.append(row)
    for backend in ("sqlite", "postgres"):
        g = growth.get((backend, "safereplay"), {})
        rows.append(
            _row("growth_rss", backend, g.get("peak_rss_ratio"), pending=pending, note=note)
        )
    return rows

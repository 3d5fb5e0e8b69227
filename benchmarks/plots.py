"""The benchmark's plots (PNG): events/s against N, and against workers.

Drawn by ``python -m benchmarks.catchup --sizes …`` / ``--scaling …`` when
matplotlib is installed (the ``benchmarks`` extra: ``pip install -e '.[benchmarks]'``);
without it the benchmark says so and draws nothing (:func:`unavailable`). The
Agg backend: no display is needed. Each plot shows safereplay and the raw floor,
per backend, from the medians the report's tables show.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

__all__ = ["draw_scaling", "draw_sizes", "unavailable"]

#: One colour per loop, one line style per backend, on every plot.
_COLOURS = {"raw": "#7f7f7f", "safereplay": "#1f77b4"}
_STYLES = {"sqlite": "-", "postgres": "--"}
_NAMES = {"raw": "raw floor", "safereplay": "safereplay"}


def unavailable() -> str | None:
    """None when plots can be drawn, else why not (in words, with the fix)."""
    if importlib.util.find_spec("matplotlib") is None:
        return (
            "matplotlib is not installed, plots not drawn "
            "(install the benchmarks extra: pip install -e '.[benchmarks]')"
        )
    return None


def _pyplot() -> Any:
    import matplotlib

    # Before pyplot is imported: render to files only, whatever the environment says.
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    # No date in the PNG's metadata: the same figures give the same file.
    fig.savefig(path, dpi=110, metadata={"Software": None})


def draw_sizes(report: dict[str, Any], path: Path) -> None:
    """Events/s against N (log scale) from a ``--sizes`` report."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    try:
        series: dict[tuple[str, str], list[tuple[int, float]]] = {}
        for lp in report["loops"]:
            if lp.get("events_per_s"):
                series.setdefault((lp["backend"], lp["loop"]), []).append(
                    (lp["size"], lp["events_per_s"])
                )
        for (backend, loop), points in sorted(series.items()):
            points.sort()
            ax.plot(
                [n for n, _ in points],
                [v for _, v in points],
                _STYLES.get(backend, "-"),
                marker="o",
                color=_COLOURS.get(loop),
                label=f"{_NAMES.get(loop, loop)}, {backend}",
            )
        ax.set_xscale("log")
        ax.set_xlabel("events in the log (N)")
        ax.set_ylabel("events/s (median)")
        ax.set_ylim(bottom=0)
        ax.set_title("Catch-up from zero against N (1 worker, cipher on)")
        ax.grid(True, alpha=0.3)
        ax.legend()
        _save(fig, path)
    finally:
        plt.close(fig)


def draw_scaling(report: dict[str, Any], path: Path) -> None:
    """Events/s against workers from a ``--scaling`` report, with each loop's linear
    extrapolation of its own 1-worker figure (dotted) for scale."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    try:
        series: dict[tuple[str, str], list[tuple[int, float]]] = {}
        for e in report["scaling"]:
            if e.get("events_per_s"):
                series.setdefault((e["backend"], e["loop"]), []).append(
                    (e["workers"], e["events_per_s"])
                )
        for (backend, loop), points in sorted(series.items()):
            points.sort()
            ks = [k for k, _ in points]
            colour = _COLOURS.get(loop)
            ax.plot(
                ks,
                [v for _, v in points],
                _STYLES.get(backend, "-"),
                marker="o",
                color=colour,
                label=f"{_NAMES.get(loop, loop)}, {backend}",
            )
            if points[0][0] == 1:
                ax.plot(ks, [k * points[0][1] for k in ks], ":", color=colour, alpha=0.5)
        ax.set_xlabel("partition workers (k)")
        ax.set_ylabel("events/s (median)")
        ax.set_xticks(sorted({e["workers"] for e in report["scaling"]}))
        ax.set_ylim(bottom=0)
        ax.set_title("Catch-up against workers (cipher on; dotted: k times 1 worker)")
        ax.grid(True, alpha=0.3)
        ax.legend()
        _save(fig, path)
    finally:
        plt.close(fig)

"""Memory figures of a benchmark process, read the same way by every loop's worker."""

from __future__ import annotations

import resource
from pathlib import Path

__all__ = ["peak_rss_kb", "status_kb"]


def status_kb(field: str) -> int:
    """A ``/proc/self/status`` memory field in kB (0 where /proc is missing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def peak_rss_kb() -> int:
    """This process's peak RSS.

    ``VmHWM`` rather than ``getrusage(RUSAGE_SELF).ru_maxrss``: Linux carries
    ``ru_maxrss`` across ``fork``/``exec``, so a worker started by a large parent
    would report the parent's peak. ``ru_maxrss`` is the fallback off Linux.
    """
    return status_kb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

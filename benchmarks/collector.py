"""The garbage-collector setting of every measured loop (``--gc default|replay``).

Issue 23: the floor and safereplay run under the *same* process settings, so a
ratio measures the framework and not the collector. ``replay`` is the policy
safereplay's own processes use
(:func:`safereplay.projections.collector.apply_collector_policy`); ``default``
leaves CPython's collector as it starts. Every process that does a loop's work
(the worker, and each partition process) calls :func:`apply` once, after its
imports and set-up and before the clock starts, so that what is frozen is the
start-up and never the loop's own objects.
"""

from __future__ import annotations

import gc
from typing import Any

from safereplay.projections.collector import apply_collector_policy

__all__ = ["CHOICES", "DEFAULT", "apply", "describe"]

CHOICES = ("default", "replay")
#: What the harness uses unless told otherwise: what safereplay's processes run with.
DEFAULT = "replay"


def apply(choice: str) -> None:
    """Set this process's collector for ``choice`` (``default``: leave it alone)."""
    if choice == "replay":
        apply_collector_policy()
    elif choice != "default":
        raise ValueError(f"unknown collector setting {choice!r} (one of {', '.join(CHOICES)})")


def describe() -> dict[str, Any]:
    """The collector as this process has it, recorded with each result (a check, not a
    figure: the smoke test asserts that the policy really reached the measuring process)."""
    return {"threshold": list(gc.get_threshold()), "frozen": gc.get_freeze_count()}

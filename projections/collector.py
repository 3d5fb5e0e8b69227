"""The garbage-collector policy of safereplay's own replay processes.

Why a policy at all: a catch-up allocates millions of short-lived containers (rows
read, decrypted states, envelopes, batch writes). CPython's cyclic collector runs
a young collection every 700 net allocations and, every so often, a full one that
walks every live object, including the whole batch still waiting for its commit.
None of that garbage is cyclic: it is freed by reference counting the moment a
batch is done, so the collector's walks find nothing and cost a catch-up about a
third of its time (measured with the collector off, ``docs/benchmarks.md``).

Why not in the library: the collector is process-wide. A runner inside an
application's process never touches it; the application decides, and may opt in
by calling :func:`apply_collector_policy` itself.

Who applies it: safereplay's own processes, once their start-up is done
(``safereplay worker``, the local workers of ``rebuild`` and ``catch-up``, and
``follow``), and the benchmark, for *every* loop it measures (the raw floor
too), so that a ratio measures the framework and not the collector.

What it does:

- ``gc.freeze()`` moves everything alive after start-up (modules, classes,
  settings, connections) into a permanent generation that no collection walks
  again;
- higher thresholds make young collections rarer (a batch of 5,000 events makes
  a few hundred thousand objects; with the default 700 the collector runs
  hundreds of times per batch) while still collecting real cycles, so memory
  stays bounded.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass

__all__ = ["REPLAY_PROCESS_POLICY", "CollectorPolicy", "apply_collector_policy"]


@dataclass(frozen=True, kw_only=True)
class CollectorPolicy:
    """Thresholds of the three generations, and whether to freeze what is alive.

    ``young``: net allocations between young collections (CPython's default is
    700); ``middle`` / ``old``: young collections per middle one, middle per old
    one (defaults 10 and 10).
    """

    young: int = 50_000
    middle: int = 20
    old: int = 100
    freeze: bool = True

    def __post_init__(self) -> None:
        for name in ("young", "middle", "old"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ValueError(
                    f"CollectorPolicy.{name} must be a positive integer, not {value!r}"
                )


#: The policy of safereplay's own processes (see the module's docstring).
REPLAY_PROCESS_POLICY = CollectorPolicy()


def apply_collector_policy(policy: CollectorPolicy = REPLAY_PROCESS_POLICY) -> None:
    """Set ``policy`` for this process: call once, after start-up.

    Collects first, so that what is frozen is what is really alive.
    """
    gc.collect()
    gc.set_threshold(policy.young, policy.middle, policy.old)
    if policy.freeze:
        gc.freeze()

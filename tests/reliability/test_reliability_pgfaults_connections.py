"""PostgreSQL faults under a rebuild and under live following, on a private cluster:
connections terminated mid-batch (``pg_terminate_backend``) and the server
restarted or stopped for a while.

Each trial records a workload in a fresh schema of the module's private cluster
(never the shared server), then either rebuilds a projection with ``safereplay
rebuild`` (two local worker processes, a throttled job so that it lasts) while
faults hit it once the job has applied a random share of its events, or runs
``safereplay follow`` while a writer appends and faults hit it after random delays.

What it proves, read directly in the database: the work resumes by itself once
the fault clears (or, if a command stopped, it said why, with no traceback and a
non-zero exit, and running it again completes); the build's rows then equal the
clean fold of the stored events, every partition's position is the job's target
(or the head), every handled event was applied exactly once (``events_applied``),
nothing is parked, and no job is left running nor any lease held.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pgfaults_cluster import PrivateCluster, private_cluster  # noqa: F401 - the fixture
from pgfaults_faults import (
    FAULTS,
    finish_following,
    finish_rebuild,
    follow_through,
    rebuild_through,
)
from pgfaults_world import new_world

pytestmark = pytest.mark.postgres


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_rebuild_resumes_after_database_faults(
    private_cluster: PrivateCluster,  # noqa: F811
    tmp_path: Path,
    trials,
    fault: str,
) -> None:
    for trial in trials(default=1):
        rng = trial.random
        with new_world(private_cluster, tmp_path / f"trial-{trial.index}") as world:
            world.record(workflows=4, runs=rng.randint(8, 14), seed=rng.randrange(10**6))
            projection, process, code = rebuild_through(
                world, trial, faults=rng.randint(1, 3), inject=FAULTS[fault]
            )
            finish_rebuild(world, trial, projection, process, code)


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_following_resumes_after_database_faults(
    private_cluster: PrivateCluster,  # noqa: F811
    tmp_path: Path,
    trials,
    fault: str,
) -> None:
    for trial in trials(default=1):
        rng = trial.random
        with new_world(private_cluster, tmp_path / f"trial-{trial.index}") as world:
            world.record(workflows=2, runs=rng.randint(3, 8), seed=rng.randrange(10**6))
            follower, head = follow_through(
                world, trial, faults=rng.randint(1, 3), inject=FAULTS[fault]
            )
            finish_following(world, trial, follower, head)

"""PostgreSQL faults under a rebuild and live following at once, on a private cluster.

Each trial records a workload in a fresh schema of the module's private cluster
(never the shared server), starts ``safereplay follow`` of two projections (one keyed
by run, one whose merges span partitions), and once the followers have applied a
random share of the log, a throttled ``safereplay rebuild`` of one of them (1 to 3
partitions, 1 or 2 local worker processes), while a writer appends. Then 1 to 3
faults, each once the rebuild has applied a random share of its events and moved
since the previous fault:

- ``terminate``: ``pg_terminate_backend`` of all the product's connections, or of a
  random few (stores, sources, listeners, the job store, the CLI's own);
- ``restart``: the server restarted (``fast``, or ``immediate`` as a crash), sometimes
  stopped for a few seconds first;
- ``refuse``: the database refuses the work for a while: the processes run with a
  short ``lock_timeout`` or ``statement_timeout`` while a competing transaction holds
  an exclusive lock on a projection table, the positions table or the lease table;
  or every write to a projection table or the positions table fails as on a full
  disk (SQLSTATE 53100, from a trigger) until the trigger is dropped.

What it proves, read directly in the database: the work resumes by itself once the
fault clears (or a command that stopped said why, with no traceback and a non-zero
exit, and running it again completes); the rebuilt build's rows equal the clean fold
of the events up to the job's target and the live builds' rows the fold of the whole
log, every partition's position is the target (or the head), every handled event was
applied exactly once (``events_applied``), nothing is parked, no job is left running
and no lease is held.

Regressions kept here: a server restart or a terminated connection of the recovery
database (the job store) used to kill every worker with a psycopg traceback, their
leases held until they expired, and ``safereplay rebuild`` itself with its watch,
leaving its workers running; the work now waits for the database and resumes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pgfaults_cluster import PrivateCluster, private_cluster  # noqa: F401 - the fixture
from pgfaults_faults import (
    FAULTS,
    TIMEOUTS,
    finish_following,
    finish_rebuild,
    inject_faults,
    start_work,
)
from pgfaults_world import new_world

pytestmark = pytest.mark.postgres


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_rebuild_and_following_resume_after_database_faults(
    private_cluster: PrivateCluster,  # noqa: F811
    tmp_path: Path,
    trials,
    fault: str,
) -> None:
    for trial in trials(default=1):
        rng = trial.random
        env = {"PGOPTIONS": rng.choice(TIMEOUTS)} if fault == "refuse" else {}
        with new_world(private_cluster, tmp_path / f"trial-{trial.index}", **env) as world:
            world.record(workflows=4, runs=rng.randint(4, 8), seed=rng.randrange(10**6))
            work = start_work(world, trial)
            head = inject_faults(work, FAULTS[fault], faults=rng.randint(1, 3))
            finish_rebuild(work)
            finish_following(work, head)

"""A full disk that lasts, on a private PostgreSQL cluster: the work stops loudly,
never reports caught up while behind, and completes once there is room.

Each trial runs ``safereplay follow`` and a throttled ``safereplay rebuild`` side by
side (as in ``test_reliability_pgfaults_faults``) with
``SAFEREPLAY_PROJECTIONS_GIVE_UP_AFTER`` set, and once the rebuild has applied a random
share of its events, every write to the positions table (which stops both), to a
table of a live build (its follower) or to the rebuild's table (the rebuild) fails
from then on: as on a full disk (SQLSTATE 53100, transient,
so the processes retry until they give up), or refused outright by the database's own
rule (SQLSTATE P0001, a trigger raising). A writer then appends a few events.

What it proves: both commands stop by themselves with a non-zero exit and an error
naming the cause ("No space left on device"), never a traceback; meanwhile the
database shows the truth: the rebuild's job is not completed and no stopped worker
holds a lease, the followers' positions are short of the head, and ``safereplay
status`` reports those positions and their backlog, not caught up. Once the trigger is
dropped (the disk has room), running both commands again completes the rebuild and
catches the followers up, and every invariant holds (rows equal to the clean fold,
positions, ``events_applied``, no job running, no lease held).

Regression kept here: a ``safereplay follow`` process whose followers had all given up
on the database used to run on, silently behind, until someone stopped it; it now
stops and exits non-zero with the followers' errors.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pgfaults_cluster import PrivateCluster, private_cluster  # noqa: F401 - the fixture
from pgfaults_faults import (
    DISK_FULL,
    FOLLOWED,
    REFUSED,
    assert_stopped_loudly,
    fill_the_disk,
    finish_following,
    finish_rebuild,
    free_the_disk,
    start_work,
)
from pgfaults_world import PROJECTIONS, new_world, wait_for

pytestmark = pytest.mark.postgres

GIVE_UP = {"SAFEREPLAY_PROJECTIONS_GIVE_UP_AFTER": "1.5"}


def test_a_full_disk_that_lasts_stops_the_work_loudly_and_it_completes_once_there_is_room(
    private_cluster: PrivateCluster,  # noqa: F811
    tmp_path: Path,
    trials,
) -> None:
    for trial in trials(default=1):
        rng = trial.random
        with new_world(private_cluster, tmp_path / f"trial-{trial.index}", **GIVE_UP) as world:
            world.record(workflows=4, runs=rng.randint(4, 8), seed=rng.randrange(10**6))
            work = start_work(world, trial)
            least = max(1, int(rng.uniform(0.05, 0.8) * work.scope))
            wait_for(
                lambda least=least, work=work: world.job_progress() >= least or not work.rebuilding,
                f"the rebuild to apply {least} of {work.scope} events",
            )
            [job] = world.jobs()
            positions_table = "safereplay_projection_positions"
            live = rng.choice(PROJECTIONS)
            rebuilt = f"{work.projection.name}__{work.projection.tables[0].name}__b{job['build']}"
            # The positions table stops both; a live build's table, that projection's
            # follower (so the follow process); the rebuild's table, the rebuild only.
            table = rng.choice(
                [positions_table, f"{live.name}__{live.tables[0].name}__b1", rebuilt]
            )
            table = table if table in world.tables() else positions_table
            hits_rebuild = table in (positions_table, rebuilt)
            hits_follow = table != rebuilt
            errcode = rng.choice([DISK_FULL, REFUSED])
            fill_the_disk(world, table, errcode)
            trial.fault()
            print(f"[pgfaults] {trial.label}: {table} full ({errcode})", flush=True)
            try:
                world.record(workflows=1, runs=rng.randint(1, 3), seed=rng.randrange(10**6))
                head = world.head()
                code = work.rebuild.wait()
                [job] = world.jobs()
                if hits_rebuild and job["state"] != "completed":
                    # Stopped by the full disk: loudly, naming it, not caught up.
                    assert_stopped_loudly(work.rebuild, code, trial.label)
                    assert "No space left on device" in work.rebuild.stderr()
                    leased = [
                        p
                        for p in world.job_partitions()
                        if p["status"] == "running" and p["lease_owner"]
                    ]
                    assert not leased, f"{trial.label}: a stopped worker holds a lease: {leased}"
                if hits_follow:
                    followed = work.follower.wait()
                    assert_stopped_loudly(work.follower, followed, trial.label)
                    said = work.follower.stderr() + work.follower.stdout()
                    assert "No space left on device" in said, said[-2000:]
                    behind = [p.name for p in PROJECTIONS if not world.reached(p, head)]
                    assert behind, f"{trial.label}: every follower reached {head}, disk full"
                    reported = world.check_status_tells_the_truth(trial)
                    assert reported == len(behind), f"{trial.label}: status: {reported} behind"
            finally:
                free_the_disk(world, table)
            # Both commands again, side by side, now that the disk has room.
            if work.follower.popen.poll() is not None:
                work.follower = world.cli("follow", *FOLLOWED)
            finish_rebuild(work)
            finish_following(work, head)

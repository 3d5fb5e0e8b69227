"""The database faults of the pgfaults scenarios, and the two ways work meets them:
a rebuild driven by ``safereplay rebuild`` (its local worker processes), and live
following by ``safereplay follow``. Each fault is injected at a randomised moment;
afterwards the work must have resumed by itself, or stopped loudly (a clear
``error:`` line, no traceback, a non-zero exit) and then resume when run again
once the fault has cleared. Never silently behind: the database is read directly.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import psycopg
from pgfaults_world import PATIENCE, PROJECTIONS, Process, World, Writer, settle, wait_for
from projection_fixtures import handled_count
from psycopg import sql
from reliability_trials import Trial

from safereplay.projections import Projection

#: A fault: injects itself into the world (at the moment the caller chose); returns
#: a short description for the failure message.
Fault = Callable[[World, random.Random], str]


def terminate_connections(world: World, rng: random.Random) -> str:
    """``pg_terminate_backend`` of the product's connections: all of them, or a random
    few (a store, a source, a listener, the job store... whichever are open)."""
    backends = world.cluster.backends()
    if not backends:
        return "terminate: no connection open"
    if rng.random() < 0.4:
        victims = backends
    else:
        victims = rng.sample(backends, rng.randint(1, len(backends)))
    done = world.cluster.terminate([pid for pid, _, _ in victims])
    return f"terminated {done} of {len(backends)} connections"


def restart_server(world: World, rng: random.Random) -> str:
    """The server restarted (``fast``, or ``immediate`` as a crash), sometimes after
    being down for a while."""
    mode = rng.choice(["fast", "immediate"])
    down = rng.choice([0.0, rng.uniform(0.5, 4.0)])
    world.cluster.stop(mode)
    settle(down)
    world.cluster.start()
    return f"server stopped ({mode}) for {down:.1f}s and started again"


FAULTS: dict[str, Fault] = {"terminate": terminate_connections, "restart": restart_server}


def _held_tables(world: World) -> list[str]:
    """Tables a competing transaction or a failing trigger can stand in the way of:
    the projections' own tables (every build), the positions table, the leases."""
    names = [
        str(r["table_name"])
        for r in world.query(
            sql.SQL("SELECT table_name FROM information_schema.tables WHERE table_schema = %s"),
            (world.schema,),
        )
    ]
    wanted = [n for n in names if "__b" in n and n.split("__")[0] in PROJECTION_NAMES]
    for shared in ("safereplay_projection_positions", "safereplay_job_partitions"):
        if shared in names:
            wanted.append(shared)
    return sorted(wanted)


PROJECTION_NAMES = frozenset(p.name for p in PROJECTIONS)


def hold_a_lock(world: World, rng: random.Random) -> str:
    """A competing transaction holds an exclusive lock on a projection table, the
    positions table or the lease table for a random while, then rolls back: the
    product's statements meet their lock or statement timeout meanwhile."""
    table = rng.choice(_held_tables(world))
    held = rng.uniform(0.5, 3.0)
    with world.cluster.connect() as conn, conn.transaction():
        conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(world.table(table)))
        settle(held)
        raise psycopg.Rollback
    return f"held an exclusive lock on {table} for {held:.1f}s"


#: What a full disk says (SQLSTATE 53100, as PostgreSQL raises it), or a refusal by
#: the database's own rules (P0001: a trigger that raises).
DISK_FULL = "disk_full"
REFUSED = "raise_exception"


def fill_the_disk(world: World, table: str, errcode: str = DISK_FULL) -> str:
    """Every write to ``table`` fails from now on, as on a full disk (a trigger)."""
    function = world.table("pgfaults_disk_full")
    world.execute(
        sql.SQL(
            "CREATE OR REPLACE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "RAISE EXCEPTION 'could not extend file: No space left on device' "
            "USING ERRCODE = {}; END $$"
        ).format(function, sql.Literal(errcode))
    )
    world.execute(
        sql.SQL(
            "CREATE TRIGGER pgfaults_disk_full BEFORE INSERT OR UPDATE ON {} "
            "FOR EACH ROW EXECUTE FUNCTION {}()"
        ).format(world.table(table), function)
    )
    return table


def free_the_disk(world: World, table: str) -> None:
    world.execute(
        sql.SQL("DROP TRIGGER IF EXISTS pgfaults_disk_full ON {}").format(world.table(table))
    )


def full_disk_for_a_while(world: World, rng: random.Random) -> str:
    """A projection table or the positions table cannot be written (a full disk) for a
    random while, then can again."""
    table = rng.choice([t for t in _held_tables(world) if t != "safereplay_job_partitions"])
    full = rng.uniform(0.5, 3.0)
    fill_the_disk(world, table)
    settle(full)
    free_the_disk(world, table)
    return f"{table}: disk full for {full:.1f}s"


def refuse_for_a_while(world: World, rng: random.Random) -> str:
    """The database refuses the work for a while: a held lock (met by the processes'
    lock or statement timeout), or a full disk."""
    return rng.choice([hold_a_lock, full_disk_for_a_while])(world, rng)


#: The processes' lock or statement timeout (``PGOPTIONS``) for the refusal trials:
#: short enough to be met while a lock is held, long enough for every normal statement.
TIMEOUTS = ("-c lock_timeout=300ms", "-c statement_timeout=700ms")


FAULTS["refuse"] = refuse_for_a_while
FOLLOWED = [arg for p in PROJECTIONS for arg in ("-p", p.name)]


def assert_stopped_loudly(process: Process, code: int, label: str) -> None:
    """A command that stopped: non-zero, a clear error, never a traceback."""
    err = process.stderr()
    assert code != 0, f"{label}: exit 0 but the work is not done: {err[-2000:]}"
    assert "Traceback" not in err, (
        f"{label}: `safereplay {process.args[0]}` stopped with a traceback, not a clear "
        f"error: {err[-3000:]}"
    )
    assert "error" in err.lower(), f"{label}: exit {code} without saying why: {err[-2000:]}"


@dataclass
class Work:
    """One trial's work: ``safereplay follow`` of the scenario projections, and a
    throttled ``safereplay rebuild`` of one of them, side by side, while a writer
    appends."""

    world: World
    trial: Trial
    projection: type[Projection]
    follower: Process
    rebuild: Process
    #: Handled events of the rebuilt projection in the rebuild's scope.
    scope: int

    @property
    def rebuilding(self) -> bool:
        return self.rebuild.popen.poll() is None


def start_work(world: World, trial: Trial, *, env: dict[str, str] | None = None) -> Work:
    """Build the live builds up to a random position (in this process: quick), then
    start following (the followers catch up the rest, then follow live) and the
    rebuild at once."""
    rng = trial.random
    world.prebuild(until=max(1, int(rng.uniform(0.1, 1.0) * world.head())))
    follower = world.cli("follow", *FOLLOWED, env=env)
    projection = rng.choice(PROJECTIONS)
    scope = handled_count(projection, world.envelopes())
    workers = 1 if rng.random() < 0.7 else 2
    rebuild = world.cli(
        *("rebuild", projection.name, "-r", "pgfaults trial", "-n", str(rng.randint(1, 3))),
        *("-w", str(workers), "--max-rate", str(rng.choice([150, 200, 300]))),
        env=env,
    )
    return Work(world, trial, projection, follower, rebuild, scope)


def inject_faults(work: Work, inject: Fault, *, faults: int) -> int:
    """``faults`` faults while the writer appends, each once the rebuild has applied a
    random share of its events and moved since the last fault (paced by progress, not
    by the clock), or after a random delay once the rebuild has ended. Returns the
    head once the writer stopped."""
    world, trial = work.world, work.trial
    rng = trial.random
    shares = sorted(rng.uniform(0.05, 0.9) for _ in range(faults))
    moved_past = 0
    with Writer(world, seed=rng.randrange(10**6)):
        for share in shares:
            least = max(int(share * work.scope), moved_past + 1)
            wait_for(
                lambda least=least: world.job_progress() >= least or not work.rebuilding,
                f"the rebuild to apply {least} of {work.scope} events",
            )
            if not work.rebuilding:
                settle(rng.uniform(0.1, 1.5))
            what = inject(world, rng)
            trial.fault()
            moved_past = world.job_progress()
            print(f"[pgfaults] {trial.label}: {what}", flush=True)
        settle(rng.uniform(0.2, 1.0))
    return world.head()


def finish_rebuild(work: Work) -> None:
    """The rebuild completed by itself, or stopped loudly and completes when run again
    (the fault cleared); then every invariant, in the database."""
    world, trial, projection = work.world, work.trial, work.projection
    code = work.rebuild.wait()
    [job] = [j for j in world.jobs() if j["projection"] == projection.name]
    if code != 0:
        # Stopped loudly (a worker met the fault outside a batch, say: then even if
        # another finished the job): run it again unless the job completed.
        assert_stopped_loudly(work.rebuild, code, trial.label)
        if job["state"] != "completed":
            again = world.cli("rebuild", projection.name, "-r", "pgfaults: run it again")
            code = again.wait()
            assert code == 0, f"{trial.label}: run again, it failed: {again.stderr()[-3000:]}"
            [job] = [j for j in world.jobs() if j["projection"] == projection.name]
    assert job["state"] == "completed", f"{trial.label}: {job}"
    world.check_no_lease_outlives(trial)
    world.check_build(trial, projection, build=int(job["build"]), upto=int(job["target_position"]))


def finish_following(work: Work, head: int) -> None:
    """Every follower reaches the head by itself (or the process stopped loudly and,
    started again, does), then stops cleanly; the live builds equal the fold."""
    world, trial = work.world, work.trial
    follower = work.follower
    for projection in PROJECTIONS:
        wait_for(
            lambda projection=projection: (
                world.reached(projection, head) or follower.popen.poll() is not None
            ),
            f"{projection.name} to reach the head {head} after the faults",
            timeout=PATIENCE,
        )
    if follower.popen.poll() is not None:
        assert_stopped_loudly(follower, follower.wait(), trial.label)
        follower = world.cli("follow", *FOLLOWED)
        for projection in PROJECTIONS:
            wait_for(
                lambda projection=projection: world.reached(projection, head),
                f"{projection.name} to reach the head {head} once followed again",
            )
    code = follower.stop()
    assert code == 0, f"{trial.label}: follow ended with {code}: {follower.stderr()[-3000:]}"
    for projection in PROJECTIONS:
        build = world.live_build(projection)
        assert build is not None, f"{trial.label}: {projection.name} has no live build"
        world.check_build(trial, projection, build=build, upto=head)

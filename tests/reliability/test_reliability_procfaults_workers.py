"""Worker processes SIGKILLed at random points of a partitioned rebuild, on both
backends.

- **Merges across partitions** (``workflow_stats``): every run's events land in the
  run's partition, but they merge into their *workflow's* row, which every
  partition writes. Workers are killed mid-batch at random points of the job's
  progress and replaced; after the job completes, the build's rows equal a clean
  fold of the stored events, each handled position is counted once (applied or
  parked) in its partition's checkpoint, no job or partition is left running and no
  dead worker still holds a lease past its expiry.
- **Leases during their expiry window**: a thread samples every lease row while a
  killed worker's lease runs out and another worker takes the partition over. No
  lease outlives its holder by more than the lease's length, a partition is taken
  from a dead holder only once its lease has expired, and one lease token never
  names two holders.
"""

from __future__ import annotations

import pytest
from procfaults_checks import LeasePoller, lease_violations
from procfaults_world import (
    TrialsFactory,
    check_build,
    finished,
    kill_a_busy_worker,
    spawn,
    worker_processes,
)
from projection_fixtures import Backend, OnPostgres, OnSQLite, handled_count
from recovery_fixtures import fresh_recovery

from safereplay.domain.workload import record_workload
from safereplay.projections import WorkflowStatistics
from safereplay.recovery.jobs.model import JobState
from safereplay.recovery.jobs.plans import JobRequest

STATS = WorkflowStatistics


class WorkerKillContract:
    #: Default-mode trials on this backend; the long mode runs its N on both. (Each
    #: scenario runs by default on one backend at least, within the time budget.)
    default_trials = 1

    def test_merges_across_partitions_survive_killed_workers(
        self, backend: Backend, trials: TrialsFactory
    ) -> None:
        for trial in trials(default=self.default_trials):
            rng = trial.random
            with fresh_recovery(backend) as recovery, worker_processes() as processes:
                log = recovery.log
                record_workload(
                    log.app,
                    workflows=rng.randint(2, 4),
                    runs_per_workflow=rng.randint(6, 12),
                    seed=rng.randrange(10**6),
                )
                recovery.first_build(STATS)
                handled = handled_count(STATS, log.envelopes())
                partitions = rng.randint(2, 4)
                job = recovery.rebuild(
                    STATS.name,
                    JobRequest(principal="ops", reason="stats fixed", partitions=partitions),
                )
                spawn(recovery, processes, 2)
                after = 0
                for _ in range(rng.randint(1, 3)):
                    # A random point of the job, counted in positions moved (not time).
                    after = rng.randint(after, after + max(1, handled // 3))
                    killed = kill_a_busy_worker(recovery, job, processes, after=after, rng=rng)
                    if killed is None:
                        break
                    trial.fault()
                    spawn(recovery, processes)
                done = finished(recovery, job)
                assert done.state == JobState.COMPLETED, done.error
                for process in processes:
                    process.join(60)
                check_build(trial, log, recovery, STATS, job.build)


class LeaseExpiryContract:
    #: Default-mode trials on this backend; the long mode runs its N on both. (Each
    #: scenario runs by default on one backend at least, within the time budget.)
    default_trials = 1

    def test_leases_polled_while_a_killed_worker_s_lease_expires(
        self, backend: Backend, trials: TrialsFactory
    ) -> None:
        lease = 1.0
        for trial in trials(default=self.default_trials):
            rng = trial.random
            with fresh_recovery(backend) as recovery, worker_processes() as processes:
                log = recovery.log
                record_workload(
                    log.app, workflows=2, runs_per_workflow=8, seed=rng.randrange(10**6)
                )
                recovery.first_build(STATS)
                handled = handled_count(STATS, log.envelopes())
                job = recovery.rebuild(
                    STATS.name,
                    JobRequest(principal="ops", reason="stats fixed", partitions=2),
                )
                deaths: dict[int, float] = {}
                with LeasePoller(log) as poller:
                    spawn(recovery, processes, 2, lease_seconds=lease)
                    killed = kill_a_busy_worker(
                        recovery, job, processes, after=rng.randint(0, handled // 2), rng=rng
                    )
                    if killed is not None:
                        deaths[killed[0]] = killed[1]
                        trial.fault()
                        spawn(recovery, processes, lease_seconds=lease)
                    done = finished(recovery, job)
                assert done.state == JobState.COMPLETED, done.error
                for process in processes:
                    process.join(60)
                takeovers, problems = lease_violations(
                    poller.samples, deaths=deaths, lease_seconds=lease
                )
                assert not problems, problems
                assert poller.samples, "the poller sampled the lease rows"
                print(f"[procfaults] {takeovers} takeover(s) from a dead holder seen")
                check_build(trial, log, recovery, STATS, job.build)


class TestSQLiteWorkerKills(OnSQLite, WorkerKillContract):
    pass


@pytest.mark.postgres
class TestPostgresWorkerKills(OnPostgres, WorkerKillContract):
    default_trials = 0


class TestSQLiteLeaseExpiry(OnSQLite, LeaseExpiryContract):
    default_trials = 0


@pytest.mark.postgres
class TestPostgresLeaseExpiry(OnPostgres, LeaseExpiryContract):
    pass

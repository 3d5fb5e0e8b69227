"""Workers on several machines share one rebuild through PostgreSQL leases.

Three real ``safereplay worker`` OS processes, each with its own host identity
(``--host``) and so its own named connections, share one partitioned rebuild of a
reference projection: every partition is claimed and built exactly once, the
leases name the three hosts, ``pg_stat_activity`` shows each host's connections
while they run, and the swapped build equals the incremental one (and the fold
oracle). The hosts are simulated on one machine: what makes them distinct to
safereplay is exactly what would on three machines, the identity they claim with
and the connections they open; nothing else is shared but the server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import pytest
from projection_fixtures import OnPostgres, PostgresBackend, handled_count
from recovery_fixtures import Recovery, RecoveryContract, principals_world, wait_until
from typer.testing import CliRunner

from safereplay.domain.workload import record_workload
from safereplay.projections import WorkflowStatistics
from safereplay.recovery.cli.app import app
from safereplay.recovery.jobs.model import JobState
from safereplay.recovery.jobs.worker import default_worker_id
from safereplay.recovery.security.audit import AuditKey

STATS = WorkflowStatistics
PARTITIONS = 3
#: Events/s for the whole job (a third per partition): each partition then lasts
#: several seconds, longer than a worker process takes to start and sign in, so
#: that each of the three claims a partition of its own.
MAX_RATE = 24


def cli(env: dict[str, str], *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), env=env)
    return result.exit_code, result.output


@pytest.mark.postgres
class TestWorkersOnThreeHosts(OnPostgres, RecoveryContract):
    @pytest.fixture
    def env(self, recovery: Recovery, tmp_path: Path) -> dict[str, str]:
        """An admin's CLI environment over the recovery's PostgreSQL schema."""
        audit_key = tmp_path / "audit.key"
        AuditKey.generate().save(audit_key)
        context, envs = principals_world(recovery.log.settings, audit_key)
        context.close()
        # Small batches: many fenced commits and lease renewals per partition.
        return envs["admin"] | {
            "SAFEREPLAY_PROJECTIONS_BATCH_SIZE": "8",
            "SAFEREPLAY_LEASE_SECONDS": "6",
        }

    def test_three_hosts_share_one_rebuild_each_partition_built_once(
        self, recovery: Recovery, env: dict[str, str]
    ) -> None:
        record_workload(recovery.log.app, workflows=6, runs_per_workflow=12, seed=23)
        recovery.first_build(STATS)  # the incremental build: live build 1
        incremental = recovery.actual(STATS)
        assert incremental == recovery.expected(STATS)

        code, out = cli(
            env,
            *("rebuild", STATS.name, "-n", str(PARTITIONS), "-w", "0"),
            *("--max-rate", str(MAX_RATE), "-r", "three hosts", "--json"),
        )
        assert code == 0, out
        job_id = json.loads(out)["job_id"]
        job = recovery.jobs.get_job(UUID(job_id))
        tag = uuid.uuid4().hex[:6]  # this test's hosts only, whatever else runs
        hosts = [f"host-{letter}-{tag}" for letter in "abc"]
        workers = [
            subprocess.Popen(
                [
                    *(sys.executable, "-m", "safereplay.recovery.cli", "worker"),
                    *("--job", job_id, "--exit-when-idle", "--host", host, "--json"),
                ],
                env={**os.environ, **env},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for host in hosts
        ]
        holders: dict[int, set[str]] = {i: set() for i in range(PARTITIONS)}
        connections: set[str] = set()
        assert isinstance(recovery.log.backend, PostgresBackend)
        try:
            with recovery.log.backend.connect() as conn:

                def sample() -> bool:
                    """Who holds each partition now, and the hosts' connections."""
                    for part in recovery.partitions(job):
                        if part.lease_owner is not None:
                            holders[part.partition_index].add(part.lease_owner)
                    connections.update(application_names(conn, tag))
                    return all(w.poll() is not None for w in workers)

                wait_until(sample, timeout=180, interval=0.05, what="the three workers to end")
            outputs = [w.communicate(timeout=30) for w in workers]
        finally:
            for worker in workers:
                worker.kill()
        for worker, (_, err) in zip(workers, outputs, strict=True):
            assert worker.returncode == 0, err

        # Each worker ran partitions under its own host identity, and together they
        # completed each partition exactly once (no partition claimed twice).
        reports = [json.loads(out) for out, _ in outputs]
        completed: list[int] = []
        for host, report in zip(hosts, reports, strict=True):
            assert report["worker_id"].startswith(f"{host}:"), report
            completed += [index for _, index, outcome in report["outcomes"]]
            assert all(outcome == "completed" for *_, outcome in report["outcomes"]), report
        assert sorted(completed) == list(range(PARTITIONS))
        parts = recovery.partitions(job)
        assert [p.lease_token for p in parts] == [1] * PARTITIONS, "each claimed once"
        assert sum(p.events_applied for p in parts) == handled_count(
            STATS, recovery.log.envelopes()
        )
        # The leases recorded while they ran name the three hosts, one per partition.
        owners = {i: {o.split(":")[0] for o in seen} for i, seen in holders.items()}
        assert all(len(seen) == 1 for seen in owners.values()), owners
        assert {next(iter(seen)) for seen in owners.values()} == set(hosts), owners
        for index, host in [(index, next(iter(seen))) for index, seen in owners.items()]:
            report = reports[hosts.index(host)]
            assert index in [i for _, i, _ in report["outcomes"]], (index, host, report)
        # Each host's own connections, named after it, were open on the server.
        for host in hosts:
            for role in ("recovery", "projections", "source", "watermark"):
                assert f"safereplay-{host}-{role}" in connections, sorted(connections)

        assert recovery.job(job).state == JobState.COMPLETED
        code, out = cli(env, "swap", STATS.name, "-r", "built on three hosts", "--json")
        assert code == 0 and json.loads(out)["live"] == 2, out
        assert recovery.actual(STATS) == incremental == recovery.expected(STATS)


def application_names(conn: psycopg.Connection[Any], tag: str) -> set[str]:
    rows = conn.execute(
        "SELECT application_name FROM pg_stat_activity "
        "WHERE datname = current_database() AND application_name LIKE %s",
        (f"safereplay-host-_-{tag}-%",),
    ).fetchall()
    return {str(name) for (name,) in rows}


def test_a_host_identity_is_checked_before_anything_runs(sqlite_cli_env: dict[str, str]) -> None:
    # ':' separates the parts of a lease owner (HOST:PID:RANDOM); a name PostgreSQL
    # would cut short in application_name is refused too.
    for bad in ("host:a", "h" * 41, "-host"):
        code, out = cli(sqlite_cli_env, "worker", "--host", bad, "--exit-when-idle")
        assert code == 2 and "SAFEREPLAY_WORKER_HOST" in out, out
    owner = default_worker_id("host-a")
    assert owner.startswith(f"host-a:{os.getpid()}:") and len(owner.split(":")) == 3

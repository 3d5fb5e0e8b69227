"""``follow``: live followers through the dispatch layer; parks are audited."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from projection_fixtures import Backend, OnPostgres, OnSQLite
from recovery_fixtures import RunCounts, fold_run_counts, wait_until

from safereplay.domain.workload import record_workload
from safereplay.projections import REFERENCE_PROJECTIONS
from safereplay.recovery.jobs.model import JobState
from safereplay.recovery.operations.catalog import open_operations
from safereplay.recovery.operations.context import RecoveryContext
from safereplay.recovery.operations.security import bootstrap_admin
from safereplay.recovery.registry import ProjectionRegistry
from safereplay.recovery.security.audit import AuditKey
from safereplay.recovery.settings import RecoverySettings


class FollowContract:
    @pytest.fixture
    def setting(self, backend: Backend, tmp_path: Path) -> Iterator[dict[str, Any]]:
        with backend.fresh() as log:
            record_workload(log.app, workflows=2, runs_per_workflow=6, seed=31)
            AuditKey.generate().save(tmp_path / "audit.key")
            context = RecoveryContext(
                domain=log.settings,
                recovery=RecoverySettings(audit_key_file=tmp_path / "audit.key"),
            )
            context.registry = ProjectionRegistry.of([*REFERENCE_PROJECTIONS, RunCounts])
            admin = context.access.authenticate(bootstrap_admin(context, "ada"))
            try:
                yield {"log": log, "context": context, "admin": admin}
            finally:
                context.close()

    def test_followers_keep_up_park_the_poison_and_audit_it(self, setting: dict[str, Any]) -> None:
        log, context = setting["log"], setting["context"]
        runs = [e.aggregate_id for e in log.envelopes() if e.topic in RunCounts.topics]
        poison = runs[0]
        RunCounts.reset(poison={poison})
        result: list[Any] = []
        head = log.app.head_position()
        store = context.projection_store
        done = threading.Event()

        def run() -> None:
            result.append(
                open_operations(context).run(
                    setting["admin"],
                    "follow",
                    reason="live",
                    projections=["run_counts", "failed_steps"],
                    stop_after=6,
                )
            )
            done.set()

        threading.Thread(target=run, daemon=True).start()
        wait_until(
            lambda: all(
                store.live_build(n)
                and min((c.position for c in store.checkpoints(n)), default=0) >= head
                for n in ("run_counts", "failed_steps")
            ),
            timeout=20,
            what="followers at the head",
        )
        record_workload(log.app, workflows=1, runs_per_workflow=3, seed=32)
        new_head = log.app.head_position()
        wait_until(
            lambda: min(c.position for c in store.checkpoints("run_counts")) >= new_head,
            timeout=20,
            what="followers at the new head",
        )
        assert done.wait(20)
        [counts, failed] = result[0]
        assert counts.error is None and failed.error is None
        rows = {r["run_id"]: r["events"] for r in store.rows(RunCounts, "runs")}
        expected = fold_run_counts(log.envelopes())["runs"]
        assert str(poison) not in rows
        assert {k[0]: v["events"] for k, v in expected.items() if k[0] != str(poison)} == rows
        parked = store.parked("run_counts")
        assert {p.aggregate_id for p in parked} == {poison}
        entries = [e for e in context.audit.entries(limit=1000) if e.action == "park"]
        assert sorted(e.parameters["position"] for e in entries) == [p.position for p in parked]
        assert all("payload" not in e.parameters for e in entries)

        # A long-running operation is in the trail from its start, not only its end.
        follows = [e.outcome for e in context.audit.entries(limit=1000) if e.action == "follow"]
        assert follows == ["started", "succeeded"]

    def test_a_worker_is_audited_when_it_starts_and_when_it_ends(
        self, setting: dict[str, Any]
    ) -> None:
        context, admin = setting["context"], setting["admin"]
        operations = open_operations(context)
        job_id = UUID(
            operations.run(admin, "rebuild", reason="r", projection="run_status")["job_id"]
        )
        # Another worker holds a partition: this one runs the rest, then waits for it.
        assert context.jobs.claim("another-worker", lease_seconds=60, job_id=job_id)
        ended = threading.Event()

        def run() -> None:
            operations.run(admin, "worker", reason="help out", exit_when_idle=True)
            ended.set()

        threading.Thread(target=run, daemon=True).start()

        def worker_entries() -> list[str]:
            entries = context.audit.entries(limit=1000)
            return [e.outcome for e in entries if e.action == "worker"]

        assert wait_until(worker_entries, timeout=30, what="the worker's entry") == ["started"]
        assert not ended.is_set(), "the entry was written while the worker runs"
        context.jobs.transition(job_id, JobState.ABORTING)
        assert ended.wait(30), "the worker stops once nothing it could take is pending"
        assert worker_entries() == ["started", "succeeded"]


class TestSQLiteFollow(OnSQLite, FollowContract):
    pass


@pytest.mark.postgres
class TestPostgresFollow(OnPostgres, FollowContract):
    pass

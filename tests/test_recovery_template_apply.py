"""``apply``: a template runs through the dispatch layer, canary partitions first."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from projection_fixtures import EXPECTED, Backend, Log, OnPostgres, OnSQLite
from recovery_fixtures import RunCounts

from safereplay.domain.workload import record_workload
from safereplay.projections import (
    REFERENCE_PROJECTIONS,
    FailedSteps,
    Partition,
    Projection,
    WorkflowStatistics,
    partition_of,
)
from safereplay.recovery.errors import InvalidRequest
from safereplay.recovery.jobs.worker import WorkerOptions
from safereplay.recovery.operations.catalog import open_operations
from safereplay.recovery.operations.context import RecoveryContext
from safereplay.recovery.operations.security import bootstrap_admin
from safereplay.recovery.registry import ProjectionRegistry
from safereplay.recovery.security.access import AccessDenied, Principal
from safereplay.recovery.security.audit import AuditKey
from safereplay.recovery.settings import RecoverySettings
from safereplay.recovery.templates.apply import ThreadDriver, apply_template
from safereplay.recovery.templates.model import parse_template

REBUILD_WITH_CANARY = """
[template]
name = "rebuild-stats"
kind = "rebuild"
[scope]
projections = ["{projection}"]
partitions = 3
[policy]
on_error = "fail"
[rollout]
canary_partitions = [{canary}]
"""


class Applying:
    def __init__(self, log: Log, tmp: Path) -> None:
        AuditKey.generate().save(tmp / "audit.key")
        self.log = log
        self.context = RecoveryContext(
            domain=log.settings, recovery=RecoverySettings(audit_key_file=tmp / "audit.key")
        )
        self.context.registry = ProjectionRegistry.of([*REFERENCE_PROJECTIONS, RunCounts])
        self.admin = self.context.access.authenticate(bootstrap_admin(self.context, "ada"))

    def driver(self) -> ThreadDriver:
        return ThreadDriver(
            lambda: self.context.worker(
                options=WorkerOptions(lease_seconds=5, idle_interval=0.02, exit_when_idle=True)
            ),
            self.context.jobs.status,
        )

    def apply(self, text: str, principal: Principal | None = None) -> list:  # type: ignore[type-arg]
        with self.driver().running() as driver:
            return apply_template(
                open_operations(self.context),
                principal or self.admin,
                parse_template(text),
                reason="INC-7",
                driver=driver,
            )

    def first_build(self, projection: type[Projection]) -> None:
        """Build the live build 1 (a canary is for a rebuild beside a live build)."""
        self.log.runner(projection(), store=self.context.projection_store).catch_up()

    def close(self) -> None:
        self.context.close()


class ApplyContract:
    @pytest.fixture
    def applying(self, backend: Backend, tmp_path: Path) -> Iterator[Applying]:
        with backend.fresh() as log:
            record_workload(log.app, workflows=3, runs_per_workflow=10, seed=21)
            applying = Applying(log, tmp_path)
            try:
                yield applying
            finally:
                applying.close()

    def test_the_canary_runs_first_then_the_rest(self, applying: Applying) -> None:
        applying.first_build(WorkflowStatistics)
        steps = applying.apply(REBUILD_WITH_CANARY.format(projection="workflow_stats", canary=1))
        assert [(s.operation, s.outcome) for s in steps] == [("rebuild", "completed")]
        store = applying.context.projection_store
        rows = {
            (r["workflow_id"],): r for r in store.rows(WorkflowStatistics, "workflows", build=2)
        }
        assert rows == EXPECTED["workflow_stats"](applying.log.envelopes())["workflows"]
        audit = applying.context.audit.entries(limit=1000)
        actions = [(e.action, e.reason) for e in audit]
        assert ("rebuild", "INC-7 (template rebuild-stats)") in actions
        continued = [
            e for e in audit if e.action == "rollout.continue" and e.outcome == "succeeded"
        ]
        assert len(continued) == 1 and "canary partitions [1] verified" in continued[0].reason

    def test_a_failing_canary_stops_the_rollout(self, applying: Applying) -> None:
        envelopes = applying.log.envelopes()
        runs = {e.aggregate_id for e in envelopes if e.topic in RunCounts.topics}
        canary = 0
        RunCounts.reset()
        applying.first_build(RunCounts)
        RunCounts.reset(poison={next(r for r in runs if partition_of(r, 3) == canary)})
        steps = applying.apply(REBUILD_WITH_CANARY.format(projection="run_counts", canary=canary))
        assert [(s.outcome, "did not complete" in s.detail) for s in steps] == [("stopped", True)]
        job = applying.context.jobs.status(applying.context.jobs.list_jobs()[0].job_id)
        assert job.job.state == "aborted"
        held = [p for p in job.partitions if p.partition_index != canary]
        assert all(p.position == p.start_position and p.events_applied == 0 for p in held), (
            "the held partitions never ran"
        )
        assert applying.context.projection_store.live_build("run_counts") == 1

    def test_a_replay_template_with_a_subset_of_partitions(self, applying: Applying) -> None:
        source = applying.context.source
        head = source.high_water_mark()
        counts = [
            source.count(
                after=0, upto=head, topics=list(FailedSteps.topics), partition=Partition(i, 4)
            )
            for i in range(4)
        ]
        chosen = counts.index(max(counts))
        steps = applying.apply(
            f"""
            [template]
            name = "replay-some"
            kind = "replay-range"
            [scope]
            projections = ["failed_steps"]
            partitions = 4
            only_partitions = [{chosen}]
            positions = {{ from = 1, to = {head} }}
            """
        )
        assert [s.outcome for s in steps] == ["completed"]
        parts = applying.context.jobs.partitions(steps[0].job_id)  # type: ignore[arg-type]
        assert counts[chosen] > 0
        assert [p.events_applied for p in parts] == [
            counts[chosen] if i == chosen else 0 for i in range(4)
        ]

    def test_partial_builds_and_strangers_are_refused(self, applying: Applying) -> None:
        with pytest.raises(InvalidRequest, match="only replay-range templates take a subset"):
            applying.apply(
                REBUILD_WITH_CANARY.format(projection="workflow_stats", canary=0).replace(
                    "partitions = 3", "partitions = 3\nonly_partitions = [0, 1]"
                )
            )
        access = applying.context.access
        access.add_principal("mallory", kind="person", created_by="ada")
        mallory = access.authenticate(access.issue_token("mallory"))
        with pytest.raises(AccessDenied):
            applying.apply(
                REBUILD_WITH_CANARY.format(projection="workflow_stats", canary=0), mallory
            )
        assert applying.context.jobs.list_jobs() == []


class TestSQLiteApply(OnSQLite, ApplyContract):
    pass


@pytest.mark.postgres
class TestPostgresApply(OnPostgres, ApplyContract):
    pass

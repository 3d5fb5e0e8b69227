"""Template plans change nothing and say what would happen; templates are governed by admins.

The same contract runs on SQLite and PostgreSQL (the live-store helpers of the
drill tests: a recorded workload with live projections and a recovery context).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from test_recovery_drill import OLGA, VIC, LiveStore, PostgresLiveStore, SQLiteLiveStore, World

from safereplay.domain.workload import record_workload
from safereplay.projections import (
    FailedSteps,
    Projection,
    RunStatusBoard,
    WorkflowStatistics,
    partition_of,
)
from safereplay.projections.projection import physical_table_name
from safereplay.recovery.errors import InvalidRequest, JobConflict
from safereplay.recovery.jobs.model import JobKind
from safereplay.recovery.jobs.store import NewJob, SQLJobStore
from safereplay.recovery.operations.catalog import open_operations
from safereplay.recovery.operations.templates import change_template
from safereplay.recovery.security.access import AccessDenied, Principal, Role
from safereplay.recovery.templates.model import RUNBOOKS, InvalidTemplate, parse_template
from safereplay.recovery.templates.plan import DEFAULT_EVENTS_PER_SECOND
from safereplay.recovery.templates.store import TemplateStore

ADA = Principal("ada", "person")  # admin

ORG_TEMPLATE = """\
[template]
name = "org-rebuild"
kind = "rebuild"
description = "Our rebuild of the run board."

[scope]
projections = ["run_status"]
partitions = 4

[rollout]
canary_partitions = [1]
require_verified_canary = false
"""


def topic_counts(world: World, projection: type[Projection], count: int) -> Counter[int]:
    """Events of the projection's topics per partition, counted here in Python."""
    notifications = world.source.read(
        after=0, upto=world.source.head(), limit=10**6, topics=projection.topics
    )
    return Counter(partition_of(UUID(str(n.originator_id)), count) for n in notifications)


class PlanContract(LiveStore):
    @pytest.fixture(autouse=True)
    def admin(self, world: World) -> None:
        world.context.access.add_principal("ada", kind="person", created_by="setup")
        world.context.access.grant("ada", Role.ADMIN, "*", granted_by="setup")

    def plan(self, world: World, template: str, principal: Principal = VIC) -> Any:
        return open_operations(world.context).run(principal, "plan", template=template)

    # -- plans -----------------------------------------------------------------------------

    def test_planning_every_shipped_runbook_writes_nothing(self, world: World) -> None:
        before = self.dump(world)
        plans = {
            path.stem: self.plan(world, path.stem, ADA) for path in sorted(RUNBOOKS.glob("*.toml"))
        }
        assert self.dump(world) == before
        assert {p.changes for p in plans.values()} == {"nothing: a plan is a dry run"}
        entries = world.context.audit.entries(action="plan")
        assert [e.outcome for e in entries] == ["succeeded"] * len(plans), "each attempt audited"

        rebuild = plans["bad-projection-code"]
        (stats,) = rebuild.projections
        assert (stats.live_build, stats.writes_build) == (1, 2)
        assert stats.tables == tuple(
            physical_table_name("workflow_stats", t.name, 2) for t in WorkflowStatistics.tables
        )
        expected = topic_counts(world, WorkflowStatistics, 4)
        assert {p.partition: p.events for p in stats.partitions} == {
            i: expected[i] for i in range(4)
        }
        assert rebuild.events == sum(expected.values()) > 0
        assert [(s.stage, s.partitions, s.when) for s in rebuild.stages] == [
            ("canary", (0,), "first"),
            ("rest", (1, 2, 3), "only if the canary verified"),
        ]
        assert rebuild.failure_policy["on_error"] == "retry-then-fail"
        assert rebuild.failure_policy["breaker"]["failure_threshold"] == 5
        assert rebuild.throttle["max_concurrent_partitions"] == 2
        assert rebuild.estimate.basis.startswith("default 2000 events/s")
        assert rebuild.estimate.seconds == pytest.approx(rebuild.events / DEFAULT_EVENTS_PER_SECOND)

        caught_up = plans["behind-after-outage"]
        assert caught_up.events == 0, "the live build is at the head"
        assert caught_up.tables == ("run_status__runs__b1",)
        assert plans["poison-event"].events == 0, "nothing is parked"
        replay = plans["replay-range"]
        assert {(p.after, p.upto) for p in replay.projections[0].partitions} == {
            (0, min(1000, replay.head))
        }
        assert replay.events == sum(topic_counts(world, FailedSteps, 1).values())
        reencrypt = plans["rotate-key"]
        assert reencrypt.projections == ()
        assert reencrypt.events == reencrypt.head == world.source.head()
        assert reencrypt.estimate.events_per_second == 2000
        assert "stored_events" in reencrypt.tables[0] or "_events" in reencrypt.tables[0]

    def test_a_catch_up_counts_only_what_the_live_build_has_not_applied(
        self, world: World, tmp_path: Path
    ) -> None:
        position = world.store.checkpoints("run_status")[0].position
        record_workload(world.app, workflows=1, runs_per_workflow=4, seed=3)
        path = tmp_path / "behind.toml"
        path.write_text(
            (RUNBOOKS / "behind-after-outage.toml").read_text().replace("partitions = 4", "")
        )
        plan = self.plan(world, str(path))
        (runs,) = plan.projections
        [(after, upto)] = {(p.after, p.upto) for p in runs.partitions}
        assert (after, upto) == (position, world.source.head())
        fresh = world.source.read(
            after=position, upto=upto, limit=10**6, topics=RunStatusBoard.topics
        )
        assert plan.events == len(fresh) > 0
        assert plan.origin == f"file {path}"
        assert plan.estimate.events_per_second == DEFAULT_EVENTS_PER_SECOND, "below the cap"

    def test_the_estimate_uses_measured_rates_and_the_throttle(
        self, world: World, tmp_path: Path
    ) -> None:
        jobs = SQLJobStore(world.context.database)
        jobs.create_tables()
        job = jobs.create_job(
            NewJob(
                kind=JobKind.REBUILD,
                projection="run_status",
                build=2,
                partition_count=1,
                principal="olga",
                reason="measured",
                target_position=100,
            )
        )
        claim = jobs.claim("w1", lease_seconds=30, job_id=job.job_id)
        assert claim is not None
        time.sleep(0.05)
        jobs.report(claim, position=100, events_applied=400)
        jobs.finish_partition(claim, succeeded=True)
        assert jobs.finalize(job.job_id).state == "completed"
        (part,) = jobs.partitions(job.job_id)
        assert part.started_at is not None
        rate = 400 / (part.updated_at - part.started_at)

        plan = self.plan(world, "bad-projection-code")
        assert plan.estimate.basis.startswith("measured: 400 events in")
        assert "of run_status" not in plan.estimate.basis, "no workflow_stats job: any job's rate"
        assert plan.estimate.events_per_second == pytest.approx(rate)

        path = tmp_path / "slow.toml"
        path.write_text(ORG_TEMPLATE + "\n[throttle]\nevents_per_second = 5\n")
        slow = self.plan(world, str(path))
        assert slow.estimate.events_per_second == 5
        assert "of run_status" in slow.estimate.basis
        assert "capped by throttle.events_per_second = 5" in slow.estimate.basis
        assert slow.estimate.seconds == pytest.approx(slow.events / 5)

    def test_a_plan_is_refused_clearly_and_the_attempt_audited(
        self, world: World, tmp_path: Path
    ) -> None:
        with pytest.raises(InvalidRequest, match="no template 'nope': not a file"):
            self.plan(world, "nope")
        bad = tmp_path / "bad.toml"
        bad.write_text(ORG_TEMPLATE.replace("partitions = 4", "partitions = 0"))
        with pytest.raises(InvalidTemplate, match="scope.partitions"):
            self.plan(world, str(bad))
        unknown = tmp_path / "unknown.toml"
        unknown.write_text(ORG_TEMPLATE.replace('["run_status"]', '["ghost"]'))
        with pytest.raises(InvalidRequest, match="unknown projection 'ghost'"):
            self.plan(world, str(unknown))
        outsider = Principal("eve", "person")
        world.context.access.add_principal("eve", kind="person", created_by="setup")
        with pytest.raises(AccessDenied):
            self.plan(world, "bad-projection-code", outsider)
        assert [(e.actor, e.outcome) for e in world.context.audit.entries(action="plan")] == [
            ("vic", "failed"),
            ("vic", "failed"),
            ("vic", "failed"),
            ("eve", "denied"),
        ]

    # -- governance ------------------------------------------------------------------------

    def test_only_admins_change_templates_and_every_change_is_audited_with_a_diff(
        self, world: World
    ) -> None:
        context = world.context
        added = change_template(
            open_operations(context), ADA, text=ORG_TEMPLATE, reason="our runbook", update=False
        )
        assert (added.template.name, added.template.version, added.template.author) == (
            "org-rebuild",
            1,
            "ada",
        )
        assert added.diff.startswith("--- /dev/null\n+++ org-rebuild v1\n")

        changed = ORG_TEMPLATE.replace("partitions = 4", "partitions = 2")
        for principal in (OLGA, VIC):  # operate or view is not enough
            with pytest.raises(AccessDenied, match="templates.update"):
                change_template(
                    open_operations(context), principal, text=changed, reason="tweak", update=True
                )
        updated = change_template(
            open_operations(context), ADA, text=changed, reason="fewer", update=True
        )
        assert updated.template.version == 2
        assert "-partitions = 4\n+partitions = 2\n" in updated.diff

        entries = [
            e
            for e in context.audit.entries()
            if e.action.startswith("templates.") and e.outcome != "started"
        ]
        assert [(e.actor, e.action, e.outcome) for e in context.audit.entries()][-2:] == [
            ("ada", "templates.update", "started"),
            ("ada", "templates.update", "succeeded"),
        ]
        assert [(e.actor, e.action, e.outcome) for e in entries] == [
            ("ada", "templates.add", "succeeded"),
            ("olga", "templates.update", "denied"),
            ("vic", "templates.update", "denied"),
            ("ada", "templates.update", "succeeded"),
        ]
        assert entries[0].parameters["diff"] == added.diff
        assert entries[3].parameters["diff"] == updated.diff
        # Olga and Vic hold no admin grant anywhere: refused before the stored template is
        # read for a diff; their entries hold the text they tried.
        assert [e.parameters.get("diff") for e in entries[1:3]] == [None, None]
        assert entries[1].parameters["toml"] == entries[2].parameters["toml"] == changed
        assert entries[3].reason == "fewer"
        assert context.audit.verify().ok

        store = TemplateStore(context.database)
        assert store.get("org-rebuild", 1).text == ORG_TEMPLATE
        assert [(t.name, t.version) for t in store.templates()] == [("org-rebuild", 2)]
        shown = open_operations(context).run(VIC, "templates.show", name="org-rebuild")
        assert shown.text == changed
        plan = self.plan(world, "org-rebuild")
        assert (plan.origin, plan.partition_count) == ("stored template org-rebuild v2", 2)
        assert [(s.stage, s.when) for s in plan.stages] == [
            ("canary", "first"),
            ("rest", "after the canary"),
        ]

        with pytest.raises(InvalidRequest, match=r"exists \(version 2\): use `templates update`"):
            change_template(
                open_operations(context), ADA, text=changed, reason="again", update=False
            )
        other = ORG_TEMPLATE.replace("org-rebuild", "org-other")
        with pytest.raises(InvalidRequest, match="no template 'org-other': use `templates add`"):
            change_template(open_operations(context), ADA, text=other, reason="typo", update=True)
        shipped = (RUNBOOKS / "poison-event.toml").read_text()
        with pytest.raises(InvalidRequest, match="name of a shipped runbook"):
            change_template(
                open_operations(context), ADA, text=shipped, reason="override", update=False
            )
        # A caller cannot put a diff of its own in the audit trail: the dispatch
        # layer computes it from the stored version before anything else.
        forged = open_operations(context).run(
            ADA,
            "templates.update",
            reason="forged diff",
            template="org-rebuild",
            base_version=1,
            toml=ORG_TEMPLATE,
            diff="(nothing changed, trust me)",
        )
        assert "-partitions = 2\n+partitions = 4\n" in forged.diff
        entry = context.audit.entries()[-1]
        assert (entry.action, entry.outcome) == ("templates.update", "succeeded")
        assert entry.parameters["diff"] == forged.diff
        assert entry.parameters["base_version"] == 2
        assert [(t.name, t.version) for t in store.templates()] == [("org-rebuild", 3)]

    def test_a_template_changed_between_the_diff_and_the_write_is_refused(
        self, world: World
    ) -> None:
        context = world.context
        operations = open_operations(context)
        change_template(operations, ADA, text=ORG_TEMPLATE, reason="ours", update=False)
        changed = ORG_TEMPLATE.replace("partitions = 4", "partitions = 2")
        store = TemplateStore(context.database)
        spec = operations.specs["templates.update"]
        assert spec.prepare is not None

        def diff_then_someone_else_writes(parameters: Mapping[str, Any]) -> Mapping[str, Any]:
            prepared = spec.prepare(parameters)  # type: ignore[misc]
            template = parse_template(changed, source="a colleague's")
            store.save(changed, template, author="colleague", base_version=1)
            return prepared

        operations._specs["templates.update"] = replace(spec, prepare=diff_then_someone_else_writes)
        with pytest.raises(JobConflict, match="changed since the diff was made"):
            change_template(operations, ADA, text=changed, reason="mine", update=True)
        assert [(t.author, t.version) for t in store.templates()] == [("colleague", 2)]

    def test_an_invalid_template_is_rejected_with_every_problem_and_audited(
        self, world: World
    ) -> None:
        broken = ORG_TEMPLATE.replace('"rebuild"', '"nuke"').replace(
            "partitions = 4", "partitions = -1"
        )
        with pytest.raises(InvalidTemplate) as rejected:
            change_template(
                open_operations(world.context), ADA, text=broken, reason="oops", update=False
            )
        assert "template.kind" in str(rejected.value)
        assert "scope.partitions" in str(rejected.value)
        intent, entry = world.context.audit.entries(action="templates.add")
        assert (intent.outcome, entry.outcome) == ("started", "failed")
        assert "template.kind" in entry.parameters["error"]
        assert '+kind = "nuke"' in entry.parameters["diff"]
        assert TemplateStore(world.context.database).templates() == []

    def test_the_cli(self, world: World, tmp_path: Path) -> None:
        ada = world.context.access.issue_token("ada")
        vic = world.context.access.issue_token("vic")

        before = self.dump(world)
        code, out = self.cli(world, vic, "plan", "bad-projection-code")
        assert code == 0, out
        assert "stage canary: partitions [0], first" in out
        assert physical_table_name("workflow_stats", WorkflowStatistics.tables[0].name, 2) in out
        assert "changed: nothing" in out
        assert self.cli(world, vic, "plan", "rotate-key")[0] == 3, (
            "a reencrypt template is scoped to keys"
        )
        code, out = self.cli(world, ada, "plan", "rotate-key", "--json")
        assert code == 0, out
        assert json.loads(out)["kind"] == "reencrypt"
        assert self.dump(world) == before

        path = tmp_path / "org.toml"
        path.write_text(ORG_TEMPLATE)
        assert self.cli(world, vic, "templates", "add", str(path), "-r", "mine")[0] == 3
        code, out = self.cli(world, ada, "templates", "add", str(path), "-r", "our runbook")
        assert code == 0, out
        assert "version 1" in out and "+kind" in out
        path.write_text(ORG_TEMPLATE.replace("partitions = 4", "partitions = 0"))
        code, out = self.cli(world, ada, "templates", "update", str(path), "-r", "broken")
        assert code == 2
        assert "scope.partitions" in out
        code, out = self.cli(world, vic, "templates", "list", "--json")
        stored = [t for t in json.loads(out) if t["source"] == "stored"]
        assert [(t["name"], t["version"]) for t in stored] == [("org-rebuild", 1)]
        code, out = self.cli(world, vic, "templates", "show", "org-rebuild")
        assert code == 0 and "Our rebuild of the run board." in out
        code, out = self.cli(world, vic, "plan", "org-rebuild", "--json")
        assert json.loads(out)["origin"] == "stored template org-rebuild v1"
        assert self.cli(world, vic, "plan", str(tmp_path / "missing.toml"))[0] == 2


class TestSQLitePlan(SQLiteLiveStore, PlanContract):
    pass


class TestPostgresPlan(PostgresLiveStore, PlanContract):
    pass

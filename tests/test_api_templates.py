"""Issue #19 point 4, the recovery console's API, on SQLite and PostgreSQL:

- a viewer lists the shipped runbooks and the stored templates, reads a
  template's parameters (type, default, bounds: the rules ``--set`` is checked
  with) and plans it with settings;
- a value out of bounds, of the wrong type, or a parameter the template does not
  declare: 422 naming the parameter and the bound, nothing planned or run;
- an admin applies a runbook with a canary: the call returns with the job made,
  its canary runnable and the rest held; a worker runs the canary; ``/rollout``
  says it verified; ``continue`` releases the rest and the job completes;
- a rehearsal is a drill of the template's projection, compared with live;
- no token: 401; the viewer may not apply or rehearse (403, audited as denied).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from uuid import UUID

import pytest
from api_fixtures import ApiContract, ApiWorld, postgres_settings, sqlite_settings

from safereplay.projections import WorkflowStatistics
from safereplay.recovery.jobs.model import JobState
from safereplay.recovery.jobs.worker import WorkerOptions
from safereplay.recovery.operations.catalog import open_operations
from safereplay.recovery.operations.context import RecoveryContext
from safereplay.recovery.operations.templates import change_template

pytestmark = pytest.mark.usefixtures("clean_safereplay_environment")

RUNBOOK = "bad-projection-code"  # a rebuild of workflow_stats, canary partition 0
STORED = """
[template]
name = "our-rebuild"
kind = "rebuild"
description = "Our own rebuild of run_status."
[scope]
projections = ["run_status"]
partitions = 2
[parameters]
partitions = { type = "integer", min = 1, max = 8 }
"""


@contextmanager
def worker_running(world: ApiWorld) -> Iterator[None]:
    """A worker in a thread of its own (with its own context), until the block ends."""
    stop = threading.Event()
    failures: list[BaseException] = []

    def run() -> None:
        context = RecoveryContext(domain=world.settings, recovery=world.context.recovery)
        try:
            options = WorkerOptions(lease_seconds=10, idle_interval=0.05)
            context.worker(options=options).run(stop)
        except BaseException as exc:  # said by the test, not lost in the thread
            failures.append(exc)
        finally:
            context.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(60)
    assert not failures, failures


def polled(read: Callable[[], Any], done: Callable[[Any], bool], *, timeout: float = 180) -> Any:
    """``read()`` once ``done`` holds for it (generous: the machine is shared)."""
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if done(value):
            return value
        assert time.monotonic() < deadline, f"never got there; last: {value}"
        time.sleep(0.1)


def on_runbook(world: ApiWorld, who: str, action: str, body: dict[str, Any]) -> Any:
    """POST ``body`` to the runbook's ``action`` (plan, apply, drill) as ``who``: the
    answer, which must be a success."""
    response = world.post(who, f"/api/templates/{RUNBOOK}/{action}", body)
    assert response.status_code == 200, response.text
    return response.json()


def jobs_of(world: ApiWorld) -> list[Any]:
    world.context.ensure_schema()
    return world.context.jobs.list_jobs()


def built(world: ApiWorld, projection: str) -> None:
    """The projection's live build 1, built by a worker (a rehearsal compares with it)."""
    admin = world.context.access.authenticate(world.envs["admin"]["SAFEREPLAY_TOKEN"])
    result = open_operations(world.context).run(
        admin, "rebuild", reason="first build", projection=projection, partitions=1
    )
    job_id = UUID(str(result["job_id"]))
    with worker_running(world):
        polled(lambda: world.context.jobs.get_job(job_id).state, lambda s: s in _ENDED)
    assert world.context.jobs.get_job(job_id).state == JobState.COMPLETED


_ENDED = (JobState.COMPLETED, JobState.FAILED, JobState.ABORTED)


class TemplatesApiContract(ApiContract):
    def test_a_viewer_lists_templates_and_reads_their_parameters(self, world: ApiWorld) -> None:
        admin = world.context.access.authenticate(world.envs["admin"]["SAFEREPLAY_TOKEN"])
        change_template(
            open_operations(world.context), admin, text=STORED, reason="ours", update=False
        )

        listed = world.get("viewer", "/api/templates")
        assert listed.status_code == 200, listed.text
        by_name = {t["name"]: t for t in listed.json()}
        assert by_name[RUNBOOK]["source"] == "shipped"
        assert by_name[RUNBOOK]["description"].startswith("Blue/green rebuild")
        assert by_name["our-rebuild"]["source"] == "stored"
        assert by_name["our-rebuild"]["version"] == 1

        form = world.get("viewer", f"/api/templates/{RUNBOOK}/parameters")
        assert form.status_code == 200, form.text
        assert form.json()["canary_partitions"] == [0]
        parameters = {p["name"]: p for p in form.json()["parameters"]}
        assert parameters["partitions"]["default"] == 4
        assert parameters["partitions"]["bounds"] == "between 2 and 64"
        assert parameters["partitions"]["schema"] == {
            "type": "integer",
            "minimum": 2,
            "maximum": 64,
            "default": 4,
            "description": "At least 2: one is the canary.",
        }
        assert parameters["projection"]["default"] == "workflow_stats"
        assert "workflow_stats" in parameters["projection"]["schema"]["enum"]
        assert parameters["max_rate"]["default"] is None
        stored = world.get("viewer", "/api/templates/our-rebuild/parameters")
        assert [p["name"] for p in stored.json()["parameters"]] == ["partitions"]

    def test_a_viewer_plans_a_template_with_settings(self, world: ApiWorld) -> None:
        plan = on_runbook(world, "viewer", "plan", {"settings": {"partitions": 3}})
        assert plan["settings"] == {"partitions": "3"}
        assert plan["partition_count"] == 3
        assert [p["projection"] for p in plan["projections"]] == ["workflow_stats"]
        assert plan["events"] > 0
        assert plan["tables"]
        assert plan["estimate"]["seconds"] >= 0
        assert [(s["stage"], s["partitions"]) for s in plan["stages"]] == [
            ("canary", [0]),
            ("rest", [1, 2]),
        ]
        assert jobs_of(world) == [], "a plan runs nothing"

    def test_a_value_out_of_bounds_or_undeclared_is_422_and_nothing_runs(
        self, world: ApiWorld
    ) -> None:
        for settings, named in (
            ({"partitions": 65}, ["'partitions'", "between 2 and 64"]),
            ({"partitions": 1}, ["'partitions'", "between 2 and 64"]),
            ({"partitions": "two"}, ["'partitions'", "whole number"]),
            ({"colour": "blue"}, ["'colour'", "projection, partitions, max_rate"]),
            ({"projection": "nope"}, ["'projection'", "registered projection"]),
        ):
            for path, body in (
                ("plan", {"settings": settings}),
                ("apply", {"reason": "INC-1", "settings": settings}),
            ):
                response = world.post("admin", f"/api/templates/{RUNBOOK}/{path}", body)
                assert response.status_code == 422, (path, settings, response.text)
                message = response.json()["error"]["message"]
                assert all(part in message for part in named), message
        flag = world.post(
            "admin", f"/api/templates/{RUNBOOK}/plan", {"settings": {"partitions": True}}
        )
        assert flag.status_code == 422, flag.text
        unknown = world.post("admin", "/api/templates/no-such-template/plan", {"settings": {}})
        assert unknown.status_code == 422
        assert "no template 'no-such-template'" in unknown.json()["error"]["message"]
        assert jobs_of(world) == [], "nothing was planned or run"
        assert not [a for a in world.audit_actions() if a[1] == "rebuild"]

    def test_apply_returns_at_once_and_continue_releases_the_rest(self, world: ApiWorld) -> None:
        applied = on_runbook(
            world, "admin", "apply", {"reason": "INC-42 bad deploy", "settings": {"partitions": 3}}
        )
        [step] = applied["steps"]
        assert (step["operation"], step["projection"]) == ("rebuild", "workflow_stats")
        assert (step["canary_partitions"], step["held_partitions"]) == ([0], [1, 2])
        job_id = step["job_id"]
        # No worker runs yet: the call did not wait for one.
        status = world.context.jobs.status(UUID(job_id))
        assert status.job.state == JobState.PLANNED
        assert [str(p.status) for p in status.partitions] == ["pending", "held", "held"]
        rollout = world.get("viewer", f"/api/jobs/{job_id}/rollout").json()
        assert (rollout["staged"], rollout["verified"], rollout["held_partitions"]) == (
            True,
            False,
            [1, 2],
        )

        early = world.post("admin", f"/api/jobs/{job_id}/continue", {"reason": "in a hurry"})
        assert early.status_code == 409, early.text
        assert "still running" in early.json()["error"]["message"]

        with worker_running(world):
            verified = polled(
                lambda: world.get("admin", f"/api/jobs/{job_id}/rollout").json(),
                lambda r: r["canary_ended"],
            )
            assert verified["verified"], verified
            assert verified["detail"] == "canary partitions [0] verified"
            assert verified["held_partitions"] == [1, 2], "the rest waits for the operator"
            released = world.post(
                "admin", f"/api/jobs/{job_id}/continue", {"reason": "canary verified"}
            )
            assert released.status_code == 200, released.text
            assert released.json()["released_partitions"] == 2
            polled(lambda: world.context.jobs.get_job(UUID(job_id)).state, lambda s: s in _ENDED)

        job = world.context.jobs.get_job(UUID(job_id))
        assert job.state == JobState.COMPLETED, job.error
        rows = world.context.projection_store.rows(WorkflowStatistics, "workflows", build=job.build)
        assert len(rows) == 2, "both recorded workflows are in the build"
        done = world.get("admin", f"/api/jobs/{job_id}/rollout").json()
        assert (done["released"], done["verified"], done["state"]) == (True, True, "completed")
        reasons = {
            (e.action, e.outcome): e.reason
            for e in world.context.audit.entries(limit=1000)
            if e.actor == "ada"
        }
        assert reasons[("rebuild", "succeeded")] == f"INC-42 bad deploy (template {RUNBOOK})"
        assert reasons[("rollout.continue", "succeeded")] == "canary verified"

    def test_a_rehearsal_is_a_drill_compared_with_live(self, world: ApiWorld) -> None:
        built(world, "workflow_stats")
        rehearsed = on_runbook(
            world, "admin", "drill", {"reason": "rehearse INC-42", "settings": {"partitions": 2}}
        )
        [drill] = rehearsed["drills"]
        assert (drill["projection"], drill["partition_count"], drill["match"]) == (
            "workflow_stats",
            2,
            True,
        )
        assert drill["reason"] == f"rehearse INC-42 (rehearsal of template {RUNBOOK})"
        assert [j.projection for j in jobs_of(world)] == ["workflow_stats"], "no new job"

    def test_no_token_is_401_and_a_viewer_may_not_apply_or_rehearse(self, world: ApiWorld) -> None:
        assert world.client.get("/api/templates").status_code == 401
        anonymous = world.client.post(f"/api/templates/{RUNBOOK}/plan", json={"settings": {}})
        assert anonymous.status_code == 401
        body = {"reason": "try", "settings": {"partitions": 3}}
        for path in ("apply", "drill"):
            response = world.post("viewer", f"/api/templates/{RUNBOOK}/{path}", body)
            assert response.status_code == 403, response.text
            assert response.json()["error"]["code"] == "denied"
        assert ("vic", "apply", "denied") in world.audit_actions()
        assert ("vic", "drill", "denied") in world.audit_actions()
        assert jobs_of(world) == []

    def test_the_rollout_of_a_job_without_a_canary_and_of_no_job(self, world: ApiWorld) -> None:
        admin = world.context.access.authenticate(world.envs["admin"]["SAFEREPLAY_TOKEN"])
        plain = open_operations(world.context).run(
            admin, "rebuild", reason="plain", projection="run_status", partitions=2
        )
        rollout = world.get("viewer", f"/api/jobs/{plain['job_id']}/rollout")
        assert rollout.status_code == 200, rollout.text
        assert (rollout.json()["staged"], rollout.json()["detail"]) == (
            False,
            "not a staged rollout",
        )
        assert world.get("viewer", "/api/jobs/0123456789abcdef/rollout").status_code == 404
        stranger = world.get("stranger", f"/api/jobs/{plain['job_id']}/rollout")
        assert stranger.status_code == 403
        assert world.get("stranger", "/api/templates").status_code == 403
        assert ("mallory", "rollout.status", "denied") in world.audit_actions()


class TestSQLiteTemplatesApi(TemplatesApiContract):
    settings = staticmethod(sqlite_settings)


@pytest.mark.postgres
class TestPostgresTemplatesApi(TemplatesApiContract):
    settings = staticmethod(postgres_settings)

"""Issue #19 point 3, the API's builds endpoints, on SQLite and PostgreSQL:

- rebuild, catch-up and replay plan a job (the workers run it), with the CLI's
  options; swap, rollback and drop-version change the live build and the builds;
- rows and drills are read by a viewer; a drill is run by an operator and recorded;
- without a token: 401; without the grant: 403, audited as denied, nothing planned;
- a malformed body: 422 naming the field, nothing planned;
- an unknown projection: 404; a projection a job holds: 409.
"""

from __future__ import annotations

from typing import Any

import pytest
from api_build_fixtures import ROOT, built, job_of, run_workers
from api_fixtures import ApiContract, ApiWorld, postgres_settings, sqlite_settings

from safereplay.domain import AutomationApp
from safereplay.domain.workload import record_workload
from safereplay.recovery.jobs.model import JobKind, JobState

pytestmark = pytest.mark.usefixtures("clean_safereplay_environment")

#: (method, path, body, operation) of every builds endpoint, with a valid body.
ENDPOINTS: tuple[tuple[str, str, dict[str, Any] | None, str], ...] = (
    ("post", f"{ROOT}/rebuild", {"reason": "r"}, "rebuild"),
    ("post", f"{ROOT}/catch-up", {"reason": "r"}, "catch-up"),
    ("post", f"{ROOT}/replay", {"reason": "r", "start": 1, "end": 2}, "replay"),
    ("post", f"{ROOT}/swap", {"reason": "r"}, "swap"),
    ("post", f"{ROOT}/rollback", {"reason": "r"}, "rollback"),
    ("post", f"{ROOT}/drop-version", {"reason": "r", "build": 1}, "drop-version"),
    ("post", f"{ROOT}/drill", {"reason": "r"}, "drill"),
    ("get", f"{ROOT}/rows?table=runs", None, "rows"),
    ("get", f"{ROOT}/drills", None, "drills.list"),
)


#: Operations on a projection's stored builds, which need not be registered (a build
#: of a projection removed from SAFEREPLAY_PROJECTIONS can still be rolled back or dropped).
STORE_ONLY = ("rollback", "drop-version")


def call(world: ApiWorld, who: str | None, method: str, path: str, body: Any) -> Any:
    headers = {} if who is None else world.headers(who)
    return world.client.request(method, path, headers=headers, json=body)


class BuildsApiContract(ApiContract):
    def test_rebuild_swap_rollback_and_drop_change_the_live_build(self, world: ApiWorld) -> None:
        first = world.post("admin", f"{ROOT}/rebuild", {"reason": "first", "partitions": 1})
        assert first.status_code == 200, first.text
        assert first.json()["live"] is True, "a never-built projection's first build is live"
        job = job_of(world, first)
        assert (job.kind, job.state, job.partition_count) == (JobKind.REBUILD, JobState.PLANNED, 1)
        run_workers(world)

        options = {"reason": "v2", "partitions": 2, "max_concurrent": 1, "max_rate": 500}
        second = world.post("admin", f"{ROOT}/rebuild", options)
        assert second.status_code == 200, second.text
        job = job_of(world, second)
        assert (job.build, job.partition_count, job.state) == (2, 2, JobState.PLANNED)
        assert (job.max_concurrent_partitions, job.events_per_second) == (1, 500.0)
        early = world.post("admin", f"{ROOT}/swap", {"reason": "too early"})
        assert early.status_code == 422 and "planned" in early.json()["error"]["message"]
        run_workers(world)

        store = world.context.projection_store
        swapped = world.post("admin", f"{ROOT}/swap", {"reason": "v2 verified", "build": 2})
        assert swapped.status_code == 200, swapped.text
        assert (swapped.json()["previous"], swapped.json()["live"]) == (1, 2)
        assert store.live_build("run_status") == 2
        back = world.post("admin", f"{ROOT}/rollback", {"reason": "v2 misbehaves"})
        assert back.status_code == 200, back.text
        assert store.live_build("run_status") == 1
        live = world.post("admin", f"{ROOT}/drop-version", {"reason": "tidy", "build": 1})
        assert live.status_code == 422 and "is live" in live.json()["error"]["message"]
        dropped = world.post("admin", f"{ROOT}/drop-version", {"reason": "tidy", "build": 2})
        assert dropped.json() == {"projection": "run_status", "dropped": 2}, dropped.text
        assert [b.build for b in store.builds("run_status")] == [1]

        audited = [
            (e.action, e.outcome, e.reason)
            for e in world.context.audit.entries()
            if e.action in ("swap", "rollback") and e.outcome == "succeeded"
        ]
        assert audited == [
            ("swap", "succeeded", "v2 verified"),
            ("rollback", "succeeded", "v2 misbehaves"),
        ]

    def test_catch_up_plans_a_job_only_when_behind(self, world: ApiWorld) -> None:
        built(world)
        caught_up = world.post("admin", f"{ROOT}/catch-up", {"reason": "nightly"})
        assert caught_up.status_code == 200, caught_up.text
        assert caught_up.json()["job_id"] is None
        assert caught_up.json()["state"].startswith("not needed")
        with AutomationApp(world.settings) as application:
            record_workload(application, workflows=1, runs_per_workflow=2, seed=9)
        behind = world.post("admin", f"{ROOT}/catch-up", {"reason": "nightly", "partitions": 2})
        assert behind.status_code == 200, behind.text
        job = job_of(world, behind)
        assert (job.kind, job.partition_count, job.build) == (JobKind.CATCH_UP, 2, 1)

    def test_replay_plans_a_sandbox_job_and_refuses_live_for_this_projection(
        self, world: ApiWorld
    ) -> None:
        built(world)
        head = world.context.log.high_water_mark()
        sandbox = world.post(
            "admin", f"{ROOT}/replay", {"reason": "INC-7", "start": 1, "end": head}
        )
        assert sandbox.status_code == 200, sandbox.text
        job = job_of(world, sandbox)
        assert (job.kind, job.parameters["into"], job.target_position) == (
            JobKind.REPLAY,
            "sandbox",
            head,
        )
        assert job.build != world.context.projection_store.live_build("run_status")
        live = {"reason": "INC-7", "start": 1, "end": head, "into": "live", "confirmed": True}
        refused = world.post("admin", f"{ROOT}/replay", live)
        assert refused.status_code == 422
        assert "not replay-safe" in refused.json()["error"]["message"]

    def test_a_viewer_reads_rows_and_drills_an_operator_drills(self, world: ApiWorld) -> None:
        built(world)
        rows = world.get("viewer", f"{ROOT}/rows", params={"table": "runs", "limit": 2})
        assert rows.status_code == 200, rows.text
        assert (len(rows.json()["rows"]), rows.json()["truncated"]) == (2, True)
        run_id = rows.json()["rows"][0]["run_id"]
        one = world.get(
            "viewer", f"{ROOT}/rows", params={"table": "runs", "where": f"run_id={run_id}"}
        )
        assert [r["run_id"] for r in one.json()["rows"]] == [run_id]

        drill = world.post("admin", f"{ROOT}/drill", {"reason": "monthly drill", "partitions": 2})
        assert drill.status_code == 200, drill.text
        assert (drill.json()["match"], drill.json()["partition_count"]) == (True, 2)
        drills = world.get("viewer", f"{ROOT}/drills")
        assert [d["drill_id"] for d in drills.json()] == [drill.json()["drill_id"]]
        assert world.get("viewer", f"{ROOT}/drills", params={"build": 2}).json() == []

    def test_without_a_token_every_endpoint_is_401(self, world: ApiWorld) -> None:
        for method, path, body, _ in ENDPOINTS:
            response = call(world, None, method, path, body)
            assert response.status_code == 401, (path, response.text)
            assert response.json()["error"]["code"] == "unauthenticated"
        assert world.context.jobs.list_jobs() == []

    def test_without_the_grant_it_is_403_audited_and_nothing_is_planned(
        self, world: ApiWorld
    ) -> None:
        for method, path, body, operation in ENDPOINTS:
            refused = call(world, "stranger", method, path, body)
            assert refused.status_code == 403, (path, refused.text)
            assert ("mallory", operation, "denied") in world.audit_actions()
            if method == "post":  # a viewer may read, not change
                refused = call(world, "viewer", method, path, body)
                assert refused.status_code == 403, (path, refused.text)
                assert refused.json()["error"]["code"] == "denied"
                assert ("vic", operation, "denied") in world.audit_actions()
        assert world.context.jobs.list_jobs() == []

    def test_malformed_calls_are_422_naming_the_field(self, world: ApiWorld) -> None:
        for path, body, field in (
            ("rebuild", {}, "reason"),
            ("rebuild", {"reason": "r", "partitions": 0}, "partitions"),
            ("rebuild", {"reason": "r", "partitions": 257}, "partitions"),
            ("rebuild", {"reason": "r", "workers": 2}, "workers"),
            ("catch-up", {"reason": "r", "max_rate": 0.5}, "max_rate"),
            ("catch-up", {"reason": "r", "max_concurrent": "all"}, "max_concurrent"),
            ("replay", {"reason": "r", "end": 5}, "start"),
            ("replay", {"reason": "r", "start": 1, "end": 5, "into": "prod"}, "into"),
            ("replay", {"reason": "r", "start": 1, "end": 5, "partition": "1-4"}, "partition"),
            ("replay", {"reason": "r", "start": 1, "end": 5, "aggregates": ["x"]}, "aggregates"),
            ("swap", {"reason": "r", "build": 0}, "build"),
            ("drop-version", {"reason": "r"}, "build"),
            ("drill", {"reason": "r", "partitions": -1}, "partitions"),
        ):
            response = world.post("admin", f"{ROOT}/{path}", body)
            assert response.status_code == 422, (path, body, response.text)
            assert response.json()["error"]["message"].startswith(field), response.text
        for query in ({}, {"table": "runs", "limit": 0}):
            response = world.get("viewer", f"{ROOT}/rows", params=query)
            assert response.status_code == 422, response.text
        bad_limit = world.get("viewer", f"{ROOT}/drills", params={"limit": 1001})
        assert bad_limit.json()["error"]["message"].startswith("limit"), bad_limit.text
        assert world.context.jobs.list_jobs() == []

    def test_an_unknown_projection_is_404_and_a_busy_one_409(self, world: ApiWorld) -> None:
        for method, path, body, operation in ENDPOINTS:
            response = call(world, "admin", method, path.replace("run_status", "nope"), body)
            if operation in STORE_ONLY:
                # These act on the builds in the store, registered or not: the store
                # has none of 'nope', and says so.
                assert response.status_code == 422, (path, response.text)
            elif operation == "drills.list":
                assert response.json() == [], response.text
                continue
            else:
                assert response.status_code == 404, (path, response.text)
            assert "'nope'" in response.json()["error"]["message"]
        planned = world.post("admin", f"{ROOT}/rebuild", {"reason": "v2"})
        busy = world.post("admin", f"{ROOT}/catch-up", {"reason": "nightly"})
        assert busy.status_code == 409, busy.text
        assert planned.json()["job_id"] in busy.json()["error"]["message"]
        again = world.post("admin", f"{ROOT}/rebuild", {"reason": "v2, again"})
        assert again.json()["job_id"] == planned.json()["job_id"] and again.json()["resumed"]


class TestSQLiteBuildsApi(BuildsApiContract):
    settings = staticmethod(sqlite_settings)


@pytest.mark.postgres
class TestPostgresBuildsApi(BuildsApiContract):
    settings = staticmethod(postgres_settings)

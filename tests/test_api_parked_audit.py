"""Issue #19 point 3, the API's parked-events and audit endpoints, on SQLite and
PostgreSQL:

- a viewer lists parked events: where and why, never a payload; an operator
  re-drives them (a redrive job is planned) or skips one (resolved, never applied);
- an admin lists the audit trail with the CLI's filters (bounded) and verifies it;
  verifying needs administer;
- without a token: 401; without the grant: 403, audited as denied, nothing changed;
- malformed input: 422 naming the field; a parked event that is not parked: 404.
"""

from __future__ import annotations

import dataclasses
from typing import Any
from uuid import uuid4

import pytest
from api_build_fixtures import ROOT, built, job_of, park_one
from api_fixtures import ApiContract, ApiWorld, postgres_settings, sqlite_settings

from safereplay.projections import ParkedEvent
from safereplay.recovery.jobs.model import JobKind, JobState

pytestmark = pytest.mark.usefixtures("clean_safereplay_environment")

#: (method, path, body, operation) of every parked and audit endpoint, with a valid body.
ENDPOINTS: tuple[tuple[str, str, dict[str, Any] | None, str], ...] = (
    ("get", f"{ROOT}/parked", None, "parked.list"),
    ("post", f"{ROOT}/parked/redrive", {"reason": "fixed"}, "parked.redrive"),
    ("post", "/api/parked/run_status:7/skip", {"reason": "poison"}, "parked.skip"),
    ("get", "/api/audit", None, "audit.list"),
    ("get", "/api/audit/verify", None, "audit.verify"),
)
#: What a viewer (of every projection, not of the audit trail) may not do.
NOT_FOR_A_VIEWER = ("parked.redrive", "parked.skip", "audit.list", "audit.verify")


def call(world: ApiWorld, who: str | None, method: str, path: str, body: Any) -> Any:
    headers = {} if who is None else world.headers(who)
    return world.client.request(method, path, headers=headers, json=body)


class ParkedAuditApiContract(ApiContract):
    def test_a_viewer_lists_parked_events_without_their_payloads(self, world: ApiWorld) -> None:
        built(world)
        position = park_one(world)
        listed = world.get("viewer", f"{ROOT}/parked")
        assert listed.status_code == 200, listed.text
        [parked] = listed.json()
        assert (parked["position"], parked["error_message"], parked["reason"]) == (
            position,
            "cannot decode",
            "retries exhausted",
        )
        # Where and why only: the fields of a parked record, which holds no payload.
        fields = {f.name for f in dataclasses.fields(ParkedEvent)}
        assert set(parked) <= fields and not {"payload", "state", "data"} & set(parked)

    def test_an_operator_redrives_and_skips_parked_events(self, world: ApiWorld) -> None:
        built(world)
        nothing = world.post("admin", f"{ROOT}/parked/redrive", {"reason": "fixed"})
        assert nothing.status_code == 200, nothing.text
        assert nothing.json()["job_id"] is None and "no parked events" in nothing.json()["state"]
        position = park_one(world)

        redrive = world.post("admin", f"{ROOT}/parked/redrive", {"reason": "handler fixed"})
        assert redrive.status_code == 200, redrive.text
        job = job_of(world, redrive)
        assert (job.kind, job.state, job.build) == (JobKind.REDRIVE, JobState.PLANNED, 1)
        world.post("admin", f"/api/jobs/{job.job_id}/abort", {"reason": "skip it instead"})

        skip = f"/api/parked/run_status:{position}/skip"
        skipped = world.post("admin", skip, {"reason": "INC-5"})
        assert skipped.status_code == 200, skipped.text
        assert (skipped.json()["position"], skipped.json()["skipped_reason"]) == (position, "INC-5")
        assert world.context.projection_store.parked("run_status") == []
        resolved = world.get("viewer", f"{ROOT}/parked", params={"include_resolved": True})
        assert [p["skipped_reason"] for p in resolved.json()] == ["INC-5"]
        again = world.post("admin", skip, {"reason": "again"})
        assert again.status_code == 404, again.text
        assert f"parked now at position {position}" in again.json()["error"]["message"]

        audited = [
            (e.action, e.outcome, e.reason)
            for e in world.context.audit.entries()
            if e.action in ("parked.redrive", "parked.skip") and e.outcome != "started"
        ]
        assert audited == [
            ("parked.redrive", "succeeded", "fixed"),
            ("parked.redrive", "succeeded", "handler fixed"),
            ("parked.skip", "succeeded", "INC-5"),
            ("parked.skip", "failed", "again"),
        ]

    def test_the_same_redrive_again_resumes_its_job_another_one_is_refused(
        self, world: ApiWorld
    ) -> None:
        built(world)
        park_one(world)
        some = {"reason": "fixed", "aggregates": [str(uuid4())]}
        first = job_of(world, world.post("admin", f"{ROOT}/parked/redrive", some))
        assert first.parameters["aggregates"] == some["aggregates"]

        # As after a killed command: the same redrive again resumes its planned job ...
        again = world.post("admin", f"{ROOT}/parked/redrive", some)
        assert again.status_code == 200, again.text
        assert (again.json()["job_id"], again.json()["resumed"]) == (str(first.job_id), True)
        # ... but a redrive of other aggregates (or of all of them) is another command:
        # it is refused while the first is unfinished, naming it, and plans nothing.
        others = ({"reason": "all of them"}, {**some, "aggregates": [str(uuid4())]})
        for body in others:
            busy = world.post("admin", f"{ROOT}/parked/redrive", body)
            assert busy.status_code == 409, busy.text
            assert str(first.job_id) in busy.json()["error"]["message"]
        redrives = [j for j in world.context.jobs.list_jobs() if j.kind == JobKind.REDRIVE]
        assert [j.job_id for j in redrives] == [first.job_id]

    def test_an_admin_lists_the_audit_trail_with_filters(self, world: ApiWorld) -> None:
        world.get("viewer", "/api/audit/verify")  # denied: an entry of vic's
        before = world.audit_actions()
        everything = world.get("admin", "/api/audit")
        assert everything.status_code == 200, everything.text
        seqs = [e["seq"] for e in everything.json()]
        assert seqs == sorted(seqs) and len(seqs) == len(before)
        assert all("hash" in e and "parameters" in e for e in everything.json())

        by_vic = world.get("admin", "/api/audit", params={"actor": "vic"}).json()
        assert [(e["action"], e["outcome"]) for e in by_vic] == [("audit.verify", "denied")]
        first_two = world.get("admin", "/api/audit", params={"limit": 2}).json()
        assert [e["seq"] for e in first_two] == seqs[:2]
        grants = world.get("admin", "/api/audit", params={"action": "grant"}).json()
        assert {e["action"] for e in grants} == {"grant"} and grants
        later = world.get("admin", "/api/audit", params={"since": "2999-01-01T00:00:00Z"})
        assert later.status_code == 200 and later.json() == [], later.text

    def test_an_admin_verifies_the_trail(self, world: ApiWorld) -> None:
        before = world.audit_actions()
        verified = world.get("admin", "/api/audit/verify")
        assert verified.status_code == 200, verified.text
        assert (verified.json()["ok"], verified.json()["status"]) == (True, "intact")
        assert verified.json()["entries_checked"] == len(before)
        assert ("ada", "audit.verify", "succeeded") in world.audit_actions()

    def test_without_a_token_every_endpoint_is_401(self, world: ApiWorld) -> None:
        built(world)
        position = park_one(world)
        for method, path, body, _ in ENDPOINTS:
            response = call(world, None, method, path.replace(":7", f":{position}"), body)
            assert response.status_code == 401, (path, response.text)
            assert response.json()["error"]["code"] == "unauthenticated"
        assert len(world.context.projection_store.parked("run_status")) == 1

    def test_without_the_grant_it_is_403_audited_and_nothing_changes(self, world: ApiWorld) -> None:
        built(world)
        position = park_one(world)
        jobs_before = world.context.jobs.list_jobs()
        for method, path, body, operation in ENDPOINTS:
            path = path.replace(":7", f":{position}")
            refused = call(world, "stranger", method, path, body)
            assert refused.status_code == 403, (path, refused.text)
            assert ("mallory", operation, "denied") in world.audit_actions()
            if operation in NOT_FOR_A_VIEWER:
                refused = call(world, "viewer", method, path, body)
                assert refused.status_code == 403, (path, refused.text)
                assert ("vic", operation, "denied") in world.audit_actions()
        assert len(world.context.projection_store.parked("run_status")) == 1
        assert world.context.jobs.list_jobs() == jobs_before

    def test_malformed_calls_are_422_naming_the_field(self, world: ApiWorld) -> None:
        built(world)
        position = park_one(world)
        skip = f"/api/parked/run_status:{position}/skip"
        for path, body, field in (
            (f"{ROOT}/parked/redrive", {}, "reason"),
            (f"{ROOT}/parked/redrive", {"reason": "r", "aggregates": ["x"]}, "aggregates"),
            (f"{ROOT}/parked/redrive", {"reason": "r", "workers": 1}, "workers"),
            (skip, {"reason": ""}, "reason"),
            (skip, {"reason": "r", "build": "live"}, "build"),
            ("/api/parked/run_status/skip", {"reason": "r"}, "'run_status'"),
        ):
            response = world.post("admin", path, body)
            assert response.status_code == 422, (path, body, response.text)
            assert response.json()["error"]["message"].startswith(field), response.text
        for query, field in (
            ({"limit": 0}, "limit"),
            ({"limit": 1001}, "limit"),
            ({"job": "not-a-job"}, "job"),
            ({"since": "yesterday"}, "since"),
        ):
            response = world.get("admin", "/api/audit", params=query)
            assert response.status_code == 422, (query, response.text)
            assert response.json()["error"]["message"].startswith(field), response.text
        flag = world.get("viewer", f"{ROOT}/parked", params={"include_resolved": "maybe"})
        assert flag.json()["error"]["message"].startswith("include_resolved"), flag.text
        assert len(world.context.projection_store.parked("run_status")) == 1
        assert not [j for j in world.context.jobs.list_jobs() if j.kind == JobKind.REDRIVE]


class TestSQLiteParkedAuditApi(ParkedAuditApiContract):
    settings = staticmethod(sqlite_settings)


@pytest.mark.postgres
class TestPostgresParkedAuditApi(ParkedAuditApiContract):
    settings = staticmethod(postgres_settings)

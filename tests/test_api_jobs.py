"""Issue #19 point 3, the API's first endpoints, on SQLite and PostgreSQL:

- a viewer reads status, projections and jobs; ``/api/me`` lists its grants;
- no token, a wrong token: 401 with one message, audited as a failed sign-in;
- a principal without the grant: 403, audited as denied;
- an admin pauses and resumes a job with a reason (audited as the CLI's are);
  without a reason, or with an unknown field: 422 naming the field, nothing changed;
- an unknown job: 404; pausing a completed job: 409;
- routine reads (status, jobs) are not audited when they succeed.
"""

from __future__ import annotations

from collections.abc import Iterator
from uuid import UUID

import pytest
from api_fixtures import ApiContract, ApiWorld, postgres_settings, sqlite_settings

from safereplay.recovery.api.limits import DEFAULT_MAX_BODY_BYTES
from safereplay.recovery.jobs.model import JobState

pytestmark = pytest.mark.usefixtures("clean_safereplay_environment")


def planned_rebuild(world: ApiWorld) -> str:
    """A rebuild of run_status, planned as the admin (no worker runs it)."""
    from safereplay.recovery.operations.catalog import open_operations

    admin = world.context.access.authenticate(world.envs["admin"]["SAFEREPLAY_TOKEN"])
    result = open_operations(world.context).run(
        admin, "rebuild", reason="test", projection="run_status", partitions=2
    )
    return str(result["job_id"])


class JobsApiContract(ApiContract):
    def test_a_viewer_reads_status_projections_and_jobs(self, world: ApiWorld) -> None:
        job_id = planned_rebuild(world)
        before = world.audit_actions()

        me = world.get("viewer", "/api/me")
        assert me.status_code == 200, me.text
        assert me.json()["principal"] == "vic"
        assert me.json()["permissions"] == {"view": ["projection:*"]}

        status = world.get("viewer", "/api/status")
        assert status.status_code == 200, status.text
        assert status.json()["head_position"] == world.context.log.head()

        projections = world.get("viewer", "/api/projections")
        assert {p["name"] for p in projections.json()} >= {"run_status"}

        jobs = world.get("viewer", "/api/jobs")
        assert [j["job_id"] for j in jobs.json()] == [job_id]
        shown = world.get("viewer", f"/api/jobs/{job_id[:8]}")
        assert shown.status_code == 200, shown.text
        assert len(shown.json()["partitions"]) == 2

        assert world.audit_actions() == before, "routine reads are not audited"

    def test_no_token_or_a_wrong_one_is_401_and_audited(self, world: ApiWorld) -> None:
        anonymous = world.client.get("/api/status")
        assert anonymous.status_code == 401
        assert anonymous.json()["error"]["code"] == "unauthenticated"
        assert anonymous.headers["www-authenticate"] == "Bearer"
        token = world.envs["viewer"]["SAFEREPLAY_TOKEN"]
        wrong = world.client.get("/api/status", headers={"Authorization": f"Bearer {token[:-2]}xx"})
        assert wrong.status_code == 401
        assert token[:-2] not in wrong.text
        failed = [e for e in world.context.audit.entries() if e.action == "authenticate"]
        assert len(failed) == 2
        assert all(e.parameters["via"] == "http" for e in failed)

    def test_without_the_grant_it_is_403_and_audited(self, world: ApiWorld) -> None:
        job_id = planned_rebuild(world)
        for who, path in (("stranger", "/api/status"), ("viewer", f"/api/jobs/{job_id}/pause")):
            response = (
                world.get(who, path)
                if who == "stranger"
                else world.post(who, path, {"reason": "try"})
            )
            assert response.status_code == 403, response.text
            assert response.json()["error"]["code"] == "denied"
        assert ("mallory", "status", "denied") in world.audit_actions()
        assert ("vic", "pause", "denied") in world.audit_actions()
        assert world.context.jobs.get_job(UUID(job_id)).state == JobState.PLANNED

    def test_pause_and_resume_are_audited_with_their_reason(self, world: ApiWorld) -> None:
        job_id = planned_rebuild(world)
        world.context.jobs.transition(
            world.context.jobs.get_job(UUID(job_id)).job_id, JobState.RUNNING
        )
        paused = world.post("admin", f"/api/jobs/{job_id}/pause", {"reason": "checksum failed"})
        assert paused.status_code == 200, paused.text
        assert paused.json()["state"] == "paused"
        resumed = world.post("admin", f"/api/jobs/{job_id}/resume", {"reason": "fixed"})
        assert resumed.json()["state"] == "running"
        entries = [e for e in world.context.audit.entries() if e.action in ("pause", "resume")]
        assert [(e.action, e.outcome, e.reason) for e in entries] == [
            ("pause", "started", "checksum failed"),
            ("pause", "succeeded", "checksum failed"),
            ("resume", "started", "fixed"),
            ("resume", "succeeded", "fixed"),
        ]

    def test_malformed_calls_are_422_naming_the_field(self, world: ApiWorld) -> None:
        job_id = planned_rebuild(world)
        for body, field in (
            ({}, "reason"),
            ({"reason": ""}, "reason"),
            ({"reason": "x", "force": True}, "force"),
        ):
            response = world.post("admin", f"/api/jobs/{job_id}/pause", body)
            assert response.status_code == 422, response.text
            assert response.json()["error"]["message"].startswith(field), response.text
        not_json = world.client.post(
            f"/api/jobs/{job_id}/pause",
            headers={**world.headers("admin"), "Content-Type": "application/json"},
            content=b"{not json",
        )
        assert not_json.status_code == 422
        assert "Traceback" not in not_json.text
        assert world.context.jobs.get_job(UUID(job_id)).state == JobState.PLANNED

    def test_a_body_over_the_cap_is_refused_unread(self, world: ApiWorld) -> None:
        job_id = planned_rebuild(world)
        huge = b'{"reason": "' + b"x" * (DEFAULT_MAX_BODY_BYTES + 1) + b'"}'
        headers = {**world.headers("admin"), "Content-Type": "application/json"}

        def streamed() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
            yield huge[: len(huge) // 2]
            yield huge[len(huge) // 2 :]

        for content in (huge, streamed()):
            response = world.client.post(
                f"/api/jobs/{job_id}/pause", headers=headers, content=content
            )
            assert response.status_code == 413, response.text
            assert response.json()["error"]["code"] == "invalid"
        assert world.context.jobs.get_job(UUID(job_id)).state == JobState.PLANNED
        assert ("ada", "pause", "started") not in world.audit_actions()

    def test_unknown_job_is_404_and_an_ended_one_409(self, world: ApiWorld) -> None:
        missing = world.get("viewer", "/api/jobs/0123456789abcdef")
        assert missing.status_code == 404, missing.text
        job_id = planned_rebuild(world)
        aborted = world.post("admin", f"/api/jobs/{job_id}/abort", {"reason": "not needed"})
        assert aborted.json()["state"] == "aborted", aborted.text
        again = world.post("admin", f"/api/jobs/{job_id}/pause", {"reason": "too late"})
        assert again.status_code == 409, again.text
        assert again.json()["error"]["code"] == "conflict"


class TestSQLiteJobsApi(JobsApiContract):
    settings = staticmethod(sqlite_settings)


@pytest.mark.postgres
class TestPostgresJobsApi(JobsApiContract):
    settings = staticmethod(postgres_settings)

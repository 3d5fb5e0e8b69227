"""The replay stepper's endpoint, ``POST /api/projections/{name}/step``, on SQLite and
PostgreSQL: envelopes and row changes for a viewer, payloads only for an operator
(here the admin) who asks; bad ranges answered 422 naming what is wrong; 403 and
401 as for every route; the live build untouched (nothing is built at all here)."""

from __future__ import annotations

from typing import Any

import pytest
from api_fixtures import ApiContract, ApiWorld, postgres_settings, sqlite_settings

pytestmark = pytest.mark.usefixtures("clean_safereplay_environment")

STEP = "/api/projections/run_status/step"


def message(response: Any) -> str:
    text: str = response.json()["error"]["message"]
    return text


class StepApiContract(ApiContract):
    def test_a_viewer_steps_and_sees_row_changes_but_no_payloads(self, world: ApiWorld) -> None:
        answer = world.post("viewer", STEP, {"from": 1, "count": 3, "payloads": True})
        assert answer.status_code == 200, answer.text
        result = answer.json()
        assert result["projection"] == "run_status" and len(result["steps"]) == 3
        assert result["payloads_shown"] is False
        assert "operate permission" in result["payloads_note"]
        assert all(step["payload"] is None for step in result["steps"])
        first = result["steps"][0]
        assert first["envelope"]["event_type"] and first["envelope"]["key_id"]
        assert first["changes"][0]["before"] is None, "the first event of a run inserts it"
        assert world.context.projection_store.projection_names() == [], "nothing live is built"

    def test_an_operator_who_asks_sees_payloads_audited(self, world: ApiWorld) -> None:
        answer = world.post("admin", STEP, {"from": 1, "count": 2, "payloads": True})
        assert answer.status_code == 200, answer.text
        assert all(step["payload"] for step in answer.json()["steps"])
        assert ("ada", "step.payloads", "succeeded") in world.audit_actions()

    def test_bad_ranges_are_422_naming_what_is_wrong(self, world: ApiWorld) -> None:
        backwards = world.post("viewer", STEP, {"from": 9, "to": 3})
        assert backwards.status_code == 422
        assert "from 9 is after to 3" in message(backwards)
        both = world.post("viewer", STEP, {"from": 1, "to": 3, "count": 2})
        assert both.status_code == 422 and "to or count" in message(both)
        zero = world.post("viewer", STEP, {"from": 0})
        assert zero.status_code == 422 and "from" in message(zero)
        past = world.post("viewer", STEP, {"from": 1, "to": 100_000})
        assert past.status_code == 422 and "past the head" in message(past)
        over = world.post("viewer", STEP, {"from": 1, "count": 201})
        assert over.status_code == 422 and "SAFEREPLAY_STEP_MAX_EVENTS" in message(over)
        unknown = world.post("viewer", "/api/projections/nope/step", {"from": 1})
        assert unknown.status_code == 404 and "unknown projection 'nope'" in message(unknown)
        misspelt = world.post("viewer", STEP, {"from": 1, "cuont": 2})
        assert misspelt.status_code == 422

    def test_a_stranger_is_refused_and_audited(self, world: ApiWorld) -> None:
        answer = world.post("stranger", STEP, {"from": 1})
        assert answer.status_code == 403
        assert ("mallory", "step", "denied") in world.audit_actions()
        assert world.client.post(STEP, json={"from": 1}).status_code == 401


class TestSQLiteStepApi(StepApiContract):
    settings = staticmethod(sqlite_settings)


@pytest.mark.postgres
class TestPostgresStepApi(StepApiContract):
    settings = staticmethod(postgres_settings)

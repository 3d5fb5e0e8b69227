"""The flags and the operations switch over HTTP: SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from api_fixtures import ApiContract, ApiWorld, postgres_settings, sqlite_settings

pytestmark = pytest.mark.usefixtures("clean_safereplay_environment")

FLAG = "/api/flags/auto_catch_up/projection:run_status"


class FlagsApiContract(ApiContract):
    def test_set_list_history_and_unset(self, world: ApiWorld) -> None:
        body = {"reason": "let it catch up", "enabled": True, "share": 25}
        response = world.client.put(FLAG, headers=world.headers("admin"), json=body)
        assert response.status_code == 200, response.text
        assert response.json()["new_value"]["rollout"] == {"partitions": None, "share": 25}
        listed = world.get("viewer", "/api/flags").json()
        assert [f["name"] for f in listed["flags"]] == ["auto_catch_up"]
        # A viewer may read them, not change them.
        response = world.client.put(FLAG, headers=world.headers("viewer"), json=body)
        assert response.status_code == 403, response.text
        response = world.client.put(
            FLAG, headers=world.headers("admin"), json={"reason": "x", "share": 0}
        )
        assert response.status_code == 422, response.text
        response = world.client.request(
            "DELETE", FLAG, headers=world.headers("admin"), json={"reason": "done"}
        )
        assert response.status_code == 200, response.text
        history = world.get("viewer", "/api/flags/history").json()["history"]
        assert [(h["actor"], h["old_value"] is None) for h in history] == [
            ("ada", False),
            ("ada", True),
        ]

    def test_a_frozen_switch_answers_423_naming_its_holder(self, world: ApiWorld) -> None:
        response = world.post("admin", "/api/switch/freeze", {"reason": "incident 42"})
        assert response.status_code == 200, response.text
        assert world.get("viewer", "/api/switch").json()["held_by"] == "ada"
        # Anyone but the holder gets 423 for a change: a second operator, olga.
        access = world.context.access
        access.add_principal("olga", kind="person", created_by="ada")
        access.grant("olga", "operator", "*", granted_by="ada")
        olga = {"Authorization": f"Bearer {access.issue_token('olga')}"}
        response = world.client.post("/api/switch/freeze", headers=olga, json={"reason": "me too"})
        assert response.status_code == 423, response.text
        error = response.json()["error"]
        assert error["code"] == "frozen" and error["held_by"] == "ada"
        assert error["reason"] == "incident 42" and "since" in error
        response = world.client.put(FLAG, headers=olga, json={"reason": "x", "enabled": True})
        assert response.status_code == 423, response.text
        response = world.post("admin", "/api/switch/unfreeze", {"reason": "resolved"})
        assert response.status_code == 200, response.text
        response = world.client.put(FLAG, headers=olga, json={"reason": "x", "enabled": True})
        assert response.status_code == 200, response.text


class TestSQLiteFlagsApi(FlagsApiContract):
    settings = staticmethod(sqlite_settings)


@pytest.mark.postgres
class TestPostgresFlagsApi(FlagsApiContract):
    settings = staticmethod(postgres_settings)

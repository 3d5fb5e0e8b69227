"""Every route of the app needs a token, and the OpenAPI document describes them all.

Walks ``create_app().routes`` (whatever routers were added): each ``/api/...``
route and ``/metrics`` answers 401 to a call without a token (with a path and a
body that are otherwise valid, built from the route's own schema), and the
failed sign-in is audited; only the schema and its viewer are public. The
document at ``/openapi.json`` lists every route with a summary and the bearer
security scheme. A route added without :data:`~safereplay.recovery.api.callers.CallerDep`
fails here. SQLite and PostgreSQL.
"""

from __future__ import annotations

from typing import Any

import pytest
from api_fixtures import ApiContract, ApiWorld, postgres_settings, sqlite_settings
from fastapi.routing import APIRoute, RouteContext, iter_route_contexts

from safereplay.recovery.settings import RecoverySettings

pytestmark = pytest.mark.usefixtures("clean_safereplay_environment")

#: Routes anyone may read: the API's schema and its viewer (no data, no operation).
PUBLIC = frozenset({"/openapi.json", "/api/docs"})
#: A valid value of a path parameter, by name (anything else gets "probe").
PATH_VALUES = {
    "name": "run_status",
    "job_id": "0123456789abcdef",
    "partition": "0",
    "parked_id": "run_status:1",
    "request_id": "0123456789abcdef",
}


def guarded(path: str) -> bool:
    return path not in PUBLIC and (path.startswith("/api/") or path == "/metrics")


def all_routes(world: ApiWorld) -> list[RouteContext]:
    """Every route, those of included routers too (which ``app.routes`` holds as one
    entry per router)."""
    app: Any = world.client.app
    return list(iter_route_contexts(app.routes))


def api_routes(world: ApiWorld) -> list[APIRoute]:
    routes = [
        c.original_route
        for c in all_routes(world)
        if isinstance(c.original_route, APIRoute) and guarded(c.original_route.path)
    ]
    assert len(routes) > 20, "the walk finds the routers' routes"
    return routes


class Schema:
    """Values valid for the app's OpenAPI schemas (required fields only)."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document

    def resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in schema:
            *_, name = schema["$ref"].split("/")
            schema = self.document["components"]["schemas"][name]
        return schema

    def value(self, schema: dict[str, Any]) -> Any:
        schema = self.resolve(schema)
        for key in ("anyOf", "oneOf", "allOf"):
            if key in schema:
                return self.value(schema[key][0])
        if "enum" in schema:
            return schema["enum"][0]
        kind = schema.get("type", "object")
        if kind == "object":
            properties = schema.get("properties", {})
            return {name: self.value(properties[name]) for name in schema.get("required", [])}
        simple = {"integer": 1, "number": 1.0, "boolean": False, "array": [], "null": None}
        return simple.get(kind, "probe")

    def call(self, route: APIRoute, method: str) -> tuple[str, Any]:
        """A path with valid parameters, and a valid body (or None) for ``route``."""
        operation = self.document["paths"][route.path][method.lower()]
        path = route.path
        for parameter in operation.get("parameters", []):
            if parameter["in"] == "path":
                name = parameter["name"]
                value = PATH_VALUES.get(name, str(self.value(parameter["schema"])))
                path = path.replace("{" + name + "}", value)
        body = operation.get("requestBody", {}).get("content", {}).get("application/json")
        return path, None if body is None else self.value(body["schema"])


class EveryRouteContract(ApiContract):
    def test_every_route_answers_401_without_a_token(self, world: ApiWorld) -> None:
        schema = Schema(world.client.get("/openapi.json").json())
        calls = 0
        for route in api_routes(world):
            for method in sorted(route.methods):
                path, body = schema.call(route, method)
                response = world.client.request(method, path, json=body)
                assert response.status_code == 401, (method, route.path, response.text)
                assert response.json()["error"]["code"] == "unauthenticated"
                assert response.headers["www-authenticate"] == "Bearer"
                calls += 1
        failed = [e for e in world.context.audit.entries() if e.action == "authenticate"]
        # Each is audited, up to a number per window (then a flood is aggregated).
        audited = RecoverySettings.model_fields["auth_failures_audited"].default
        assert len(failed) == min(calls, audited)
        assert {e.parameters["via"] for e in failed} == {"http"}
        routed = {f"{m} {r.path}" for r in api_routes(world) for m in r.methods}
        assert {e.parameters["command"] for e in failed} <= routed
        assert world.context.jobs.list_jobs() == []

    def test_no_other_route_serves_the_api_without_a_token(self, world: ApiWorld) -> None:
        paths = {c.path or "" for c in all_routes(world)}
        unguarded = {p for p in paths if p.startswith("/api") or p == "/metrics"}
        unguarded -= PUBLIC | {r.path for r in api_routes(world)}
        assert unguarded == set(), "a route under /api that the walk above cannot call"

    def test_the_openapi_document_lists_every_route_with_bearer_security(
        self, world: ApiWorld
    ) -> None:
        document = world.client.get("/openapi.json")
        assert document.status_code == 200, document.text
        paths = document.json()["paths"]
        schemes = document.json()["components"]["securitySchemes"]
        assert schemes == {
            "token": {
                "type": "http",
                "scheme": "bearer",
                "description": schemes["token"]["description"],
            }
        }
        for route in api_routes(world):
            for method in route.methods:
                operation = paths.get(route.path, {}).get(method.lower())
                assert operation is not None, f"{method} {route.path} is not in /openapi.json"
                assert operation.get("summary"), f"{method} {route.path} has no summary"
                assert {"token": []} in operation.get("security", []), route.path
        listed = {(path, method) for path, ops in paths.items() for method in ops}
        routed = {(r.path, m.lower()) for r in api_routes(world) for m in r.methods}
        assert listed == routed


class TestSQLiteEveryRoute(EveryRouteContract):
    settings = staticmethod(sqlite_settings)


@pytest.mark.postgres
class TestPostgresEveryRoute(EveryRouteContract):
    settings = staticmethod(postgres_settings)

"""The recovery surface under hostile callers and hostile input (SQLite, PostgreSQL):
one API world per backend (a workload; ada, an admin; vic, a viewer; mallory, no
grant), each scenario comparing every table of the store but the audit trail's
(and the failed sign-ins' counters), read straight from the database, before and
after its trial, and looking for tokens and a canary string in every message,
answer and output.

**Unauthorised calls to every operation.** Each trial calls, in a random order:
every operation of the dispatch layer as mallory, its parameters (those
``tests/test_every_operation_denied.py`` gives) partly replaced by hostile values
(SQL, path traversal, scope wildcards, NUL, 10,000 characters, wrong types), plus a
reason with a NUL and one of 100,000 letters: each refused with a ``RecoveryError``
(``AccessDenied``, or ``InvalidRequest`` when no scope can be derived from the
value), never another exception, each ``AccessDenied`` audited as denied for mallory
and that operation; 30 HTTP routes drawn at random (from the app's own OpenAPI schema, as
``tests/test_api_every_route.py`` builds them) with mallory's token, a forged
token, a garbled one or none, half the bodies hostile: 401 without a valid token,
403 for mallory (422 when a path or body value fails the public schema; 200 on
``/api/me`` only); two random commands of ``CLI_CALLS`` as mallory: exit 3.

**Malformed input as an admin** (Hypothesis, seeded by the trial, examples scaled
by the mode): hostile bodies (not JSON, not an object, nested 40-200 deep, over
the 64 KiB cap, wrong types) to every POST route: a 4xx, never 2xx or 5xx; hostile
names, targets and ids to the commands that take them: a non-zero exit, never a
traceback.

**Invalid templates and hostile flag values** (Hypothesis): mutated template files
(``templates add``) are refused naming the template, nothing stored (or, still
valid, stored once); hostile flag names, targets, shares, partitions and thresholds
(``flags.set``) are refused with an ``InvalidRequest`` leaving the flags table as it
was, or applied as valid, never another exception.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from api_fixtures import ApiWorld
from fastapi.testclient import TestClient
from hostile_support import CANARY, hypothesis_settings, json_leaf, leaks, nested, surface_world
from hypothesis import given, seed
from hypothesis import strategies as st
from test_api_every_route import Schema, api_routes
from test_every_operation_denied import CLI_CALLS, dump, parameters
from typer.testing import CliRunner

from safereplay.recovery.api.app import create_app
from safereplay.recovery.cli.app import app
from safereplay.recovery.errors import AccessDenied, InvalidRequest, RecoveryError
from safereplay.recovery.operations.catalog import open_operations

pytestmark = pytest.mark.usefixtures("clean_safereplay_environment")

HOSTILE: list[Any] = [
    "' OR 1=1; DROP TABLE safereplay_grants; --",
    "../../../../etc/passwd",
    "*",
    "projection:*",
    "run_status\x00admin",
    "x" * 10_000,
    "🙂" * 50,
    "",
    None,
    -1,
    2**63,
    [],
    {"$gt": ""},
    True,
]


def hostile_body(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["garbage", "scalar", "deep", "huge", "types"]))
    if kind == "garbage":
        return draw(st.binary(max_size=100)) + b"{" + CANARY.encode()
    if kind == "scalar":
        return json.dumps(draw(st.one_of(st.lists(json_leaf), st.just(CANARY)))).encode()
    if kind == "deep":
        return json.dumps({"reason": nested(draw(st.integers(40, 200)), CANARY)}).encode()
    if kind == "huge":
        return json.dumps({"reason": CANARY * draw(st.integers(5_000, 8_000))}).encode()
    body = {
        "reason": draw(st.one_of(st.integers(), st.lists(st.just(CANARY)), st.none())),
        "projection": draw(st.one_of(st.integers(), st.just({"$ne": CANARY}))),
    }
    return json.dumps(body).encode()


#: Routes any signed-in principal may call: about itself, nothing else.
OWN = frozenset({"/api/me"})


class SurfaceContract:
    backend = "sqlite"

    @pytest.fixture(scope="class")
    @classmethod
    def surface(cls, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any]]:
        """One API world for the class's scenarios (each compares the store before and
        after its own trials): a workload, ada (admin), vic (viewer), mallory (none)."""
        with surface_world(cls.backend, tmp_path_factory.mktemp("surface")) as made:
            yield made

    def test_every_operation_denied(self, surface: Any, trials: Any, tmp_path: Path) -> None:
        world, new_context = surface
        context = world.context
        template = tmp_path / "t.toml"
        template.write_text(
            '[template]\nname = "x"\nkind = "rebuild"\n[scope]\nprojections = ["run_status"]\n'
        )
        mallory_token = world.envs["stranger"]["SAFEREPLAY_TOKEN"]
        mallory = context.access.authenticate(mallory_token)
        admin = context.access.authenticate(world.envs["admin"]["SAFEREPLAY_TOKEN"])
        job = open_operations(context).run(
            admin, "rebuild", reason="setup", projection="run_status"
        )
        shape = {"job_id": job["job_id"], "template": str(template)}
        names = sorted(open_operations(context).specs)
        for trial in trials(default=1):
            rng = trial.random
            before = dump(context)
            seq = context.audit.entries()[-1].seq
            shown: list[str] = []
            calls = 0
            operations = open_operations(context)
            denied: list[str] = []
            # Regressions, every trial: a NUL in the reason (PostgreSQL's text refused
            # it: the denial failed unaudited) and a reason of 100,000 letters (the
            # audit's password redaction was quadratic in it: minutes per call).
            for reason in ("try\x00", "x" * 100_000):
                with pytest.raises(AccessDenied):
                    operations.run(mallory, "status", reason=reason, projection="run_status")
                denied.append("status")
                calls += 1
            for name in rng.sample(names, len(names)):
                values = parameters(shape)
                for key in list(values):
                    if rng.random() < 0.3:
                        values[key] = rng.choice(HOSTILE)
                reason = rng.choice(["try", *[h for h in HOSTILE if isinstance(h, str) and h]])
                with pytest.raises(RecoveryError) as caught:
                    operations.run(mallory, name, reason=reason, **values)
                if isinstance(caught.value, AccessDenied):
                    assert f"'mallory' may not {name} on" in str(caught.value)
                    denied.append(name)
                shown.append(str(caught.value))
                calls += 1
            audited = [
                e.action
                for e in context.audit.entries(limit=100_000)
                if e.seq > seq and e.actor == "mallory" and e.outcome == "denied"
            ]
            assert sorted(audited) == sorted(denied)

            forged = f"sr_{secrets.token_hex(4)}.{secrets.token_urlsafe(24)}"
            bearers = {
                "mallory": mallory_token,
                "forged": forged,
                "garbled": mallory_token[::-1],
                "none": None,
            }
            client = TestClient(create_app(new_context=new_context), raise_server_exceptions=False)
            with client:
                world.client = client
                schema = Schema(client.get("/openapi.json").json())
                routes = [(r, m) for r in api_routes(world) for m in sorted(r.methods)]
                # A random 30 each trial (the long mode's trials call them all).
                routes = rng.sample(routes, min(30, len(routes)))
                self.call_routes(world, rng, schema, routes, bearers, shown)
            calls += len(routes)

            for command in rng.sample(sorted(CLI_CALLS), 2):
                args = [a.format(**shape) for a in CLI_CALLS[command]]
                env = world.envs["stranger"] | {"SAFEREPLAY_APPROVAL_REQUIRED": ""}
                result = CliRunner().invoke(app, [*command.split(), *args], env=env)
                assert result.exit_code == 3, (command, result.output)
                assert "'mallory' may not" in result.output
                shown.append(result.output)
                calls += 1
            trial.fault(calls)

            after = dump(context)
            # The failed sign-ins' counters (what rate-limits their auditing) count them.
            changed = sorted(
                t
                for t in before.keys() | after.keys()
                if before.get(t) != after.get(t) and not t.endswith("auth_failures")
            )
            assert changed == [], changed
            hidden = [mallory_token, forged, world.envs["admin"]["SAFEREPLAY_TOKEN"]]
            assert leaks(json.dumps(shown), hidden) == []
            trial.checked(calls, losses=len(changed))

    def test_malformed_api_and_cli(self, surface: Any, trials: Any, tmp_path: Path) -> None:
        world, new_context = surface
        context = world.context
        token = world.envs["admin"]["SAFEREPLAY_TOKEN"]
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        for trial in trials(default=1):
            before = dump(context)
            examples = 0
            shown: list[str] = []
            with TestClient(
                create_app(new_context=new_context), raise_server_exceptions=False
            ) as client:
                paths = [
                    path
                    for path, ops in client.get("/openapi.json").json()["paths"].items()
                    if "post" in ops and path.startswith("/api/")
                ]

                @seed(trial.seed)
                @hypothesis_settings(10)
                @given(data=st.data())
                def api(data: st.DataObject) -> None:
                    nonlocal examples
                    path = data.draw(st.sampled_from(paths), label="path")  # noqa: B023
                    path = path.replace("{name}", "run_status").replace("{job_id}", "0" * 16)
                    path = path.replace("{", "").replace("}", "")
                    body = hostile_body(data.draw)
                    response = client.post(path, content=body, headers=headers)
                    assert 400 <= response.status_code < 500, (path, response.text[:300])
                    shown.append(response.text)  # noqa: B023
                    examples += 1

                api()

            env = world.envs["admin"] | {"SAFEREPLAY_APPROVAL_REQUIRED": ""}
            hostile_text = st.one_of(
                st.text(min_size=1, max_size=30).filter(lambda t: not t.startswith("-")),
                st.sampled_from(
                    ["../../etc/passwd", "projection:*", "' OR 1=1 --", "a" * 5000, "*:*"]
                ),
            ).map(lambda t: t.replace("\x00", "") or "x")

            @seed(trial.seed)
            @hypothesis_settings(3)
            @given(data=st.data())
            def cli(data: st.DataObject) -> None:
                nonlocal examples
                word = data.draw(hostile_text, label="word")  # noqa: B023
                args = data.draw(
                    st.sampled_from(
                        [
                            ["rows", word, "runs"],
                            ["rows", "run_status", word],
                            ["flags", "set", word, "projection:run_status", "--on", "-r", "x"],
                            ["flags", "set", "auto_redrive", word, "--on", "-r", "x"],
                            ["parked", "skip", word, "-r", "x"],
                            ["conflicts", "resolve", word, "--action", "park", "-r", "x"],
                            ["templates", "show", word],
                            ["requests", "approve", word, "-r", "x"],
                            ["redeliver", word, "-r", "x"],
                            ["drill", word, "-r", "x"],
                        ]
                    ),
                    label="command",
                )
                result = CliRunner().invoke(app, args, env=env)  # noqa: B023
                assert result.exit_code not in (0, None), (args, result.output[:300])
                assert "Traceback" not in result.output, (args, result.output)
                assert not isinstance(result.exception, AssertionError | TypeError | KeyError)
                shown.append(result.output)  # noqa: B023
                examples += 1

            cli()
            after = dump(context)
            changed = sorted(
                t
                for t in before.keys() | after.keys()
                if before.get(t) != after.get(t) and not t.endswith("auth_failures")
            )
            assert changed == [], changed
            assert leaks("".join(shown), [token, CANARY]) == []
            trial.fault(examples)
            trial.checked(examples, losses=len(changed))

    def test_invalid_templates_and_flags(self, surface: Any, trials: Any, tmp_path: Path) -> None:
        world, _ = surface
        context = world.context
        env = world.envs["admin"] | {"SAFEREPLAY_APPROVAL_REQUIRED": ""}
        admin = context.access.authenticate(world.envs["admin"]["SAFEREPLAY_TOKEN"])
        valid = (
            '[template]\nname = "fix-runs"\nkind = "rebuild"\n'
            '[scope]\nprojections = ["run_status"]\n'
        )
        mutations = st.one_of(
            st.tuples(st.just("replace"), st.sampled_from(["rebuild", "run_status", "fix-runs",
                      "name", "kind", "projections", "[scope]", "="]), st.text(max_size=12)),
            st.tuples(st.just("append"), st.text(max_size=60), st.just("")),
            st.tuples(st.just("cut"), st.integers(0, len(valid) - 1), st.just("")),
        )  # fmt: skip
        # Regressions: a pattern in a refusal was read as markup ("[a-z0-9]" vanished
        # from "String should match pattern ..."); a number as partitions was a TypeError.
        unnamed = tmp_path / "unnamed.toml"
        unnamed.write_text(valid.replace("fix-runs", ""))
        result = CliRunner().invoke(app, ["templates", "add", str(unnamed), "-r", "x"], env=env)
        assert result.exit_code == 2 and "'^[a-z0-9][a-z0-9-]{0,62}$'" in result.output
        with pytest.raises(InvalidRequest, match="partitions must be"):
            open_operations(context).run(
                admin, "flags.set", reason="x", flag="auto_redrive",
                target="projection:run_status", partitions=7,
            )  # fmt: skip
        for trial in trials(default=1):
            examples = 0
            template_file = tmp_path / f"t{trial.index}.toml"

            @seed(trial.seed)
            @hypothesis_settings(3)
            @given(mutation=mutations)
            def templates(mutation: tuple[str, Any, str]) -> None:
                nonlocal examples
                kind, where, what = mutation
                if kind == "replace":
                    text = valid.replace(where, what, 1)
                elif kind == "append":
                    text = valid + where
                else:
                    text = valid[:where]
                template_file.write_text(text, encoding="utf-8", errors="surrogatepass")  # noqa: B023
                stored = select_templates(world)
                result = CliRunner().invoke(
                    app,
                    ["templates", "add", str(template_file), "-r", "x"],  # noqa: B023
                    env=env,
                )
                assert "Traceback" not in result.output, result.output
                now = select_templates(world)
                if result.exit_code == 0:
                    # A mutation that is still a valid template: stored, once; gone again.
                    assert len(now) == len(stored) + 1, result.output
                    clear_templates(world)
                else:
                    assert now == stored, "a refused template stored nothing"
                    assert "template" in result.output.lower(), result.output
                examples += 1

            templates()

            hostile = st.one_of(
                json_leaf,
                st.sampled_from(["-1", "101", "1e9", "0,1,x", "*", "projection:*", "true"]),
            )
            operations = open_operations(context)

            @seed(trial.seed)
            @hypothesis_settings(10)
            @given(
                flag=st.one_of(st.sampled_from(["auto_redrive", "auto_catch_up"]), hostile),
                target=st.one_of(st.just("projection:run_status"), hostile),
                values=st.dictionaries(
                    st.sampled_from(
                        ["enabled", "share", "partitions", "backlog_threshold",
                         "max_restarts", "window_seconds", "all_partitions"]
                    ),
                    hostile,
                    max_size=3,
                ),
            )  # fmt: skip
            def flags(flag: Any, target: Any, values: dict[str, Any]) -> None:
                nonlocal examples
                before = flag_rows(world)
                try:
                    operations.run(  # noqa: B023
                        admin, "flags.set", reason="x", flag=flag, target=target, **values
                    )
                except RecoveryError as exc:
                    assert flag_rows(world) == before, f"refused ({exc}) but changed"  # noqa: PT017
                else:
                    operations.run(admin, "flags.unset", reason="x", flag=flag, target=target)  # noqa: B023
                examples += 1

            flags()
            trial.fault(examples)
            trial.checked(examples)

    @staticmethod
    def call_routes(
        world: ApiWorld,
        rng: Any,
        schema: Schema,
        routes: list[tuple[Any, str]],
        bearers: dict[str, str | None],
        shown: list[str],
    ) -> None:
        """Each of ``routes`` once, each by a random bearer."""
        for route, method in routes:
            path, body = schema.call(route, method)
            who = rng.choice(sorted(bearers))
            token = bearers[who]
            headers = {} if token is None else {"Authorization": f"Bearer {token}"}
            # A signed-in caller may meet the path's own checks first (a template name
            # is [a-z0-9-]: 422); a caller without a valid token never gets that far.
            expected = {403, 422} if who == "mallory" else {401}
            if who == "mallory" and route.path in OWN:
                expected.add(200)
            if body is not None and rng.random() < 0.5:
                body = {k: rng.choice(HOSTILE) for k in body} or rng.choice(HOSTILE)
                expected.add(422)  # the schema is public: refused before the caller
            response = world.client.request(method, path, json=body, headers=headers)
            assert response.status_code in expected, (who, method, path, response.text)
            shown.append(response.text)


def select_templates(world: ApiWorld) -> list[tuple[Any, ...]]:
    return sorted(
        (r["name"], r["version"]) for r in rows_of(world, "SELECT name, version FROM {templates}")
    )


def clear_templates(world: ApiWorld) -> None:
    database = world.context.database
    with database.transaction(write=True) as tx:
        tx.execute("DELETE FROM {templates}")


def flag_rows(world: ApiWorld) -> list[str]:
    return sorted(map(repr, (tuple(r.values()) for r in rows_of(world, "SELECT * FROM {flags}"))))


def rows_of(world: ApiWorld, template: str) -> list[dict[str, Any]]:
    world.context.ensure_schema()
    with world.context.database.transaction(write=False) as tx:
        return list(tx.rows(template))


class TestSQLiteSurface(SurfaceContract):
    backend = "sqlite"


@pytest.mark.postgres
class TestPostgresSurface(SurfaceContract):
    backend = "postgres"

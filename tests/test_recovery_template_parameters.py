"""Template parameters, ``templates list`` and the commands' ``--dry-run``, through the CLI.

- a template declares what an operator may set (``[parameters]``, each with a type
  and bounds); ``plan`` and ``apply`` take ``--set NAME=VALUE``, refusing (exit 2,
  nothing changed) a value outside its bounds or a parameter not declared;
- ``templates list`` shows the shipped runbooks beside the stored templates;
- ``--dry-run`` on ``rebuild``, ``catch-up``, ``replay`` and ``parked redrive``
  prints the plan ``plan`` would, and changes nothing.

The same contract on SQLite and PostgreSQL (the drill tests' live stores: a
recorded workload with its projections built live).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from test_recovery_drill import LiveStore, PostgresLiveStore, SQLiteLiveStore, World

from safereplay.domain.workload import record_workload
from safereplay.recovery.errors import InvalidTemplate
from safereplay.recovery.security.access import Role
from safereplay.recovery.templates.model import RUNBOOKS, parse_template

ORG_TEMPLATE = """\
[template]
name = "org-rebuild"
kind = "rebuild"

[scope]
projections = ["run_status"]
partitions = 2

[parameters]
projection = { type = "projection", allowed = ["run_status", "failed_steps"] }
partitions = { type = "integer", min = 1, max = 8 }
"""


class ParameterContract(LiveStore):
    @pytest.fixture
    def tokens(self, world: World) -> dict[str, str]:
        access = world.context.access
        access.add_principal("ada", kind="person", created_by="setup")
        access.grant("ada", Role.ADMIN, "*", granted_by="setup")
        # A viewer of one projection only: what it may plan depends on what it sets.
        access.add_principal("rita", kind="person", created_by="setup")
        access.grant("rita", Role.VIEWER, "projection:run_status", granted_by="setup")
        return {name: access.issue_token(name) for name in ("ada", "olga", "vic", "rita")}

    def json(self, world: World, token: str, *args: str) -> Any:
        code, out = self.cli(world, token, *args, "--json")
        assert code == 0, out
        return json.loads(out)

    # -- parameters ------------------------------------------------------------------------

    def test_set_values_within_bounds_are_planned(
        self, world: World, tokens: dict[str, str]
    ) -> None:
        before = self.dump(world)
        plan = self.json(
            world,
            tokens["vic"],
            *("plan", "bad-projection-code", "--set", "projection=run_status"),
            *("--set", "max_rate=500", "--set", "partitions=2"),
        )
        [projection] = plan["projections"]
        assert projection["projection"] == "run_status", "the runbook pointed elsewhere"
        assert plan["partition_count"] == 2 and len(projection["partitions"]) == 2
        assert plan["throttle"]["events_per_second"] == 500
        assert plan["settings"] == {
            "projection": "run_status",
            "max_rate": "500",
            "partitions": "2",
        }
        assert "with projection=run_status, max_rate=500, partitions=2" in plan["origin"]
        assert projection["tables"] == ["run_status__runs__b2"]
        assert plan["estimate"]["events_per_second"] <= 500
        replay = self.json(
            world,
            tokens["vic"],
            *("plan", "replay-range", "--set", "projection=run_status"),
            *("--set", "from=2", "--set", "to=5"),
        )
        assert {(p["after"], p["upto"]) for p in replay["projections"][0]["partitions"]} == {(1, 5)}
        assert self.dump(world) == before

    @pytest.mark.parametrize(
        ("template", "setting", "message"),
        [
            (
                "bad-projection-code",
                "max_rate=5",
                "'max_rate' = 5 is out of bounds: it must be between 100 and 100000",
            ),
            (
                "bad-projection-code",
                "partitions=1",
                "'partitions' = 1 is out of bounds: it must be between 2 and 64",
            ),
            ("bad-projection-code", "partitions=two", "'partitions' must be a whole number"),
            (
                "bad-projection-code",
                "projection=nope",
                "'projection' = 'nope' is refused: it is not a registered projection",
            ),
            (
                "poison-event",
                "max_rate=500",
                "does not declare a parameter 'max_rate' (it declares: projection",
            ),
            ("rotate-key", "projection=run_status", "does not declare a parameter 'projection'"),
            ("replay-range", "from=0", "'from' = 0 is out of bounds: it must be at least 1"),
            ("bad-projection-code", "max_rate", "--set takes NAME=VALUE"),
        ],
    )
    def test_values_out_of_bounds_or_undeclared_are_refused_changing_nothing(
        self, world: World, tokens: dict[str, str], template: str, setting: str, message: str
    ) -> None:
        before = self.dump(world)
        for command in (
            ["plan", template],
            ["apply", template, "--reason", "INC-1", "--workers", "1"],
        ):
            code, out = self.cli(world, tokens["ada"], *command, "--set", setting)
            assert code == 2, out
            assert message in " ".join(out.split()), out
        assert self.dump(world) == before, "nothing planned, no job, no build"

    def test_a_stored_template_bounds_its_projections(
        self, world: World, tokens: dict[str, str], tmp_path: Path
    ) -> None:
        path = tmp_path / "org.toml"
        path.write_text(ORG_TEMPLATE)
        code, out = self.cli(world, tokens["ada"], "templates", "add", str(path), "-r", "ours")
        assert code == 0, out
        code, out = self.cli(
            world, tokens["ada"], "plan", "org-rebuild", "--set", "projection=workflow_stats"
        )
        assert code == 2, out
        assert "is not one of the projections this template allows" in " ".join(out.split())
        plan = self.json(
            world, tokens["ada"], "plan", "org-rebuild", "--set", "projection=failed_steps"
        )
        assert plan["projections"][0]["projection"] == "failed_steps"

    def test_the_projection_set_is_the_one_whose_grant_is_checked(
        self, world: World, tokens: dict[str, str]
    ) -> None:
        # bad-projection-code names workflow_stats; rita may view run_status only.
        code, out = self.cli(world, tokens["rita"], "plan", "bad-projection-code")
        assert code == 3, out
        code, out = self.cli(
            world, tokens["rita"], "plan", "bad-projection-code", "--set", "projection=run_status"
        )
        assert code == 0, out
        code, out = self.cli(
            world, tokens["rita"], "plan", "poison-event", "--set", "projection=workflow_stats"
        )
        assert code == 3, out

    def test_apply_runs_the_template_with_the_values_set(
        self, world: World, tokens: dict[str, str]
    ) -> None:
        record_workload(world.app, workflows=1, runs_per_workflow=4, seed=12)
        steps = self.json(
            world,
            tokens["ada"],
            *("apply", "behind-after-outage", "--reason", "INC-2", "--workers", "1"),
            *("--set", "projection=failed_steps", "--set", "partitions=2"),
        )
        assert [(s["projection"], s["operation"], s["outcome"]) for s in steps] == [
            ("failed_steps", "catch-up", "completed")
        ]
        [job] = self.json(world, tokens["ada"], "jobs")
        assert (job["projection"], job["partition_count"]) == ("failed_steps", 2)

    # -- templates list --------------------------------------------------------------------

    def test_templates_list_shows_shipped_runbooks_beside_stored_ones(
        self, world: World, tokens: dict[str, str], tmp_path: Path
    ) -> None:
        shipped = sorted(path.stem for path in RUNBOOKS.glob("*.toml"))
        listed = self.json(world, tokens["vic"], "templates", "list")
        assert [(t["name"], t["source"]) for t in listed] == [(n, "shipped") for n in shipped]
        by_name = {t["name"]: t for t in listed}
        assert by_name["bad-projection-code"]["parameters"]["max_rate"] == "between 100 and 100000"
        assert by_name["replay-range"]["version"] is None

        path = tmp_path / "org.toml"
        path.write_text(ORG_TEMPLATE)
        code, out = self.cli(world, tokens["ada"], "templates", "add", str(path), "-r", "ours")
        assert code == 0, out
        listed = self.json(world, tokens["vic"], "templates", "list")
        assert ("org-rebuild", "stored", 1, "ada") in [
            (t["name"], t["source"], t["version"], t["author"]) for t in listed
        ]
        code, out = self.cli(world, tokens["vic"], "templates", "list")
        assert code == 0, out
        assert "shipped" in out and "stored" in out and "org-rebuild" in out

    # -- dry runs ---------------------------------------------------------------------------

    @pytest.mark.parametrize(
        "command",
        [
            ["rebuild", "run_status", "--partitions", "2", "--max-rate", "700"],
            ["catch-up", "workflow_stats", "--partitions", "2"],
            ["replay", "failed_steps", "--from", "1", "--to", "8"],
            ["replay", "run_status", "--from", "2", "--to", "6", "--into", "live"],
            ["parked", "redrive", "run_status"],
        ],
        ids=["rebuild", "catch-up", "replay", "replay-live", "redrive"],
    )
    def test_a_dry_run_prints_the_plan_and_changes_nothing(
        self, world: World, tokens: dict[str, str], command: list[str]
    ) -> None:
        record_workload(world.app, workflows=1, runs_per_workflow=3, seed=13)  # behind
        before = self.dump(world)
        dry = [*command, "--reason", "looking first", "--dry-run"]
        code, out = self.cli(world, tokens["olga"], *dry)
        assert code == 0, out
        said = " ".join(out.split())
        assert "events in scope:" in said and "changed: nothing" in said
        plan = self.json(world, tokens["olga"], *dry)
        assert plan["origin"].startswith("dry run of `safereplay ")
        [projection] = plan["projections"]
        assert projection["projection"] == command[2 if command[0] == "parked" else 1]
        assert self.dump(world) == before, "a dry run changes nothing"
        assert self.json(world, tokens["olga"], "jobs") == []
        audited = [
            e for e in self.json(world, tokens["ada"], "audit", "list") if e["action"] == "plan"
        ]
        assert [e["outcome"] for e in audited] == ["succeeded"] * 2, "audited as plans (reads)"

    def test_a_dry_run_is_the_plan_of_the_same_template(
        self, world: World, tokens: dict[str, str]
    ) -> None:
        record_workload(world.app, workflows=1, runs_per_workflow=3, seed=14)
        planned = self.json(
            world,
            tokens["olga"],
            *("plan", "behind-after-outage", "--set", "projection=failed_steps"),
            *("--set", "max_rate=600", "--set", "partitions=4", "--set", "max_concurrent=2"),
        )
        dry = self.json(
            world,
            tokens["olga"],
            *("catch-up", "failed_steps", "-r", "look", "--dry-run", "--partitions", "4"),
            *("--max-rate", "600", "--max-concurrent", "2"),
        )
        for key in ("projections", "events", "tables", "partition_count", "head", "throttle"):
            assert dry[key] == planned[key], key
        assert dry["events"] > 0, "the workload recorded since the build is in scope"

        rebuild = self.json(world, tokens["olga"], "rebuild", "run_status", "-r", "x", "--dry-run")
        [projection] = rebuild["projections"]
        assert (projection["live_build"], projection["writes_build"]) == (1, 2)
        assert "a new build 2 beside the live build 1" in projection["notes"][0]
        sandbox = self.json(
            world,
            tokens["olga"],
            "replay",
            "run_status",
            "--from",
            "1",
            "--to",
            "3",
            "-r",
            "x",
            "--dry-run",
        )
        assert sandbox["projections"][0]["writes_build"] == 2
        assert "sandbox build 2" in sandbox["projections"][0]["notes"][0]

    def test_a_dry_run_is_refused_as_the_command_would_be(
        self, world: World, tokens: dict[str, str]
    ) -> None:
        before = self.dump(world)
        code, out = self.cli(world, tokens["olga"], "rebuild", "nope", "-r", "x", "--dry-run")
        assert code == 2 and "nope" in out, out
        code, out = self.cli(
            world,
            tokens["olga"],
            "replay",
            "run_status",
            "--from",
            "9",
            "--to",
            "3",
            "-r",
            "x",
            "--dry-run",
        )
        assert code == 2 and "before" in out, out
        assert self.dump(world) == before


class TestSQLiteParameters(SQLiteLiveStore, ParameterContract):
    pass


@pytest.mark.postgres
class TestPostgresParameters(PostgresLiveStore, ParameterContract):
    pass


# -- declarations, checked when a template is loaded ------------------------------------------


@pytest.mark.parametrize(
    ("declaration", "problem"),
    [
        ('speed = { type = "number" }', "parameters.speed: not a parameter a template can declare"),
        ('partitions = { type = "number" }', "parameters.partitions: is of type 'integer'"),
        ('from = { type = "integer" }', "a rebuild template has no from to set"),
        (
            'partitions = { type = "integer", min = 8 }',
            "the template's own value 2 is not at least 8",
        ),
        ('partitions = { type = "integer", min = 4, max = 2 }', "max (2) is below min (4)"),
        (
            'projection = { type = "projection", allowed = ["failed_steps"] }',
            "['run_status'] are not allowed",
        ),
        ('partitions = { type = "integer", step = 2 }', "step"),
    ],
)
def test_a_template_with_a_bad_parameter_declaration_is_rejected(
    declaration: str, problem: str
) -> None:
    text = ORG_TEMPLATE.split("[parameters]")[0] + "[parameters]\n" + declaration + "\n"
    with pytest.raises(InvalidTemplate) as rejected:
        parse_template(text)
    assert problem in str(rejected.value)


def test_every_shipped_runbook_declares_what_points_it_elsewhere() -> None:
    for path in sorted(RUNBOOKS.glob("*.toml")):
        template = parse_template(path.read_text(), source=str(path))
        if template.template.kind != "reencrypt":
            assert "projection" in template.parameters, path.stem
        assert template.parameters, path.stem

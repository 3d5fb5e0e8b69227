"""Least privilege, exhaustively: every operation of the dispatch layer, and every CLI
command, refuses a principal without grants before doing anything, and audits it.

The lists below must name every registered operation and every command: a new
one that is not added here fails the coverage checks.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from recovery_fixtures import backend_env
from typer.main import get_command
from typer.testing import CliRunner

from safereplay.domain import AutomationApp, DomainSettings
from safereplay.domain.workload import record_workload
from safereplay.recovery.cli.app import app
from safereplay.recovery.database import SQLiteDatabase
from safereplay.recovery.operations.catalog import open_operations
from safereplay.recovery.operations.context import RecoveryContext
from safereplay.recovery.operations.security import bootstrap_admin
from safereplay.recovery.security.access import AccessDenied
from safereplay.recovery.security.audit import AuditKey
from safereplay.recovery.settings import RecoverySettings


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def world(
    request: pytest.FixtureRequest, tmp_path: Path, key_file: Path
) -> Iterator[dict[str, Any]]:
    """One backend's recovery database with an admin, a planned job and 'mallory'."""
    AuditKey.generate().save(tmp_path / "audit.key")
    if request.param == "sqlite":
        settings = DomainSettings.from_env(
            backend="sqlite", sqlite_path=tmp_path / "events.db", key_file=key_file
        )
    else:
        settings = request.getfixturevalue("postgres_settings")()
    with AutomationApp(settings) as application:
        record_workload(application, workflows=1, runs_per_workflow=3, seed=2)
    context = RecoveryContext(
        domain=settings, recovery=RecoverySettings(audit_key_file=tmp_path / "audit.key")
    )
    admin = context.access.authenticate(bootstrap_admin(context, "ada"))
    job = open_operations(context).run(admin, "rebuild", reason="setup", projection="run_status")
    context.access.add_principal("mallory", kind="person", created_by="ada")
    token = context.access.issue_token("mallory")
    template = tmp_path / "t.toml"
    template.write_text(
        '[template]\nname = "x"\nkind = "rebuild"\n[scope]\nprojections = ["run_status"]\n'
    )
    yield {
        "context": context,
        "admin": admin,
        "mallory": context.access.authenticate(token),
        "job_id": job["job_id"],
        "template": str(template),
        "env": backend_env(settings)
        | {"SAFEREPLAY_AUDIT_KEY_FILE": str(tmp_path / "audit.key"), "SAFEREPLAY_TOKEN": token},
    }
    context.close()


def parameters(world: dict[str, Any]) -> dict[str, Any]:
    """Enough parameters for any operation to derive its scope."""
    return {
        "projection": "run_status",
        "job_id": world["job_id"],
        "name": "eve",
        "kind": "person",
        "role": "viewer",
        "grant_scope": "*",
        "key_id": "k9",
        "template": world["template"],
        "text": Path(world["template"]).read_text(),
        "build": 1,
        "partition": 0,
        "start": 1,
        "end": 2,
        "projections": ["run_status"],
        "table": "runs",
        "position": 1,
        "reaction": "run_completions",
        "conflict_id": "c1",
        "request_id": "0123456789abcdef",
    }


def dump(context: RecoveryContext) -> dict[str, list[str]]:
    """Every table of the store's database but the audit trail's, with all its rows."""
    database = context.database
    tables: dict[str, list[str]] = {}
    if isinstance(database, SQLiteDatabase):
        paths = {database.path, context.domain.sqlite_path}
        for path in paths:
            with sqlite3.connect(path) as conn:
                names = [
                    r[0]
                    for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                ]
                for name in names:
                    if not name.startswith("safereplay_audit"):
                        rows = conn.execute(f'SELECT * FROM "{name}"').fetchall()
                        tables[f"{path}:{name}"] = sorted(map(repr, rows))
        return tables
    assert context.domain.postgres_dsn is not None
    # This world's schemas only: other tests share the server.
    schemas = [
        context.domain.postgres_schema,
        context.projection_settings.postgres_store(context.domain)[1],
    ]
    with psycopg.connect(context.domain.postgres_dsn.get_secret_value()) as conn:
        found = conn.execute(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_schema = ANY(%s) AND table_name NOT LIKE 'safereplay_audit%%'",
            (schemas,),
        ).fetchall()
        for schema, name in found:
            query = sql.SQL("SELECT * FROM {}").format(sql.Identifier(schema, name))
            tables[f"{schema}.{name}"] = sorted(map(repr, conn.execute(query).fetchall()))
    return tables


def test_every_operation_refuses_a_principal_without_grants(world: dict[str, Any]) -> None:
    context = world["context"]
    names = sorted(open_operations(context).specs)
    assert len(names) >= 30
    before = dump(context)
    for name in names:
        with pytest.raises(AccessDenied, match=f"'mallory' may not {name} on"):
            open_operations(context).run(world["mallory"], name, reason="try", **parameters(world))
    denied = [
        e.action
        for e in context.audit.entries(limit=10_000)
        if e.actor == "mallory" and e.outcome == "denied"
    ]
    assert sorted(denied) == names
    assert context.jobs.list_jobs()[0].state == "planned", "nothing ran"
    assert dump(context) == before, "nothing but the audit trail changed"


def test_apply_resolves_no_template_for_a_principal_without_grants(world: dict[str, Any]) -> None:
    """`apply` resolves its template only for a principal who could run one of its steps."""
    context = world["context"]
    before = dump(context)
    calls: list[str] = []
    import safereplay.recovery.cli.apply as cli_apply

    original = cli_apply.planned_template

    def spy(context: Any, parameters: Any) -> Any:
        calls.append(parameters["template"])
        return original(context, parameters)

    cli_apply.planned_template = spy  # type: ignore[assignment]
    try:
        result = CliRunner().invoke(
            app, ["apply", world["template"], "-r", "x", "-w", "1"], env=world["env"]
        )
    finally:
        cli_apply.planned_template = original  # type: ignore[assignment]
    assert result.exit_code == 3, result.output
    assert calls == [], "the template was not even resolved"
    assert dump(context) == before


#: Every command with arguments that would work for someone granted; exit 3 for mallory.
CLI_CALLS: dict[str, list[str]] = {
    "status": [],
    "projections": [],
    "metrics": [],
    "alerts": [],
    "slo history": [],
    "slo watch": ["--turns", "1"],
    "rows": ["run_status", "runs"],
    "jobs": [],
    "pause": ["{job_id}", "-r", "x"],
    "resume": ["{job_id}", "-r", "x"],
    "abort": ["{job_id}", "-r", "x"],
    "continue": ["{job_id}", "-r", "x"],
    "rebuild": ["failed_steps", "-r", "x", "-w", "0"],
    "catch-up": ["failed_steps", "-r", "x", "-w", "0"],
    "worker": ["--exit-when-idle"],
    "follow": ["-p", "run_status"],
    "watch": ["{job_id}"],
    "replay": ["failed_steps", "-r", "x", "--from", "1", "--to", "2", "-w", "0"],
    "swap": ["run_status", "-r", "x"],
    "rollback": ["run_status", "-r", "x"],
    "drop-version": ["run_status", "-r", "x", "--build", "2"],
    "retry-partition": ["{job_id}", "-r", "x", "--partition", "0"],
    "apply": ["{template}", "-r", "x", "-w", "1"],
    "grant": ["mallory", "admin", "*", "-r", "x"],
    "revoke": ["ada", "admin", "*", "-r", "x"],
    "drill": ["run_status", "-r", "x"],
    "drills": ["run_status"],
    "step": ["run_status", "--from", "1"],
    "plan": ["{template}"],
    "parked list": ["run_status"],
    "parked redrive": ["run_status", "-r", "x"],
    "parked skip": ["run_status:1", "-r", "x"],
    "principals list": [],
    "principals add": ["eve", "-r", "x"],
    "token issue": ["mallory", "-r", "x"],
    "token revoke": ["ada", "-r", "x"],
    "audit list": [],
    "audit verify": [],
    "keys add": ["k9", "-r", "x"],
    "keys activate": ["k9", "-r", "x"],
    "keys rotate": ["k9", "-r", "x"],
    "keys usage": [],
    "keys reencrypt": ["-r", "x"],
    "keys retire": ["k9", "-r", "x"],
    "templates add": ["{template}", "-r", "x"],
    "templates update": ["{template}", "-r", "x"],
    "templates list": [],
    "templates show": ["x"],
    "migrate": ["-r", "x"],
    "audit anchor": [],
    "seed": ["--events", "5", "-r", "x"],
    "reactions": [],
    "redeliver": ["run_completions", "-r", "x"],
    "react": ["run_completions", "--once"],
    "conflicts list": [],
    "conflicts resolve": ["c1", "--action", "park", "-r", "x"],
    "flags list": [],
    "flags set": ["auto_redrive", "projection:run_status", "--on", "-r", "x"],
    "flags unset": ["auto_redrive", "projection:run_status", "-r", "x"],
    "flags history": [],
    "switch status": [],
    "switch freeze": ["-r", "x"],
    "switch unfreeze": ["-r", "x"],
    "requests list": [],
    "requests show": ["0123456789abcdef"],
    "requests approve": ["0123456789abcdef", "-r", "x"],
    "requests reject": ["0123456789abcdef", "-r", "x"],
}
#: Commands that need no grant: the demo (its own store), and the first admin's bootstrap
#: (refused once any principal exists, see test_cli_security), and `init`, which makes a
#: new store and its first admin (refused where anything exists, see test_cli_init).
#: `serve` runs nothing itself: each request signs in and is checked (test_api_*), and
#: its --workers run the `worker` operation, checked like `safereplay worker`.
UNGUARDED = {"demo", "principals bootstrap", "init", "serve"}


def all_commands() -> set[str]:
    found: set[str] = set()

    def walk(command: Any, prefix: str) -> None:
        subcommands = getattr(command, "commands", None)
        if subcommands:
            for name, sub in subcommands.items():
                walk(sub, f"{prefix}{name} ")
        else:
            found.add(prefix.strip())

    walk(get_command(app), "")
    return found


def test_the_cli_list_names_every_command() -> None:
    assert set(CLI_CALLS) | UNGUARDED == all_commands()


@pytest.mark.parametrize("command", sorted(CLI_CALLS))
def test_every_command_refuses_a_principal_without_grants(
    command: str, world: dict[str, Any]
) -> None:
    args = [a.format(**world) for a in CLI_CALLS[command]]
    result = CliRunner().invoke(app, [*command.split(), *args], env=world["env"])
    assert result.exit_code == 3, result.output
    assert "'mallory' may not" in result.output
    entries = world["context"].audit.entries(limit=10_000)
    assert entries[-1].actor == "mallory" and entries[-1].outcome == "denied"
    assert (
        json.dumps(entries[-1].parameters, default=str).find(world["env"]["SAFEREPLAY_TOKEN"]) < 0
    )

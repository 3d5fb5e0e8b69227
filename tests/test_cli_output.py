"""Output a person reads and a script parses, on every command.

- Every leaf command of the ``safereplay`` app takes ``--json``, and every argument
  and option is described in its help.
- A representative command of each group prints sentences or tables (never a raw
  Python dict) and, with ``--json``, one JSON document whose times are ISO 8601 UTC.
- Errors under ``--json`` (an unknown job, a denial, a usage error) are the JSON error
  object on standard output with the usual exit code; without ``--json`` they stay a
  paragraph on standard error.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from io import StringIO
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
import typer
from recovery_fixtures import operator_cli_env
from rich.console import Console
from typer.testing import CliRunner

from safereplay.recovery.cli.app import app
from safereplay.recovery.cli.job_messages import say_not_completed
from safereplay.recovery.operations.context import RecoveryContext

ISO_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?\+00:00$")


def leaf_commands() -> Iterator[tuple[str, Any]]:
    """(command path, click command) of every command that runs something."""

    def walk(command: Any, path: str) -> Iterator[tuple[str, Any]]:
        if hasattr(command, "commands"):
            for name, sub in command.commands.items():
                yield from walk(sub, f"{path} {name}".strip())
        else:
            yield path, command

    yield from walk(typer.main.get_command(app), "")


def test_every_command_takes_json_and_describes_every_parameter() -> None:
    commands = dict(leaf_commands())
    assert {"demo", "init", "seed", "migrate", "pause", "grant", "keys add", "audit list"} <= set(
        commands
    )
    without_json = [path for path, c in commands.items() if "--json" not in _options(c)]
    assert without_json == [], "commands without --json"
    undescribed = [
        f"{path}: {p.name}"
        for path, c in commands.items()
        for p in c.params
        if not (getattr(p, "help", None) or "").strip()
    ]
    assert undescribed == [], "parameters without a help text"


def _options(command: Any) -> set[str]:
    return {option for p in command.params for option in getattr(p, "opts", [])}


# -- one command of each group, read by a person and by a script -----------------------------


@dataclass(frozen=True)
class Cli:
    """The command line run in this process, as the operator of a small store."""

    env: dict[str, str]

    def run(self, *args: str, token: str | None = None) -> Any:
        env = self.env if token is None else {**self.env, "SAFEREPLAY_TOKEN": token}
        result = CliRunner().invoke(app, list(args), env=env)
        assert result.exception is None or isinstance(result.exception, SystemExit), (
            result.exception
        )
        return result

    def json(self, *args: str) -> Any:
        result = self.run(*args, "--json")
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    def planned_rebuild(self, projection: str = "run_status", partitions: int = 2) -> str:
        started = self.json(
            "rebuild", projection, "-r", "planned", "-w", "0", "-n", str(partitions)
        )
        return str(started["job_id"])

    def completed_rebuild(self, projection: str = "workflow_stats") -> str:
        """A rebuild beside a live build (a never-built projection's first rebuild is
        its live build 1, with nothing to swap): the first build is made first."""
        projects = self.json("projections")
        listed = projects if isinstance(projects, list) else projects["projections"]
        if any(p["name"] == projection and p.get("live_build") is None for p in listed):
            self.json("catch-up", projection, "-r", "first build", "-w", "1")
        job = self.planned_rebuild(projection)
        self.json("worker", "--job", job, "--exit-when-idle")
        return job

    def viewer_token(self) -> str:
        self.json("principals", "add", "vera", "-r", "a viewer")
        self.json("grant", "vera", "viewer", "projection:*", "-r", "reads only")
        return str(self.json("token", "issue", "vera", "-r", "her token")["token"])


@pytest.fixture
def cli(sqlite_cli_env: dict[str, str]) -> Cli:
    return Cli(operator_cli_env(sqlite_cli_env, workflows=2, runs_per_workflow=4, seed=3))


def _jobs(cli: Cli) -> list[str]:
    cli.completed_rebuild()
    return ["jobs"]


def _swap(cli: Cli) -> list[str]:
    cli.completed_rebuild()
    return ["swap", "workflow_stats", "-r", "verified"]


def _rollback(cli: Cli) -> list[str]:
    cli.completed_rebuild()
    cli.json("swap", "workflow_stats", "-r", "verified")
    return ["rollback", "workflow_stats", "-r", "bad numbers"]


def _drop_version(cli: Cli) -> list[str]:
    cli.completed_rebuild()
    return ["drop-version", "workflow_stats", "--build", "2", "-r", "not needed"]


def _parked_list(cli: Cli) -> list[str]:
    job = cli.json("catch-up", "run_status", "-r", "first build", "-w", "0")["job_id"]
    cli.json("worker", "--job", job, "--exit-when-idle")
    return ["parked", "list", "run_status"]


def _grant(cli: Cli) -> list[str]:
    cli.json("principals", "add", "olga", "-r", "new operator")
    return ["grant", "olga", "operator", "projection:run_status", "-r", "on call"]


def _revoke(cli: Cli) -> list[str]:
    cli.viewer_token()
    return ["revoke", "vera", "viewer", "projection:*", "-r", "left"]


def _token_revoke(cli: Cli) -> list[str]:
    cli.viewer_token()
    return ["token", "revoke", "vera", "-r", "left"]


#: By group: what each test sets up, returning the command line to check.
CASES: dict[str, Callable[[Cli], list[str]]] = {
    "status": lambda cli: ["status"],
    "projections": lambda cli: ["projections"],
    "metrics": lambda cli: ["metrics"],
    "jobs": _jobs,
    "pause": lambda cli: ["pause", cli.planned_rebuild(), "-r", "hold on"],
    "abort": lambda cli: ["abort", cli.planned_rebuild(), "-r", "not needed"],
    "rebuild": lambda cli: ["rebuild", "run_status", "-r", "later", "-w", "0"],
    "replay": lambda cli: [
        "replay",
        "run_status",
        "--from",
        "1",
        "--to",
        "5",
        "-r",
        "x",
        "-w",
        "0",
    ],
    "worker": lambda cli: ["worker", "--job", cli.planned_rebuild(), "--exit-when-idle"],
    "swap": _swap,
    "rollback": _rollback,
    "drop-version": _drop_version,
    "parked list": _parked_list,
    "principals list": lambda cli: ["principals", "list"],
    "principals add": lambda cli: ["principals", "add", "olga", "-r", "new operator"],
    "grant": _grant,
    "revoke": _revoke,
    "token revoke": _token_revoke,
    "audit list": lambda cli: ["audit", "list", "--limit", "5"],
    "audit verify": lambda cli: ["audit", "verify"],
    "keys usage": lambda cli: ["keys", "usage"],
    "keys add": lambda cli: ["keys", "add", "k2", "-r", "next key"],
    "templates list": lambda cli: ["templates", "list"],
    "plan": lambda cli: ["plan", "bad-projection-code"],
    "drills": lambda cli: ["drills", "workflow_stats"],
    "step": lambda cli: ["step", "workflow_stats", "--from", "1", "--count", "3"],
    "migrate": lambda cli: ["migrate", "-r", "upgrade"],
    "seed": lambda cli: ["seed", "--events", "5", "-r", "more"],
}

#: Human output that shows a Python dict or list of dicts as it was printed before.
DICT_REPR = re.compile(r"\{'|': ")


@pytest.mark.parametrize("case", CASES)
def test_a_person_reads_sentences_and_tables(cli: Cli, case: str) -> None:
    command = CASES[case](cli)
    result = cli.run(*command)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() or result.stderr.strip(), "says nothing"
    assert not DICT_REPR.search(result.stdout), result.stdout


@pytest.mark.parametrize("case", CASES)
def test_a_script_parses_json_with_iso_times(cli: Cli, case: str) -> None:
    command = CASES[case](cli)
    document = cli.json(*command)
    for key, value in _time_fields(document):
        assert ISO_UTC.match(value), f"{key}: {value!r} is not ISO 8601 UTC"


def test_job_times_are_iso_8601_utc(cli: Cli) -> None:
    cli.completed_rebuild()
    jobs = cli.json("jobs")
    assert jobs, "the first build's catch-up and the rebuild are listed"
    times = dict(_time_fields(jobs[0]))
    assert {"created_at", "updated_at", "started_at"} <= set(times)
    assert all(ISO_UTC.match(value) for value in times.values()), times
    status = cli.json("status")
    assert ISO_UTC.match(status["taken_at"]), status["taken_at"]


def _time_fields(document: Any) -> Iterator[tuple[str, str]]:
    """(key, value) of every time in a JSON document, by the names the CLI gives them."""
    if isinstance(document, list):
        for item in document:
            yield from _time_fields(item)
    elif isinstance(document, dict):
        for key, value in document.items():
            if (key == "at" or key.endswith(("_at", "_since"))) and value is not None:
                assert isinstance(value, str), f"{key}: {value!r} is not a time text"
                yield key, value
            else:
                yield from _time_fields(value)


def test_init_tells_a_person_and_a_script(tmp_path: Path) -> None:
    clean = {"SAFEREPLAY_TOKEN": None, "SAFEREPLAY_TOKEN_FILE": None}
    result = CliRunner().invoke(app, ["init", "--dir", str(tmp_path / "a")], env=clean)
    assert result.exit_code == 0, result.output
    assert "export SAFEREPLAY_BACKEND=sqlite" in result.stdout
    assert not DICT_REPR.search(result.stdout)
    result = CliRunner().invoke(app, ["init", "--dir", str(tmp_path / "b"), "--json"], env=clean)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["admin"] == "admin" and "sr_" not in result.stdout
    assert Path(report["token_file"]).is_file()


def test_a_failed_partition_names_its_error_and_the_next_commands(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = cli.planned_rebuild(partitions=1)
    for name, value in cli.env.items():
        monkeypatch.setenv(name, value)
    context = RecoveryContext.from_env()
    try:
        claim = context.jobs.claim("a worker", lease_seconds=60, job_id=UUID(job))
        assert claim is not None
        context.jobs.finish_partition(claim, succeeded=False, error="cannot decrypt position 7")
        context.jobs.finalize(UUID(job))
        status = context.jobs.status(UUID(job))
    finally:
        context.close()
    shown = StringIO()
    say_not_completed(status, out=Console(file=shown, width=100))
    assert f"job {job} is failed" in shown.getvalue()
    assert "partition 0 failed: cannot decrypt position 7" in shown.getvalue()
    assert f"`safereplay retry-partition {job} --partition 0 --reason ...`" in shown.getvalue()

    result = cli.run("retry-partition", job, "--partition", "0", "-r", "key restored")
    assert result.exit_code == 0, result.output
    assert f"`safereplay worker --job {job} --exit-when-idle`" in result.stdout


# -- errors under --json ---------------------------------------------------------------------


def _error(result: Any) -> dict[str, Any]:
    document = json.loads(result.stdout)
    assert set(document) == {"error"}, document
    assert set(document["error"]) == {"code", "exit_code", "message"}, document
    assert document["error"]["exit_code"] == result.exit_code
    return dict(document["error"])


def test_an_unknown_job_is_a_json_error(cli: Cli) -> None:
    result = cli.run("pause", "0000dead", "-r", "x", "--json")
    assert result.exit_code == 2
    error = _error(result)
    assert error["code"] == "invalid" and "0000dead" in error["message"]

    result = cli.run("pause", "0000dead", "-r", "x")
    assert result.exit_code == 2 and result.stdout == ""
    assert "0000dead" in result.stderr


def test_a_finished_job_is_a_json_conflict(cli: Cli) -> None:
    job = cli.completed_rebuild()
    error = _error(cli.run("pause", job, "-r", "x", "--json"))
    assert (error["code"], error["exit_code"]) == ("conflict", 5)


def test_a_denial_is_a_json_error(cli: Cli) -> None:
    viewer = cli.viewer_token()
    result = cli.run("rebuild", "run_status", "-r", "x", "-w", "0", "--json", token=viewer)
    assert result.exit_code == 3
    error = _error(result)
    assert error["code"] == "denied" and "'vera' may not rebuild" in error["message"]
    assert viewer not in result.stdout

    result = cli.run("status", "--json", token="sr_0123456789abcdef.nottherightsecretatall")
    assert result.exit_code == 4
    assert _error(result)["code"] == "unauthenticated"


@pytest.mark.parametrize(
    "command",
    [
        ["rebuild", "run_status", "-r", "x", "--bogus", "--json"],
        ["rebuild", "run_status", "-r", "x", "--partitions", "0", "--json"],
        ["rebuild", "--json"],
    ],
    ids=["unknown option", "bad value", "missing argument"],
)
def test_a_usage_error_is_a_json_error(cli: Cli, command: list[str]) -> None:
    result = cli.run(*command)
    assert result.exit_code == 2
    error = _error(result)
    assert error["code"] == "invalid"
    assert "safereplay rebuild --help" in error["message"]


def test_a_usage_error_without_json_stays_on_stderr(cli: Cli) -> None:
    result = cli.run("rebuild", "run_status", "-r", "x", "--bogus")
    assert result.exit_code == 2 and result.stdout == ""
    assert "No such option" in result.stderr


def test_a_token_on_the_command_line_is_refused_as_json_without_echoing_it(cli: Cli) -> None:
    token = cli.viewer_token()
    result = cli.run("pause", token, "-r", "x", "--json")
    assert result.exit_code == 4
    assert _error(result)["code"] == "unauthenticated"
    assert token not in result.output and token.split(".")[0] not in result.output

"""From nothing to a working store on the command line: `init`, `seed`, and the demo's
hand-over; `init` refuses to overwrite anything."""

from __future__ import annotations

import json
import shlex
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from safereplay.recovery.cli.app import app
from safereplay.recovery.errors import InvalidRequest
from safereplay.recovery.operations import initialise

BASE = {"SAFEREPLAY_TOKEN": None, "SAFEREPLAY_TOKEN_FILE": None}


def invoke(env: dict[str, str | None], *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args), env={**BASE, **env})
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout, result.stderr


def exports(stdout: str) -> dict[str, str]:
    values = {}
    for line in stdout.splitlines():
        if line.startswith("export "):
            name, _, value = line.removeprefix("export ").partition("=")
            values[name] = shlex.split(value)[0]
    return values


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_init_then_seed_then_the_runbook_works(tmp_path: Path) -> None:
    home = tmp_path / "store"
    code, out, err = invoke({"SAFEREPLAY_BACKEND": None}, "init", "--dir", str(home))
    assert code == 0, err
    env: dict[str, str | None] = dict(exports(out))
    assert env == {
        "SAFEREPLAY_BACKEND": "sqlite",
        "SAFEREPLAY_SQLITE_PATH": str(home / "events.db"),
        "SAFEREPLAY_KEY_FILE": str(home / "keyring.json"),
        "SAFEREPLAY_AUDIT_KEY_FILE": str(home / "audit.key"),
        "SAFEREPLAY_TOKEN_FILE": str(home / "admin.token"),
    }
    for name in ("keyring.json", "audit.key", "admin.token"):
        assert stat.S_IMODE((home / name).stat().st_mode) == 0o600, name
    token = (home / "admin.token").read_text().strip()
    assert token.startswith("sr_") and token not in out + err
    assert "admin.token" in err

    code, out, err = invoke(env, "seed", "--events", "200", "-r", "first events", "--json")
    assert code == 0, err
    seeded = json.loads(out)
    assert seeded["events"] >= 200 and seeded["head_position"] == seeded["events"]
    code, out, err = invoke(env, "catch-up", "run_status", "-r", "first build", "-w", "1")
    assert code == 0, err + out
    code, out, err = invoke(env, "status", "--json")
    assert code == 0, err
    [run_status] = [p for p in json.loads(out)["projections"] if p["name"] == "run_status"]
    assert all(part["backlog"] == 0 for part in run_status["partitions"])
    code, out, err = invoke(env, "audit", "list", "--json")
    actions = [(e["actor"], e["action"], e["outcome"]) for e in json.loads(out)]
    assert ("bootstrap", "migrate", "succeeded") in actions
    assert ("admin", "principals.bootstrap", "succeeded") in actions
    assert ("admin", "seed", "succeeded") in actions
    assert invoke(env, "audit", "verify")[0] == 0


def test_init_refuses_to_overwrite_and_changes_nothing(tmp_path: Path) -> None:
    home = tmp_path / "store"
    assert invoke({"SAFEREPLAY_BACKEND": None}, "init", "--dir", str(home))[0] == 0
    before = snapshot(home)
    code, out, err = invoke({"SAFEREPLAY_BACKEND": None}, "init", "--dir", str(home))
    assert code == 2 and "refusing to initialise" in err and "nothing was changed" in err
    assert out == "" and "Traceback" not in err
    assert snapshot(home) == before

    # Only one of its files there (a store made some other way): refused as well.
    other = tmp_path / "other"
    other.mkdir()
    (other / "events.db").write_bytes(b"")
    code, _, err = invoke({"SAFEREPLAY_BACKEND": None}, "init", "--dir", str(other))
    assert code == 2 and "events.db" in err
    assert sorted(p.name for p in other.iterdir()) == ["events.db"]


def test_a_failed_init_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "store"
    code, _, err = invoke(
        {"SAFEREPLAY_BACKEND": None, "SAFEREPLAY_KEYS": "a ring as well"},
        "init",
        "--dir",
        str(home),
    )
    assert code == 2 and "Traceback" not in err, err
    assert not home.exists()

    # A failure after the keys and the store were written: they are removed again,
    # so that init can simply be run again.
    def refuse(*args: object) -> str:
        raise InvalidRequest("the admin could not be created")

    monkeypatch.setattr(initialise, "bootstrap_admin", refuse)
    code, _, err = invoke({"SAFEREPLAY_BACKEND": None}, "init", "--dir", str(home))
    assert code == 2 and "the admin could not be created" in err
    assert not home.exists()
    monkeypatch.undo()
    assert invoke({"SAFEREPLAY_BACKEND": None}, "init", "--dir", str(home))[0] == 0


def test_seed_needs_a_grant_and_a_reason(tmp_path: Path) -> None:
    home = tmp_path / "store"
    code, out, _ = invoke({"SAFEREPLAY_BACKEND": None}, "init", "--dir", str(home))
    env: dict[str, str | None] = dict(exports(out))
    code, _, err = invoke(env, "seed", "--events", "10")
    assert code == 2 and "--reason" in err
    token = (home / "admin.token").read_text().strip()
    code, out, err = invoke(
        {**env, "SAFEREPLAY_TOKEN_FILE": None, "SAFEREPLAY_TOKEN": token},
        "principals",
        "add",
        "vera",
        "-r",
        "viewer",
    )
    assert code == 0, err


def test_init_on_postgres(postgres_dsn: str, pg_schema: str, tmp_path: Path) -> None:
    env: dict[str, str | None] = {
        "SAFEREPLAY_BACKEND": "postgres",
        "SAFEREPLAY_POSTGRES_DSN": postgres_dsn,
        "SAFEREPLAY_POSTGRES_SCHEMA": pg_schema,
    }
    code, out, err = invoke(env, "init", "--dir", str(tmp_path / "keys"), "--admin", "ada")
    assert code == 0, err
    values = exports(out)
    assert values["SAFEREPLAY_BACKEND"] == "postgres"
    assert values["SAFEREPLAY_POSTGRES_SCHEMA"] == pg_schema
    assert "SAFEREPLAY_POSTGRES_DSN" not in values  # never printed
    assert values["SAFEREPLAY_TOKEN_FILE"] == str(tmp_path / "keys" / "ada.token")
    code, out, err = invoke({**env, **values}, "seed", "--events", "50", "-r", "pg", "--json")
    assert code == 0, err
    code, _, err = invoke(env, "init", "--dir", str(tmp_path / "again"))
    assert code == 2 and "already has principals" in err
    assert not (tmp_path / "again").exists()


def test_the_demo_hands_its_store_over(tmp_path: Path) -> None:
    home = tmp_path / "demo"
    code, out, err = invoke({}, "demo", "--directory", str(home), "--workflows", "3", "--runs", "8")
    assert code == 0, out + err
    token_file = home / "demo-operator.token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert token_file.read_text().strip() not in out
    env: dict[str, str | None] = dict(exports(out))
    assert env["SAFEREPLAY_TOKEN_FILE"] == str(token_file.absolute())
    code, out, err = invoke(env, "jobs", "--json")
    assert code == 0, err
    assert {j["kind"] for j in json.loads(out)} >= {"rebuild"}


def test_principals_bootstrap_writes_its_token_to_a_0600_file_and_never_prints_it(
    sqlite_cli_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env: dict[str, str | None] = dict(sqlite_cli_env)
    taken = tmp_path / "taken.token"
    taken.write_text("someone else's\n")
    code, out, err = invoke(env, "principals", "bootstrap", "ada", "--token-file", str(taken))
    assert code == 2 and "it exists (nothing was created)" in err, err
    assert taken.read_text() == "someone else's\n"

    monkeypatch.chdir(tmp_path)  # the default is ./NAME.token
    code, out, err = invoke(env, "principals", "bootstrap", "ada")
    assert code == 0, err
    token_file = tmp_path / "ada.token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = token_file.read_text().strip()
    assert token.startswith("sr_") and token not in out + err
    assert exports(out) == {"SAFEREPLAY_TOKEN_FILE": str(token_file)}
    code, out, err = invoke({**env, **exports(out)}, "principals", "list", "--json")
    assert code == 0 and [p["name"] for p in json.loads(out)] == ["ada"], err

    # Refused once a principal exists: the token file it would have written is not left.
    code, out, err = invoke(env, "principals", "bootstrap", "bob")
    assert code == 2 and "principals already exist" in err
    assert not (tmp_path / "bob.token").exists()
    code, out, err = invoke(env, "principals", "bootstrap", "ada")
    assert code == 2 and "it exists" in err, "an existing token file is never overwritten"

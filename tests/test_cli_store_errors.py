"""A store that is missing, misplaced or unreachable is one clear message and an exit
code, never a traceback, and the command creates nothing."""

from __future__ import annotations

import time
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from typer.testing import CliRunner

from safereplay.recovery.cli.app import app

READS = (["status"], ["jobs"], ["audit", "verify"])


def run(env: dict[str, str], *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), env={**env, "SAFEREPLAY_TOKEN": "sr_x.y"})
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def files(directory: Path) -> set[str]:
    return {str(p.relative_to(directory)) for p in directory.rglob("*")}


def test_reads_on_a_missing_sqlite_store_create_nothing(
    tmp_path: Path, sqlite_cli_env: dict[str, str]
) -> None:
    before = files(tmp_path)
    for command in READS:
        code, out = run(sqlite_cli_env, *command)
        assert code == 2, (command, out)
        assert f"no store at '{tmp_path / 'events.db'}'" in out and "safereplay init" in out
        assert "Traceback" not in out
    assert files(tmp_path) == before  # no events.db, no -wal, nothing


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("missing-dir/events.db", "the directory"),
        ("a-directory", "is a directory, not a SQLite file"),
        ("not-a-db", "cannot open it as a SQLite database: file is not a database"),
    ],
)
def test_bad_sqlite_paths(
    tmp_path: Path, sqlite_cli_env: dict[str, str], where: str, expected: str
) -> None:
    (tmp_path / "a-directory").mkdir()
    (tmp_path / "not-a-db").write_bytes(b"these are not the bytes of a SQLite file" * 100)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    env = {**sqlite_cli_env, "SAFEREPLAY_SQLITE_PATH": str(tmp_path / where)}
    for command in (*READS, ["rebuild", "run_status", "-r", "x"], ["migrate", "-r", "x"]):
        code, out = run(env, *command)
        assert code == 2 and expected in out, (command, out)
        assert "Traceback" not in out and "OperationalError" not in out
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before


def _with(dsn: str, **changes: object) -> str:
    params = conninfo_to_dict(dsn)
    params.update({k: str(v) for k, v in changes.items()})
    return make_conninfo("", **params)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"port": 1, "host": "127.0.0.1"}, "Connection refused"),
        ({"dbname": "no_such_database_sr"}, 'database "no_such_database_sr" does not exist'),
        ({"user": "no_such_role_sr"}, 'role "no_such_role_sr" does not exist'),
    ],
)
def test_unreachable_or_misconfigured_postgres_says_why_at_once(
    postgres_dsn: str,
    key_file: Path,
    tmp_path: Path,
    changes: dict[str, object],
    expected: str,
) -> None:
    env = {
        "SAFEREPLAY_BACKEND": "postgres",
        "SAFEREPLAY_POSTGRES_DSN": _with(postgres_dsn, connect_timeout=3, **changes),
        "SAFEREPLAY_KEY_FILE": str(key_file),
        "SAFEREPLAY_AUDIT_KEY_FILE": str(tmp_path / "audit.key"),
    }
    for command in (["status"], ["jobs"], ["migrate", "-r", "x"]):
        started = time.monotonic()
        code, out = run(env, *command)
        elapsed = time.monotonic() - started
        assert code == 2, (command, out)
        assert "cannot connect to PostgreSQL" in out and expected in out, out
        assert "PoolTimeout" not in out and "Traceback" not in out
        # The pools' own wait is 30 s; one connection attempt is bounded by
        # connect_timeout (3 s), whatever the machine's speed.
        assert elapsed < 25, elapsed


def test_a_database_lost_during_a_command_exits_as_unreachable_without_secrets(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A connection lost mid-command (a restart, a terminated backend) reaches
    ``main``; it exits as a database that cannot be reached does at the start (2),
    one paragraph, no traceback, no password."""
    from safereplay.recovery.cli import app as cli_app

    def lost() -> None:
        raise psycopg.OperationalError(
            "connection to server at 127.0.0.1 failed: password=hunter2 server closed "
            "the connection unexpectedly"
        )

    monkeypatch.setattr(cli_app, "app", lost)
    with pytest.raises(SystemExit) as stopped:
        cli_app.main()
    assert stopped.value.code == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "the database connection failed during the command" in err
    assert "server closed the connection unexpectedly" in err and "run the command again" in err
    assert "hunter2" not in err and "Traceback" not in err

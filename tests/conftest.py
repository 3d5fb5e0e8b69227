"""Shared fixtures: key rings, SQLite files and isolated PostgreSQL schemas.

PostgreSQL tests read the DSN from ``SAFEREPLAY_TEST_POSTGRES_DSN`` (default: this
machine's server). Without a server they skip with a message, except under
``CI=true``, where every skip is turned into a failure: CI must prove both backends.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from reliability_trials import LEDGER, REPORT_VARIABLE, Trial, long_mode_timeout, run_trials

from safereplay.domain import DEFAULT_POSTGRES_DSN, DomainSettings, KeyRing
from safereplay.domain.secret import hide_passwords
from safereplay.domain.settings import RESERVED_PREFIXES
from safereplay.recovery.security.audit import AuditKey

#: Four-eyes approval is off for the whole suite (and the processes it starts, which
#: inherit this environment): its safe default would divert every swap, rollback...
#: of the existing tests into a change request. Its own tests set it explicitly.
APPROVAL_OFF = {"SAFEREPLAY_APPROVAL_REQUIRED": ""}
os.environ.update(APPROVAL_OFF)

POSTGRES_DSN = os.environ.get("SAFEREPLAY_TEST_POSTGRES_DSN", DEFAULT_POSTGRES_DSN)
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}

_postgres_problem: str | None = None
_postgres_checked = False


def postgres_problem() -> str | None:
    """None if the test server answers, else why not (checked once per session)."""
    global _postgres_checked, _postgres_problem
    if not _postgres_checked:
        _postgres_checked = True
        try:
            with psycopg.connect(POSTGRES_DSN, connect_timeout=3) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error as exc:
            where = hide_passwords(POSTGRES_DSN)
            _postgres_problem = f"PostgreSQL at {where} is not reachable: {exc}".strip()
    return _postgres_problem


def require_postgres() -> str:
    problem = postgres_problem()
    if problem is not None:
        if IN_CI:
            pytest.fail(f"CI=true requires PostgreSQL: {problem}")
        pytest.skip(problem)
    return POSTGRES_DSN


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, which must run every test: {report.longrepr}"


@pytest.fixture(autouse=True)
def errors_as_paragraphs() -> Iterator[None]:
    """Each test starts with the command line's errors as paragraphs on stderr: a
    command invoked in-process with ``--json`` (CliRunner) leaves the module-wide
    mode on JSON, and a later test calling ``fail`` directly would find its
    message on stdout."""
    from safereplay.recovery.cli.support import use_json_errors

    use_json_errors(False)
    yield
    use_json_errors(False)


@pytest.fixture
def clean_safereplay_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No SAFEREPLAY_* variable of the shell (but the reserved ones: the tests' own
    SAFEREPLAY_TEST_*, the reliability suite's SAFEREPLAY_RELIABILITY_*, whose trial
    count and seed a test reads after this), and a temporary working directory: for
    tests of what an application reads itself."""
    for name in list(os.environ):
        upper = name.upper()
        if upper.startswith("SAFEREPLAY_") and not upper.startswith(RESERVED_PREFIXES):
            monkeypatch.delenv(name)
    for name, value in APPROVAL_OFF.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def key_ring() -> KeyRing:
    return KeyRing.generate("k1")


@pytest.fixture
def key_file(tmp_path: Path, key_ring: KeyRing) -> Path:
    path = tmp_path / "keyring.json"
    key_ring.save(path)
    return path


@pytest.fixture
def sqlite_cli_env(tmp_path: Path, key_file: Path) -> dict[str, str]:
    """A valid SQLite configuration for the command line (an audit key, no token)."""
    audit_key = tmp_path / "audit.key"
    AuditKey.generate().save(audit_key)
    return {
        "SAFEREPLAY_BACKEND": "sqlite",
        "SAFEREPLAY_SQLITE_PATH": str(tmp_path / "events.db"),
        "SAFEREPLAY_KEY_FILE": str(key_file),
        "SAFEREPLAY_AUDIT_KEY_FILE": str(audit_key),
        **APPROVAL_OFF,
    }


@pytest.fixture
def postgres_dsn() -> str:
    return require_postgres()


@pytest.fixture
def pg_schema(postgres_dsn: str) -> Iterator[str]:
    """A fresh schema for one test, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    try:
        yield name
    finally:
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


SettingsFactory = Callable[..., DomainSettings]


@pytest.fixture
def sqlite_settings(tmp_path: Path, key_file: Path) -> SettingsFactory:
    def make(**overrides: Any) -> DomainSettings:
        values: dict[str, Any] = {
            "backend": "sqlite",
            "sqlite_path": tmp_path / "events.db",
            "key_file": key_file,
        }
        values.update(overrides)
        return DomainSettings.from_env(**values)

    return make


@pytest.fixture
def postgres_settings(pg_schema: str, postgres_dsn: str, key_file: Path) -> SettingsFactory:
    def make(**overrides: Any) -> DomainSettings:
        values: dict[str, Any] = {
            "backend": "postgres",
            "postgres_dsn": postgres_dsn,
            "postgres_schema": pg_schema,
            "key_file": key_file,
        }
        values.update(overrides)
        return DomainSettings.from_env(**values)

    return make


# -- the reliability suite (tests/reliability/) -------------------------------------------

TrialsFactory = Callable[..., Iterator[Trial]]


@pytest.fixture
def trials(request: pytest.FixtureRequest) -> TrialsFactory:
    """``for trial in trials(default=3): ...``: the test's randomised trials (see
    ``reliability_trials``), named after its id."""
    scenario = request.node.nodeid.split("tests/reliability/", 1)[-1]

    def make(*, default: int) -> Iterator[Trial]:
        return run_trials(scenario, default=default)

    return make


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """In the long mode a reliability scenario runs N trials in one test, so the
    suite's per-test timeout (``timeout`` in pyproject.toml, a guard against a hang
    sized for the default mode's few trials) grows with N."""
    for item in items:
        if "trials" not in getattr(item, "fixturenames", ()):
            continue
        if item.get_closest_marker("timeout") is not None:
            continue
        seconds = long_mode_timeout(int(item.config.getini("timeout") or 0))
        if seconds is not None:
            item.add_marker(pytest.mark.timeout(seconds))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The reliability figures of the run, per scenario (and as JSON on request)."""
    if not LEDGER.scenarios:
        return
    terminalreporter.section("reliability figures")
    for line in LEDGER.table():
        terminalreporter.write_line(line)
    report = os.environ.get(REPORT_VARIABLE, "").strip()
    if report:
        LEDGER.write(Path(report))
        terminalreporter.write_line(f"written to {report}")

"""An unknown SAFEREPLAY_* variable (a misspelling) stops every command with an error
that names it and the closest setting; none is silently ignored.

The check knows every layer's settings (domain, projections, recovery); it runs
first in every ``safereplay`` command and in ``RecoverySettings.from_env``, and
is there for the Python API as ``safereplay.recovery.settings.check_environment``.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from safereplay.domain import ConfigurationError, DomainSettings, EdgeLimits
from safereplay.domain.settings import RESERVED_PREFIXES
from safereplay.projections import ProjectionSettings
from safereplay.recovery.cli.app import app
from safereplay.recovery.settings import (
    AlertSettings,
    RecoverySettings,
    ServeSettings,
    SLOSettings,
    check_environment,
    setting_names,
)

ROOT = Path(__file__).resolve().parent.parent
#: A whole variable name; prefixes (``SAFEREPLAY_TEST_``, ``SAFEREPLAY_PROJECTIONS_*``) are not.
NAME = re.compile(r"\bSAFEREPLAY_[A-Z0-9_]*[A-Z0-9](?![A-Z0-9_*])")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No SAFEREPLAY_* variable from the outside world, and a scratch working directory."""
    for name in list(os.environ):
        if name.upper().startswith("SAFEREPLAY_") and not name.startswith(RESERVED_PREFIXES):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def sqlite_env(sqlite_cli_env: dict[str, str]) -> dict[str, str]:
    return sqlite_cli_env


# -- the Python API --------------------------------------------------------------------------------


def test_a_misspelt_variable_is_named_with_the_setting_it_probably_meant() -> None:
    with pytest.raises(ConfigurationError) as caught:
        check_environment({"SAFEREPLAY_POSTGRES_DNS": "postgresql://app:pw@db/events"})

    assert str(caught.value) == (
        "unknown setting SAFEREPLAY_POSTGRES_DNS: did you mean SAFEREPLAY_POSTGRES_DSN?"
    )


def test_every_layers_settings_are_known_and_suggested() -> None:
    """Projection and recovery names are settings too, and are what a typo is matched to."""
    with pytest.raises(ConfigurationError) as caught:
        check_environment(
            {
                "SAFEREPLAY_PROJECTIONS_BATCHSIZE": "500",
                "SAFEREPLAY_TOKEN_FIEL": "/run/secrets/token",
                "SAFEREPLAY_AUDITKEY_FILE": "/run/secrets/audit",
            }
        )

    message = str(caught.value)
    assert (
        "unknown setting SAFEREPLAY_PROJECTIONS_BATCHSIZE: did you mean "
        "SAFEREPLAY_PROJECTIONS_BATCH_SIZE?" in message
    )
    assert "unknown setting SAFEREPLAY_TOKEN_FIEL: did you mean SAFEREPLAY_TOKEN_FILE?" in message
    assert (
        "unknown setting SAFEREPLAY_AUDITKEY_FILE: did you mean SAFEREPLAY_AUDIT_KEY_FILE?"
        in message
    )


def test_a_name_like_no_setting_is_still_refused() -> None:
    with pytest.raises(ConfigurationError) as caught:
        check_environment({"SAFEREPLAY_XYZZY": "1"})

    assert str(caught.value).startswith("unknown setting SAFEREPLAY_XYZZY: no setting")


def test_names_are_matched_case_insensitively_like_the_settings_read_them() -> None:
    check_environment({"safereplay_backend": "sqlite", "Safereplay_Pool_Size": "3"})
    with pytest.raises(ConfigurationError, match="unknown setting safereplay_pool_sise"):
        check_environment({"safereplay_pool_sise": "3"})


def test_the_value_of_an_unknown_variable_is_never_shown() -> None:
    with pytest.raises(ConfigurationError) as caught:
        check_environment({"SAFEREPLAY_KEYZ": "k1=c2VjcmV0LWtleS1tYXRlcmlhbA=="})

    assert "c2VjcmV0" not in str(caught.value)
    assert "SAFEREPLAY_KEYS" in str(caught.value)


def test_every_setting_of_every_layer_passes() -> None:
    every = {
        f"{settings.model_config['env_prefix']}{field}".upper(): "x"
        for settings in (
            DomainSettings,
            EdgeLimits,
            ProjectionSettings,
            RecoverySettings,
            AlertSettings,
            ServeSettings,
            SLOSettings,
        )
        for field in settings.model_fields
    }

    assert set(every) == setting_names()
    check_environment(every)


def test_the_test_suite_and_benchmark_variables_are_reserved() -> None:
    check_environment(
        {
            "SAFEREPLAY_TEST_POSTGRES_DSN": "postgresql://postgres@127.0.0.1/test",
            "SAFEREPLAY_TEST_KILL_ROUNDS": "8",
            "SAFEREPLAY_BENCH_POSTGRES_DSN": "postgresql://postgres@127.0.0.1/bench",
            "PGPASSFILE": "/elsewhere",
            "SAFEREPLAY": "not the prefix",
        }
    )


def test_every_safereplay_name_the_code_uses_is_a_setting_or_reserved() -> None:
    """Names written in the code (error messages, variables the code sets or reads
    directly) must be ones the check knows, or the check would refuse them."""
    used: dict[str, str] = {}
    for folder in ("domain", "projections", "reactions", "recovery", "benchmarks"):
        for path in (ROOT / folder).rglob("*.py"):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            docstrings = {
                id(node.body[0].value)
                for node in ast.walk(tree)
                if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef)
                and node.body
                and isinstance(node.body[0], ast.Expr)
                and isinstance(node.body[0].value, ast.Constant)
            }
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.Constant)
                    and isinstance(node.value, str)
                    and id(node) not in docstrings
                ):
                    for name in re.findall(NAME, node.value):
                        used.setdefault(name, str(path.relative_to(ROOT)))

    assert "SAFEREPLAY_TOKEN_FILE" in used and "SAFEREPLAY_BENCH_POSTGRES_DSN" in used
    unknown = {
        name: where
        for name, where in used.items()
        if name not in setting_names() and not name.startswith(RESERVED_PREFIXES)
    }
    assert not unknown


def test_recovery_settings_from_env_checks_the_whole_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SAFEREPLAY_RECOVERY_REQUIRE_DRILLS", "*")

    with pytest.raises(ConfigurationError, match="did you mean SAFEREPLAY_RECOVERY_REQUIRE_DRILL"):
        RecoverySettings.from_env()

    monkeypatch.delenv("SAFEREPLAY_RECOVERY_REQUIRE_DRILLS")
    monkeypatch.setenv("SAFEREPLAY_RECOVERY_REQUIRE_DRILL", "*")
    assert RecoverySettings.from_env().drill_required("run_status")


def test_a_misspelt_keyword_override_is_refused_too() -> None:
    """``from_env(**overrides)`` used to drop an unknown keyword as silently."""
    with pytest.raises(ConfigurationError) as caught:
        DomainSettings.from_env(postgres_dns="postgresql://app:pw-0fd1@h/db", encryption=False)
    assert str(caught.value) == (
        "invalid configuration: unknown setting SAFEREPLAY_POSTGRES_DNS: did you mean "
        "SAFEREPLAY_POSTGRES_DSN?"
    )
    assert "pw-0fd1" not in str(caught.value)

    with pytest.raises(ConfigurationError, match="did you mean SAFEREPLAY_PROJECTIONS_BATCH_SIZE"):
        ProjectionSettings.from_env(batchsize=500)
    with pytest.raises(ConfigurationError, match="did you mean SAFEREPLAY_LEASE_SECONDS"):
        RecoverySettings.from_env(lease_second=5)


# -- every command -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["status"],
        ["principals", "bootstrap", "root"],
        ["jobs"],
        ["rebuild", "run_status", "--reason", "typo", "--workers", "0"],
        ["demo", "--workflows", "1", "--runs", "1"],
    ],
    ids=lambda c: c[0],
)
def test_a_misspelt_variable_stops_every_command_before_anything_is_written(
    command: list[str], sqlite_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**sqlite_env, "SAFEREPLAY_POSTGRES_DNS": "postgresql://app@db/events"}

    result = CliRunner().invoke(app, command, env=env)

    assert result.exit_code == 2, result.output
    assert (
        "unknown setting SAFEREPLAY_POSTGRES_DNS: did you mean SAFEREPLAY_POSTGRES_DSN?"
        in result.output
    )
    assert not (tmp_path / "events.db").exists()
    assert not (tmp_path / ".safereplay-demo").exists()


def test_the_installed_command_exits_2_naming_the_variable(
    sqlite_env: dict[str, str], tmp_path: Path
) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.upper().startswith("SAFEREPLAY_")},
        **sqlite_env,
        "SAFEREPLAY_PROJECTIONS_BATCHSIZE": "50",
    }

    result = subprocess.run(
        [sys.executable, "-m", "safereplay.recovery.cli", "principals", "bootstrap", "root"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )

    assert result.returncode == 2, result.stdout + result.stderr
    assert (
        "unknown setting SAFEREPLAY_PROJECTIONS_BATCHSIZE: did you mean "
        "SAFEREPLAY_PROJECTIONS_BATCH_SIZE?" in result.stderr
    )
    assert not (tmp_path / "events.db").exists()

"""The test command also runs the type checker and the linter, and checks each package's
``__all__`` (the layering rules are in ``test_architecture.py``)."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("domain", "projections", "reactions", "recovery")


@pytest.mark.parametrize("package", PACKAGES)
def test_package_has_curated_all_and_py_typed(package: str) -> None:
    assert (ROOT / package / "py.typed").exists()
    module = importlib.import_module(f"safereplay.{package}")
    exported = module.__all__
    # Constants first, then every other name in code-point order.
    assert list(exported) == sorted(exported, key=lambda n: (not n.isupper(), n))
    for name in exported:
        assert hasattr(module, name), f"{package}.__all__ names missing {name}"


def test_mypy_strict_is_clean(tmp_path: Path) -> None:
    # mypy finds modules by their folders, and the folders at the repository root
    # are installed under the `safereplay.` namespace (setuptools' package-dir):
    # a tree of links gives mypy the installed names.
    tree = tmp_path / "safereplay"
    tree.mkdir()
    for package in PACKAGES:
        (tree / package).symlink_to(ROOT / package, target_is_directory=True)
    targets = [arg for package in PACKAGES for arg in ("-p", f"safereplay.{package}")]
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), *targets],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues found" in result.stdout


def test_ruff_is_clean() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", *PACKAGES, "tests", "benchmarks", "docs"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr

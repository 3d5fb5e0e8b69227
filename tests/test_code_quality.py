"""The test command also runs the type checker, the linter and the layering rule."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("domain", "projections", "recovery")
# recovery -> projections -> domain: a package may import only those to its right.
ALLOWED = {"domain": set(), "projections": {"domain"}, "recovery": {"projections", "domain"}}


def layer_of(module: str) -> str:
    """The package a module name belongs to: ``safereplay.domain.settings`` -> ``domain``."""
    parts = module.split(".")
    # The folders are imported under the safereplay namespace: the layer is the second part.
    return parts[1] if parts[0] == "safereplay" and len(parts) > 1 else parts[0]


def imported_top_levels(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(layer_of(alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(layer_of(node.module))
    return names


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_flow_one_way(package: str) -> None:
    forbidden = set(PACKAGES) - ALLOWED[package] - {package}
    offenders = {
        f"{path.relative_to(ROOT)} imports {name}"
        for path in (ROOT / package).rglob("*.py")
        for name in imported_top_levels(path) & forbidden
    }
    assert not offenders, sorted(offenders)


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
        [sys.executable, "-m", "ruff", "check", *PACKAGES, "tests", "benchmarks"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr

"""The layout's rules, read from the source with ``ast``: one import path, no circles, layers.

- every import of safereplay's own code says ``safereplay.``: nothing imports a
  bare ``domain``, ``projections``, ``reactions`` or ``recovery`` (tests and benchmarks included);
- no import circle among the modules of the four packages and of ``benchmarks``:
  every import counts, at module level, inside a function or under ``TYPE_CHECKING``,
  and so does a module importing its own package's ``__init__``;
- the packages import downward only (recovery → reactions → projections → domain), and inside
  ``recovery/`` the sub-packages do too, from the command line down to the shared
  foundations (:data:`RECOVERY_LAYERS`);
- no module of the four packages is over :data:`MAX_LINES` lines unless its
  docstring says why (a paragraph starting ``Why this module is long``).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("domain", "projections", "reactions", "recovery")
#: Package -> the packages it may import (imports flow recovery -> reactions ->
#: projections -> domain): reactions read the log through the projections' event
#: source; nothing below reactions may reach them, so no projection replay can
#: call a reaction.
ALLOWED = {
    "domain": set(),
    "projections": {"domain"},
    "reactions": {"projections", "domain"},
    "recovery": {"reactions", "projections", "domain"},
}

#: recovery's sub-packages from the outermost in: each imports only those after it.
#: The last layer is the folder's own modules (errors, settings, database, registry):
#: foundations every sub-package may use. ``recovery/__init__.py`` is the public
#: façade: it may import from any layer, and nothing inside the package imports it.
RECOVERY_LAYERS = (
    "cli",
    "api",
    "operations",
    "migrations",
    "alerts",
    "templates",
    "drills",
    "jobs",
    "security",
    "resilience",
    "(foundations)",
)
MAX_LINES = 600
LONG_REASON = "Why this module is long"


@dataclass(frozen=True)
class Module:
    name: str  # the name it is imported by: safereplay.recovery.jobs.worker, benchmarks.raw
    path: Path
    is_package: bool


def installed_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    prefix = ["safereplay"] if parts[0] in PACKAGES else []
    return ".".join(prefix + parts)


def modules() -> dict[str, Module]:
    found = {}
    for top in (*PACKAGES, "benchmarks"):
        for path in sorted((ROOT / top).rglob("*.py")):
            name = installed_name(path)
            found[name] = Module(name, path, path.name == "__init__.py")
    return found


MODULES = modules()


def imports_of(module: Module) -> Iterator[tuple[int, str]]:
    """(line, imported name) for every import in the module, wherever it is."""
    tree = ast.parse(module.path.read_text(encoding="utf-8"), filename=str(module.path))
    package = module.name if module.is_package else module.name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                # `from pkg import module` imports the module; `from pkg import name`, pkg.
                candidate = f"{base}.{alias.name}"
                yield node.lineno, candidate if candidate in MODULES else base


def edges() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    for module in MODULES.values():
        for _, target in imports_of(module):
            if target in MODULES and target != module.name:
                graph[module.name].add(target)
    return graph


def test_every_import_uses_the_safereplay_path() -> None:
    files = [m.path for m in MODULES.values()] + sorted((ROOT / "tests").rglob("*.py"))
    offenders = []
    for path in files:
        module = Module(
            installed_name(path) if path.parts[-2] != "tests" else path.stem, path, False
        )
        offenders += [
            f"{path.relative_to(ROOT)}:{line} imports {name}"
            for line, name in imports_of(module)
            if name.split(".")[0] in PACKAGES
        ]
    assert not offenders, "import these as safereplay.<package>:\n" + "\n".join(offenders)


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: every group of modules that import each other, in a circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def test_no_import_circles() -> None:
    circles = strongly_connected(edges())
    assert not circles, "modules that import each other:\n" + "\n".join(
        " <-> ".join(group) for group in circles
    )


def test_the_circle_finder_finds_a_circle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert strongly_connected(graph) == [["a", "b", "c"]]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("package", PACKAGES)
def test_packages_import_downward_only(package: str) -> None:
    forbidden = set(PACKAGES) - ALLOWED[package] - {package}
    offenders = [
        f"{module.path.relative_to(ROOT)}:{line} imports {name}"
        for module in MODULES.values()
        if module.name.startswith(f"safereplay.{package}")
        for line, name in imports_of(module)
        if name.startswith("safereplay.") and name.split(".")[1] in forbidden
    ]
    assert not offenders, offenders


#: recovery's sub-packages that rebuild, replay or catch projections up: they
#: never call a reaction, so replaying a read model never re-fires a side effect.
REPLAY_PATHS = ("jobs", "drills", "migrations", "templates")


def reaching_reactions(modules: list[Module]) -> list[str]:
    """Imports of reactions from the domain, the projections or a replay path."""
    return [
        f"{module.name}:{line} imports {name}"
        for module in modules
        if module.name.split(".")[1:2] in (["domain"], ["projections"])
        or module.name.split(".")[1:3] in (["recovery", p] for p in REPLAY_PATHS)
        for line, name in imports_of(module)
        if name.startswith("safereplay.reactions")
    ]


def test_projection_replays_never_reach_reactions() -> None:
    offenders = reaching_reactions(list(MODULES.values()))
    assert not offenders, "a replay path must never call a reaction:\n" + "\n".join(offenders)


def test_the_replay_rule_sees_a_rebuild_importing_a_reaction(tmp_path: Path) -> None:
    source = tmp_path / "worker.py"
    source.write_text("from safereplay.reactions.runner import ReactionRunner\n")
    worker = Module("safereplay.recovery.jobs.worker", source, False)
    runner = Module("safereplay.projections.runner", source, False)
    operations = Module("safereplay.recovery.operations.reactions", source, False)
    assert len(reaching_reactions([worker, runner, operations])) == 2


@pytest.mark.parametrize("package", PACKAGES)
def test_no_module_imports_its_own_package_facade(package: str) -> None:
    facade = f"safereplay.{package}"
    offenders = [
        f"{module.name}:{line}"
        for module in MODULES.values()
        if module.name.startswith(facade + ".")
        for line, name in imports_of(module)
        if name == facade
    ]
    assert not offenders, f"import the module that defines the name, not {facade}: {offenders}"


def recovery_layer(name: str) -> int | None:
    """The layer of a module of safereplay.recovery (None for the package's façade)."""
    parts = name.split(".")
    if parts[:2] != ["safereplay", "recovery"] or len(parts) == 2:
        return None
    if parts[2] in RECOVERY_LAYERS:
        return RECOVERY_LAYERS.index(parts[2])
    assert len(parts) == 3 and not MODULES[name].is_package, (
        f"{name}: a new sub-package of recovery/ needs its place in RECOVERY_LAYERS"
    )
    return len(RECOVERY_LAYERS) - 1


def test_recovery_sub_packages_import_downward_only() -> None:
    offenders = []
    for module in MODULES.values():
        layer = recovery_layer(module.name)
        if layer is None:
            continue
        for line, target in imports_of(module):
            if target == "safereplay.recovery":
                offenders.append(f"{module.name}:{line} imports the package façade")
                continue
            target_layer = recovery_layer(target) if target in MODULES else None
            if target_layer is None:
                continue
            same_sub_package = target.split(".")[:3] == module.name.split(".")[:3]
            if target_layer < layer or (target_layer == layer and not same_sub_package):
                if target_layer == layer == len(RECOVERY_LAYERS) - 1:
                    continue  # foundations may use each other (no circle: see above)
                offenders.append(
                    f"{module.name}:{line} ({RECOVERY_LAYERS[layer]}) imports {target} "
                    f"({RECOVERY_LAYERS[target_layer]}), which is above it"
                )
    assert not offenders, "\n".join(offenders)


def test_the_layer_rule_sees_an_upward_import() -> None:
    worker = recovery_layer("safereplay.recovery.jobs.worker")
    command_line = recovery_layer("safereplay.recovery.cli.app")
    assert worker is not None and command_line is not None and command_line < worker


def test_recovery_sub_packages_say_what_they_own_in_one_line() -> None:
    for sub_package in RECOVERY_LAYERS[:-1]:
        init = ROOT / "recovery" / sub_package / "__init__.py"
        docstring = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert docstring and "\n" not in docstring.strip(), f"{init}: one line saying what it owns"


def test_no_module_is_long_without_a_reason() -> None:
    long = []
    for module in MODULES.values():
        if module.name.startswith("benchmarks"):
            continue
        text = module.path.read_text(encoding="utf-8")
        lines = text.count("\n")
        docstring = ast.get_docstring(ast.parse(text)) or ""
        if lines > MAX_LINES and LONG_REASON not in docstring:
            long.append(f"{module.path.relative_to(ROOT)}: {lines} lines")
    assert not long, f"split these, or say why in the docstring ({LONG_REASON!r}): {long}"

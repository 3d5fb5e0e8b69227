"""The documentation is executed and checked against the code.

- Every ```python block of every ``docs/*.md`` file runs: the blocks of one file
  in order, in one namespace, in a fresh temporary working directory (so any
  future document's examples are run too).
- Every ```json block of the foundation documents parses; message examples
  validate against the message registry and key file examples load as key rings.
- ``docs/configuration.md`` lists every ``DomainSettings`` field with its
  ``SAFEREPLAY_`` variable and its default, and every eventsourcing variable the
  settings map to.
"""

from __future__ import annotations

import json
import os
import re
import sys
import textwrap
import types
from pathlib import Path
from typing import Any

import pytest

from safereplay.domain import DomainSettings, KeyRing
from safereplay.domain.messages import automation_messages

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted((ROOT / "docs").glob("*.md"))
OWN_DOCS = ["envelope.md", "configuration.md", "encryption.md", "domain.md"]


def fenced_blocks(text: str, language: str) -> list[str]:
    """The bodies of the ```language blocks of a markdown text (indented ones too)."""
    pattern = re.compile(
        rf"^(?P<indent>[ \t]*)```{language}[ \t]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
        flags=re.MULTILINE | re.DOTALL,
    )
    return [textwrap.dedent(match["body"]) for match in pattern.finditer(text)]


def read(name: str) -> str:
    return (ROOT / "docs" / name).read_text(encoding="utf-8")


@pytest.fixture
def scratch_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory and no SAFEREPLAY_* variables from outside."""
    for name in list(os.environ):
        if name.startswith("SAFEREPLAY_") and name != "SAFEREPLAY_TEST_POSTGRES_DSN":
            monkeypatch.delenv(name)
    monkeypatch.setenv("SAFEREPLAY_APPROVAL_REQUIRED", "")  # four-eyes approval off
    monkeypatch.chdir(tmp_path)
    return tmp_path


# -- the examples run ---------------------------------------------------------------------


def test_the_documents_the_readme_links_exist() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for name in OWN_DOCS:
        assert f"docs/{name}" in readme
        assert (ROOT / "docs" / name).is_file()


@pytest.mark.parametrize("name", OWN_DOCS)
def test_each_foundation_document_has_a_runnable_example(name: str) -> None:
    assert fenced_blocks(read(name), "python"), f"docs/{name} has no ```python example"


#: Documents run step by step, shell commands and files included (see below).
STEP_BY_STEP = ["quickstart.md"]


@pytest.mark.parametrize(
    "document",
    [d for d in DOCS if d.name not in STEP_BY_STEP],
    ids=[d.name for d in DOCS if d.name not in STEP_BY_STEP],
)
def test_python_examples_run(document: Path, scratch_directory: Path) -> None:
    blocks = fenced_blocks(document.read_text(encoding="utf-8"), "python")
    # A real module, so that classes an example defines have resolvable topics.
    module = types.ModuleType(f"docs_example_{document.stem.replace('-', '_')}")
    sys.modules[module.__name__] = module
    try:
        for number, block in enumerate(blocks, start=1):
            code = compile(block, f"{document.name} (python block {number})", "exec")
            exec(code, module.__dict__)
    finally:
        del sys.modules[module.__name__]


def steps(text: str) -> list[tuple[str, str]]:
    """The fenced blocks of a step-by-step document, in order, as ``(kind, body)``:
    ``("sh", commands)``, ``("file NAME", contents)`` for a ```python file=NAME
    block, ``("python", code)`` for a plain one."""
    pattern = re.compile(
        r"^```(?P<info>sh|python(?: file=(?P<file>[\w./-]+))?)[ \t]*\n(?P<body>.*?)^```[ \t]*$",
        flags=re.MULTILINE | re.DOTALL,
    )
    found = []
    for match in pattern.finditer(text):
        if match["file"]:
            found.append((f"file {match['file']}", match["body"]))
        else:
            found.append((match["info"], match["body"]))
    return found


def step_script(text: str) -> str:
    """One bash script doing a step-by-step document's steps, stopping at the first
    command that fails."""
    lines = ["set -euo pipefail"]
    for kind, body in steps(text):
        if kind == "sh":
            lines.append(body)
        elif kind == "python":
            lines.append(f"python - <<'SAFEREPLAY_DOCS_EOF'\n{body}SAFEREPLAY_DOCS_EOF")
        else:
            name = kind.removeprefix("file ")
            lines.append(f"cat > {name} <<'SAFEREPLAY_DOCS_EOF'\n{body}SAFEREPLAY_DOCS_EOF")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("name", STEP_BY_STEP)
def test_step_by_step_documents_run(name: str, scratch_directory: Path) -> None:
    """Every file, command and example of the document, in order, in an empty
    directory, with the installed ``safereplay`` and this Python first on PATH."""
    import subprocess

    text = read(name)
    kinds = {kind.split()[0] for kind, _ in steps(text)}
    assert {"sh", "file"} <= kinds, f"docs/{name} has no commands or files to run"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAFEREPLAY_")} | {
        "SAFEREPLAY_APPROVAL_REQUIRED": ""
    }
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("PYTHONPATH", None)
    env["COLUMNS"] = "120"
    result = subprocess.run(
        ["bash", "-c", step_script(text)],
        cwd=scratch_directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"docs/{name}:\n{result.stdout}\n{result.stderr}"


def test_a_failing_step_fails_the_document(scratch_directory: Path) -> None:
    import subprocess

    text = (
        "```sh\ntrue\n```\n\n```python file=x.py\nraise SystemExit(3)\n```\n\n"
        "```sh\npython x.py\necho unreachable\n```\n"
    )
    result = subprocess.run(
        ["bash", "-c", step_script(text)],
        cwd=scratch_directory,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 3 and "unreachable" not in result.stdout


@pytest.mark.parametrize("name", OWN_DOCS)
def test_relative_links_resolve(name: str) -> None:
    for target in re.findall(r"\]\(([^)#:]+\.md)(?:#[^)]*)?\)", read(name)):
        assert (ROOT / "docs" / target).is_file(), f"docs/{name} links to {target}"


# -- the JSON examples are real ------------------------------------------------------------------


def json_examples() -> list[Any]:
    return [
        pytest.param(block, id=f"{name}#{number}")
        for name in OWN_DOCS
        for number, block in enumerate(fenced_blocks(read(name), "json"), 1)
    ]


@pytest.mark.parametrize("block", json_examples())
def test_json_examples_are_valid(block: str, scratch_directory: Path) -> None:
    document = json.loads(block)

    registry = automation_messages()
    if isinstance(document, dict) and document.get("type") in registry.models:
        parsed = registry.parse(block)
        assert parsed.schema_version == max(registry.models[document["type"]])
    if isinstance(document, dict) and set(document) == {"active", "keys"}:
        path = scratch_directory / "example-keyring.json"
        path.write_text(block, encoding="utf-8")
        path.chmod(0o600)
        assert KeyRing.load(path).active_key_id == document["active"]


def test_every_message_type_has_an_example_in_the_domain_document() -> None:
    documented = {
        json.loads(block).get("type") for block in fenced_blocks(read("domain.md"), "json")
    }

    assert set(automation_messages().models) <= documented


# -- configuration.md matches DomainSettings -------------------------------------------------------


def rendered_default(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def settings_table() -> dict[str, dict[str, str]]:
    """Rows of the settings table of configuration.md, by variable, cells by header."""
    lines = [line for line in read("configuration.md").splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        cells = [re.sub(r"[`*]", "", cell).strip() for cell in line.strip("|").split("|")]
        row = dict(zip(header, cells, strict=True))
        rows[row["Variable"]] = row
    return rows


def test_configuration_lists_every_setting_with_its_variable_and_default() -> None:
    table = settings_table()

    for name, field in DomainSettings.model_fields.items():
        variable = f"SAFEREPLAY_{name.upper()}"
        assert variable in table, f"docs/configuration.md does not list {variable}"
        row = table[variable]
        assert row["Field"] == name
        assert row["Default"] == rendered_default(field.default), variable
        assert row["Meaning"], variable
        assert row["eventsourcing environment"], variable
    assert set(table) == {f"SAFEREPLAY_{n.upper()}" for n in DomainSettings.model_fields}


def test_configuration_names_every_eventsourcing_variable_the_settings_produce() -> None:
    text = read("configuration.md")
    sqlite = DomainSettings.from_env(backend="sqlite", encryption=False)
    postgres = DomainSettings.from_env(
        backend="postgres",
        postgres_dsn="postgresql://u:p@h:1/d?connect_timeout=3",
        encryption=False,
    )

    for settings in (sqlite, postgres):
        for variable, value in settings.eventsourcing_env().items():
            assert f"`{variable}`" in text, variable
            if variable.endswith("_TIMEOUT") and variable != "POSTGRES_CONNECT_TIMEOUT":
                assert f"`{variable}` = `{value}`" in text, "fixed values are documented"


# -- names and paths the documents mention exist ----------------------------------------------


def mentioned_names(text: str) -> set[str]:
    return set(re.findall(r"safereplay\.(?:domain|projections|recovery)(?:\.[A-Za-z_]\w*)*", text))


def resolves(name: str) -> bool:
    """Is ``name`` a module, or an attribute reachable from the longest module prefix?"""
    import importlib

    parts = name.split(".")
    for cut in range(len(parts), 1, -1):
        try:
            found: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attribute in parts[cut:]:
            if not hasattr(found, attribute):
                return False
            found = getattr(found, attribute)
        return True
    return False


@pytest.mark.parametrize("document", [*DOCS, ROOT / "README.md"], ids=lambda d: d.name)
def test_every_module_and_file_a_document_names_exists(document: Path) -> None:
    text = document.read_text(encoding="utf-8")
    missing = sorted(name for name in mentioned_names(text) if not resolves(name))
    paths = re.findall(r"(?<![\w./])((?:domain|projections|recovery)/[\w/]+\.(?:py|toml))", text)
    missing += sorted(path for path in paths if not (ROOT / path).exists())
    assert not missing, f"{document.name} names what does not exist: {missing}"


def test_a_renamed_module_would_be_noticed() -> None:
    assert resolves("safereplay.recovery.jobs.worker.Worker")
    assert not resolves("safereplay.recovery.worker")
    assert not resolves("safereplay.recovery.jobs.worker.NoSuchThing")


def test_the_architecture_diagram_is_drawn_from_the_current_code() -> None:
    import runpy

    diagram = runpy.run_path(str(ROOT / "docs" / "architecture_diagram.py"))
    committed = (ROOT / "docs" / "architecture.dot").read_text(encoding="utf-8")
    assert committed == diagram["dot_text"](), (
        "the code's imports changed: run `.venv/bin/python docs/architecture_diagram.py`"
    )
    assert (ROOT / "docs" / "architecture.png").stat().st_size > 10_000

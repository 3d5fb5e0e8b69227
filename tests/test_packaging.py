"""safereplay installs under one name and works beside an application's own packages.

- every folder of the four packages is listed in ``pyproject.toml`` (a folder
  left out would be missing from the wheel, and an editable install hides that);
- an application with its own ``domain``, ``projections`` and ``recovery``
  packages imports safereplay's API and runs a small rebuild;
- the wheel, installed into a fresh virtual environment outside the checkout,
  runs ``safereplay demo`` from an empty directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("domain", "projections", "reactions", "recovery")


def pyproject() -> dict[str, object]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_every_package_folder_is_in_the_distribution() -> None:
    setuptools = pyproject()["tool"]["setuptools"]  # type: ignore[index]
    folders = {
        "safereplay." + ".".join(init.parent.relative_to(ROOT).parts)
        for package in PACKAGES
        for init in (ROOT / package).rglob("__init__.py")
    }
    assert set(setuptools["packages"]) == folders
    assert setuptools["package-dir"] == {f"safereplay.{p}": p for p in PACKAGES}
    assert not (ROOT / "safereplay").exists(), "the namespace has no folder of its own"


def test_the_license_is_an_spdx_expression() -> None:
    assert pyproject()["project"]["license"] == "Apache-2.0"  # type: ignore[index]


def clean_environment(tmp_path: Path) -> dict[str, str]:
    """The environment without safereplay's settings, and with a home of its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAFEREPLAY_")}
    env.pop("PYTHONPATH", None)
    env["HOME"] = str(tmp_path / "home")
    return env


APPLICATION = """
\"\"\"An application laid out the domain-driven way, with safereplay beside it.\"\"\"

from pathlib import Path
from uuid import uuid4

import domain
import projections
import recovery
from domain.orders import Order

from safereplay.domain import AutomationApp, DomainSettings, KeyRing
from safereplay.domain.workload import record_workload
from safereplay.recovery.jobs.model import JobState
from safereplay.recovery.jobs.plans import JobRequest, start_rebuild
from safereplay.recovery.jobs.worker import WorkerOptions
from safereplay.recovery.operations.context import RecoveryContext
from safereplay.recovery.settings import RecoverySettings

# The application's own packages are the ones its code imports.
assert (domain.OWNER, projections.OWNER, recovery.OWNER) == ("app", "app", "app")
assert Order(uuid4()).total == 0

here = Path.cwd()
KeyRing.generate("k1").save(here / "keys.json")
settings = DomainSettings.from_env(sqlite_path=here / "events.db", key_file=here / "keys.json")
with AutomationApp(settings) as app:
    summary = record_workload(app, workflows=2, runs_per_workflow=3, seed=7)
context = RecoveryContext(domain=settings, recovery=RecoverySettings.from_env())
try:
    job = start_rebuild(
        JobRequest(principal="app", reason="a small rebuild", partitions=2),
        projection="run_status",
        store=context.projection_store,
        source=context.source,
        jobs=context.jobs,
        registry=context.registry,
    )
    options = WorkerOptions(exit_when_idle=True, idle_interval=0.05)
    context.worker(options=options).run(job_id=job.job_id)
    done = context.jobs.get_job(job.job_id)
    assert done.state == JobState.COMPLETED, done
    board = context.registry["run_status"]
    rows = context.projection_store.rows(board, "runs", build=done.build)
    print(f"rebuilt run_status: {len(rows)} runs in build {done.build}")
finally:
    context.close()
"""


@pytest.fixture
def application(tmp_path: Path) -> Path:
    """A project folder with its own ``domain``, ``projections`` and ``recovery``."""
    project = tmp_path / "app"
    for package in PACKAGES:
        (project / package).mkdir(parents=True)
        (project / package / "__init__.py").write_text('OWNER = "app"\n')
    (project / "domain" / "orders.py").write_text(
        textwrap.dedent(
            """
            from dataclasses import dataclass
            from uuid import UUID

            @dataclass
            class Order:
                id: UUID
                total: int = 0
            """
        )
    )
    return project


def test_an_application_with_its_own_domain_package_uses_safereplay(
    application: Path, tmp_path: Path
) -> None:
    script = application / "main.py"
    script.write_text(APPLICATION)
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=application,  # the application's folder is first on sys.path, as when it runs
        env=clean_environment(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "rebuilt run_status: 6 runs in build" in result.stdout


def test_the_wheel_installed_outside_the_checkout_runs_the_demo(tmp_path: Path) -> None:
    env = clean_environment(tmp_path)
    # Built from a copy of what git would commit: a checkout's own build/ folder can
    # hold modules that no longer exist, which setuptools would put in the wheel.
    source = tmp_path / "source"
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(source)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = wheels.glob("safereplay-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        packed = {n for n in archive.namelist() if not n.startswith("safereplay-")}
    tracked = {
        f"safereplay/{path.relative_to(source)}"
        for package in PACKAGES
        for path in (source / package).rglob("*")
        # .html/.css/.js: the dashboard's page and files (safereplay.recovery.api/static)
        if path.is_file() and path.suffix in (".py", ".toml", ".typed", ".html", ".css", ".js")
    }
    assert packed == tracked, (sorted(packed - tracked), sorted(tracked - packed))

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    # The wheel itself is installed; its dependencies are borrowed from the test
    # environment's site-packages by a plain path (a path line in a .pth file does
    # not run the .pth files it points at, so the editable install stays out).
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    borrowed = sysconfig.get_path("purelib")
    Path(site, "borrowed-dependencies.pth").write_text(borrowed + "\n")
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert install.returncode == 0, install.stdout + install.stderr

    where = subprocess.run(
        [str(python), "-c", "import safereplay.recovery as r; print(r.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert where.startswith(site), f"imported from {where}, not from the installed wheel"

    empty = tmp_path / "empty"
    empty.mkdir()
    demo = subprocess.run(
        [str(venv / "bin" / "safereplay"), "demo"],
        cwd=empty,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "audit entries that" in demo.stdout and "verify" in demo.stdout
    assert (empty / ".safereplay-demo").is_dir()

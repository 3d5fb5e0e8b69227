"""A dashboard world: the demo's store, ``safereplay serve`` and a worker as processes,
and a Chromium page (Playwright) to drive the dashboard with.

:func:`dashboard_world` runs ``safereplay demo`` (a store with recorded runs, live
projections, a rebuilt and swapped ``workflow_stats``, parked and re-driven events,
an audit trail) and signs three principals in: the demo's admin, operator and viewer
(tokens issued here: the demo hands out the operator's only). :func:`served` starts
``safereplay serve`` on a free port and waits for it to answer; :func:`worker`
starts ``safereplay worker`` (it claims jobs until stopped). :func:`browser_page`
opens Debian's Chromium at a laptop's size; :func:`sign_in` signs the page in.

Processes are stopped with SIGTERM (a worker gives its partitions back), then
killed if they do not exit in time.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from recovery_fixtures import cli_process, wait_until

from safereplay.domain import DomainSettings
from safereplay.recovery.jobs.model import Job
from safereplay.recovery.operations.context import RecoveryContext
from safereplay.recovery.settings import RecoverySettings

CHROMIUM = Path("/usr/bin/chromium")
VIEWPORT = {"width": 1366, "height": 850}
#: How long a process may take to start or stop on a slow, shared machine.
START_TIMEOUT = 120.0
STOP_TIMEOUT = 30.0


@dataclass
class DashboardWorld:
    """The demo's store and who may sign in to it.

    ``env``: the command line's environment for the store (no token);
    ``tokens``: ``admin`` (demo-admin), ``operator`` (demo-operator) and ``viewer``
    (demo-viewer); ``context``: a recovery context to check the database with.
    """

    directory: Path
    env: dict[str, str]
    tokens: dict[str, str]
    context: RecoveryContext
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def env_of(self, who: str) -> dict[str, str]:
        return self.env | {"SAFEREPLAY_TOKEN": self.tokens[who]}

    def job(self, job_id: str) -> Job:
        """The job as stored now (read from the database, not through the API)."""
        from uuid import UUID

        return self.context.jobs.get_job(UUID(job_id))

    def run(self, who: str, operation: str, *, reason: str = "test", **params: Any) -> Any:
        """Run an operation as ``who`` through the dispatch layer (checked and audited)."""
        from safereplay.recovery.operations.catalog import open_operations
        from safereplay.recovery.operations.shapes import to_jsonable

        principal = self.context.access.authenticate(self.tokens[who])
        result = open_operations(self.context).run(principal, operation, reason=reason, **params)
        return to_jsonable(result)


def clean_env() -> dict[str, str]:
    """This process's environment without any safereplay setting."""
    return {k: v for k, v in os.environ.items() if not k.startswith("SAFEREPLAY_")} | {
        "SAFEREPLAY_APPROVAL_REQUIRED": ""
    }


def dashboard_world(directory: Path) -> Iterator[DashboardWorld]:
    """The demo's store in ``directory / "demo"``, with a token for each principal."""
    store = directory / "demo"
    cli_process(clean_env(), "demo", "--directory", str(store))
    env = clean_env() | {
        "SAFEREPLAY_BACKEND": "sqlite",
        "SAFEREPLAY_SQLITE_PATH": str(store / "events.db"),
        "SAFEREPLAY_KEY_FILE": str(store / "keyring.json"),
        "SAFEREPLAY_AUDIT_KEY_FILE": str(store / "audit.key"),
    }
    settings = DomainSettings.from_env(
        backend="sqlite",
        sqlite_path=store / "events.db",
        key_file=store / "keyring.json",
        encryption=True,
    )
    context = RecoveryContext(
        domain=settings, recovery=RecoverySettings(audit_key_file=store / "audit.key")
    )
    # The demo keeps only the operator's token (in a file); the others are issued
    # here, directly, as a test's setup (not an operation: nothing to audit).
    tokens = {
        who: context.access.issue_token(f"demo-{who}") for who in ("admin", "operator", "viewer")
    }
    world = DashboardWorld(store, env, tokens, context)
    try:
        yield world
    finally:
        for process in reversed(world.processes):
            stop(process)
        context.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def safereplay(
    world: DashboardWorld, *args: str, env: dict[str, str], log: Path
) -> subprocess.Popen[bytes]:
    """``safereplay ARGS`` as a background process (output to ``log``), stopped with the world."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "safereplay.recovery.cli", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=world.directory,
        )
    world.processes.append(process)
    return process


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (a server finishes its requests, a worker gives its partitions back),
    then SIGKILL if it has not exited in time."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT)


def served(world: DashboardWorld) -> str:
    """Start ``safereplay serve`` on a free port; its base URL once it answers."""
    port = free_port()
    log = world.directory / f"serve-{port}.log"
    # The server signs callers in with their own tokens: it needs none itself.
    process = safereplay(world, "serve", "--port", str(port), env=world.env, log=log)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"safereplay serve exited: {log.read_text(errors='replace')}")
        try:
            with urllib.request.urlopen(f"{url}/openapi.json", timeout=5) as answer:
                return bool(answer.status == 200)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    wait_until(up, timeout=START_TIMEOUT, what="safereplay serve to answer", interval=0.2)
    return url


def worker(world: DashboardWorld, *, batch_size: int = 20) -> subprocess.Popen[bytes]:
    """Start ``safereplay worker`` as the admin: it claims partitions of any job until
    stopped. Small batches: a throttled job's progress moves often."""
    env = world.env_of("admin") | {"SAFEREPLAY_PROJECTIONS_BATCH_SIZE": str(batch_size)}
    log = world.directory / f"worker-{len(world.processes)}.log"
    return safereplay(world, "worker", env=env, log=log)


def require_chromium() -> Path:
    """Debian's Chromium; its absence fails (never skips) under CI."""
    if CHROMIUM.exists():
        return CHROMIUM
    message = (
        f"the dashboard's browser tests need Chromium at {CHROMIUM}: "
        "install it with `apt-get install -y chromium` (.ci/run does)"
    )
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@contextmanager
def browser_page(**context_options: Any) -> Iterator[Any]:
    """A Chromium page at a laptop's size (Playwright; no browser is downloaded)."""
    from playwright.sync_api import sync_playwright

    executable = require_chromium()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(executable),
            args=["--no-sandbox", "--disable-dev-shm-usage"],
        )
        try:
            context = browser.new_context(viewport=VIEWPORT, **context_options)
            page = context.new_page()
            page.set_default_timeout(60_000)
            yield page
            context.close()
        finally:
            browser.close()


def sign_in(page: Any, url: str, token: str) -> None:
    """Open the dashboard at ``url`` and sign in with ``token`` (typed into the form,
    as a person would); returns once the navigation shows."""
    page.goto(url + "/")
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("navigation", name="Sections").wait_for(state="visible")


def copy_screenshot(source: Path, name: str) -> None:
    """Also keep a screenshot in docs/operations/ when SAFEREPLAY_UPDATE_SCREENSHOTS=1."""
    if os.environ.get("SAFEREPLAY_UPDATE_SCREENSHOTS") == "1":
        docs = Path(__file__).resolve().parent.parent / "docs" / "operations"
        docs.mkdir(exist_ok=True)
        shutil.copyfile(source, docs / name)


def poll(condition: Any, *, what: str, timeout: float = START_TIMEOUT) -> Any:
    """:func:`wait_until` with the browser tests' generous timeout and a calmer pace."""
    return wait_until(condition, timeout=timeout, what=what, interval=0.25)


__all__ = [
    "CHROMIUM",
    "DashboardWorld",
    "browser_page",
    "copy_screenshot",
    "dashboard_world",
    "free_port",
    "poll",
    "require_chromium",
    "served",
    "sign_in",
    "stop",
    "worker",
]

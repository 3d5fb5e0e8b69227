"""A private PostgreSQL 15 cluster for the database-fault scenarios (issue #22, point 2).

The scenarios restart, stop and starve the server: they must never touch the
shared server (port 5432) that every other test and session uses. So each test
module that asks for :func:`private_cluster` gets a cluster of its own: ``initdb``
into a temporary directory owned by ``postgres`` (``initdb`` refuses root, and
these sessions run as root), started with ``pg_ctl`` on a free port of
127.0.0.1, trust authentication, stopped and removed when the module ends.

Startup and commits are kept fast with ``fsync=off`` (and no full-page writes): no
scenario here tests durability across a crash of the *machine*; an immediate
shutdown of the server (``pg_ctl -m immediate``, which the restart scenarios use)
loses nothing that was committed, since the operating system keeps the written
pages. Commits stay synchronous (``synchronous_commit`` is left on): with it off,
an immediate shutdown loses the last commits the server had acknowledged (its WAL
not yet written), and the event log would lose events its writers saw committed
(a restart trial found exactly that: a run's step recorded after its start was
lost). That would test the cluster's settings, not safereplay.

Without the binaries (``/usr/lib/postgresql/15/bin``) or the ``postgres`` user the
scenarios skip, except under ``CI=true``, where a cluster that cannot start fails.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

BIN = Path(os.environ.get("SAFEREPLAY_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
#: The application name of the scenarios' own connections (checks, faults): never
#: terminated by :meth:`PrivateCluster.terminate`.
OURS = "pgfaults-check"
#: Server settings: fast to start, quick to notice a dead client.
SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "fsync": "off",
    "full_page_writes": "off",
    "max_connections": "200",
    "shared_buffers": "32MB",
    "log_min_messages": "warning",
}


class ClusterUnavailable(Exception):
    """The private cluster could not be created or started."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_postgres(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a server binary as ``postgres`` (root cannot run initdb or the server)."""
    command = [str(a) for a in args]
    if os.geteuid() == 0:
        command = ["runuser", "-u", "postgres", "--", *command]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)


class PrivateCluster:
    """One ``initdb`` cluster in ``root``, served on ``port`` of 127.0.0.1."""

    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.data = root / "data"
        self.log = root / "server.log"
        self.port = port
        self.dsn = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        #: Times this cluster was restarted or stopped by a scenario.
        self.restarts = 0

    # -- life cycle -------------------------------------------------------------------------

    def create(self) -> None:
        done = _as_postgres(
            BIN / "initdb",
            *("-D", self.data, "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"),
        )
        if done.returncode != 0:
            raise ClusterUnavailable(f"initdb failed: {done.stderr.strip() or done.stdout}")

    def _options(self) -> str:
        settings = {**SETTINGS, "port": str(self.port), "unix_socket_directories": str(self.root)}
        return " ".join(f"-c {name}={value}" for name, value in settings.items())

    def start(self) -> None:
        done = _as_postgres(
            BIN / "pg_ctl",
            *("-D", self.data, "-l", self.log, "-w", "-t", "120", "-o", self._options(), "start"),
        )
        if done.returncode != 0:
            raise ClusterUnavailable(
                f"pg_ctl start failed: {done.stderr.strip() or done.stdout} {self.tail_log()}"
            )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``immediate``: as a crash would, with no shutdown checkpoint)."""
        done = _as_postgres(BIN / "pg_ctl", "-D", self.data, "-m", mode, "-w", "-t", "120", "stop")
        if done.returncode != 0:
            raise ClusterUnavailable(f"pg_ctl stop failed: {done.stderr.strip()}")
        self.restarts += 1

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def ensure_running(self) -> None:
        """Start it again if a scenario (a failed one, say) left it stopped."""
        if not self.running():
            self.start()
        self.wait_up()

    def running(self) -> bool:
        done = _as_postgres(BIN / "pg_ctl", "-D", self.data, "status")
        return done.returncode == 0

    def tail_log(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def destroy(self) -> None:
        with contextlib.suppress(Exception):
            if self.running():
                self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    # -- the scenarios' own access ----------------------------------------------------------

    def connect(self, **kwargs: Any) -> psycopg.Connection[Any]:
        """An autocommit connection of the scenarios themselves (never terminated)."""
        kwargs.setdefault("application_name", OURS)
        kwargs.setdefault("connect_timeout", 10)
        return psycopg.connect(self.dsn, autocommit=True, **kwargs)

    def wait_up(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with self.connect() as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def backends(self, *, schema_user: bool = True) -> list[tuple[int, str, bool]]:
        """Client backends other than ours: (pid, application name, inside a transaction)."""
        with self.connect() as conn:
            rows = conn.execute(
                "SELECT pid, application_name, xact_start IS NOT NULL FROM pg_stat_activity "
                "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() "
                "AND application_name <> %s",
                (OURS,),
            ).fetchall()
        return [(int(pid), str(name), bool(busy)) for pid, name, busy in rows]

    def terminate(self, pids: list[int]) -> int:
        """``pg_terminate_backend`` each of ``pids``; how many were terminated."""
        done = 0
        with self.connect() as conn:
            for pid in pids:
                [[ok]] = conn.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchall()
                done += bool(ok)
        return done


@contextlib.contextmanager
def started_cluster() -> Iterator[PrivateCluster]:
    """A new private cluster, running; stopped and removed afterwards."""
    if not (BIN / "initdb").exists():
        raise ClusterUnavailable(f"no PostgreSQL server binaries in {BIN}")
    root = Path(tempfile.mkdtemp(prefix="safereplay-pgfaults-"))
    if os.geteuid() == 0:
        shutil.chown(root, user="postgres")
    cluster: PrivateCluster | None = None
    try:
        for _ in range(3):  # a free port taken meanwhile by someone else: another one
            candidate = PrivateCluster(root, free_port())
            if not candidate.data.exists():
                candidate.create()
            try:
                candidate.start()
            except ClusterUnavailable:
                if "already in use" not in candidate.tail_log():
                    raise
                continue
            cluster = candidate
            break
        if cluster is None:
            raise ClusterUnavailable("no free port for the private cluster after 3 tries")
        cluster.wait_up()
        yield cluster
    finally:
        if cluster is not None:
            cluster.destroy()
        else:
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def private_cluster() -> Iterator[PrivateCluster]:
    """This module's private cluster (never the shared server). Skips without the
    server binaries, but fails under ``CI=true``."""
    try:
        context = started_cluster()
        cluster = context.__enter__()
    except (ClusterUnavailable, OSError, subprocess.SubprocessError, LookupError) as exc:
        message = f"the private PostgreSQL cluster did not start: {exc}"
        if IN_CI:
            pytest.fail(f"CI=true requires it: {message}")
        pytest.skip(message)
    try:
        yield cluster
    finally:
        context.__exit__(None, None, None)

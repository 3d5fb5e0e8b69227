"""``safereplay serve`` as an operator runs it: a process of its own on a free port,
over a new store (``safereplay init`` and ``seed``).

- it listens on 127.0.0.1 only; ``/api/projections`` with the token lists the
  projections; a rebuild started through the API is run by its ``--workers``
  (authenticated from its environment, no token on their command lines), which
  keep running once it is done;
- SIGINT (Ctrl-C) and SIGTERM stop it with exit 0, and its workers with it;
- ``--host 0.0.0.0`` without ``--allow-remote`` exits 2 naming the flag, serving nothing;
  with it but without TLS, exits 2 naming the TLS settings and
  ``--allow-plaintext-remote``; with that flag it serves, with a warning; with
  ``SAFEREPLAY_SERVE_TLS_*`` (a certificate the test makes) it serves HTTPS, which a
  client verifies against the test's CA, and no plain HTTP;
- bad TLS settings (a key others can read, a key of another certificate) exit 2
  naming the setting, never showing the key;
  ``--workers`` without a token in the environment exits 4, serving nothing; a
  worker that exits (its principal may operate on nothing) is reported, not restarted.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import httpx
import pytest
from recovery_fixtures import cli_process, seeded_store_env, wait_until
from tls_fixtures import Certificates, make_certificates

from safereplay.recovery.cli.serve import refuse_plaintext_remote
from safereplay.recovery.settings import ServeSettings

#: Generous: the machine is slow and shared.
STARTUP_SECONDS = 180.0
STOP_SECONDS = 120.0
JOB_SECONDS = 300.0


@pytest.fixture(scope="module")
def store_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return seeded_store_env(tmp_path_factory.mktemp("serve") / "store")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def listening_addresses(port: int) -> set[str]:
    """The local addresses (hex, as the kernel lists them) listening on TCP ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        with open(table) as lines:
            next(lines)
            for line in lines:
                local, state = line.split()[1], line.split()[3]
                address, _, hex_port = local.partition(":")
                if state == "0A" and int(hex_port, 16) == port:
                    found.add(address)
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@dataclass
class Served:
    process: subprocess.Popen[str]
    url: str
    token: str
    announced: dict[str, Any]
    stderr: TextIO
    verify: Any = True

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.url + path, headers=self.auth, timeout=60, verify=self.verify)

    def post(self, path: str, body: Any) -> httpx.Response:
        return httpx.post(
            self.url + path, headers=self.auth, json=body, timeout=60, verify=self.verify
        )

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def errors(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read()

    def stop(self, signum: int) -> int:
        self.process.send_signal(signum)
        return self.process.wait(timeout=STOP_SECONDS)


@contextmanager
def serve(
    env: dict[str, str], tmp_path: Path, *args: str, tls: Certificates | None = None
) -> Iterator[Served]:
    """``safereplay serve`` on a free port (over HTTPS with ``tls``, whose CA the
    client trusts)."""
    port = free_port()
    verify: Any = True
    if tls is not None:
        env = {**env, **tls.env()}
        verify = tls.client_context()
    stderr = (tmp_path / "serve.stderr").open("w+")
    command = [sys.executable, "-m", "safereplay.recovery.cli", "serve", "--port", str(port)]
    process = subprocess.Popen(
        [*command, "--json", *args], env=env, stdout=subprocess.PIPE, stderr=stderr, text=True
    )
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"

    def ready() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"serve exited with {process.returncode}: {stderr_text()}")
        try:
            return httpx.get(url + "/openapi.json", timeout=5, verify=verify).status_code == 200
        except httpx.TransportError:
            return False

    def stderr_text() -> str:
        stderr.seek(0)
        return stderr.read()

    try:
        wait_until(ready, timeout=STARTUP_SECONDS, what="serve to answer", interval=0.2)
        assert process.stdout is not None
        announced = json.loads(process.stdout.readline())
        token = env.get("SAFEREPLAY_TOKEN") or Path(env["SAFEREPLAY_TOKEN_FILE"]).read_text()
        yield Served(process, url, token.strip(), announced, stderr, verify)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        stderr.close()


def test_serve_answers_on_loopback_runs_jobs_with_its_workers_and_stops_on_ctrl_c(
    store_env: dict[str, str], tmp_path: Path
) -> None:
    with serve(store_env, tmp_path, "--workers", "2") as served:
        port = int(served.url.rsplit(":", 1)[1])
        assert listening_addresses(port) == {"0100007F"}, "127.0.0.1 only"
        assert served.announced["serving"] == served.url + "/"

        projections = served.get("/api/projections")
        assert projections.status_code == 200, projections.text
        assert {"run_status", "workflow_stats"} <= {p["name"] for p in projections.json()}
        assert served.get("/api/status").json()["head_position"] >= 600

        workers = served.announced["workers"]
        assert len(workers) == 2 and all(alive(pid) for pid in workers)
        for pid in workers:
            command_line = Path(f"/proc/{pid}/cmdline").read_bytes().decode()
            assert served.token not in command_line and "worker" in command_line

        started = served.post(
            "/api/projections/run_status/rebuild", {"reason": "through the API", "partitions": 2}
        )
        assert started.status_code == 200, started.text
        job_id = started.json()["job_id"]

        def ended() -> str | None:
            state = str(served.get(f"/api/jobs/{job_id}").json()["job"]["state"])
            return state if state in ("completed", "failed", "aborted") else None

        state = wait_until(ended, timeout=JOB_SECONDS, what="the workers to run the job")
        assert state == "completed", served.errors()
        assert all(alive(pid) for pid in workers), "workers run until the server stops"

        assert served.stop(signal.SIGINT) == 0, served.errors()
        assert not [pid for pid in workers if alive(pid)], "its workers stopped with it"
        assert "Traceback" not in served.errors() and "Aborted" not in served.errors()


def test_serve_stops_on_sigterm_with_exit_0(store_env: dict[str, str], tmp_path: Path) -> None:
    with serve(store_env, tmp_path, "--workers", "1") as served:
        [worker] = served.announced["workers"]
        assert served.get("/api/me").json()["principal"] == "admin"
        assert served.stop(signal.SIGTERM) == 0, served.errors()
        assert not alive(worker)


def refused(env: dict[str, str], port: int, *args: str) -> subprocess.CompletedProcess[str]:
    """``safereplay serve --port PORT ARGS`` run to its end: it should refuse at once."""
    command = [sys.executable, "-m", "safereplay.recovery.cli", "serve", "--port", str(port)]
    return subprocess.run(
        [*command, *args], env=env, capture_output=True, text=True, timeout=STARTUP_SECONDS
    )


def test_a_reachable_host_needs_allow_remote(store_env: dict[str, str]) -> None:
    port = free_port()
    result = refused(store_env, port, "--host", "0.0.0.0")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "--allow-remote" in result.stderr and "Traceback" not in result.stderr
    assert "serving" not in result.stdout
    assert listening_addresses(port) == set()


def test_a_reachable_host_without_tls_is_refused(store_env: dict[str, str]) -> None:
    port = free_port()
    result = refused(store_env, port, "--host", "0.0.0.0", "--allow-remote")
    said = " ".join(result.stderr.split())
    assert result.returncode == 2, result.stdout + result.stderr
    assert "no TLS is configured" in said and "SAFEREPLAY_SERVE_TLS_CERT_FILE" in said
    assert "--allow-plaintext-remote" in said and "Traceback" not in said
    assert "serving" not in result.stdout
    assert listening_addresses(port) == set()


def test_plaintext_on_a_reachable_host_when_allowed_is_served_with_a_warning(
    store_env: dict[str, str], tmp_path: Path
) -> None:
    with serve(store_env, tmp_path, "--host", "0.0.0.0", "--allow-plaintext-remote") as served:
        port = int(served.url.rsplit(":", 1)[1])
        assert listening_addresses(port) == {"00000000"}
        assert served.announced["serving"] == f"http://0.0.0.0:{port}/"
        assert served.get("/api/me").status_code == 200
        said = " ".join(served.errors().split())
        assert "warning: serving plain HTTP on 0.0.0.0" in said
        assert served.stop(signal.SIGTERM) == 0, served.errors()
    # The setting allows it as the flag does (with --allow-remote).
    allowed = {**store_env, "SAFEREPLAY_SERVE_ALLOW_PLAINTEXT_REMOTE": "true"}
    with serve(allowed, tmp_path, "--host", "0.0.0.0", "--allow-remote") as served:
        assert served.get("/api/me").status_code == 200
        assert "warning: serving plain HTTP" in " ".join(served.errors().split())
        assert served.stop(signal.SIGTERM) == 0, served.errors()


def test_serve_over_tls_with_a_certificate_the_test_makes(
    store_env: dict[str, str], tmp_path: Path
) -> None:
    certificates = make_certificates(tmp_path / "tls")
    args = ("--host", "0.0.0.0", "--allow-remote")
    with serve(store_env, tmp_path, *args, tls=certificates) as served:
        port = served.url.rsplit(":", 1)[1]
        assert served.announced["serving"] == f"https://0.0.0.0:{port}/"
        me = served.get("/api/me")
        assert me.status_code == 200 and me.json()["principal"] == "admin"
        # Not trusted without the test's CA; and no API over plain HTTP.
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(served.url + "/openapi.json", timeout=60)
        try:
            plain = httpx.get(f"http://127.0.0.1:{port}/api/me", headers=served.auth, timeout=60)
        except httpx.TransportError:
            pass
        else:
            assert plain.status_code == 400 and "principal" not in plain.text
        assert "warning" not in served.errors()
        assert served.stop(signal.SIGTERM) == 0, served.errors()


def test_bad_tls_settings_are_refused_naming_the_setting(
    store_env: dict[str, str], tmp_path: Path
) -> None:
    mine = make_certificates(tmp_path / "mine")
    other = make_certificates(tmp_path / "other")
    key_text = mine.key.read_text()
    cases = [
        ({"SAFEREPLAY_SERVE_TLS_CERT_FILE": str(mine.cert)}, "go together"),
        (
            {**mine.env(), "SAFEREPLAY_SERVE_TLS_KEY_FILE": str(tmp_path / "none.key")},
            "SAFEREPLAY_SERVE_TLS_KEY_FILE '" + str(tmp_path / "none.key") + "' does not exist",
        ),
        (
            {**mine.env(), "SAFEREPLAY_SERVE_TLS_KEY_FILE": str(other.key)},
            "SAFEREPLAY_SERVE_TLS_CERT_FILE and SAFEREPLAY_SERVE_TLS_KEY_FILE cannot be used",
        ),
    ]
    for changes, expected in cases:
        port = free_port()
        result = refused({**store_env, **changes}, port)
        said = " ".join(result.stderr.split())
        assert result.returncode == 2 and expected in said, said
        assert key_text.splitlines()[1] not in result.stderr and "Traceback" not in said
        assert listening_addresses(port) == set()
    mine.key.chmod(0o644)
    result = refused({**store_env, **mine.env()}, free_port())
    said = " ".join(result.stderr.split())
    assert result.returncode == 2 and "is readable by group or others" in said, said
    assert f"chmod 600 {mine.key}" in said


def test_a_port_in_use_is_refused_with_a_message(store_env: dict[str, str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = refused(store_env, port)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr, result.stderr
    assert "--port" in result.stderr and "Traceback" not in result.stderr
    assert "serving" not in result.stdout


def test_workers_need_a_token_in_the_environment(store_env: dict[str, str]) -> None:
    port = free_port()
    without = {k: v for k, v in store_env.items() if k != "SAFEREPLAY_TOKEN_FILE"}
    result = refused(without, port, "--workers", "1")
    assert result.returncode == 4, result.stdout + result.stderr
    assert "SAFEREPLAY_TOKEN" in result.stderr and "Traceback" not in result.stderr
    assert listening_addresses(port) == set()


def test_a_worker_that_exits_is_reported_not_restarted(
    store_env: dict[str, str], tmp_path: Path
) -> None:
    cli_process(store_env, "principals", "add", "eve", "-r", "serves, operates nothing")
    issued = cli_process(store_env, "token", "issue", "eve", "-r", "for serve", "--json")
    env = {k: v for k, v in store_env.items() if k != "SAFEREPLAY_TOKEN_FILE"}
    env["SAFEREPLAY_TOKEN"] = json.loads(issued.stdout)["token"]
    with serve(env, tmp_path, "--workers", "1") as served:
        [worker] = served.announced["workers"]
        said = wait_until(
            lambda: "not restarted" in served.errors() and served.errors(),
            timeout=STARTUP_SECONDS,
            what="serve to report its worker's exit",
        )
        assert f"worker 1 (pid {worker}) exited with code 3" in said, said
        assert "'eve' may not worker" in said and env["SAFEREPLAY_TOKEN"] not in said
        assert served.get("/api/me").status_code == 200, "the server itself serves on"
        assert served.stop(signal.SIGINT) == 0, served.errors()


@pytest.mark.parametrize("host", ["127.0.0.1", "127.5.6.7", "::1", "localhost"])
def test_loopback_needs_neither_the_flags_nor_tls(host: str) -> None:
    plain = ServeSettings.from_env(allow_plaintext_remote=False)
    assert refuse_plaintext_remote(host, plain, allow_remote=False, allow_plaintext=False) is None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "db.example"])
def test_any_other_host_needs_tls_or_an_explicit_allowance(
    host: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SAFEREPLAY_SERVE_ALLOW_PLAINTEXT_REMOTE", raising=False)
    plain = ServeSettings.from_env()
    said = refuse_plaintext_remote(host, plain, allow_remote=False, allow_plaintext=False)
    assert said is not None and "--allow-remote" in said
    said = refuse_plaintext_remote(host, plain, allow_remote=True, allow_plaintext=False)
    assert said is not None and "--allow-plaintext-remote" in said
    assert refuse_plaintext_remote(host, plain, allow_remote=False, allow_plaintext=True) is None
    allowed = ServeSettings.from_env(allow_plaintext_remote=True)
    assert refuse_plaintext_remote(host, allowed, allow_remote=True, allow_plaintext=False) is None
    certificates = make_certificates(tmp_path)
    tls = ServeSettings.from_env(tls_cert_file=certificates.cert, tls_key_file=certificates.key)
    assert refuse_plaintext_remote(host, tls, allow_remote=True, allow_plaintext=False) is None

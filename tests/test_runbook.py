"""docs/runbook.md is executed as written: every ```sh block, in order, in one shell.

The runbook's first commands make the store (``eval "$(safereplay init ...)"``
and ``safereplay seed``); the blocks after them run against it, each command's
exit code checked (``set -euo pipefail``). Job ids are not copied by hand: the
runbook's own shell variables (``JOB=$(safereplay jobs ... --json | ...)``) pick
them up.

Some procedures need the fault they repair. Before those sections the test
brings the store into that state with ordinary commands (:data:`SITUATIONS`),
as an incident would have: the runbook's text is never rewritten.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNBOOK = ROOT / "docs" / "runbook.md"

#: Commands run before a section's blocks (by its heading): the situation it repairs.
SITUATIONS = {
    "A change waits for approval by a second person": [
        # A completed rebuild to swap, a second person (ann, an approver), and the
        # default approval rules (the suite switches them off).
        'safereplay rebuild run_status --reason "a build to swap"',
        'safereplay principals add ann --reason "a second person"',
        "safereplay grant ann approver 'projection:*' --reason \"approves swaps\"",
        '(umask 077 && safereplay token issue ann --reason "the token of ann" > ann.token)',
        "unset SAFEREPLAY_APPROVAL_REQUIRED",
    ],
    "A projection is behind after an outage": [
        'safereplay seed --events 300 --reason "events while the follower was down"',
    ],
    "A worker crashed": [
        # A job whose only worker died: planned, with nobody running it.
        'safereplay seed --events 100 --reason "more events"',
        'safereplay catch-up run_status --workers 0 --reason "its worker crashed"',
    ],
    "Pause, resume or abort a job": [
        # A job still active, not running (no worker: pausing it cannot race a worker).
        'safereplay rebuild run_status --workers 0 --reason "a job to pause"',
    ],
    "An SLO is breached": [
        # A lag target the projection is over: events it has not applied yet.
        'export SAFEREPLAY_SLO_TARGETS=\'{"projections": {"run_status": {"lag_events": 0}}}\'',
        'safereplay seed --events 200 --reason "a burst the projection has not applied"',
    ],
    "A downstream service was down": [
        # The completions webhook points at a port nobody listens on: the receiver is down.
        'PORT=$(python -c \'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); '
        "print(s.getsockname()[1])')",
        "head -c 48 /dev/urandom | base64 > completions.secret && chmod 600 completions.secret",
        'export SAFEREPLAY_WEBHOOK_COMPLETIONS_URL="http://127.0.0.1:$PORT/hooks/runs"',
        'export SAFEREPLAY_WEBHOOK_COMPLETIONS_SECRET_FILE="$PWD/completions.secret"',
        # Quick retries, so that the live run gives up in seconds.
        "export SAFEREPLAY_REACTION_ATTEMPTS=2 SAFEREPLAY_REACTION_BACKOFF_INITIAL=0.01",
        "export SAFEREPLAY_REACTION_BREAKER_COOL_DOWN=0",
        # The live runner delivers while it is down: retried, then parked (exit 1).
        "safereplay react run_completions --once || test $? -eq 1",
        # The receiver comes back (a process of its own; the test stops it afterwards).
        f"python {ROOT / 'tests' / 'webhook_receiver.py'} $PORT completions.secret 600 "
        "> receiver.log 2>&1 & echo $! > receiver.pid",
        'for _ in $(seq 300); do python -c "import socket; '
        "socket.create_connection(('127.0.0.1', $PORT), 1)\" 2>/dev/null && break; sleep 0.1; done",
    ],
    "An integrity check failed (a conflict)": [
        # One bit of a stored Run event's AES-GCM tag flipped on disk, then a rebuild
        # meets it: paused by a conflict (the command exits 1, the job waits).
        'python -c "import os, sqlite3; '
        "c = sqlite3.connect(os.environ['SAFEREPLAY_SQLITE_PATH']); "
        "q = 'SELECT max(rowid) FROM stored_events WHERE topic LIKE ?'; "
        "p = c.execute(q, ('%:Run.%',)).fetchone()[0]; "
        "r = 'SELECT state FROM stored_events WHERE rowid = ?'; "
        "s = bytearray(c.execute(r, (p,)).fetchone()[0]); s[-1] ^= 1; "
        "c.execute('UPDATE stored_events SET state = ? WHERE rowid = ?', (bytes(s), p)); "
        'c.commit()"',
        'safereplay rebuild run_status --workers 1 --reason "a rebuild meets it" || test $? -eq 1',
    ],
}


def sections(text: str) -> list[tuple[str, list[str]]]:
    """``(heading, [sh block, ...])`` for every ``## `` section, in order (blocks
    indented under a list item included)."""
    found = []
    for part in re.split(r"^## ", text, flags=re.MULTILINE)[1:]:
        heading, _, body = part.partition("\n")
        blocks = [
            textwrap.dedent(m["body"])
            for m in re.finditer(
                r"^(?P<indent>[ \t]*)```sh[ \t]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
                body,
                flags=re.MULTILINE | re.DOTALL,
            )
        ]
        found.append((heading.strip(), blocks))
    return found


def runbook_script(text: str) -> str:
    lines = ["set -euo pipefail"]
    for heading, blocks in sections(text):
        lines.append(f"echo '>>> {heading}' >&2")
        lines += SITUATIONS.get(heading, [])
        lines += blocks
    return "\n".join(lines) + "\n"


def stop_receiver(pid_file: Path) -> None:
    """Stop the webhook receiver a situation started (if it did)."""
    if pid_file.exists():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)


def test_every_situation_names_a_section_with_commands() -> None:
    found = dict(sections(RUNBOOK.read_text(encoding="utf-8")))
    for heading in SITUATIONS:
        assert found.get(heading), f"docs/runbook.md has no commands under '## {heading}'"


def test_the_runbook_runs_as_written(tmp_path: Path) -> None:
    text = RUNBOOK.read_text(encoding="utf-8")
    script = runbook_script(text)
    assert "safereplay init" in script.split(">>> ")[1], "the store is made first"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAFEREPLAY_")} | {
        "SAFEREPLAY_APPROVAL_REQUIRED": ""
    }
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("PYTHONPATH", None)
    env["COLUMNS"] = "120"
    try:
        result = subprocess.run(
            ["bash", "-c", script],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
    finally:
        stop_receiver(tmp_path / "receiver.pid")
    last = [line for line in result.stderr.splitlines() if line.startswith(">>> ")][-1:]
    assert result.returncode == 0, (
        f"docs/runbook.md stopped in {last} with exit code {result.returncode}:\n"
        f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    )
    assert last == [">>> " + sections(text)[-1][0]], "every section ran"

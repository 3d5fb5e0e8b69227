"""Partition processes released together: the multi-process path of a loop.

Each of ``k`` processes (``python -m MODULE SPEC_JSON``) imports, sets itself up,
prints ``READY`` and waits; the clock starts when all are released together
(``GO`` on their stdin) and stops when the last one has printed its
``RESULT {json}`` and exited. So interpreter start-up and imports are not
counted, for safereplay's partition workers and the raw floor's alike.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["child_handshake", "release_together"]

ROOT = Path(__file__).resolve().parent.parent


def release_together(
    module: str, specs: list[dict[str, Any]], *, timeout: float = 7200
) -> tuple[float, list[dict[str, Any]]]:
    """Start one process per spec, release them together; (seconds, their results)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", module, json.dumps(spec)],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for spec in specs
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if line.strip() != "READY":
                _, err = proc.communicate(timeout=60)
                raise RuntimeError(f"partition process of {module} failed to start:\n{err[-4000:]}")
        started = time.perf_counter()
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("GO\n")
            proc.stdin.flush()
        outputs = [proc.communicate(timeout=timeout) for proc in procs]
        elapsed = time.perf_counter() - started
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    results = []
    for proc, (out, err) in zip(procs, outputs, strict=True):
        lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            raise RuntimeError(
                f"partition process of {module} failed (exit {proc.returncode}):\n{err[-4000:]}"
            )
        results.append(json.loads(lines[-1][len("RESULT ") :]))
    return elapsed, results


def child_handshake() -> bool:
    """In a partition process, once set up: report ready and wait to be released."""
    print("READY", flush=True)
    return sys.stdin.readline().strip() == "GO"

"""The demo's integrity chapter: a tampered row pauses a rebuild until an operator acts.

One bit of a stored event's AES-GCM tag is flipped on disk. A blue/green rebuild
of ``run_status`` in two partitions meets it: with ``on_integrity_failure`` =
``pause`` (the default) the partition holding it stops just before it and an
integrity **conflict** is recorded, while the other partition completes. The
operator resolves the conflict by parking that one event (audited, with a
reason); the paused partition resumes and the rebuild completes. The row is then
restored from its backup, so the chapters after this one read an intact log.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from rich.console import Console

from safereplay.domain import AutomationApp, DomainSettings
from safereplay.projections import RunStatusBoard
from safereplay.recovery.jobs.worker import WorkerOptions
from safereplay.recovery.operations.context import RecoveryContext
from safereplay.recovery.security.access import Principal

__all__ = ["IntegrityStory", "corrupt_one_event", "restore_event", "tell_integrity_story"]


@dataclass(frozen=True)
class IntegrityStory:
    """What the chapter showed: the conflict, how it was resolved, the job's end."""

    position: int
    kind: str
    resolution: str
    job_state: str


def corrupt_one_event(
    settings: DomainSettings, app: AutomationApp, after: int
) -> tuple[int, bytes]:
    """Flip one byte of a stored event of a run with later events; returns the backup."""
    envelopes = app.read(after=after, limit=10**6)
    per_run: dict[UUID, list[int]] = {}
    for envelope in envelopes:
        if envelope.topic in RunStatusBoard.topics and envelope.position is not None:
            per_run.setdefault(envelope.aggregate_id, []).append(envelope.position)
    victim = next(positions for positions in per_run.values() if len(positions) >= 3)
    position = victim[1]
    table = app.recorder.events_table_name  # type: ignore[attr-defined]
    # closing(): ``with`` on a sqlite3 connection commits but does not close it.
    with contextlib.closing(sqlite3.connect(settings.sqlite_path)) as conn, conn:
        (state,) = conn.execute(
            f"SELECT state FROM {table} WHERE rowid = ?",
            (position,),
        ).fetchone()
        damaged = bytearray(state)
        damaged[-1] ^= 0x01  # one bit in the GCM tag: decryption must refuse it
        conn.execute(f"UPDATE {table} SET state = ? WHERE rowid = ?", (bytes(damaged), position))
    return position, bytes(state)


def restore_event(
    settings: DomainSettings, app: AutomationApp, position: int, state: bytes
) -> None:
    table = app.recorder.events_table_name  # type: ignore[attr-defined]
    with contextlib.closing(sqlite3.connect(settings.sqlite_path)) as conn, conn:
        conn.execute(f"UPDATE {table} SET state = ? WHERE rowid = ?", (state, position))


def tell_integrity_story(
    settings: DomainSettings,
    app: AutomationApp,
    context: RecoveryContext,
    run: Callable[..., Any],
    *,
    operator: Principal,
    viewer: Principal,
    lease_seconds: float,
    console: Console,
) -> IntegrityStory:
    position, backup = corrupt_one_event(settings, app, 0)
    console.print(
        f"position {position} is tampered with on disk (one bit of its AES-GCM tag); "
        f"on_integrity_failure is {context.recovery.on_integrity_failure!r}"
    )
    started = run(
        operator,
        "rebuild",
        reason="demo: rebuild run_status",
        projection="run_status",
        partitions=2,
    )
    job_id = UUID(started["job_id"])
    worker = context.worker(options=WorkerOptions(lease_seconds=lease_seconds, exit_when_idle=True))
    # The pause and the park are told below, without their log lines.
    logs = [logging.getLogger(f"safereplay.{n}") for n in ("recovery.jobs.worker", "projections")]
    levels = [log.level for log in logs]
    for log in logs:
        log.setLevel(logging.CRITICAL)
    try:
        worker.run(job_id=job_id)
        [conflict] = run(viewer, "conflicts.list")
        status = context.jobs.status(job_id)
        parts = ", ".join(
            f"{p.partition_index}: {p.status} at {p.position}" for p in status.partitions
        )
        console.print(
            f"[red]paused by conflict[/] {conflict['conflict_id'][:8]}: rebuild job "
            f"{str(job_id)[:8]} ({parts}); nothing past position {conflict['position']} applied",
            highlight=False,
        )
        console.print(f"  {conflict['kind']}: {conflict['reason']}", highlight=False)
        resolved = run(
            operator,
            "conflicts.resolve",
            reason="INC-7: row damaged, restore pending; park it",
            conflict_id=conflict["conflict_id"],
            action="park",
        )
        worker.run(job_id=job_id)
    finally:
        for log, level in zip(logs, levels, strict=True):
            log.setLevel(level)
    job = context.jobs.get_job(job_id)
    console.print(
        f"demo-operator resolved it (park, audited with its reason): the paused partition "
        f"resumed and the rebuild is {job.state}, with position {position} parked (and its "
        f"run's later events behind it; `safereplay conflicts list --all` shows the record)"
    )
    restore_event(settings, app, position, backup)
    return IntegrityStory(position, conflict["kind"], resolved["resolution"], str(job.state))

"""``safereplay demo``: the story of safereplay on an embedded SQLite store."""

from __future__ import annotations

import os
import shutil
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from rich import box
from rich.console import Console
from rich.table import Table

from safereplay.domain import AutomationApp, DomainSettings, InvalidInput, KeyRing
from safereplay.domain.workload import record_workload
from safereplay.projections import (
    REFERENCE_PROJECTIONS,
    ProjectionRunner,
    SQLiteProjectionStore,
    StatusReport,
    open_source,
    status,
)
from safereplay.recovery.cli.demo_story import StoryResult, tell_recovery_story
from safereplay.recovery.errors import InvalidRequest
from safereplay.recovery.operations.context import RecoveryContext
from safereplay.recovery.operations.initialise import export_lines, write_secret_file
from safereplay.recovery.operations.schema import migrate_bootstrap
from safereplay.recovery.security.audit import AuditKey
from safereplay.recovery.settings import RecoverySettings

__all__ = ["DemoResult", "run_demo", "status_table"]


@dataclass(frozen=True)
class DemoResult:
    directory: Path
    events: int
    head_position: int
    status: StatusReport | None = None
    story: StoryResult | None = None


def _when(value: datetime | None) -> str:
    """The UTC time of day in ISO 8601 (``14:00:47Z``): a whole timestamp would not
    fit the status table in 80 columns (``status --json`` has it)."""
    return "-" if value is None else value.astimezone(UTC).strftime("%H:%M:%SZ")


def held_back_text(held_back: int, since: datetime | None, taken_at: datetime) -> str:
    """``"106 held back for 12s (since 10:04:31)"``: events committed above a doubt."""
    if since is None:
        return f"{held_back} held back"
    age = max(0.0, (taken_at - since).total_seconds())
    return f"{held_back} held back for {age:,.0f}s (since {_when(since)})"


def status_table(report: StatusReport) -> Table:
    """The projections' lag as a table: one row per projection partition.

    A backlog that includes events held back above the high-water mark says so:
    they are behind a position still in doubt, not caught up (``docs/gaps.md``).
    """
    held = (
        f" ({held_back_text(report.held_back, report.held_back_since, report.taken_at)})"
        if report.held_back
        else ""
    )
    table = Table(
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        padding=0,  # the box leaves one space between columns: it fits 80 columns
        title=(
            f"projection status: log head {report.head_position}, high-water mark "
            f"{report.high_water_mark}{held}"
        ),
    )
    # Skipped parked events (never applied) get a column once there are any.
    skipped = any(p.skipped for p in report.projections)
    table.add_column("projection", no_wrap=True)
    names = ("build", "part", "position", "backlog", "applied", "parked", "re-driven")
    for name in (*names, "skipped") if skipped else names:
        table.add_column(name, justify="right", no_wrap=True, min_width=len(name))
    table.add_column("committed", no_wrap=True, min_width=9)
    for projection in report.projections:
        rows = projection.partitions or ()
        if not rows:
            zeros = ("0", "0", "0", "0") if skipped else ("0", "0", "0")
            table.add_row(projection.name, str(projection.build), "-", "0", "-", *zeros, "-")
        for part in rows:
            backlog = str(part.backlog)
            if part.held_back:
                backlog += f" ({part.held_back} held back)"
            table.add_row(
                projection.name,
                str(projection.build),
                f"{part.index}/{part.count}",
                str(part.position),
                f"[green]{backlog}[/]" if part.backlog == 0 else f"[yellow]{backlog}[/]",
                str(part.events_applied),
                str(part.parked_now),
                str(part.redriven),
                *((str(part.skipped),) if skipped else ()),
                _when(part.committed_at),
            )
    return table


def build_projections(app: AutomationApp, db_path: Path, console: Console) -> StatusReport:
    """Catch the reference projections up (tables in the event store's file)."""
    with SQLiteProjectionStore(db_path) as store, open_source(app) as source:
        for projection in REFERENCE_PROJECTIONS:
            runner = ProjectionRunner(projection(), source=source, store=store)
            result = runner.catch_up()
            console.print(
                f"projection [bold]{projection.name}[/]: applied {result.applied} events "
                f"in {result.batches} batch(es), each one transaction with its position"
            )
        report = status(store, source)
    console.print(status_table(report))
    return report


def prepare_key_file(directory: Path) -> Path:
    """Create the demo's own key file (mode 0600) unless one is already there."""
    key_file = directory / "keyring.json"
    if not key_file.exists():
        KeyRing.generate("demo-1").save(key_file)
    return key_file


#: Written into the demo's directory, so that a later run knows it may start over there.
DEMO_MARKER = "SAFEREPLAY-DEMO"


def start_over(directory: Path) -> None:
    """An empty demo directory: a new one, or one a previous demo left (removed whole).

    Anything else is refused before a file is touched: the demo deletes only what
    it made itself, and never half-resets a directory it did not make.
    """
    if directory.exists():
        if not directory.is_dir():
            raise InvalidRequest(f"{str(directory)!r} is a file: give the demo a directory")
        if any(directory.iterdir()):
            if not (directory / DEMO_MARKER).is_file():
                raise InvalidRequest(
                    f"{str(directory)!r} holds files the demo did not make: choose another "
                    "directory with --directory"
                )
            shutil.rmtree(directory)
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    (directory / DEMO_MARKER).write_text(
        "Made by `safereplay demo`, which starts over here (removing this folder) when run again.\n"
    )


def migrate_database(directory: Path, settings: DomainSettings, console: Console) -> None:
    """What `safereplay migrate` does on a new database: every component's tables, once,
    audited as the bootstrap (no principal exists yet)."""
    audit_key = directory / "audit.key"
    AuditKey.generate().save(audit_key)
    context = RecoveryContext(
        domain=settings, recovery=RecoverySettings(audit_key_file=audit_key), check_schema=False
    )
    try:
        report = migrate_bootstrap(context, reason="demo: a new database")
    finally:
        context.close()
    components = ", ".join(a["component"] for a in report["applied"])
    console.print(f"schema:      `safereplay migrate` set up {components} (audited)")


def hand_over(directory: Path, story: StoryResult, console: Console) -> None:
    """How to point the other commands at the demo's store, as its operator.

    The token goes to a 0600 file in the demo's directory, never to the terminal.
    """
    token_file = (directory / "demo-operator.token").absolute()
    write_secret_file(token_file, story.operator_token)
    console.rule("[bold]your turn")
    console.print(
        f"demo-operator's token is in {token_file} (owner-only, not shown). Point the other "
        "commands at the demo's store with:"
    )
    for line in export_lines(
        backend="sqlite",
        sqlite_path=(directory / "events.db").absolute(),
        key_file=(directory / "keyring.json").absolute(),
        audit_key_file=(directory / "audit.key").absolute(),
        token_file=token_file,
    ):
        console.print(line, highlight=False, soft_wrap=True, markup=False)
    console.print(
        "then try `safereplay status`, `safereplay jobs` or `safereplay rebuild run_status "
        '--reason "try it"`. To watch and operate it in a browser: `safereplay serve`, '
        "open http://127.0.0.1:8321/ and sign in with the token in that file. For a store "
        "of your own: `safereplay init`, then `safereplay seed --events 1000 --reason ...`"
    )


def run_demo(
    directory: Path, *, console: Console, workflows: int = 6, runs: int = 12
) -> DemoResult:
    start_over(directory)
    key_file = prepare_key_file(directory)
    db_path = directory / "events.db"
    settings = DomainSettings.from_env(
        backend="sqlite", sqlite_path=db_path, key_file=key_file, encryption=True
    )
    console.rule("[bold]safereplay demo")
    console.print(f"event store: SQLite at {db_path}")
    console.print(f"key ring:    {key_file} (owner-only), active key 'demo-1'")
    migrate_database(directory, settings, console)
    app = AutomationApp(settings)
    try:
        summary = record_workload(app, workflows=workflows, runs_per_workflow=runs, source="demo")
        try:
            app.submit(
                '{"type": "AddStep", "workflow_id": "not-a-uuid", "timeout_seconds": -5}',
                source="demo",
            )
        except InvalidInput as exc:
            console.print(f"[yellow]rejected at the edge, nothing recorded:[/] {exc}")
        envelopes = app.read(after=0, limit=summary.head_position)
        by_type = Counter(e.event_type for e in envelopes)
        table = Table(title="recorded events")
        table.add_column("event type")
        table.add_column("count", justify="right")
        for name, count in sorted(by_type.items()):
            table.add_row(name, str(count))
        console.print(table)
        first = envelopes[0]
        console.print(
            f"envelope of position {first.position}: event id {first.event_id}, "
            f"source {first.source!r}, correlation {first.correlation_id}, "
            f"schema v{first.schema_version}, at {first.occurred_at.isoformat()}"
        )
        raw = app.recorder.select_notifications(start=1, limit=1)[0].state
        console.print(
            f"stored state of position 1 is {len(raw)} bytes of AES-256-GCM ciphertext "
            f"(key id in clear: {raw[5 : 5 + raw[4]].decode()!r}), no plaintext"
        )
        console.print(
            f"[bold green]summary:[/] recorded {summary.events} events "
            f"({summary.workflows} workflows, {summary.runs} runs), "
            f"head position {summary.head_position}, all encrypted"
        )
        report = build_projections(app, db_path, console)
        story = tell_recovery_story(directory, settings, app, console=console)
        console.rule("[bold]final status")
        console.print("the live followers catch up (each follows its projection's live build)")
        with SQLiteProjectionStore(db_path) as store, open_source(app) as source:
            for projection in REFERENCE_PROJECTIONS:
                ProjectionRunner(projection(), source=source, store=store).catch_up()
            report = status(store, source)
        console.print(status_table(report))
        redelivered = (
            ""
            if story.reactions is None
            else f"{story.reactions.redelivered} missed webhook deliveries re-delivered once each, "
        )
        console.print(
            f"[bold green]done:[/] {story.parked} events parked and {story.redriven} re-driven, "
            f"a crashed worker's partition taken over, build {story.live_build} of "
            f"workflow_stats live after a verified swap, {redelivered}{story.audit_entries} "
            "audit entries that verify"
        )
        hand_over(directory, story, console)
        return DemoResult(
            directory=directory,
            events=summary.events,
            head_position=report.head_position,
            status=report,
            story=story,
        )
    finally:
        app.close()

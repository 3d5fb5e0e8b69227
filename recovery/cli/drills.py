"""CLI: ``safereplay drill PROJECTION`` and ``safereplay drills PROJECTION``."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from safereplay.recovery.cli.security import Json, Reason
from safereplay.recovery.cli.support import EXIT_NO, console, emit, iso_time, operation
from safereplay.recovery.drills.drill import DrillResult

__all__ = ["drill_command", "drills_command", "register"]

Build = Annotated[
    int | None, typer.Option("--build", "-b", min=1, help="Which build (default: the live one).")
]


def _drill_table(result: DrillResult) -> None:
    t = Table(
        "table", "partition", "rows live", "rows sandbox", "checksum live", "checksum sandbox"
    )
    t.add_column("match")
    for c in result.comparisons:
        t.add_row(
            c.table,
            f"{c.partition}/{c.partition_count}",
            str(c.live_rows),
            str(c.sandbox_rows),
            c.live_checksum[:16],
            c.sandbox_checksum[:16],
            "[green]yes[/]" if c.match else "[red]NO[/]",
        )
    console.print(t)
    for c in result.divergent:
        listed = ", ".join(
            f"{'/'.join(str(part) for part in d.key)} ({d.kind})" for d in c.differences
        )
        more = c.differing_rows - len(c.differences)
        console.print(
            f"[red]{c.table} partition {c.partition}[/]: {c.differing_rows} rows differ: "
            f"{listed}{f' and {more} more' if more else ''}",
            highlight=False,
        )
    console.print(
        f"{result.summary()} (drill {result.drill_id}, {result.events_applied} events applied "
        f"in {result.sandbox}, now removed)",
        highlight=False,
    )


Projection = Annotated[str, typer.Argument(help="The projection's name.")]


def drill_command(
    projection: Projection,
    reason: Reason,
    build: Build = None,
    partitions: Annotated[
        int | None,
        typer.Option(
            min=1, max=256, help="Compare in this many partitions (default: the build's)."
        ),
    ] = None,
    as_json: Json = False,
) -> None:
    """Rebuild PROJECTION into a sandbox and compare it with the live build.

    Compared table by table, partition by partition, with checksums; exit 0 when
    it matches, 1 on divergence (the differing rows' keys are listed). The live
    tables, positions and builds are only read, through read-only connections;
    the sandbox is removed afterwards, and the result recorded.
    """
    parameters: dict[str, Any] = {"projection": projection}
    if build is not None:
        parameters["build"] = build
    if partitions is not None:
        parameters["partitions"] = partitions
    result: DrillResult = operation("drill", reason=reason, **parameters)
    emit(result, as_json=as_json, human=_drill_table)
    if not result.match:
        raise typer.Exit(EXIT_NO)


def drills_command(
    projection: Projection,
    build: Build = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="At most this many drills.")] = 20,
    as_json: Json = False,
) -> None:
    """Past drills of PROJECTION, newest first."""
    parameters: dict[str, Any] = {"projection": projection, "limit": limit}
    if build is not None:
        parameters["build"] = build
    results: list[DrillResult] = operation("drills.list", **parameters)

    def table(rows: list[DrillResult]) -> None:
        t = Table("drill", "build", "position", "partitions", "match", "by", "finished")
        for r in rows:
            t.add_row(
                r.drill_id,
                str(r.build),
                str(r.position),
                str(r.partition_count),
                "[green]yes[/]" if r.match else "[red]NO[/]",
                r.principal,
                iso_time(r.finished_at),
            )
        console.print(t)

    emit(results, as_json=as_json, human=table)


def register(app: typer.Typer) -> None:
    app.command("drill")(drill_command)
    app.command("drills")(drills_command)

"""CLI: ``projections`` (every registered projection's lifecycle), ``rows`` (a
projection's rows) and ``metrics`` (the Prometheus exposition). All are reads
through the dispatch layer (view permission)."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich import box
from rich.table import Table

from safereplay.recovery.cli.security import Json
from safereplay.recovery.cli.support import console, emit, operation, to_jsonable
from safereplay.recovery.operations.metrics import samples_of
from safereplay.recovery.operations.projections import ProjectionLifecycle, RowsResult

__all__ = ["register"]


def _lifecycle_table(found: list[ProjectionLifecycle]) -> None:
    table = Table(box=box.SIMPLE_HEAD, title="projections (SAFEREPLAY_PROJECTIONS)")
    for column in ("projection", "version", "live build", "state", "position", "backlog"):
        table.add_column(column, justify="left" if column in ("projection", "state") else "right")
    table.add_column("builds")
    for p in found:
        backlog = str(p.backlog) + (f" ({p.held_back} held back)" if p.held_back else "")
        builds = ", ".join(f"{b['build']} v{b['version']} {b['status']}" for b in p.builds)
        table.add_row(
            p.name,
            "-" if p.version is None else str(p.version),
            "-" if p.live_build is None else str(p.live_build),
            p.state if p.job is None else f"{p.state} (job {p.job['job_id']})",
            str(p.position),
            backlog,
            builds or "-",
        )
    console.print(table)
    if any(p.state == "not built" for p in found):
        console.print(
            "a projection that is not built gets its first (live) build with "
            "`safereplay catch-up NAME --reason ...`"
        )


def projections_command(as_json: Json = False) -> None:
    """Every registered projection: version, live build, state and backlog (never-built
    ones too). Needs a viewer grant."""
    emit(operation("projections"), as_json=as_json, human=_lifecycle_table)


def _rows_table(result: RowsResult) -> None:
    table = Table(
        box=box.SIMPLE_HEAD,
        title=f"{result.projection}.{result.table} (build {result.build})",
    )
    for column in result.columns:
        table.add_column(column)
    for row in result.rows:
        table.add_row(*(_cell(row[c]) for c in result.columns))
    console.print(table)
    more = " (more match: raise --limit or narrow --where)" if result.truncated else ""
    console.print(f"{len(result.rows)} row(s){more}")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    jsonable = to_jsonable(value)
    if isinstance(jsonable, dict | list):
        return json.dumps(jsonable)  # a JSON column as JSON, not as a Python repr
    return str(jsonable)


def rows_command(
    projection: Annotated[str, typer.Argument(help="The projection's name.")],
    table: Annotated[str, typer.Argument(help="One of the projection's declared tables.")],
    where: Annotated[
        list[str] | None,
        typer.Option("--where", help="Only rows with COLUMN=VALUE (repeatable, all must hold)."),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="At most this many rows.")] = 100,
    build: Annotated[int | None, typer.Option(help="This build (default: the live one).")] = None,
    as_json: Json = False,
) -> None:
    """Read rows of TABLE of PROJECTION (live build), in key order. Needs a viewer grant."""
    result = operation(
        "rows", projection=projection, table=table, where=where or [], limit=limit, build=build
    )
    emit(result, as_json=as_json, human=_rows_table)


def metrics_command(as_json: Json = False) -> None:
    """Prometheus metrics computed from the store now (text exposition format):
    projections' positions, lag and parked events, active jobs' progress. Needs a
    viewer grant. With --json: the samples as a list of {name, labels, value}."""
    text = str(operation("metrics"))
    if as_json:
        emit(samples_of(text), as_json=True, human=lambda _: None)
    else:
        # The exposition text verbatim: rich would highlight and wrap it.
        sys.stdout.write(text)
        sys.stdout.flush()


def register(app: typer.Typer) -> None:
    app.command("projections")(projections_command)
    app.command("rows")(rows_command)
    app.command("metrics")(metrics_command)

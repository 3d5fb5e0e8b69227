"""Reading projections through the dispatch layer: status, parked events, the
registered projections' lifecycle (``projections``) and a projection's rows (``rows``).

Nothing here changes state; each read needs the view permission on its scope.
A row read names its table and columns as data: they are checked against the
projection's declared tables and columns and only then reach the store, which
composes them as identifiers (never interpolated text).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from safereplay.projections import Projection, StatusReport, Table, open_source, status
from safereplay.projections.status import projection_status
from safereplay.recovery.errors import InvalidRequest
from safereplay.recovery.jobs.plans import never_built
from safereplay.recovery.operations.dispatch import (
    OperationContext,
    Operations,
    int_parameter,
    limit_parameter,
)
from safereplay.recovery.security.access import Permission

if TYPE_CHECKING:
    from safereplay.recovery.operations.context import RecoveryContext

__all__ = [
    "MAX_ROWS",
    "ProjectionLifecycle",
    "RowsResult",
    "parse_where",
    "register_projection_operations",
]

#: The most rows one ``rows`` read returns (``--limit``); the default is 100.
MAX_ROWS = 10_000


@dataclass(frozen=True)
class ProjectionLifecycle:
    """Where a projection stands: registered (its code's version) and built (its
    builds in the store, the live one's position and backlog).

    ``state``: ``not built`` (no build has been written yet: ``safereplay
    catch-up`` makes the first, live), ``caught up``, ``behind``,
    ``outdated`` (the live build was made by another version of the code: rebuild
    and swap), ``rebuilding`` / ``catching up`` / ... (an active job, named in
    ``job``), or ``not registered`` (in the store, but not in SAFEREPLAY_PROJECTIONS).
    """

    name: str
    registered: bool
    version: int | None
    live_build: int | None
    live_version: int | None
    state: str
    position: int
    backlog: int
    held_back: int
    parked_now: int
    builds: tuple[dict[str, Any], ...]
    job: dict[str, Any] | None
    tables: tuple[str, ...]


@dataclass(frozen=True)
class RowsResult:
    """Rows of one table of a projection's build, in key order."""

    projection: str
    table: str
    build: int
    columns: tuple[str, ...]
    rows: tuple[dict[str, Any], ...]
    #: More rows matched than ``limit``.
    truncated: bool


_JOB_STATES = {"rebuild": "rebuilding", "catch-up": "catching up", "replay": "replaying"}


def _lifecycle(
    context: RecoveryContext, name: str, cls: type[Projection] | None, *, mark: int, head: int
) -> ProjectionLifecycle:
    store = context.projection_store
    builds = store.builds(name)
    live = store.live_build(name)
    jobs = context.jobs.list_jobs(projection=name, active_only=True, limit=1)
    job = (
        {
            "job_id": str(jobs[0].job_id),
            "kind": str(jobs[0].kind),
            "build": jobs[0].build,
            "state": str(jobs[0].state),
        }
        if jobs
        else None
    )
    if live is not None:
        report = projection_status(store, name, high_water_mark=mark, head=head)
        position, backlog, held, parked = (
            report.position,
            report.backlog,
            report.held_back,
            report.parked_now,
        )
        live_version: int | None = report.version
    else:
        position, parked, live_version = 0, 0, None
        held = max(0, head - mark)
        backlog = mark + held
    if cls is None:
        state = "not registered"
    elif job is not None:
        kind = str(job["kind"])
        state = _JOB_STATES.get(kind, kind)
    elif never_built(store, name):
        state = "not built"
    elif live_version is not None and live_version != cls.version:
        state = "outdated"
    else:
        state = "caught up" if backlog == 0 else "behind"
    return ProjectionLifecycle(
        name=name,
        registered=cls is not None,
        version=None if cls is None else cls.version,
        live_build=live,
        live_version=live_version,
        state=state,
        position=position,
        backlog=backlog,
        held_back=held,
        parked_now=parked,
        builds=tuple({"build": b.build, "version": b.version, "status": b.status} for b in builds),
        job=job,
        tables=() if cls is None else tuple(t.name for t in cls.tables),
    )


def _value(table: Table, column: str, text: Any) -> Any:
    """A ``where`` value in its column's type; text (from a command line) is parsed."""
    kind = table.by_name[column].type
    if not isinstance(text, str) or kind == "text":
        return text
    try:
        if kind == "integer":
            return int(text)
        if kind == "real":
            return float(text)
        if kind == "boolean":
            lowered = text.lower()
            if lowered not in ("true", "false", "1", "0"):
                raise ValueError(text)
            return lowered in ("true", "1")
        if kind == "timestamp":
            moment = datetime.fromisoformat(text)
            return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
        return json.loads(text)
    except ValueError:
        raise InvalidRequest(
            f"{column}={text!r}: {column} holds {kind} values, and {text!r} is not one"
        ) from None


def parse_where(
    projection: type[Projection], table: str, where: Sequence[str] | Mapping[str, Any] | None
) -> tuple[Table, dict[str, Any]]:
    """The declared table named ``table``, and ``where`` (``COL=VALUE`` texts or a
    mapping) as declared columns with values of their type; InvalidRequest names an
    unknown table or column and what the projection declares."""
    found = projection.table_map.get(table)
    if found is None:
        raise InvalidRequest(
            f"projection {projection.name!r} has no table {table!r} "
            f"(it has {', '.join(sorted(projection.table_map)) or 'none'})"
        )
    pairs: list[tuple[str, Any]] = []
    if isinstance(where, Mapping):
        pairs = list(where.items())
    else:
        for item in where or ():
            column, equals, value = str(item).partition("=")
            if not equals or not column:
                raise InvalidRequest(f"--where {item!r} is not COLUMN=VALUE")
            pairs.append((column.strip(), value))
    match: dict[str, Any] = {}
    for column, value in pairs:
        if column not in found.by_name:
            raise InvalidRequest(
                f"projection {projection.name!r} table {table!r} has no column {column!r} "
                f"(it has {', '.join(c.name for c in found.columns)})"
            )
        match[column] = _value(found, column, value)
    return found, match


def register_projection_operations(operations: Operations, context: RecoveryContext) -> None:
    def parked_list(ctx: OperationContext, p: Mapping[str, Any]) -> list[dict[str, Any]]:
        parked = context.projection_store.parked(
            p["projection"], include_resolved=bool(p.get("include_resolved"))
        )
        # Parked records hold where and why, never a payload: safe to show a viewer.
        return [asdict(event) for event in parked]

    def status_report(ctx: OperationContext, p: Mapping[str, Any]) -> StatusReport:
        names = list(p.get("projections") or []) or None
        # The log's head and safe head need no key ring: nothing is decrypted here.
        with open_source(context.domain, settings=context.projection_settings) as source:
            return status(context.projection_store, source, names)

    def status_scope(parameters: Mapping[str, Any]) -> str:
        names = list(parameters.get("projections") or [])
        return f"projection:{names[0]}" if len(names) == 1 else "projection:*"

    def lifecycle(ctx: OperationContext, p: Mapping[str, Any]) -> list[ProjectionLifecycle]:
        registry = context.registry
        stored = context.projection_store.projection_names()
        # Nothing is decrypted: the head and the safe head only.
        head = max(context.log.head(), mark := context.log.high_water_mark())
        return [
            _lifecycle(context, name, registry.classes.get(name), mark=mark, head=head)
            for name in sorted(set(registry) | set(stored))
        ]

    def rows(ctx: OperationContext, p: Mapping[str, Any]) -> RowsResult:
        cls = context.registry[p["projection"]]
        table, match = parse_where(cls, str(p.get("table") or ""), p.get("where"))
        limit = limit_parameter(p, most=MAX_ROWS)
        store = context.projection_store
        build = int_parameter(p, "build")
        if build is None:
            build = store.live_build(cls.name)
            if build is None:
                raise InvalidRequest(
                    f"projection {cls.name!r} has no build yet: make its first with "
                    f"`safereplay catch-up {cls.name} --reason ...`"
                )
        elif build not in {b.build for b in store.builds(cls.name)}:
            raise InvalidRequest(f"projection {cls.name!r} has no build {build}")
        found = store.select(cls, table.name, where=match, limit=limit + 1, build=build)
        return RowsResult(
            projection=cls.name,
            table=table.name,
            build=build,
            columns=tuple(c.name for c in table.columns),
            rows=tuple(found[:limit]),
            truncated=len(found) > limit,
        )

    operations.register(
        "status",
        permission=Permission.VIEW,
        handler=status_report,
        scope=status_scope,
        summary="head, safe head, and each projection's position, backlog and last commit",
        monitoring=True,
    )
    operations.register(
        "parked.list",
        permission=Permission.VIEW,
        handler=parked_list,
        summary="list parked (dead-letter) events of a projection",
        # Where and why events are parked (never payloads): what a dashboard polls.
        monitoring=True,
    )
    operations.register(
        "projections",
        permission=Permission.VIEW,
        handler=lifecycle,
        scope="projection:*",
        summary="every registered projection: version, live build, state and backlog",
        monitoring=True,
    )
    operations.register(
        "rows",
        permission=Permission.VIEW,
        handler=rows,
        summary="read rows of a projection's table (declared columns only)",
    )

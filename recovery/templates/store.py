"""Template plans (dry runs) and template governance.

``plan`` reads a template — a TOML file, a template stored by an admin, or a
shipped runbook — and says what applying it would do, changing nothing: the
projections and partitions in scope, the events in scope per partition (counted
in the database with the projection's topic and partition filters), the
physical tables that would change, an estimated duration from the rates of
completed jobs (or a stated default rate), the failure policy, the throttle and
the rollout stages. Everything it reads goes through read-only connections or
plain ``SELECT``s; it creates no table.

Templates an organisation adds live in ``safereplay_templates`` (every version
is kept: name, version, kind, TOML, SHA-256, author, time). Adding or changing
one needs the administer permission and is audited with a unified diff of the
TOML against the version it replaces, in the audit entry's parameters; the diff
is computed before the permission check, so a denied attempt records it too,
and checked again by the handler, so a recorded diff is always the real one.
"""

from __future__ import annotations

import difflib
import hashlib
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safereplay.projections import EventSource, Partition, Projection, open_source, partition_of
from safereplay.projections.projection import physical_table_name
from safereplay.recovery.database import Database
from safereplay.recovery.drills.drill import (
    BuildRecord,
    ReadView,
    StoreReader,
    missing_table,
    recorded_rows,
)
from safereplay.recovery.errors import InvalidRequest, JobConflict, RecoveryError
from safereplay.recovery.jobs.model import JobState
from safereplay.recovery.jobs.store import JobStore, SQLJobStore
from safereplay.recovery.operations.dispatch import Handler, OperationContext, Operations
from safereplay.recovery.operations.drills import live_reader
from safereplay.recovery.security.access import Permission, Principal
from safereplay.recovery.templates.model import (
    RUNBOOKS,
    RecoveryTemplate,
    load_template,
    parse_template,
)

if TYPE_CHECKING:
    from safereplay.recovery.operations.context import RecoveryContext

__all__ = [
    "DEFAULT_EVENTS_PER_SECOND",
    "Estimate",
    "PartitionPlan",
    "ProjectionPlan",
    "RolloutStage",
    "StoredTemplate",
    "TemplateChange",
    "TemplatePlan",
    "TemplateStore",
    "change_template",
    "measured_rate",
    "plan_template",
    "register_template_operations",
    "resolve_template",
    "template_change",
]

#: The rate a plan assumes when no completed job has been measured (it says so).
DEFAULT_EVENTS_PER_SECOND = 2000.0


# -- stored templates ------------------------------------------------------------------


@dataclass(frozen=True)
class StoredTemplate:
    name: str
    version: int
    kind: str
    text: str
    sha256: str
    author: str
    created_at: datetime


_CREATE_TEMPLATES = """
CREATE TABLE IF NOT EXISTS {templates} (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    kind TEXT NOT NULL,
    toml TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    author TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (name, version)
)"""
_SELECT_TEMPLATES = "SELECT * FROM {templates}"
_INSERT_TEMPLATE = """
INSERT INTO {templates} (name, version, kind, toml, sha256, author, created_at)
VALUES (%(name)s, %(version)s, %(kind)s, %(toml)s, %(sha256)s, %(author)s, %(now)s)"""


def _stored(row: Mapping[str, Any]) -> StoredTemplate:
    return StoredTemplate(
        name=row["name"],
        version=int(row["version"]),
        kind=row["kind"],
        text=row["toml"],
        sha256=row["sha256"],
        author=row["author"],
        created_at=datetime.fromtimestamp(float(row["created_at"]), UTC),
    )


def shipped_runbooks() -> list[str]:
    return sorted(path.stem for path in RUNBOOKS.glob("*.toml"))


class TemplateStore:
    """Versions of organisation templates in the recovery database."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def create_tables(self) -> None:
        with self.database.transaction(write=True) as tx:
            tx.execute(_CREATE_TEMPLATES)

    def _select(self, where: str, params: Mapping[str, Any]) -> list[StoredTemplate]:
        return [
            _stored(row) for row in recorded_rows(self.database, _SELECT_TEMPLATES + where, params)
        ]

    def versions(self, name: str) -> list[StoredTemplate]:
        """Every version of a template, oldest first."""
        return self._select(" WHERE name = %(name)s ORDER BY version", {"name": name})

    def latest(self, name: str) -> StoredTemplate | None:
        versions = self.versions(name)
        return versions[-1] if versions else None

    def get(self, name: str, version: int | None = None) -> StoredTemplate:
        versions = self.versions(name)
        found = [v for v in versions if version is None or v.version == version]
        if not found:
            which = f"template {name!r}" + ("" if version is None else f" version {version}")
            known = ", ".join(t.name for t in self.templates()) or "none"
            raise InvalidRequest(f"there is no stored {which} (stored templates: {known})")
        return found[-1]

    def templates(self) -> list[StoredTemplate]:
        """The latest version of every template, by name."""
        latest: dict[str, StoredTemplate] = {}
        for stored in self._select(" ORDER BY name, version", {}):
            latest[stored.name] = stored
        return list(latest.values())

    def save(
        self, text: str, template: RecoveryTemplate, *, author: str, base_version: int
    ) -> StoredTemplate:
        """Store ``text`` as the version after ``base_version`` (0: a new template)."""
        name = template.template.name
        try:
            with self.database.transaction(write=True) as tx:
                rows = tx.rows(
                    "SELECT MAX(version) AS v FROM {templates} WHERE name = %(name)s",
                    {"name": name},
                )
                current = int(rows[0]["v"] or 0) if rows else 0
                if current != base_version:
                    raise JobConflict(
                        f"template {name!r} is at version {current} now, not {base_version}: "
                        "someone changed it meanwhile; look at it and run the command again"
                    )
                row = {
                    "name": name,
                    "version": current + 1,
                    "kind": template.template.kind,
                    "toml": text,
                    "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
                    "author": author,
                    "now": tx.now(),
                }
                tx.execute(_INSERT_TEMPLATE, row)
        except Exception as exc:
            if self.database.is_unique_violation(exc):
                raise JobConflict(
                    f"template {name!r} was changed concurrently: run the command again"
                ) from None
            raise
        return _stored({**row, "created_at": row["now"]})


@dataclass(frozen=True)
class TemplateChange:
    """A stored version and the unified diff against the version before it."""

    template: StoredTemplate
    diff: str


def _declared_name(text: str) -> str:
    """The template's name, if its TOML says one (validation comes later)."""
    try:
        name = tomllib.loads(text).get("template", {}).get("name")
    except (tomllib.TOMLDecodeError, AttributeError):
        return "(unnamed)"
    return name if isinstance(name, str) and name else "(unnamed)"


def template_change(store: TemplateStore, text: str) -> dict[str, Any]:
    """The parameters of ``templates.add`` / ``templates.update``: the template's name,
    the version it replaces (0: none), the TOML and its unified diff against that version.
    Read-only, and computed before the permission check so every attempt's audit entry
    carries the diff."""
    name = _declared_name(text)
    current = store.latest(name)
    base = current.version if current else 0
    old = current.text if current else ""
    diff = "".join(
        difflib.unified_diff(
            _lines(old),
            _lines(text),
            fromfile=f"{name} v{base}" if current else "/dev/null",
            tofile=f"{name} v{base + 1}",
        )
    )
    return {"template": name, "base_version": base, "toml": text, "diff": diff}


def _lines(text: str) -> list[str]:
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    return lines


def change_template(
    context: RecoveryContext, principal: Principal, *, text: str, reason: str, update: bool
) -> TemplateChange:
    """Add (or update) a template as ``principal``: admin only, audited with the diff."""
    parameters = template_change(TemplateStore(context.database), text)
    operation = "templates.update" if update else "templates.add"
    result: TemplateChange = context.operations.run(
        principal, operation, reason=reason, **parameters
    )
    return result


def resolve_template(reference: str, store: TemplateStore) -> tuple[RecoveryTemplate, str]:
    """A template and where it came from: a TOML file, a stored template (latest
    version) or a shipped runbook, in that order."""
    path = Path(reference)
    if reference.endswith(".toml") or path.is_file():
        return load_template(path), f"file {reference}"
    stored = store.latest(reference)
    if stored is not None:
        origin = f"stored template {stored.name} v{stored.version}"
        return parse_template(stored.text, source=origin), origin
    shipped = RUNBOOKS / f"{reference}.toml"
    if shipped.is_file():
        return load_template(shipped), f"shipped runbook {reference}"
    stored_names = ", ".join(t.name for t in store.templates()) or "none"
    raise InvalidRequest(
        f"no template {reference!r}: not a file, not a stored template ({stored_names}), "
        f"not a shipped runbook ({', '.join(shipped_runbooks())})"
    )


# -- plans -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PartitionPlan:
    partition: int
    #: Events in scope have positions in (after, upto].
    after: int
    upto: int
    events: int


@dataclass(frozen=True)
class ProjectionPlan:
    projection: str
    live_build: int | None
    #: The build the template would write (a new one for a rebuild).
    writes_build: int | None
    tables: tuple[str, ...]
    partitions: tuple[PartitionPlan, ...]
    events: int
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class RolloutStage:
    stage: str
    partitions: tuple[int, ...]
    when: str


@dataclass(frozen=True)
class Estimate:
    events_per_second: float
    seconds: float
    basis: str


@dataclass(frozen=True)
class TemplatePlan:
    template: str
    kind: str
    origin: str
    description: str
    head: int
    partition_count: int
    projections: tuple[ProjectionPlan, ...]
    events: int
    tables: tuple[str, ...]
    estimate: Estimate
    failure_policy: Mapping[str, Any]
    throttle: Mapping[str, Any]
    stages: tuple[RolloutStage, ...]
    changes: str = "nothing: a plan is a dry run"


def measured_rate(jobs: JobStore | None, projections: Sequence[str]) -> tuple[float, str] | None:
    """Events per second over completed jobs: of these projections, else of any."""
    if jobs is None:
        return None
    for scope in [*projections, None] if projections else [None]:
        try:
            listed = jobs.list_jobs(projection=scope, limit=50)
        except Exception as exc:
            if missing_table(exc):
                return None  # no job was ever run here
            raise
        events = 0
        seconds = 0.0
        count = 0
        for job in listed:
            if job.state != JobState.COMPLETED:
                continue
            parts = jobs.partitions(job.job_id)
            started = [p.started_at for p in parts if p.started_at is not None]
            if not started:
                continue
            elapsed = max(p.updated_at for p in parts) - min(started)
            applied = sum(p.events_applied for p in parts)
            if elapsed > 0 and applied > 0:
                events, seconds, count = events + applied, seconds + elapsed, count + 1
        if count:
            of = "" if scope is None else f" of {scope}"
            return events / seconds, (
                f"measured: {events} events in {seconds:.1f} s over {count} completed job(s){of}"
            )
    return None


def _stages(template: RecoveryTemplate) -> tuple[RolloutStage, ...]:
    in_scope = template.partitions_in_scope()
    canary = sorted(template.rollout.canary_partitions)
    if not canary:
        return (RolloutStage("all", tuple(in_scope), "at once"),)
    rest = tuple(p for p in in_scope if p not in canary)
    when = (
        "only if the canary verified"
        if template.rollout.require_verified_canary
        else "after the canary"
    )
    return (RolloutStage("canary", tuple(canary), "first"), RolloutStage("rest", rest, when))


class _Planner:
    def __init__(
        self, template: RecoveryTemplate, view: ReadView, source: EventSource, head: int
    ) -> None:
        self.template = template
        self.view = view
        self.source = source
        self.head = head
        self.count = template.scope.partitions

    def _ranges(
        self, cls: type[Projection], live: BuildRecord | None
    ) -> tuple[dict[int, tuple[int, int]], list[str]]:
        kind = self.template.template.kind
        in_scope = self.template.partitions_in_scope()
        notes: list[str] = []
        if kind == "rebuild":
            return dict.fromkeys(in_scope, (0, self.head)), notes
        if live is None:
            raise InvalidRequest(f"projection {cls.name!r} has no live build to {kind}")
        if kind == "replay-range":
            positions = self.template.scope.positions
            assert positions is not None  # the template validates it
            upto = min(positions.end, self.head)
            if positions.end > self.head:
                notes.append(f"the range ends after the head ({self.head}): counted up to it")
            return dict.fromkeys(in_scope, (positions.start - 1, upto)), notes
        stored = self.view.positions(cls.name, live.build)
        by_partition = {i: p for i, c, p in stored if c == self.count}
        fallback = min((p for _, _, p in stored), default=0)
        if len(by_partition) != self.count and stored:
            notes.append(
                f"the live build keeps {stored[0][1]} partition(s), the template {self.count}: "
                f"every partition counted from the lowest position ({fallback})"
            )
        return {p: (by_partition.get(p, fallback), self.head) for p in in_scope}, notes

    def projection(self, cls: type[Projection]) -> ProjectionPlan:
        kind = self.template.template.kind
        if self.count > 1 and not cls.partitionable:
            raise InvalidRequest(
                f"projection {cls.name!r} is not partitionable: set scope.partitions = 1"
            )
        builds = self.view.builds(cls.name)
        live = next((b for b in builds if b.status == "live"), None)
        writes = (
            max((b.build for b in builds), default=0) + 1
            if kind == "rebuild"
            else (live.build if live else None)
        )
        tables = tuple(physical_table_name(cls.name, t.name, writes) for t in cls.tables if writes)
        if kind == "redrive-parked":
            partitions, notes = self._parked(cls, live)
        else:
            ranges, notes = self._ranges(cls, live)
            partitions = tuple(
                PartitionPlan(
                    partition=p,
                    after=a,
                    upto=u,
                    events=self.source.count(
                        after=a, upto=u, topics=cls.topics, partition=Partition(p, self.count)
                    ),
                )
                for p, (a, u) in sorted(ranges.items())
            )
        if self.template.scope.aggregates:
            notes.append(
                f"only {len(self.template.scope.aggregates)} aggregate(s) are in scope: the "
                "counts include every aggregate of each partition (an upper bound)"
            )
        return ProjectionPlan(
            projection=cls.name,
            live_build=live.build if live else None,
            writes_build=writes,
            tables=tables,
            partitions=partitions,
            events=sum(p.events for p in partitions),
            notes=tuple(notes),
        )

    def _parked(
        self, cls: type[Projection], live: BuildRecord | None
    ) -> tuple[tuple[PartitionPlan, ...], list[str]]:
        if live is None:
            raise InvalidRequest(f"projection {cls.name!r} has no live build to redrive")
        parked = self.view.parked(cls.name, live.build)
        plans = []
        for p in self.template.partitions_in_scope():
            mine = [pos for pos, aggregate in parked if partition_of(aggregate, self.count) == p]
            plans.append(
                PartitionPlan(
                    partition=p,
                    after=min(mine) - 1 if mine else 0,
                    upto=max(mine) if mine else 0,
                    events=len(mine),
                )
            )
        return tuple(plans), ["events in scope are the build's unresolved parked events"]


def plan_template(
    template: RecoveryTemplate,
    *,
    origin: str,
    reader: StoreReader,
    source: EventSource,
    registry: Mapping[str, type[Projection]],
    jobs: JobStore | None = None,
) -> TemplatePlan:
    """What applying ``template`` would do; reads only."""
    head = source.head()
    kind = template.template.kind
    with reader.view() as view:
        planner = _Planner(template, view, source, head)
        plans = tuple(planner.projection(registry[name]) for name in template.scope.projections)
    if kind == "reencrypt":
        events = source.count(after=0, upto=head)
        table = getattr(source, "table", "the events table")
        tables: tuple[str, ...] = (str(table), "its snapshots table, if snapshotting is on")
        count = 1
    else:
        events = sum(p.events for p in plans)
        tables = tuple(t for p in plans for t in p.tables)
        count = template.scope.partitions
    measured = measured_rate(jobs, template.scope.projections)
    rate, basis = measured or (
        DEFAULT_EVENTS_PER_SECOND,
        f"default {DEFAULT_EVENTS_PER_SECOND:.0f} events/s: no completed job to measure yet",
    )
    cap = template.throttle.events_per_second
    if cap is not None and cap < rate:
        rate, basis = cap, f"{basis}; capped by throttle.events_per_second = {cap:g}"
    return TemplatePlan(
        template=template.template.name,
        kind=kind,
        origin=origin,
        description=template.template.description,
        head=head,
        partition_count=count,
        projections=plans,
        events=events,
        tables=tables,
        estimate=Estimate(events_per_second=rate, seconds=events / rate, basis=basis),
        failure_policy={
            **template.policy.model_dump(),
            "breaker": template.breaker.model_dump(),
        },
        throttle=template.throttle.model_dump(),
        stages=_stages(template),
    )


# -- operations ------------------------------------------------------------------------


def _plan_scope(context: RecoveryContext) -> Callable[[Mapping[str, Any]], str]:
    def scope(parameters: Mapping[str, Any]) -> str:
        try:
            template, _ = resolve_template(
                str(parameters.get("template", "")), TemplateStore(context.database)
            )
        except RecoveryError:
            # Projections unknown: a viewer of every projection hears what is wrong
            # (the handler raises it again, and the attempt is audited).
            return "projection:*"
        if template.template.kind == "reencrypt":
            return "keys"
        names = template.scope.projections
        return f"projection:{names[0]}" if len(names) == 1 else "projection:*"

    return scope


def register_template_operations(operations: Operations, context: RecoveryContext) -> None:
    templates = TemplateStore(context.database)

    def plan(ctx: OperationContext, p: Mapping[str, Any]) -> TemplatePlan:
        template, origin = resolve_template(str(p["template"]), templates)
        with open_source(context.domain) as source:
            return plan_template(
                template,
                origin=origin,
                reader=live_reader(context),
                source=source,
                registry=context.registry,
                jobs=SQLJobStore(context.database),
            )

    def save(update: bool) -> Callable[[OperationContext, Mapping[str, Any]], TemplateChange]:
        def handler(ctx: OperationContext, p: Mapping[str, Any]) -> TemplateChange:
            text = str(p["toml"])
            template = parse_template(text, source=f"template {p.get('template')!r}")
            name = template.template.name
            if not update and name in shipped_runbooks():
                raise InvalidRequest(
                    f"{name!r} is the name of a shipped runbook: give the template another name"
                )
            templates.create_tables()
            expected = template_change(templates, text)
            if any(p.get(k) != expected[k] for k in ("template", "base_version", "diff")):
                raise JobConflict(
                    f"template {name!r} changed since the diff was made: run the command again"
                )
            base = int(expected["base_version"])
            if not update and base:
                raise InvalidRequest(
                    f"template {name!r} exists (version {base}): use `templates update`"
                )
            if update and not base:
                raise InvalidRequest(f"there is no template {name!r}: use `templates add`")
            stored = templates.save(text, template, author=ctx.principal.name, base_version=base)
            return TemplateChange(template=stored, diff=str(expected["diff"]))

        return handler

    def listed(ctx: OperationContext, p: Mapping[str, Any]) -> list[StoredTemplate]:
        return templates.templates()

    def show(ctx: OperationContext, p: Mapping[str, Any]) -> StoredTemplate:
        version = p.get("version")
        return templates.get(str(p["name"]), None if version is None else int(version))

    view, admin = Permission.VIEW, Permission.ADMINISTER
    table: list[tuple[str, Permission, Handler, Any, str]] = [
        ("plan", view, plan, _plan_scope(context), "dry run of a template, changing nothing"),
        ("templates.add", admin, save(update=False), "*", "add a template (audited with a diff)"),
        ("templates.update", admin, save(update=True), "*", "change a template (with a diff)"),
        ("templates.list", view, listed, "projection:*", "list stored templates (latest)"),
        ("templates.show", view, show, "projection:*", "show a stored template"),
    ]
    for name, permission, handler, scope, summary in table:
        # Reading or planning changes nothing; adding and updating do (and need a reason).
        operations.register(
            name, permission=permission, handler=handler, scope=scope, summary=summary
        )

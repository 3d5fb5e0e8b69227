"""Recovery templates an organisation adds, and where a template reference leads.

Templates an organisation adds live in ``safereplay_templates`` (every version
is kept: name, version, kind, TOML, SHA-256, author, time). Adding or changing
one needs the administer permission and is audited with a unified diff of the
TOML against the version it replaces, in the audit entry's parameters; the diff
is computed before the permission check (:func:`template_change`), so a denied
attempt records it too, and checked again by the handler, so a recorded diff is
always the real one. :func:`resolve_template` finds a template by reference: a
TOML file, a stored template (latest version) or a shipped runbook;
:func:`listed_templates` lists the stored ones and the shipped runbooks together.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from safereplay.recovery.database import Database, recorded_rows
from safereplay.recovery.errors import InvalidRequest, JobConflict
from safereplay.recovery.templates.model import (
    RUNBOOKS,
    RecoveryTemplate,
    load_template,
    parse_template,
)

__all__ = [
    "ListedTemplate",
    "StoredTemplate",
    "TemplateChange",
    "TemplateStore",
    "resolve_template",
    "listed_templates",
    "shipped_runbooks",
    "template_change",
]


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

    @staticmethod
    def schema_statements() -> list[str]:
        """The table's DDL (a template), run by the ``recovery`` schema step."""
        return [_CREATE_TEMPLATES]

    def create_tables(self) -> None:
        """Run the DDL directly (tools and tests); processes go through the schema
        catalog (:mod:`safereplay.recovery.migrations`)."""
        with self.database.transaction(write=True) as tx:
            for statement in self.schema_statements():
                tx.execute(statement)

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


@dataclass(frozen=True)
class ListedTemplate:
    """A template ``plan`` and ``apply`` can name: stored here (by an admin, in
    versions) or shipped with safereplay (a runbook). ``parameters``: what an
    operator may set on it (``--set NAME=VALUE``) and within which bounds."""

    name: str
    source: str
    kind: str
    description: str
    parameters: dict[str, str]
    sha256: str
    version: int | None = None
    author: str | None = None
    created_at: datetime | None = None


def _listed(template: RecoveryTemplate, text: str, source: str) -> ListedTemplate:
    return ListedTemplate(
        name=template.template.name,
        source=source,
        kind=template.template.kind,
        description=template.template.description,
        parameters={name: spec.bounds() for name, spec in template.parameters.items()},
        sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
    )


def listed_templates(store: TemplateStore) -> list[ListedTemplate]:
    """Every template by name: the latest version of each stored one and every
    shipped runbook (a stored template cannot take a runbook's name)."""
    listed = []
    for stored in store.templates():
        template = parse_template(stored.text, source=f"stored template {stored.name}")
        entry = _listed(template, stored.text, "stored")
        listed.append(
            dataclasses.replace(
                entry, version=stored.version, author=stored.author, created_at=stored.created_at
            )
        )
    for name in shipped_runbooks():
        path = RUNBOOKS / f"{name}.toml"
        listed.append(_listed(load_template(path), path.read_text(encoding="utf-8"), "shipped"))
    return sorted(listed, key=lambda t: (t.name, t.source))

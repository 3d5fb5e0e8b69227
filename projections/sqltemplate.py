"""SQL written once for SQLite and PostgreSQL: the template notation and its two renderers.

A template is a module constant, never built from input. It holds psycopg's
placeholders (named ``%(name)s``; positional ``%s`` only where a statement binds a
list: a batch's rows, a fence's columns, a read's topics), ``%%`` for a literal
``%``, and slots ``{x}`` for identifiers and for pieces rendered from other
templates. Each backend renders it into its own
statement:

- PostgreSQL (:class:`PostgresRenderer`): ``psycopg.sql`` composition only; a table
  is the schema-qualified ``sql.Identifier(schema, name)``, a column or index
  name an ``sql.Identifier(name)``; placeholders are left to psycopg.
- SQLite (:class:`SQLiteRenderer`): double-quoted identifiers (tables unqualified,
  one database per file), ``:name`` and ``?`` placeholders, ``%`` for ``%%``.

A slot that is given no value names one of safereplay's own tables: ``{x}`` is the
table ``safereplay_x``, ``{idx_x}`` the index ``safereplay_x`` (the recovery
stores write their templates this way: :func:`sqlite_statement`,
:func:`postgres_statement`). Rendering costs microseconds, not nothing: the
projection stores and event sources render their statements once, when they
are opened (or once per table and write shape), and keep them.
"""

from __future__ import annotations

import re
import string
from abc import ABC, abstractmethod
from collections.abc import Iterable
from functools import lru_cache
from typing import Generic, Literal, TypeVar

from psycopg import sql

__all__ = [
    "PostgresRenderer",
    "Renderer",
    "RowLock",
    "SQLiteRenderer",
    "postgres_statement",
    "quote",
    "slots",
    "sqlite_statement",
    "table_name",
]

#: A rendered statement or piece of one: SQL text on SQLite, a composition on PostgreSQL.
Q = TypeVar("Q", str, sql.Composed)
#: Row locks a read may take until its transaction ends (see :meth:`Renderer.locked`).
RowLock = Literal["update", "share"]

#: psycopg's placeholders, as SQLite spells them.
_PLACEHOLDER = re.compile(r"%%|%s|%\((\w+)\)s")


def _sqlite_placeholder(match: re.Match[str]) -> str:
    text = match.group(0)
    if text == "%%":
        return "%"
    if text == "%s":
        return "?"
    return ":" + match.group(1)


def slots(template: str) -> set[str]:
    """The names of a template's slots."""
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def table_name(slot: str) -> str:
    """The safereplay table (or index, ``idx_``) a slot without a value names."""
    return f"safereplay_{slot.removeprefix('idx_')}"


def quote(identifier: str) -> str:
    """A double-quoted SQLite identifier."""
    return '"' + identifier.replace('"', '""') + '"'


class Renderer(ABC, Generic[Q]):
    """Turns templates into one backend's statements (and pieces of statements)."""

    dialect: Literal["sqlite", "postgres"]

    @abstractmethod
    def render(self, template: str, /, **pieces: Q) -> Q:
        """``template`` with its slots filled: by ``pieces``, else by safereplay tables."""

    @abstractmethod
    def table(self, name: str) -> Q:
        """A table of the store's database (in its schema on PostgreSQL)."""

    @abstractmethod
    def name(self, identifier: str) -> Q:
        """A column or index name."""

    @abstractmethod
    def text(self, constant: str) -> Q:
        """SQL text as it is (a type name...): only ever a module constant."""

    @abstractmethod
    def join(self, pieces: Iterable[Q], separator: str) -> Q: ...

    @abstractmethod
    def locked(self, statement: Q, lock: RowLock) -> Q:
        """``statement`` (a read) locking the rows it reads until the transaction ends."""

    def names(self, identifiers: Iterable[str]) -> Q:
        """``a, b, c``: a list of column names."""
        return self.join((self.name(i) for i in identifiers), ", ")

    def each(self, template: str, identifiers: Iterable[str], separator: str) -> Q:
        """``template`` rendered once per column (slot ``{column}``), joined."""
        return self.join(
            (self.render(template, column=self.name(i)) for i in identifiers), separator
        )


class SQLiteRenderer(Renderer[str]):
    """SQLite text: quoted identifiers, ``:name`` / ``?`` placeholders."""

    dialect: Literal["sqlite", "postgres"] = "sqlite"

    def render(self, template: str, /, **pieces: str) -> str:
        filled = {s: quote(table_name(s)) for s in slots(template) if s not in pieces}
        return _PLACEHOLDER.sub(_sqlite_placeholder, template).format(**filled, **pieces)

    def table(self, name: str) -> str:
        return quote(name)

    def name(self, identifier: str) -> str:
        return quote(identifier)

    def text(self, constant: str) -> str:
        return constant

    def join(self, pieces: Iterable[str], separator: str) -> str:
        return separator.join(pieces)

    def locked(self, statement: str, lock: RowLock) -> str:
        # SQLite has no row locks, and needs none: a write transaction holds the
        # database's write lock from BEGIN IMMEDIATE on, so no other writer can
        # change a row it read before it commits.
        return statement


class PostgresRenderer(Renderer[sql.Composed]):
    """``psycopg.sql`` compositions; tables qualified by ``schema``."""

    dialect: Literal["sqlite", "postgres"] = "postgres"

    def __init__(self, schema: str) -> None:
        self.schema = schema

    def render(self, template: str, /, **pieces: sql.Composed) -> sql.Composed:
        filled = {
            s: sql.Identifier(table_name(s))
            if s.startswith("idx_")
            else sql.Identifier(self.schema, table_name(s))
            for s in slots(template)
            if s not in pieces
        }
        return sql.SQL(template).format(**filled, **pieces)

    def table(self, name: str) -> sql.Composed:
        return sql.Composed([sql.Identifier(self.schema, name)])

    def name(self, identifier: str) -> sql.Composed:
        return sql.Composed([sql.Identifier(identifier)])

    def text(self, constant: str) -> sql.Composed:
        return sql.Composed([sql.SQL(constant)])

    def join(self, pieces: Iterable[sql.Composed], separator: str) -> sql.Composed:
        return sql.SQL(separator).join(pieces)

    def locked(self, statement: sql.Composed, lock: RowLock) -> sql.Composed:
        return statement + sql.SQL(" FOR UPDATE" if lock == "update" else " FOR SHARE")


_SQLITE = SQLiteRenderer()


# Templates are module constants: a bounded number of distinct (template, schema)
# pairs, so the cache never evicts in practice and a statement is rendered once.
@lru_cache(maxsize=1024)
def sqlite_statement(template: str) -> str:
    """A template whose slots all name safereplay tables, for SQLite."""
    return _SQLITE.render(template)


@lru_cache(maxsize=1024)
def postgres_statement(template: str, schema: str) -> sql.Composed:
    """A template whose slots all name safereplay tables, for PostgreSQL ``schema``."""
    return PostgresRenderer(schema).render(template)

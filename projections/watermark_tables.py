"""The tables the PostgreSQL high-water mark keeps beside an events table, and their DDL.

Three tables in the events table's schema, named after it by default:

- ``{table}_skipped_holes``: every position the mark moved past that no
  transaction can fill any more (one row each, with why and when);
- ``{table}_hwm``: the mark last proved (one row), which a new process starts from;
- ``{table}_hole_proofs``: proofs still pending that the positions up to some
  ``cover`` are decided, each with the virtual transaction ids of the writers
  that were in flight when it was begun (:mod:`safereplay.projections.hole_proofs`).
  A new process continues these instead of starting over.

Their statements are written here once (``CREATE TABLE IF NOT EXISTS``, so they
bring any earlier version up). They run only through
:func:`~safereplay.projections.postgres_watermark.create_watermark_tables`, the
``watermark:<table>`` step of the schema catalog (``safereplay migrate``, or
migrate-on-start under the catalog's lock), never at every start.
"""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import sql

__all__ = ["MAX_IDENTIFIER_BYTES", "WatermarkTables"]

#: PostgreSQL truncates longer identifiers silently; we refuse them instead.
MAX_IDENTIFIER_BYTES = 63


@dataclass(frozen=True)
class WatermarkTables:
    """Where the mark of ``schema.table`` keeps its state (all in ``schema``).

    Build it with :meth:`of`, which fills in the default names and refuses names
    PostgreSQL would truncate.
    """

    schema: str
    table: str
    holes: str
    mark: str
    proofs: str

    @classmethod
    def of(
        cls,
        schema: str,
        table: str,
        *,
        holes: str | None = None,
        mark: str | None = None,
        proofs: str | None = None,
    ) -> WatermarkTables:
        """Names for the mark of ``schema.table``; each defaults to ``{table}_{role}``."""
        tables = cls(
            schema=schema,
            table=table,
            holes=holes or f"{table}_skipped_holes",
            mark=mark or f"{table}_hwm",
            proofs=proofs or f"{table}_hole_proofs",
        )
        for name in (schema, table, tables.holes, tables.mark, tables.proofs):
            if not name or len(name.encode()) > MAX_IDENTIFIER_BYTES:
                raise ValueError(
                    f"identifier {name!r} must be 1 to {MAX_IDENTIFIER_BYTES} bytes; "
                    "pass holes_table= / mark_table= / proofs_table= explicitly for long "
                    "table names"
                )
        return tables

    @property
    def names(self) -> tuple[str, str, str]:
        """The tables this mark owns: skipped holes, mark, hole proofs."""
        return (self.holes, self.mark, self.proofs)

    def qualified(self, name: str) -> sql.Composed:
        return sql.SQL("{}.{}").format(sql.Identifier(self.schema), sql.Identifier(name))

    def create_statements(self) -> list[sql.Composed]:
        fmt = {
            "holes": self.qualified(self.holes),
            "marks": self.qualified(self.mark),
            "proofs": self.qualified(self.proofs),
        }
        return [
            sql.SQL(text).format(**fmt)
            for text in (
                "CREATE TABLE IF NOT EXISTS {holes} ("
                "position bigint PRIMARY KEY, "
                "detected_at timestamptz NOT NULL, "
                "skipped_at timestamptz NOT NULL DEFAULT now(), "
                "reason text NOT NULL, "
                "forced boolean NOT NULL DEFAULT false)",
                "CREATE TABLE IF NOT EXISTS {marks} ("
                "singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton), "
                "position bigint NOT NULL CHECK (position >= 0), "
                "updated_at timestamptz NOT NULL DEFAULT now())",
                # One row per pending proof. ``writers`` are virtual transaction ids
                # and ``writer_pids`` their backends (NULL: a prepared transaction),
                # in the same order. ``relid`` and ``server_started`` say which table
                # and which server run the ids belong to: a proof of a dropped and
                # re-created table is ignored, and after a restart every writer it
                # names has ended (virtual ids start over with the server).
                "CREATE TABLE IF NOT EXISTS {proofs} ("
                "cover bigint PRIMARY KEY CHECK (cover > 0), "
                "hole bigint NOT NULL CHECK (hole > 0 AND hole <= cover), "
                "relid oid NOT NULL, "
                "server_started timestamptz NOT NULL, "
                "writers text[] NOT NULL, "
                "writer_pids integer[] NOT NULL, "
                "detected_at timestamptz NOT NULL, "
                "CHECK (cardinality(writers) = cardinality(writer_pids)))",
            )
        ]

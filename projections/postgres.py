"""The PostgreSQL backend: its projection store and its event source, side by side.

- :mod:`safereplay.projections.postgres_store`: :class:`PostgresProjectionStore`;
- :mod:`safereplay.projections.postgres_source`: :class:`PostgresEventSource` and
  :func:`partition_expression`;
- :mod:`safereplay.projections.postgres_watermark`: the high-water mark the source
  reads below;
- :mod:`safereplay.projections.postgres_connection`: how the store and the source
  connect and translate errors.

Their logic (:mod:`~.sql_store`, :mod:`~.sql_source`) and their SQL
(:mod:`~.store_sql`, :mod:`~.source_sql`) are shared with the SQLite backend.
This module only gathers the backend's names in one place.
"""

from __future__ import annotations

from safereplay.projections.postgres_source import PostgresEventSource, partition_expression
from safereplay.projections.postgres_store import PostgresProjectionStore

__all__ = ["PostgresEventSource", "PostgresProjectionStore", "partition_expression"]

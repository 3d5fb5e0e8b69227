"""The SQLite backend: its projection store and its event source, side by side.

- :mod:`safereplay.projections.sqlite_store`: :class:`SQLiteProjectionStore`;
- :mod:`safereplay.projections.sqlite_source`: :class:`SQLiteEventSource`;
- :mod:`safereplay.projections.sqlite_connection`: how both connect and translate errors.

Their logic (:mod:`~.sql_store`, :mod:`~.sql_source`) and their SQL
(:mod:`~.store_sql`, :mod:`~.source_sql`) are shared with the PostgreSQL backend.
This module only gathers the backend's names in one place.
"""

from __future__ import annotations

from safereplay.projections.sqlite_source import SQLiteEventSource
from safereplay.projections.sqlite_store import SQLiteProjectionStore
from safereplay.projections.sqltemplate import quote

__all__ = ["SQLiteEventSource", "SQLiteProjectionStore", "quote"]

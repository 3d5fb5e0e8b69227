"""Open the projection store and the event source that settings point at."""

from __future__ import annotations

from typing import Any

from safereplay.domain.application import EventStoreApplication
from safereplay.domain.mapper import EnvelopeMapper
from safereplay.domain.settings import DomainSettings
from safereplay.projections.postgres_source import PostgresEventSource
from safereplay.projections.postgres_store import PostgresProjectionStore
from safereplay.projections.settings import ProjectionSettings
from safereplay.projections.source import EventSource
from safereplay.projections.sqlite_source import SQLiteEventSource
from safereplay.projections.sqlite_store import SQLiteProjectionStore
from safereplay.projections.store import ProjectionStore

__all__ = ["open_source", "open_store"]


def open_store(
    domain: DomainSettings,
    settings: ProjectionSettings | None = None,
    *,
    application_name: str = "safereplay",
) -> ProjectionStore:
    """The projection store: by default in the event store's own database.

    ``application_name``: on PostgreSQL, its connection is named
    ``{application_name}-projections`` (default ``safereplay``).
    """
    settings = settings if settings is not None else ProjectionSettings.from_env()
    migrate = domain.migrate_on_start
    if domain.backend == "sqlite":
        return SQLiteProjectionStore(settings.sqlite_store_path(domain), migrate_on_start=migrate)
    conninfo, schema = settings.postgres_store(domain)
    return PostgresProjectionStore(
        conninfo, schema=schema, migrate_on_start=migrate, application_name=application_name
    )


def open_source(
    app_or_settings: EventStoreApplication | DomainSettings,
    *,
    mapper: EnvelopeMapper | None = None,
    settings: ProjectionSettings | None = None,
    **options: Any,
) -> EventSource:
    """The notification log of an application (which decodes with its mapper), or
    of the event store that ``DomainSettings`` describe (``mapper`` optional: a
    source without one reports head and high-water mark but cannot decode).

    ``options`` go to the backend's source (e.g. ``listen=False``, or high-water
    mark options such as ``hole_wait`` on PostgreSQL). On PostgreSQL the mark's
    options not given default to ``settings`` (default: read from the environment,
    ``SAFEREPLAY_PROJECTIONS_HOLE_WAIT`` and ``..._HOLE_PROOF_REFRESH``).
    """
    if isinstance(app_or_settings, EventStoreApplication):
        domain = app_or_settings.settings
        mapper = mapper or app_or_settings.envelope_mapper
    else:
        domain = app_or_settings
    if domain.backend == "sqlite":
        return SQLiteEventSource(domain.sqlite_path, mapper=mapper, **options)
    assert domain.postgres_dsn is not None
    settings = settings if settings is not None else ProjectionSettings.from_env()
    options = settings.watermark_options() | options
    # The high-water mark's tables: set up on first use only if processes may migrate.
    options.setdefault("create_tables", domain.migrate_on_start)
    return PostgresEventSource(
        domain.postgres_conninfo(),
        schema=domain.postgres_schema,
        table=f"{domain.application_name}_events",
        mapper=mapper,
        **options,
    )

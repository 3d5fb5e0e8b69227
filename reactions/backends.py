"""Open the delivery ledger that settings point at: the event store's own database."""

from __future__ import annotations

from safereplay.domain.settings import DomainSettings
from safereplay.reactions.ledger import DeliveryLedger
from safereplay.reactions.postgres import PostgresDeliveryLedger
from safereplay.reactions.sqlite import SQLiteDeliveryLedger

__all__ = ["open_ledger"]


def open_ledger(domain: DomainSettings) -> DeliveryLedger:
    """The ledger beside the event store (its SQLite file, its PostgreSQL schema).

    In the same database as the events, so one backup holds both, and tables are set
    up on first use only if processes may migrate (``SAFEREPLAY_MIGRATE_ON_START``).
    """
    migrate = domain.migrate_on_start
    if domain.backend == "sqlite":
        return SQLiteDeliveryLedger(domain.sqlite_path, migrate_on_start=migrate)
    assert domain.postgres_dsn is not None
    return PostgresDeliveryLedger(
        domain.postgres_conninfo(),
        schema=domain.postgres_schema,
        application_name=domain.application_name,
        migrate_on_start=migrate,
    )

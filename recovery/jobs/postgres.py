"""PostgreSQL backend of the recovery stores: workers on many machines share one database."""

from __future__ import annotations

from safereplay.recovery.database import PostgresDatabase
from safereplay.recovery.jobs.store import SQLJobStore

__all__ = ["PostgresJobStore"]


class PostgresJobStore(SQLJobStore):
    """Jobs in PostgreSQL; row locks (``FOR UPDATE``) serialise claims per job."""

    def __init__(self, conninfo: str, *, schema: str = "public", pool_size: int = 4) -> None:
        super().__init__(PostgresDatabase(conninfo, schema=schema, pool_size=pool_size))

"""Everything an operation needs, built once from settings: stores, access, audit, dispatch."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from domain import AutomationApp, DomainSettings
from recovery.access import AccessControl, Principal
from recovery.audit import AuditTrail
from recovery.database import Database, PostgresDatabase, SQLiteDatabase
from recovery.jobstore import JobStore, SQLJobStore
from recovery.operations import Operations
from recovery.settings import RecoverySettings

__all__ = ["RecoveryContext"]


@dataclass
class RecoveryContext:
    """Settings in, connected stores out; :meth:`close` releases them."""

    domain: DomainSettings
    recovery: RecoverySettings
    _closers: list[object] = field(default_factory=list)

    @classmethod
    def from_env(cls) -> RecoveryContext:
        return cls(domain=DomainSettings.from_env(), recovery=RecoverySettings.from_env())

    @cached_property
    def database(self) -> Database:
        """The recovery database: the same database (and schema) as the event store."""
        if self.domain.backend == "sqlite":
            database: Database = SQLiteDatabase(self.domain.sqlite_path)
        else:
            assert self.domain.postgres_dsn is not None
            database = PostgresDatabase(
                self.domain.postgres_dsn.get_secret_value(), schema=self.domain.postgres_schema
            )
        self._closers.append(database)
        return database

    @cached_property
    def app(self) -> AutomationApp:
        app = AutomationApp(self.domain)
        self._closers.append(app)
        return app

    @cached_property
    def access(self) -> AccessControl:
        access = AccessControl(self.database)
        access.create_tables()
        return access

    @cached_property
    def audit(self) -> AuditTrail:
        audit = AuditTrail(self.database, self.recovery.load_audit_key())
        audit.create_tables()
        return audit

    @cached_property
    def jobs(self) -> JobStore:
        jobs = SQLJobStore(self.database)
        jobs.create_tables()
        return jobs

    @cached_property
    def operations(self) -> Operations:
        from recovery.security_ops import register_security_operations

        operations = Operations(access=self.access, audit=self.audit)
        register_security_operations(operations, self)
        return operations

    def caller(self) -> Principal:
        """The principal whose token the environment holds."""
        return self.access.authenticate(self.recovery.load_token())

    def close(self) -> None:
        for closer in reversed(self._closers):
            close = getattr(closer, "close", None)
            if callable(close):
                close()
        self._closers.clear()

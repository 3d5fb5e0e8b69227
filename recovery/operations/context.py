"""Everything an operation needs, built once from settings: stores, access, audit, workers."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from safereplay.domain import AutomationApp, DomainSettings
from safereplay.projections import (
    EventSource,
    ParkedEvent,
    ProjectionSettings,
    ProjectionStore,
    RunnerOptions,
    open_source,
    open_store,
)
from safereplay.reactions import DeliveryLedger, open_ledger
from safereplay.recovery.database import Database, PostgresDatabase, SQLiteDatabase
from safereplay.recovery.errors import AuditKeyError, AuthenticationFailed
from safereplay.recovery.jobs.conflicts import ConflictStore
from safereplay.recovery.jobs.model import Job
from safereplay.recovery.jobs.observer import NO_WORK_OBSERVER, WorkObserver
from safereplay.recovery.jobs.store import JobStore, SQLJobStore
from safereplay.recovery.jobs.worker import Worker, WorkerOptions, default_worker_id
from safereplay.recovery.migrations.steps import ensure_recovery_schema
from safereplay.recovery.registry import ProjectionRegistry, ReactionRegistry
from safereplay.recovery.security.access import AccessControl, Principal, VerifiedSecrets
from safereplay.recovery.security.anchors import sink_from_settings
from safereplay.recovery.security.audit import AuditKey, AuditTrail
from safereplay.recovery.security.audit_verify import Anchoring
from safereplay.recovery.security.signin import SignInAudit
from safereplay.recovery.settings import RecoverySettings

__all__ = ["RecoveryContext"]

logger = logging.getLogger(__name__)


@dataclass
class RecoveryContext:
    """Settings in, connected stores out; :meth:`close` releases them."""

    domain: DomainSettings
    recovery: RecoverySettings
    #: Check the recovery tables' schema version before first use (and set them up
    #: if missing, when ``SAFEREPLAY_MIGRATE_ON_START`` allows). Off only for
    #: ``safereplay migrate``, which reads the access tables of an older version to
    #: authenticate its caller before it migrates them.
    check_schema: bool = True
    #: Token secrets already checked by this process (a server's requests share one).
    verified_secrets: VerifiedSecrets | None = None
    _closers: list[object] = field(default_factory=list)
    _schema_checked: bool = False

    @classmethod
    def from_env(
        cls,
        *,
        check_schema: bool = True,
        verified_secrets: VerifiedSecrets | None = None,
        recovery: Mapping[str, object] | None = None,
    ) -> RecoveryContext:
        """``recovery``: settings that override the environment's (a command's options,
        such as ``worker --host``)."""
        return cls(
            domain=DomainSettings.from_env(),
            recovery=RecoverySettings.from_env(**(recovery or {})),
            check_schema=check_schema,
            verified_secrets=verified_secrets,
        )

    def ensure_schema(self) -> None:
        """Check the recovery tables in the schema catalog, once (no DDL when current)."""
        if self._schema_checked or not self.check_schema:
            return
        ensure_recovery_schema(self.database, migrate=self.domain.migrate_on_start)
        self._schema_checked = True

    @property
    def connection_name(self) -> str:
        """The ``application_name`` prefix of this process's PostgreSQL connections:
        ``safereplay``, or ``safereplay-HOST`` with a host identity
        (``SAFEREPLAY_WORKER_HOST``), so that workers on many machines sharing one
        server are told apart in ``pg_stat_activity``."""
        host = self.recovery.worker_host
        return "safereplay" if host is None else f"safereplay-{host}"

    @cached_property
    def projection_settings(self) -> ProjectionSettings:
        return ProjectionSettings.from_env()

    @cached_property
    def database(self) -> Database:
        """The recovery database: the projection store's database (and schema), so that
        jobs and leases sit beside the positions they guard."""
        if self.domain.backend == "sqlite":
            database: Database = SQLiteDatabase(
                self.projection_settings.sqlite_store_path(self.domain)
            )
        else:
            conninfo, schema = self.projection_settings.postgres_store(self.domain)
            # Named only with a host identity: unnamed, the pool's connections keep
            # libpq's PGAPPNAME (which the reliability suite uses to find them).
            database = PostgresDatabase(
                conninfo,
                schema=schema,
                application_name=None
                if self.recovery.worker_host is None
                else f"{self.connection_name}-recovery",
            )
        self._closers.append(database)
        return database

    @cached_property
    def projection_store(self) -> ProjectionStore:
        store = open_store(
            self.domain, self.projection_settings, application_name=self.connection_name
        )
        self._closers.append(store)
        return store

    @cached_property
    def registry(self) -> ProjectionRegistry:
        """The projections recovery knows (``SAFEREPLAY_PROJECTIONS``)."""
        return ProjectionRegistry.load(self.recovery.projections)

    @cached_property
    def reactions(self) -> ReactionRegistry:
        """The reactions recovery knows (``SAFEREPLAY_REACTIONS``)."""
        return ReactionRegistry.load(self.recovery.reactions)

    @cached_property
    def ledger(self) -> DeliveryLedger:
        """The reactions' delivery ledger, beside the event store."""
        ledger = open_ledger(self.domain)
        self._closers.append(ledger)
        return ledger

    @cached_property
    def source(self) -> EventSource:
        """The event store's notification log, decoding with the application's key ring."""
        source = open_source(self.app, settings=self.projection_settings, **self._named())
        self._closers.append(source)
        return source

    @cached_property
    def log(self) -> EventSource:
        """The notification log without a key ring: head, high-water mark and what is
        held back, for planning (which decodes nothing): it opens no application,
        no key ring and no pool."""
        source = open_source(self.domain, settings=self.projection_settings, **self._named())
        self._closers.append(source)
        return source

    def _named(self) -> dict[str, Any]:
        """The event source's connection names (PostgreSQL only: SQLite has none)."""
        if self.domain.backend != "postgres":
            return {}
        return {"application_name": self.connection_name}

    def runner_options(self) -> RunnerOptions:
        return RunnerOptions.from_settings(self.projection_settings)

    def worker(
        self,
        *,
        options: WorkerOptions | None = None,
        may_run: Callable[[Job], bool] | None = None,
        on_job_state: Callable[[Job, Job], None] | None = None,
        on_parked: Callable[[Job, Sequence[ParkedEvent]], None] | None = None,
        observer: WorkObserver = NO_WORK_OBSERVER,
    ) -> Worker:
        """A worker sharing this context's stores (one per process)."""
        return Worker(
            jobs=self.jobs,
            worker_id=default_worker_id(self.recovery.worker_host),
            store=self.projection_store,
            open_source=lambda: self.source,
            registry=self.registry,
            options=options or WorkerOptions(lease_seconds=self.recovery.lease_seconds),
            runner_options=self.runner_options(),
            may_run=may_run,
            on_job_state=on_job_state,
            on_parked=on_parked,
            observer=observer,
            on_integrity_failure=self.recovery.on_integrity_failure,
            conflicts=self.conflicts,
        )

    @cached_property
    def app(self) -> AutomationApp:
        app = AutomationApp(self.domain)
        self._closers.append(app)
        return app

    @cached_property
    def access(self) -> AccessControl:
        access = AccessControl(self.database, verified=self.verified_secrets)
        self.ensure_schema()
        return access

    @cached_property
    def audit(self) -> AuditTrail:
        audit = AuditTrail(self.database, AuditKey.from_settings(self.recovery))
        self.ensure_schema()
        return audit

    @cached_property
    def anchoring(self) -> Anchoring | None:
        """Digests of the audit head outside the database (``SAFEREPLAY_AUDIT_ANCHOR_DIR``)."""
        sink = sink_from_settings(self.recovery)
        if sink is None:
            return None
        return Anchoring(
            self.audit,
            sink,
            AuditKey.from_settings(self.recovery),
            interval_seconds=self.recovery.audit_anchor_interval_seconds,
        )

    @cached_property
    def jobs(self) -> JobStore:
        jobs = SQLJobStore(self.database)
        self.ensure_schema()
        return jobs

    @cached_property
    def conflicts(self) -> ConflictStore:
        """Integrity conflicts (:mod:`safereplay.recovery.jobs.conflicts`)."""
        try:
            audit: AuditTrail | None = self.audit
        except AuditKeyError:
            # A library use without an audit key (an application running a worker in
            # its own process): the conflict is recorded and pauses the work all the
            # same; only its raising goes unaudited, as everything there does.
            audit = None
        conflicts = ConflictStore(self.database, audit=audit)
        self.ensure_schema()
        return conflicts

    @cached_property
    def sign_ins(self) -> SignInAudit:
        """Failed sign-ins, audited (and aggregated when they flood in)."""
        return SignInAudit(
            self.database,
            self.audit,
            audited=self.recovery.auth_failures_audited,
            window=self.recovery.auth_failure_window_seconds,
        )

    def caller(self, *, origin: Mapping[str, str] | None = None) -> Principal:
        """The principal whose token the environment holds.

        A failed sign-in is audited before its error is raised; ``origin`` says where
        the attempt came from (the command, a host, an address).
        """
        return self.sign_in(self.recovery.load_token, origin=origin)

    def sign_in(
        self, token: Callable[[], str], *, origin: Mapping[str, str] | None = None
    ) -> Principal:
        """The principal whose token ``token()`` gives (a callable: reading it may fail
        too, and that failure is audited like a wrong token); see :meth:`caller`."""
        try:
            principal = self.access.authenticate(token())
        except AuthenticationFailed as exc:
            try:
                self.sign_ins.failed(exc, origin or {})
            except AuditKeyError:
                # No audit trail to write to (so nothing could run either): the failed
                # sign-in is still what the caller is told about.
                logger.warning("a failed sign-in could not be audited: no audit key")
            raise
        self.sign_ins.flush()
        return principal

    def close(self) -> None:
        for closer in reversed(self._closers):
            close = getattr(closer, "close", None)
            if callable(close):
                close()
        self._closers.clear()

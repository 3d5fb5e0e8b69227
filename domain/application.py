"""eventsourcing ``Application`` configured from :class:`DomainSettings`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from eventsourcing.application import Application
from eventsourcing.persistence import (
    InfrastructureFactory,
    JSONTranscoder,
    Mapper,
    OperationalError,
    Transcoder,
)
from eventsourcing.persistence import (
    InterfaceError as EsInterfaceError,
)
from eventsourcing.postgres import BasePostgresFactory
from eventsourcing.utils import Environment, EnvType

from safereplay.domain.envelope import Envelope
from safereplay.domain.errors import ConfigurationError, SchemaError
from safereplay.domain.keyring import KeyRing
from safereplay.domain.mapper import EnvelopeMapper
from safereplay.domain.schema import ensure_event_store
from safereplay.domain.secret import hide_passwords
from safereplay.domain.settings import DomainSettings

__all__ = ["EventStoreApplication"]

_UNSET: Any = object()


class EventStoreApplication(Application[UUID]):
    """An eventsourcing application whose events carry the envelope and are sealed.

    ``settings`` defaults to :meth:`DomainSettings.from_env`; ``key_ring`` defaults
    to the ring those settings point at (pass ``None`` only together with
    ``encryption=False`` settings).
    """

    def __init__(
        self,
        settings: DomainSettings | None = None,
        *,
        key_ring: KeyRing | None = _UNSET,
    ) -> None:
        self.settings = settings if settings is not None else DomainSettings.from_env()
        self._ring_from_settings = key_ring is _UNSET
        if key_ring is _UNSET:
            key_ring = self.settings.load_key_ring()
        elif key_ring is None and self.settings.encryption:
            raise ConfigurationError(
                "encryption is on but no key ring was given; set SAFEREPLAY_ENCRYPTION=false "
                "to store plaintext deliberately"
            )
        self._key_ring: KeyRing | None = key_ring
        # The table prefix on PostgreSQL comes from the application name.
        self.name = self.settings.application_name
        try:
            super().__init__(env=self.settings.eventsourcing_env())
            # eventsourcing's CREATE_TABLE is off: its tables are set up once per schema
            # version, after a look at the catalog, never as DDL at every start.
            ensure_event_store(self, migrate=self.settings.migrate_on_start)
        except SchemaError:
            factory = getattr(self, "factory", None)
            if factory is not None:
                factory.close()
            raise
        except (OSError, OperationalError, EsInterfaceError) as exc:
            # Close what was opened (the pool keeps retrying in its threads) now, on
            # this thread: left to __del__, the close may run on one of those threads.
            factory = getattr(self, "factory", None)
            if factory is not None:
                factory.close()
            raise ConfigurationError(
                f"cannot open the {self.settings.backend} event store: {_scrub(exc)}; check "
                + (
                    "SAFEREPLAY_SQLITE_PATH"
                    if self.settings.backend == "sqlite"
                    else "SAFEREPLAY_POSTGRES_DSN and that the server is running"
                )
            ) from exc

    # -- eventsourcing extension points -------------------------------------------------

    def construct_env(self, name: str, env: EnvType | None = None) -> Environment:
        """The eventsourcing environment: the class's ``env`` plus the settings' mapping.

        eventsourcing's own ``construct_env`` also merges ``os.environ``, where a
        ``PERSISTENCE_MODULE``, ``POSTGRES_*`` or name-prefixed variable (for this
        application ``SAFEREPLAY_PERSISTENCE_MODULE``, ``SAFEREPLAY_POSTGRES_SCHEMA``...)
        would silently override the validated settings, even settings passed
        explicitly. :class:`DomainSettings` is the only source of configuration, so
        the process environment is left out here.
        """
        _env = dict(type(self).env)
        if type(self).is_snapshotting_enabled or type(self).snapshotting_intervals:
            _env["IS_SNAPSHOTTING_ENABLED"] = "y"
        if env is not None:
            _env.update(env)
        return Environment(name, _env)

    def construct_factory(self, env: Environment) -> InfrastructureFactory:
        """eventsourcing's factory, given the PostgreSQL password by function, not by ``env``.

        eventsourcing reads ``POSTGRES_PASSWORD`` from ``env``, which stays on the
        application (and its factory) as a dict that prints whole. Its pool can
        instead ask a function for the password at each connection
        (``get_password_func``, what ``POSTGRES_GET_PASSWORD_TOPIC`` would resolve
        to); the function is installed here, before the pool opens, so the
        password is never in ``env``. What the function returns is a
        :class:`~safereplay.domain.secret.Password`, which also prints hidden in
        the pool's connection arguments. Without a password the pool sends an
        empty one and libpq falls back on ``PGPASSFILE`` / ``~/.pgpass``.
        """
        factory = super().construct_factory(env)
        password = self.settings.postgres_password()
        if password is not None and isinstance(factory, BasePostgresFactory):
            factory.datastore.pool.get_password_func = lambda: password
        return factory

    @property
    def key_ring(self) -> KeyRing | None:
        """The ring in use now (re-read from the key file after a rotation)."""
        mapper = getattr(self, "mapper", None)
        if isinstance(mapper, EnvelopeMapper):
            mapper.refresh_key_ring()
            return mapper.key_ring
        return self._key_ring

    def construct_mapper(self) -> Mapper[UUID]:
        # Only a ring read from the configured key file is watched for rotations.
        watch = (
            self.settings.key_file
            if self._key_ring is not None and self._ring_from_settings
            else None
        )
        return EnvelopeMapper(
            transcoder=self.construct_transcoder(), key_ring=self._key_ring, key_file=watch
        )

    def construct_transcoder(self) -> Transcoder:
        transcoder = JSONTranscoder()
        self.register_transcodings(transcoder)
        return transcoder

    @property
    def envelope_mapper(self) -> EnvelopeMapper:
        assert isinstance(self.mapper, EnvelopeMapper)
        return self.mapper

    # -- reading ------------------------------------------------------------------------

    def head_position(self) -> int:
        """The highest position in the notification log (0 when empty)."""
        return self.recorder.max_notification_id() or 0

    def read(
        self, *, after: int = 0, limit: int = 100, topics: Sequence[str] = ()
    ) -> list[Envelope]:
        """Envelopes of the events after position ``after``, in log order."""
        notifications = self.recorder.select_notifications(
            start=after, limit=limit, topics=topics, inclusive_of_start=False
        )
        return [self.envelope_mapper.to_envelope(n) for n in notifications]

    def history(self, aggregate_id: UUID) -> list[Envelope]:
        """Envelopes of one aggregate's events, in version order (no positions)."""
        stored = self.recorder.select_events(aggregate_id)
        return [self.envelope_mapper.to_envelope(s) for s in stored]


def _scrub(exc: BaseException) -> str:
    """The error's class and first line, with anything that looks like a password removed."""
    text = hide_passwords(str(exc).splitlines()[0]) if str(exc) else ""
    if "password" in text.lower():
        text = "authentication or connection parameters rejected"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

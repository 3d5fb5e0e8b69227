"""eventsourcing ``Application`` configured from :class:`DomainSettings` and ``env``.

The application takes ``env`` as eventsourcing's does (positionally or as
``env=``), so that eventsourcing's runners (``ProjectionRunner``, the system
runners) can build it; its entries are checked against
:mod:`safereplay.domain.eventsourcing_settings` and laid over the ``SAFEREPLAY_*``
settings (precedence there and in ``docs/eventsourcing.md``).
"""

from __future__ import annotations

import os
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

from safereplay.domain.cipher import KeyRingCipher
from safereplay.domain.envelope import Envelope
from safereplay.domain.errors import ConfigurationError, SchemaError
from safereplay.domain.eventsourcing_settings import (
    Configuration,
    ResolvedEnvironment,
    resolve,
)
from safereplay.domain.keyring import KeyRing
from safereplay.domain.mapper import EnvelopeMapper
from safereplay.domain.postgres_tls import check_tls_connection
from safereplay.domain.schema import ensure_event_store
from safereplay.domain.secret import hide_passwords
from safereplay.domain.settings import DomainSettings

__all__ = ["EventStoreApplication"]

_UNSET: Any = object()


class EventStoreApplication(Application[UUID]):
    """An eventsourcing application whose events carry the envelope and are sealed.

    - ``env`` (default None): eventsourcing settings and ``SAFEREPLAY_*`` settings,
      as eventsourcing's ``Application`` takes them; each eventsourcing setting is
      honoured, mapped to its ``SAFEREPLAY_*`` setting or refused
      (:data:`~safereplay.domain.eventsourcing_settings.REGISTRY`). A
      :class:`DomainSettings` given here is taken as ``settings`` (what the first
      argument was before the application took ``env``).
    - ``settings`` (keyword, default None: :meth:`DomainSettings.from_env`, the
      ``SAFEREPLAY_*`` process environment): the settings ``env`` is laid over.
    - ``key_ring`` (keyword, default: the ring the settings point at): pass ``None``
      only together with ``encryption=False`` settings.

    The instance's ``name`` is eventsourcing's: the class's name unless the class
    sets ``name``; it names the application to eventsourcing's systems and
    runners (and prefixes its entries in a shared ``env``). Table names keep
    coming from ``SAFEREPLAY_APPLICATION_NAME``.
    """

    def __init__(
        self,
        env: EnvType | DomainSettings | None = None,
        *,
        settings: DomainSettings | None = None,
        key_ring: KeyRing | None = _UNSET,
    ) -> None:
        if isinstance(env, DomainSettings):
            if settings is not None:
                raise TypeError("settings given twice (positionally and as settings=)")
            env, settings = None, env
        self.configuration = self.resolve_configuration(env, settings)
        self.settings = self.configuration.settings
        self._ring_from_settings = key_ring is _UNSET
        self._key_ring: KeyRing | None = self._choose_key_ring(key_ring)
        #: Factories eventsourcing builds after construction (Follower.follow builds
        #: one per leader, for its mapper): closed with the application.
        self._later_factories: list[InfrastructureFactory] = []
        try:
            super().__init__(env=self.configuration.environment())
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

    # -- configuration ------------------------------------------------------------------

    def resolve_configuration(
        self, env: EnvType | None, settings: DomainSettings | None
    ) -> Configuration:
        """The class's ``env``, the settings (or the ``SAFEREPLAY_*`` environment) and
        ``env``, checked and laid over each other (``eventsourcing_settings.resolve``).

        The process environment is read for ``SAFEREPLAY_*`` variables only: a
        ``PERSISTENCE_MODULE`` or ``POSTGRES_*`` variable left in a shell would
        otherwise redirect a store configured by validated settings.
        """
        return resolve(self.name, type(self).env, env, settings=settings, environ=os.environ)

    def _choose_key_ring(self, key_ring: KeyRing | None) -> KeyRing | None:
        if key_ring is _UNSET:
            return self.settings.load_key_ring()
        if self.configuration.cipher_key_given:
            raise ConfigurationError(
                "a key ring was given both as key_ring= and as CIPHER_KEY: give one"
            )
        if key_ring is None and self.settings.encryption:
            raise ConfigurationError(
                "encryption is on but no key ring was given; set SAFEREPLAY_ENCRYPTION=false "
                "to store plaintext deliberately"
            )
        return key_ring

    # -- eventsourcing extension points -------------------------------------------------

    def construct_env(self, name: str, env: EnvType | None = None) -> Environment:
        """The eventsourcing environment: the resolved configuration, as it is.

        It is named after ``SAFEREPLAY_APPLICATION_NAME``, not ``name``: on
        PostgreSQL eventsourcing prefixes table names with the environment's name,
        and existing stores keep their tables. ``Follower.follow`` passes the
        application's own ``env`` back here (with the leader's name), to build a
        mapper for the leader's events: the same configuration, so the same key ring.
        """
        resolved = ResolvedEnvironment(
            self.settings.application_name,
            env if isinstance(env, ResolvedEnvironment) else self.configuration.environment(),
        )
        if (
            type(self).is_snapshotting_enabled or type(self).snapshotting_intervals
        ) and "IS_SNAPSHOTTING_ENABLED" not in resolved:
            resolved["IS_SNAPSHOTTING_ENABLED"] = "y"
        return resolved

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
        if hasattr(self, "factory"):
            self._later_factories.append(factory)
        password = self.settings.postgres_password()
        if password is not None and isinstance(factory, BasePostgresFactory):
            factory.datastore.pool.get_password_func = lambda: password
        if isinstance(factory, BasePostgresFactory):
            # A server that cannot offer the TLS required fails here, at once and
            # clearly, not as the pool's "couldn't get a connection after N sec".
            check_tls_connection(self.settings.postgres_conninfo(), what="the event store")
            # eventsourcing's datastore connects with host, port, user and dbname only;
            # the TLS parameters join its pool's connection arguments here, before the
            # pool opens (safereplay.domain.postgres_tls).
            kwargs = factory.datastore.pool.kwargs
            assert isinstance(kwargs, dict)  # eventsourcing builds it as a dict
            kwargs.update(self.settings.postgres_tls().parameters())
        # The factory builds the cipher it gives the mapper (eventsourcing's
        # mapper_class(transcoder=, compressor=, cipher=)) from CIPHER_TOPIC and
        # CIPHER_KEY in env. Key material stays out of env: the factory is handed
        # the cipher of the ring in use instead.
        cipher = self._cipher()
        setattr(factory, "cipher", lambda: cipher)  # noqa: B010 - replaces a method
        return factory

    def _cipher(self) -> KeyRingCipher | None:
        if self._key_ring is None:
            return None
        # Only a ring read from the configured key file is watched for rotations.
        watch = self.settings.key_file if self._ring_from_settings else None
        return KeyRingCipher.of(self._key_ring, key_file=watch)

    @property
    def key_ring(self) -> KeyRing | None:
        """The ring in use now (re-read from the key file after a rotation)."""
        mapper = getattr(self, "mapper", None)
        if isinstance(mapper, EnvelopeMapper):
            mapper.refresh_key_ring()
            return mapper.key_ring
        return self._key_ring

    def construct_mapper(self) -> Mapper[UUID]:
        """eventsourcing's way: the factory builds the mapper (EnvelopeMapper, or the
        subclass MAPPER_TOPIC names) with its cipher and compressor."""
        return self.factory.mapper(
            transcoder=self.construct_transcoder(),
            mapper_class=self.configuration.mapper_class,
        )

    def construct_transcoder(self) -> Transcoder:
        transcoder = JSONTranscoder()
        self.register_transcodings(transcoder)
        return transcoder

    def close(self) -> None:
        for factory in getattr(self, "_later_factories", ()):
            factory.close()
        super().close()

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

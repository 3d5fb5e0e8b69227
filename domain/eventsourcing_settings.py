"""What safereplay does with each setting eventsourcing reads from an application's ``env``.

eventsourcing configures an application from ``env``: the class's ``env``
mapping, the process environment and the constructor's ``env``. A safereplay
application is configured by validated ``SAFEREPLAY_*`` settings
(:class:`~safereplay.domain.settings.DomainSettings`), so each eventsourcing
setting it may be given is, in :data:`REGISTRY`, one of:

- **honoured**: handed to eventsourcing as is (``COMPRESSOR_TOPIC``, the aggregate
  cache, ``CREATE_TABLE``...), possibly on one backend only;
- **mapped**: read into the ``SAFEREPLAY_*`` setting it means
  (``SQLITE_DBNAME`` is ``SAFEREPLAY_SQLITE_PATH``);
- **refused**: start-up fails with a :class:`~safereplay.domain.errors.ConfigurationError`
  saying what to use instead (``POSTGRES_PASSWORD``: ``SAFEREPLAY_POSTGRES_DSN`` or
  ``SAFEREPLAY_POSTGRES_PASSWORD_FILE``), except for the values that are what
  safereplay does anyway (``ORIGINATOR_ID_TYPE=uuid``).

Nothing is dropped silently. :func:`resolve` lays the sources over each other
(see ``docs/eventsourcing.md``)::

    class env  <  SAFEREPLAY_* process environment (or settings=)  <  constructor env

Each mapping may also name an entry with the application's name as prefix
(``LEADER_SQLITE_DBNAME``, ``LEADER_SAFEREPLAY_KEY_FILE``), as eventsourcing's
``Environment`` does; the prefixed entry wins over the plain one in the same
mapping. That is how one ``env`` given to a system runner configures each of
its applications. Entries that are neither settings nor prefixed for this
application (an application's own keys, another application's prefixed
entries) stay in the application's ``env`` for its own code to read.

``CREATE_TABLE`` is honoured only as off: schema set-up is an explicit, versioned
step (:mod:`safereplay.domain.schema`, ``safereplay migrate``), never DDL at start.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from eventsourcing.persistence import JSONTranscoder
from eventsourcing.utils import Environment, TopicError, get_topic, resolve_topic

from safereplay.domain.cipher import KeyRingCipher
from safereplay.domain.errors import ConfigurationError, KeyRingError
from safereplay.domain.keyring import KeyRing
from safereplay.domain.mapper import EnvelopeMapper
from safereplay.domain.settings import ENV_PREFIX, DomainSettings

__all__ = [
    "REGISTRY",
    "STORAGE_SETTINGS",
    "Configuration",
    "ResolvedEnvironment",
    "Treatment",
    "resolve",
]

Kind = Literal["honoured", "mapped", "refused"]
Backend = Literal["sqlite", "postgres"]


@dataclass(frozen=True, kw_only=True)
class Treatment:
    """What safereplay does with one eventsourcing setting.

    - ``kind``: honoured, mapped or refused (see the module's docstring);
    - ``why``: the reason, as ``docs/eventsourcing.md`` gives it;
    - ``instead``: what to use instead, said by the error when a value is refused
      (default: nothing more to say);
    - ``setting``: for a mapped setting, the ``DomainSettings`` field it sets
      (default None);
    - ``convert``: for a mapped setting, value to field value; a ``ValueError``
      refuses the value with its message (default: the text itself);
    - ``accepts``: the values taken (and handed to eventsourcing) even though the
      setting is refused, because they are what safereplay does anyway, or the
      only values honoured (default None: every value of an honoured or mapped
      setting, none of a refused one);
    - ``backend``: the only backend on which an honoured setting means anything;
      given on the other, it is refused rather than ignored (default None: both).
    """

    kind: Kind
    why: str
    instead: str = ""
    setting: str | None = None
    convert: Callable[[str], Any] | None = None
    accepts: Callable[[str], bool] | None = None
    backend: Backend | None = None

    def problem(self, name: str, value: str) -> str | None:
        """Why ``name`` cannot take ``value`` (never echoed: it may be a secret), or None."""
        if self.accepts is not None:
            if self.accepts(value):
                return None
            return f"{name}: {self.instead or self.why}"
        if self.kind == "refused":
            return f"{name} is not used by safereplay ({self.why}): {self.instead}"
        if self.convert is not None:
            try:
                self.convert(value)
            except (ValueError, TypeError) as exc:
                return f"{name}: {exc}"
        return None


def _honoured(why: str, *, backend: Backend | None = None, **kw: Any) -> Treatment:
    return Treatment(kind="honoured", why=why, backend=backend, **kw)


def _mapped(setting: str, why: str, convert: Callable[[str], Any] | None = None) -> Treatment:
    return Treatment(kind="mapped", why=why, setting=setting, convert=convert)


def _refused(why: str, instead: str, **kw: Any) -> Treatment:
    return Treatment(kind="refused", why=why, instead=instead, **kw)


def _truth(value: str) -> bool | None:
    text = value.strip().lower()
    if text in {"y", "yes", "t", "true", "on", "1"}:
        return True
    if text in {"n", "no", "f", "false", "off", "0"}:
        return False
    return None


_BACKENDS = {
    "eventsourcing.sqlite": "sqlite",
    "eventsourcing.sqlite:Factory": "sqlite",
    "eventsourcing.sqlite:SQLiteFactory": "sqlite",
    "eventsourcing.postgres": "postgres",
    "eventsourcing.postgres:Factory": "postgres",
    "eventsourcing.postgres:PostgresFactory": "postgres",
}


def _backend(value: str) -> str:
    try:
        return _BACKENDS[value.strip()]
    except KeyError:
        raise ValueError(
            "safereplay stores events in SQLite or PostgreSQL, where its projections and "
            "recovery read them: use PERSISTENCE_MODULE=eventsourcing.sqlite or "
            "eventsourcing.postgres, or SAFEREPLAY_BACKEND"
        ) from None


def _sqlite_path(value: str) -> str:
    if not value.strip() or ":memory:" in value or "mode=memory" in value:
        raise ValueError(
            "an in-memory SQLite database cannot be read by projections and recovery, "
            "which open the file by its path: give a file (SAFEREPLAY_SQLITE_PATH)"
        )
    return value


_KEY_RING_CIPHER = get_topic(KeyRingCipher)


def _cipher(value: str) -> bool:
    if value.strip() != _KEY_RING_CIPHER:
        raise ValueError(
            "safereplay seals events with its key ring, bound to each row (AES-256-GCM); "
            f"use CIPHER_TOPIC={_KEY_RING_CIPHER} with CIPHER_KEY=KEY_ID=BASE64, or "
            "SAFEREPLAY_KEY_FILE / SAFEREPLAY_KEYS"
        )
    return True


def _key_ring_spec(value: str) -> str:
    if "=" not in value.strip().rstrip("="):
        raise ValueError(
            "CIPHER_KEY is a key ring for KeyRingCipher: write it as "
            "KEY_ID=BASE64[,KEY_ID=BASE64] (a bare key needs an id)"
        )
    try:
        KeyRing.from_spec(value)
    except KeyRingError as exc:  # says what is wrong, never the key
        raise ValueError(str(exc)) from None
    return value


def _is_mapper_topic(value: str) -> bool:
    try:
        cls = resolve_topic(value.strip())
    except (TopicError, ValueError):
        return False
    return isinstance(cls, type) and issubclass(cls, EnvelopeMapper)


_POSTGRES_DSN = (
    "give the server in SAFEREPLAY_POSTGRES_DSN, the one connection string the event "
    "store, the projections and recovery share"
)
_ES = "eventsourcing's"

#: Every setting eventsourcing 9.5's Application, InfrastructureFactory and POPO,
#: SQLite and PostgreSQL factories read, and its treatment. A test walks
#: eventsourcing's sources: a setting missing here fails it.
REGISTRY: Mapping[str, Treatment] = {
    # -- which store -------------------------------------------------------------------
    "PERSISTENCE_MODULE": _mapped(
        "backend", "the backend is SAFEREPLAY_BACKEND; SQLite and PostgreSQL only", _backend
    ),
    "INFRASTRUCTURE_FACTORY": _refused(
        f"{_ES} legacy name of PERSISTENCE_MODULE",
        "use SAFEREPLAY_BACKEND (or PERSISTENCE_MODULE=eventsourcing.sqlite / .postgres)",
    ),
    "FACTORY_TOPIC": _refused(
        f"{_ES} legacy name of PERSISTENCE_MODULE",
        "use SAFEREPLAY_BACKEND (or PERSISTENCE_MODULE=eventsourcing.sqlite / .postgres)",
    ),
    # -- how events are stored -----------------------------------------------------------
    "TRANSCODER_TOPIC": _refused(
        "projections, drills and recovery read stored states as eventsourcing's JSON",
        f"only {get_topic(JSONTranscoder)} is used; add types with register_transcodings()",
        accepts=lambda v: v.strip() == get_topic(JSONTranscoder),
    ),
    "MAPPER_TOPIC": _honoured(
        "the mapper is EnvelopeMapper (envelope, row-bound sealing); a subclass may be chosen",
        instead=f"MAPPER_TOPIC must name {get_topic(EnvelopeMapper)} or a subclass of it",
        accepts=_is_mapper_topic,
    ),
    "COMPRESSOR_TOPIC": _honoured("states are compressed before they are sealed"),
    "CIPHER_TOPIC": _mapped(
        "encryption",
        "events are sealed by the key ring; KeyRingCipher is the key ring as a Cipher",
        _cipher,
    ),
    "CIPHER_KEY": _mapped(
        "keys",
        "the key ring in SAFEREPLAY_KEYS form, for KeyRingCipher (AESCipher keys are refused)",
        _key_ring_spec,
    ),
    "ORIGINATOR_ID_TYPE": _refused(
        "aggregate ids are UUIDs; the event sources read uuid columns",
        "only ORIGINATOR_ID_TYPE=uuid is supported",
        accepts=lambda v: v.strip().lower() == "uuid",
    ),
    # -- the application -----------------------------------------------------------------
    "IS_SNAPSHOTTING_ENABLED": _honoured("snapshots are sealed like events"),
    "AGGREGATE_CACHE_MAXSIZE": _honoured("the repository's cache"),
    "AGGREGATE_CACHE_FASTFORWARD": _honoured("the repository's cache"),
    "AGGREGATE_CACHE_FASTFORWARD_SKIPPING": _honoured("the repository's cache"),
    "DEEPCOPY_FROM_AGGREGATE_CACHE": _honoured("the repository's cache"),
    "APPLICATION_RECORDER_TOPIC": _honoured(
        "eventsourcing checks the class is its backend's recorder (same tables)"
    ),
    "TRACKING_RECORDER_TOPIC": _honoured(
        "eventsourcing checks the class is its backend's recorder (same tables)"
    ),
    "PROCESS_RECORDER_TOPIC": _honoured(
        "eventsourcing checks the class is its backend's recorder (same tables)"
    ),
    "SINGLE_ROW_TRACKING": _honoured("how process applications record tracking"),
    # Schema set-up: one entry, so that its treatment changes in one place.
    "CREATE_TABLE": _honoured(
        "off only: the tables are set up once per schema version by the schema step "
        "(safereplay.domain.schema), never as DDL at every start",
        accepts=lambda value: _truth(value) is False,
        instead="only off is accepted: safereplay sets its tables up once per schema "
        "version (run `safereplay migrate`, or leave SAFEREPLAY_MIGRATE_ON_START on); "
        "DDL at every start would make writers wait",
    ),
    # -- SQLite --------------------------------------------------------------------------
    "SQLITE_DBNAME": _mapped(
        "sqlite_path", "the file is SAFEREPLAY_SQLITE_PATH (a file, not :memory:)", _sqlite_path
    ),
    "SQLITE_LOCK_TIMEOUT": _honoured(
        "seconds to wait for SQLite's write lock (default 30)", backend="sqlite"
    ),
    # -- PostgreSQL ----------------------------------------------------------------------
    "POSTGRES_DBNAME": _refused("the server is SAFEREPLAY_POSTGRES_DSN", _POSTGRES_DSN),
    "POSTGRES_HOST": _refused("the server is SAFEREPLAY_POSTGRES_DSN", _POSTGRES_DSN),
    "POSTGRES_PORT": _refused("the server is SAFEREPLAY_POSTGRES_DSN", _POSTGRES_DSN),
    "POSTGRES_USER": _refused("the server is SAFEREPLAY_POSTGRES_DSN", _POSTGRES_DSN),
    "POSTGRES_PASSWORD": _refused(
        "a password in env stays in a dictionary that prints whole",
        "give it in SAFEREPLAY_POSTGRES_DSN or SAFEREPLAY_POSTGRES_PASSWORD_FILE",
    ),
    "POSTGRES_GET_PASSWORD_TOPIC": _refused(
        "safereplay installs its own password function, fed by its settings",
        "use SAFEREPLAY_POSTGRES_PASSWORD_FILE (or libpq's PGPASSFILE)",
    ),
    "POSTGRES_CONNECT_TIMEOUT": _refused(
        "the timeout is part of the one connection string",
        "set connect_timeout in SAFEREPLAY_POSTGRES_DSN",
    ),
    "POSTGRES_SCHEMA": _mapped("postgres_schema", "the schema is SAFEREPLAY_POSTGRES_SCHEMA"),
    "POSTGRES_POOL_SIZE": _mapped("pool_size", "the pool size is SAFEREPLAY_POOL_SIZE"),
    "POSTGRES_MAX_OVERFLOW": _honoured("connections beyond the pool", backend="postgres"),
    "POSTGRES_MAX_WAITING": _honoured("callers queued for a connection", backend="postgres"),
    "POSTGRES_CONN_MAX_AGE": _honoured("connections are renewed", backend="postgres"),
    "POSTGRES_PRE_PING": _honoured("connections are checked before use", backend="postgres"),
    "POSTGRES_LOCK_TIMEOUT": _honoured(
        "seconds an insert waits for the table lock (default 5)", backend="postgres"
    ),
    "POSTGRES_IDLE_IN_TRANSACTION_SESSION_TIMEOUT": _honoured(
        "the server ends idle transactions (default 10 s)", backend="postgres"
    ),
    "POSTGRES_ENABLE_DB_FUNCTIONS": _honoured(
        "inserts through eventsourcing's function; the high-water mark copes with the "
        "out-of-order commits it allows",
        backend="postgres",
    ),
}


class ResolvedEnvironment(Environment):
    """An application's eventsourcing environment once :func:`resolve` has built it.

    eventsourcing passes an application's ``env`` back to ``construct_env`` (as
    ``Follower.follow`` does); a resolved environment is then taken as it is.
    """


@dataclass(frozen=True)
class Configuration:
    """What :func:`resolve` made of an application's sources.

    ``settings``: the application's settings; ``extra``: the entries laid over
    ``settings.eventsourcing_env()`` (honoured settings, the application's own
    keys); ``mapper_class``: the mapper to build; ``cipher_key_given``: whether
    ``CIPHER_KEY`` was given (the key ring then comes from it).
    """

    settings: DomainSettings
    extra: Mapping[str, str] = field(default_factory=dict)
    mapper_class: type[EnvelopeMapper] = EnvelopeMapper
    cipher_key_given: bool = False

    def environment(self) -> ResolvedEnvironment:
        """The eventsourcing environment, named for the table names (see resolve)."""
        # extra holds no setting the settings map to (those are mapped, not honoured),
        # except defaults the settings give and an honoured entry may change.
        merged = {**self.settings.eventsourcing_env(), **self.extra}
        return ResolvedEnvironment(self.settings.application_name, merged)


@dataclass
class _Layer:
    """One mapping, sorted: settings, eventsourcing settings, the rest."""

    overrides: dict[str, Any] = field(default_factory=dict)
    eventsourcing: dict[str, str] = field(default_factory=dict)
    other: dict[str, str] = field(default_factory=dict)


def _layer(entries: Mapping[str, str], prefix: str, problems: list[str]) -> _Layer:
    """Sort ``entries``; entries named with ``prefix`` win over plain ones."""
    plain: dict[str, str] = {}
    prefixed: dict[str, str] = {}
    layer = _Layer()
    for key, value in entries.items():
        if not isinstance(value, str):
            problems.append(f"{key}: env values are strings (got {type(value).__name__})")
            continue
        upper = key.upper()
        rest = upper.removeprefix(prefix) if prefix and upper.startswith(prefix) else None
        if rest is not None and (rest in REGISTRY or rest.startswith(ENV_PREFIX)):
            prefixed[rest] = value
        elif upper in REGISTRY or upper.startswith(ENV_PREFIX):
            plain[upper] = value
        else:
            layer.other[key] = value
    for name, value in {**plain, **prefixed}.items():
        if name in REGISTRY:
            layer.eventsourcing[name] = value
        else:
            layer.overrides[name.removeprefix(ENV_PREFIX).lower()] = value
    return layer


def _map(layer: _Layer, problems: list[str]) -> dict[str, Any]:
    """The layer's settings: its SAFEREPLAY_* entries and its mapped eventsourcing ones."""
    overrides = dict(layer.overrides)
    for name, value in layer.eventsourcing.items():
        treatment = REGISTRY[name]
        if treatment.kind != "mapped" or treatment.problem(name, value) is not None:
            continue
        assert treatment.setting is not None
        converted = treatment.convert(value) if treatment.convert is not None else value
        given = overrides.get(treatment.setting)
        if given is not None and str(given).lower() != str(converted).lower():
            problems.append(
                f"{name} and {ENV_PREFIX}{treatment.setting.upper()} are both given, with "
                "different values: give one"
            )
            continue
        overrides[treatment.setting] = converted
    return overrides


def _settings(
    settings: DomainSettings | None,
    lower: Mapping[str, Any],
    upper: Mapping[str, Any],
    environ: Mapping[str, str],
) -> DomainSettings:
    """The settings of the three layers (see :func:`resolve`)."""
    if settings is None:
        # pydantic-settings reads the process environment under keyword arguments:
        # a class entry is passed only where the process environment has none.
        in_environ = {k.upper() for k in environ}
        from_class = {
            k: v for k, v in lower.items() if f"{ENV_PREFIX}{k.upper()}" not in in_environ
        }
        return DomainSettings.from_env(**{**from_class, **upper})
    if not upper:
        return settings
    fields = {k: getattr(settings, k) for k in type(settings).model_fields}
    return DomainSettings.from_env(**{**fields, **upper})


#: eventsourcing settings that decide how events are stored: refused when only the
#: process environment sets them (see :func:`resolve`).
STORAGE_SETTINGS = frozenset(
    {
        "PERSISTENCE_MODULE",
        "INFRASTRUCTURE_FACTORY",
        "FACTORY_TOPIC",
        "MAPPER_TOPIC",
        "TRANSCODER_TOPIC",
        "COMPRESSOR_TOPIC",
        "CIPHER_TOPIC",
        "CIPHER_KEY",
    }
)


def resolve(
    name: str,
    class_env: Mapping[str, str],
    env: Mapping[str, str] | None,
    *,
    settings: DomainSettings | None = None,
    environ: Mapping[str, str],
) -> Configuration:
    """The configuration of application ``name`` from its sources, checked.

    Precedence, lowest first: ``class_env``; the ``SAFEREPLAY_*`` variables of
    ``environ`` (the process environment), or ``settings`` when given (which
    replaces that layer whole); ``env``. Every problem is gathered into one
    :class:`ConfigurationError`; values are never shown.
    """
    problems: list[str] = []
    prefix = f"{name.upper()}_" if name else ""
    lower = _layer(class_env, prefix, problems)
    upper = _layer(env or {}, prefix, problems)
    given = {**lower.eventsourcing, **upper.eventsourcing}
    for key, value in given.items():
        problem = REGISTRY[key].problem(key, value)
        if problem is not None:
            problems.append(problem)
    # A variable left in a shell must not change how events are stored, and must not
    # be dropped in silence either: the settings that decide the stored form are
    # refused when only the process environment has them.
    for key in sorted(STORAGE_SETTINGS):
        if key in environ and key not in given:
            problems.append(
                f"{key} is set in the process environment, which safereplay does not read "
                "for eventsourcing settings: give it in the application's env (class "
                "attribute or constructor), or unset it"
            )
    lower_overrides = _map(lower, problems)
    upper_overrides = _map(upper, problems)
    if "CIPHER_KEY" in given and "CIPHER_TOPIC" not in given:
        problems.append(
            "CIPHER_KEY without CIPHER_TOPIC means eventsourcing's AESCipher, which "
            f"safereplay does not use: set CIPHER_TOPIC={_KEY_RING_CIPHER} (CIPHER_KEY is "
            "then the key ring, KEY_ID=BASE64[,...]) or use SAFEREPLAY_KEY_FILE"
        )
    if problems:
        raise ConfigurationError("; ".join(problems))
    try:
        settings = _settings(settings, lower_overrides, upper_overrides, environ)
    except ConfigurationError as exc:
        if "CIPHER_KEY" not in given:
            raise
        raise ConfigurationError(f"{exc} (CIPHER_KEY gives SAFEREPLAY_KEYS)") from None

    cipher_given = "CIPHER_TOPIC" in given or "CIPHER_KEY" in given
    if cipher_given and not settings.encryption:
        problems.append(
            "CIPHER_TOPIC / CIPHER_KEY ask for encryption but SAFEREPLAY_ENCRYPTION is "
            "false: events would be stored in plaintext; remove them or turn encryption on"
        )
    for key in given:
        backend = REGISTRY[key].backend
        if backend is not None and backend != settings.backend:
            problems.append(
                f"{key} applies to the {backend} backend only; this application stores "
                f"its events in {settings.backend} (SAFEREPLAY_BACKEND)"
            )
    # eventsourcing's Environment looks entries up with its name as prefix too: the
    # name is the application name (table names), so such entries would apply.
    own = f"{settings.application_name.upper()}_"
    others = {**lower.other, **upper.other}
    for key in others:
        if key.upper().startswith(own) and key.upper().removeprefix(own) in REGISTRY:
            problems.append(
                f"{key}: a setting prefixed with the application name "
                f"{settings.application_name!r} (SAFEREPLAY_APPLICATION_NAME); prefix "
                f"settings with the class's name ({prefix or 'NAME_'}...) instead"
            )
    if problems:
        raise ConfigurationError("; ".join(problems))

    mapper_class = EnvelopeMapper
    if "MAPPER_TOPIC" in given:
        mapper_class = resolve_topic(given["MAPPER_TOPIC"].strip())
    honoured = {k: v for k, v in given.items() if REGISTRY[k].kind != "mapped"}
    return Configuration(
        settings=settings,
        extra={**others, **honoured},
        mapper_class=mapper_class,
        cipher_key_given="CIPHER_KEY" in given,
    )

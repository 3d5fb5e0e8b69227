"""Settings of the write side, read from ``SAFEREPLAY_*`` environment variables.

Every field's default is documented in ``docs/configuration.md``; a test keeps
the two in step. :meth:`DomainSettings.from_env` turns any problem into one
:class:`~safereplay.domain.errors.ConfigurationError` that names the variables to change.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from safereplay.domain.errors import ConfigurationError, DomainError
from safereplay.domain.keyring import KeyRing
from safereplay.domain.postgres_tls import TLS_PARAMETERS, PostgresTLS, SSLMode
from safereplay.domain.secret import Conninfo, Password, read_password_file

__all__ = [
    "DEFAULT_POSTGRES_DSN",
    "RESERVED_PREFIXES",
    "DomainSettings",
    "check_variables",
    "settings_error",
    "variable_names",
]

#: The DSN tests and examples use when none is given (this machine's server).
DEFAULT_POSTGRES_DSN = "postgresql://postgres@127.0.0.1:5432/test"
_SCHEMA = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
#: Connection parameters of SAFEREPLAY_POSTGRES_DSN that reach the connection pool.
_DSN_PARAMETERS = frozenset({"host", "port", "user", "password", "dbname", "connect_timeout"})
ENV_PREFIX = "SAFEREPLAY_"
#: ``SAFEREPLAY_*`` names that are not settings and are never checked: the test
#: suite's own (``SAFEREPLAY_TEST_POSTGRES_DSN``...), the reliability suite's
#: (``SAFEREPLAY_RELIABILITY_TRIALS``...: a command the suite runs inherits them) and
#: the benchmarks'.
RESERVED_PREFIXES = ("SAFEREPLAY_TEST_", "SAFEREPLAY_RELIABILITY_", "SAFEREPLAY_BENCH_")


def settings_error(
    exc: ValidationError, *, prefix: str = ENV_PREFIX, known: Iterable[str] = ()
) -> ConfigurationError:
    """One ConfigurationError naming each environment variable that is wrong.

    Only the field location and pydantic's message are used: input values are
    left out because they may be secrets (a DSN with a password, a key list).
    An override that is no setting (``extra_forbidden``) is named like an unknown
    variable, with the closest of ``known`` (see :func:`check_variables`).
    """
    problems = []
    for error in exc.errors(include_input=False, include_url=False):
        location = ".".join(str(part) for part in error["loc"])
        name = f"{prefix}{location.upper()}" if location else "settings"
        if error["type"] == "extra_forbidden":
            problems.append(_unknown_setting(name, known))
        else:
            problems.append(f"{name}: {error['msg']}")
    return ConfigurationError("invalid configuration: " + "; ".join(problems))


def variable_names(settings_class: type[BaseSettings]) -> frozenset[str]:
    """The environment variables a settings class reads (upper case)."""
    prefix = settings_class.model_config.get("env_prefix", "")
    return frozenset(f"{prefix}{name}".upper() for name in settings_class.model_fields)


def check_variables(
    known: Iterable[str],
    environ: Mapping[str, str] | None = None,
    *,
    prefix: str = ENV_PREFIX,
    reserved: Iterable[str] = RESERVED_PREFIXES,
) -> None:
    """Refuse every ``prefix`` variable of ``environ`` that is not one of ``known``.

    A misspelt variable (``SAFEREPLAY_POSTGRES_DNS``) would otherwise be ignored
    and its setting silently left at its default. The error names each unknown
    variable and, where one is close, the setting it probably meant; values are
    never shown. Names are compared in upper case, as pydantic-settings reads
    them case-insensitively. Variables starting with one of ``reserved`` are
    left alone.
    """
    environ = os.environ if environ is None else environ
    valid = frozenset(name.upper() for name in known)
    reserved = tuple(r.upper() for r in reserved)
    problems = [
        _unknown_setting(name, valid, prefix=prefix)
        for name in sorted(environ)
        if name.upper().startswith(prefix)
        and name.upper() not in valid
        and not name.upper().startswith(reserved)
    ]
    if problems:
        raise ConfigurationError("; ".join(problems))


def _unknown_setting(name: str, known: Iterable[str], *, prefix: str = ENV_PREFIX) -> str:
    """``unknown setting NAME: did you mean CLOSEST?`` (or that none is close)."""
    # Compared without the common prefix, which would make every name look close.
    short = {valid.upper().removeprefix(prefix): valid.upper() for valid in known}
    close = difflib.get_close_matches(name.upper().removeprefix(prefix), list(short), n=1)
    if close:
        return f"unknown setting {name}: did you mean {short[close[0]]}?"
    return f"unknown setting {name}: no setting has a similar name (see docs/configuration.md)"


class DomainSettings(BaseSettings):
    """Where and how events are stored. See ``docs/configuration.md``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", frozen=True, hide_input_in_errors=True
    )

    backend: Literal["sqlite", "postgres"] = Field(
        default="sqlite", description="Event store backend: 'sqlite' (embedded) or 'postgres'."
    )
    sqlite_path: Path = Field(
        default=Path("safereplay.db"), description="SQLite database file (backend=sqlite)."
    )
    postgres_dsn: SecretStr | None = Field(
        default=None, description="PostgreSQL connection string (backend=postgres)."
    )
    postgres_password_file: Path | None = Field(
        default=None,
        description="File holding the PostgreSQL password (mode 0600), instead of the DSN.",
    )
    postgres_schema: str = Field(
        default="public", description="PostgreSQL schema holding the event tables."
    )
    postgres_sslmode: SSLMode = Field(
        default="prefer",
        description=(
            "TLS to PostgreSQL (libpq's sslmode): disable, allow, prefer, require, verify-ca "
            "or verify-full; passed to every connection safereplay opens."
        ),
    )
    postgres_sslrootcert: Path | None = Field(
        default=None,
        description="CA certificate file the PostgreSQL server is verified with (verify-*).",
    )
    postgres_sslcert: Path | None = Field(
        default=None, description="Client certificate file for PostgreSQL (with SSLKEY)."
    )
    postgres_sslkey: Path | None = Field(
        default=None, description="Client certificate's key file for PostgreSQL (mode 0600)."
    )
    application_name: str = Field(
        default="safereplay",
        description="Application name; on PostgreSQL the events table is NAME_events.",
    )
    encryption: bool = Field(
        default=True,
        description="Encrypt event state at rest. Turning it off must be explicit (false).",
    )
    key_file: Path | None = Field(default=None, description="Key ring file (JSON, mode 0600).")
    keys: SecretStr | None = Field(
        default=None, description="Key ring in the environment: KEY_ID=BASE64[,KEY_ID=BASE64]."
    )
    active_key_id: str | None = Field(
        default=None,
        description="Active key id for SAFEREPLAY_KEYS (default: the last key listed).",
    )
    pool_size: int = Field(default=5, ge=1, le=100, description="Database connections kept.")
    migrate_on_start: bool = Field(
        default=True,
        description=(
            "Let a process set up missing or outdated tables when it starts (after a look "
            "at the schema catalog); false: only `safereplay migrate` does."
        ),
    )

    @model_validator(mode="after")
    def _check_consistency(self) -> DomainSettings:
        if self.backend == "postgres":
            if self.postgres_dsn is None:
                raise ValueError(
                    "backend is 'postgres' but SAFEREPLAY_POSTGRES_DSN is not set "
                    f"(for example {DEFAULT_POSTGRES_DSN})"
                )
            try:
                params = conninfo_to_dict(self.postgres_dsn.get_secret_value())
            except Exception:
                # The DSN may hold a password: do not echo it.
                raise ValueError(
                    "SAFEREPLAY_POSTGRES_DSN is not a valid connection string"
                ) from None
            # eventsourcing connects with these parameters only; anything else (options...)
            # would be dropped silently, so it is refused (names, not values). TLS
            # parameters have settings of their own, which reach every connection
            # (postgres_conninfo() and EventStoreApplication.construct_factory).
            for name in sorted(TLS_PARAMETERS & set(params)):
                raise ValueError(
                    f"SAFEREPLAY_POSTGRES_DSN sets {name}: set "
                    f"SAFEREPLAY_POSTGRES_{name.upper()} instead (it reaches every "
                    "connection, the event store's included)"
                )
            unsupported = sorted(set(params) - _DSN_PARAMETERS - TLS_PARAMETERS)
            if unsupported:
                raise ValueError(
                    f"SAFEREPLAY_POSTGRES_DSN has parameters the event store cannot pass on: "
                    f"{', '.join(unsupported)}; it uses only "
                    f"{', '.join(sorted(_DSN_PARAMETERS))} (set others with libpq's "
                    "environment variables; TLS: SAFEREPLAY_POSTGRES_SSLMODE)"
                )
            timeout = str(params.get("connect_timeout", "1"))
            if not timeout.isdigit() or int(timeout) < 1:
                raise ValueError(
                    "SAFEREPLAY_POSTGRES_DSN: connect_timeout must be a whole number of "
                    "seconds (at least 1)"
                )
            if self.postgres_password_file is not None:
                password = _file_password(
                    self.postgres_password_file, "SAFEREPLAY_POSTGRES_PASSWORD_FILE"
                )
                if params.get("password") not in (None, "", password):
                    raise ValueError(
                        "SAFEREPLAY_POSTGRES_DSN holds a password and "
                        "SAFEREPLAY_POSTGRES_PASSWORD_FILE is set: keep only one"
                    )
                # The password joins the DSN, a SecretStr, so that every user of the
                # DSN (event store, projection store, event source, drills) connects
                # with it. The model is frozen; this is its construction.
                dsn = make_conninfo(self.postgres_dsn.get_secret_value(), password=password)
                object.__setattr__(self, "postgres_dsn", SecretStr(dsn))
        problems = self.postgres_tls().problems()
        if problems:
            raise ValueError("; ".join(problems))
        if not _SCHEMA.match(self.postgres_schema):
            raise ValueError("SAFEREPLAY_POSTGRES_SCHEMA must be a lower-case SQL identifier")
        if not re.match(r"^[a-z][a-z0-9_]{0,40}$", self.application_name):
            raise ValueError(
                "SAFEREPLAY_APPLICATION_NAME must be lower-case letters, digits and '_'"
            )
        if self.encryption:
            if self.key_file is None and self.keys is None:
                raise ValueError(
                    "encryption is on but no key ring is configured: set SAFEREPLAY_KEY_FILE "
                    "or SAFEREPLAY_KEYS, or set SAFEREPLAY_ENCRYPTION=false to store events "
                    "in plaintext deliberately"
                )
            if self.key_file is not None and self.keys is not None:
                raise ValueError(
                    "both SAFEREPLAY_KEY_FILE and SAFEREPLAY_KEYS are set: keep only one"
                )
        return self

    @classmethod
    def from_env(cls, **overrides: Any) -> DomainSettings:
        """Read the environment (plus ``overrides``); errors become ConfigurationError."""
        try:
            return cls(**overrides)
        except ValidationError as exc:
            raise settings_error(exc, known=variable_names(cls)) from None

    def load_key_ring(self) -> KeyRing | None:
        """The configured key ring, or None when encryption is off."""
        if not self.encryption:
            return None
        try:
            if self.key_file is not None:
                return KeyRing.load(self.key_file)
            assert self.keys is not None
            return KeyRing.from_spec(self.keys.get_secret_value(), self.active_key_id)
        except DomainError:
            raise
        except Exception as exc:  # pragma: no cover - defensive, keeps secrets out
            raise ConfigurationError(f"key ring cannot be loaded: {type(exc).__name__}") from None

    def postgres_password(self) -> Password | None:
        """The PostgreSQL password (from the DSN or the password file), or None.

        None means libpq's own ways apply: ``PGPASSWORD`` or the password file
        (``PGPASSFILE``, ``~/.pgpass``). The value prints as ``'**********'``.
        """
        if self.postgres_dsn is None:
            return None
        password = conninfo_to_dict(self.postgres_dsn.get_secret_value()).get("password")
        return Password(password) if password else None

    def postgres_tls(self) -> PostgresTLS:
        """The TLS parameters of every PostgreSQL connection (see ``postgres_tls``)."""
        return PostgresTLS(
            sslmode=self.postgres_sslmode,
            sslrootcert=self.postgres_sslrootcert,
            sslcert=self.postgres_sslcert,
            sslkey=self.postgres_sslkey,
        )

    def postgres_conninfo(self) -> Conninfo:
        """The connection string every direct connection and pool opens with: the DSN
        (with the password file's password) and the TLS parameters of
        :meth:`postgres_tls`. Its ``repr`` hides the password."""
        if self.postgres_dsn is None:
            raise ConfigurationError("the event store is not PostgreSQL")
        return Conninfo(self.postgres_tls().apply(self.postgres_dsn.get_secret_value()))

    def eventsourcing_env(self) -> dict[str, str]:
        """The eventsourcing environment these settings map to.

        Encryption is not configured here: the key ring is handed to the mapper
        directly so key material never sits in an environment dictionary. Nor is
        the PostgreSQL password (``POSTGRES_PASSWORD`` is always empty): see
        :meth:`postgres_password`.
        """
        if self.backend == "sqlite":
            return {
                "PERSISTENCE_MODULE": "eventsourcing.sqlite",
                "SQLITE_DBNAME": str(self.sqlite_path),
                "SQLITE_LOCK_TIMEOUT": "30",
                # Tables are set up by the schema catalog (safereplay.domain.schema),
                # once per version, not by eventsourcing at every start.
                "CREATE_TABLE": "no",
            }
        assert self.postgres_dsn is not None
        params = conninfo_to_dict(self.postgres_dsn.get_secret_value())
        env = {
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_DBNAME": str(params.get("dbname", "postgres")),
            "POSTGRES_HOST": str(params.get("host", "127.0.0.1")),
            "POSTGRES_PORT": str(params.get("port", "5432")),
            "POSTGRES_USER": str(params.get("user", "postgres")),
            # Never the password itself: this mapping becomes the application's
            # ``env``, a dict that prints whole. EventStoreApplication hands the
            # password to the pool through eventsourcing's password function
            # (postgres_password()); empty, libpq looks in its own password file.
            "POSTGRES_PASSWORD": "",
            "POSTGRES_SCHEMA": self.postgres_schema,
            "POSTGRES_POOL_SIZE": str(self.pool_size),
            "POSTGRES_LOCK_TIMEOUT": "5",
            "POSTGRES_IDLE_IN_TRANSACTION_SESSION_TIMEOUT": "10",
            "CREATE_TABLE": "no",
        }
        if "connect_timeout" in params:
            env["POSTGRES_CONNECT_TIMEOUT"] = str(params["connect_timeout"])
        return env


def _file_password(path: Path, variable: str) -> str:
    """The password file's content, its problems as ValueError (for the validators)."""
    try:
        return read_password_file(path, variable=variable)
    except ConfigurationError as exc:
        raise ValueError(str(exc)) from None

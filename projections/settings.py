"""Where projections live, how runners pace themselves, and how the PostgreSQL
high-water mark proves holes: ``SAFEREPLAY_PROJECTIONS_*``.

The projection store is a database of the same kind as the event store. By
default it *is* the event store's database (same SQLite file, or same PostgreSQL
database and schema); ``SAFEREPLAY_PROJECTIONS_SQLITE_PATH`` or
``SAFEREPLAY_PROJECTIONS_POSTGRES_DSN`` / ``..._POSTGRES_SCHEMA`` move it elsewhere
(with ``..._POSTGRES_PASSWORD_FILE`` for a password kept out of that DSN).
See ``docs/configuration.md`` (section "Projections"). Problems are reported as
one :class:`domain.ConfigurationError` naming every variable to change.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from safereplay.domain.errors import ConfigurationError
from safereplay.domain.secret import Conninfo, read_password_file
from safereplay.domain.settings import DomainSettings, settings_error, variable_names
from safereplay.projections.source import ReadAheadMode

__all__ = ["ENV_PREFIX", "ProjectionSettings"]

ENV_PREFIX = "SAFEREPLAY_PROJECTIONS_"
_SCHEMA = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class ProjectionSettings(BaseSettings):
    """Projection store location and runner pacing. See ``docs/configuration.md``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", frozen=True, hide_input_in_errors=True
    )

    sqlite_path: Path | None = Field(
        default=None,
        description="SQLite file of the projection store (default: the event store's file).",
    )
    postgres_dsn: SecretStr | None = Field(
        default=None,
        description="PostgreSQL database of the projection store (default: the event store's).",
    )
    postgres_password_file: Path | None = Field(
        default=None,
        description="File holding the password of postgres_dsn (mode 0600), instead of the DSN.",
    )
    postgres_schema: str | None = Field(
        default=None,
        description="PostgreSQL schema of the projection store (default: the event store's).",
    )
    batch_size: int = Field(
        default=5000, ge=1, le=100_000, description="Events read, applied and committed per batch."
    )
    poll_interval: float = Field(
        default=0.01, gt=0, le=60, description="First pause when idle (doubles while idle)."
    )
    max_poll_interval: float = Field(
        default=1.0, gt=0, le=600, description="Longest pause between polls when idle."
    )
    repoll_interval: float = Field(
        default=1.0,
        gt=0,
        le=600,
        description="PostgreSQL: poll at least this often even without a notification.",
    )
    retry_initial: float = Field(
        default=0.05, gt=0, le=60, description="First back-off after a lost connection."
    )
    retry_max: float = Field(
        default=5.0, gt=0, le=600, description="Longest back-off after a lost connection."
    )
    hole_wait: float = Field(
        default=0.5,
        ge=0,
        le=60,
        description=(
            "PostgreSQL: longest one high-water mark update waits at a hole for the writers "
            "that may fill it."
        ),
    )
    hole_proof_refresh: float = Field(
        default=1.0,
        ge=0,
        le=600,
        description=(
            "PostgreSQL: while hole proofs are pending, begin a newer one at most this often "
            "(the mark trails overlapping writers by about this plus the longest writer "
            "transaction)."
        ),
    )
    give_up_after: float | None = Field(
        default=None,
        gt=0,
        description="Stop retrying a lost database after this many seconds (unset: never).",
    )
    read_ahead: ReadAheadMode | None = Field(
        default=None,
        description=(
            "Read (off | read | decode) the next batch while one commits "
            "(unset: what the backend's source does by default)."
        ),
    )

    @model_validator(mode="after")
    def _check(self) -> ProjectionSettings:
        if self.postgres_schema is not None and not _SCHEMA.match(self.postgres_schema):
            raise ValueError(
                "SAFEREPLAY_PROJECTIONS_POSTGRES_SCHEMA must be a lower-case SQL identifier"
            )
        if self.postgres_dsn is not None:
            try:
                params = conninfo_to_dict(self.postgres_dsn.get_secret_value())
            except Exception:
                raise ValueError(
                    "SAFEREPLAY_PROJECTIONS_POSTGRES_DSN is not a valid connection string"
                ) from None
            if self.postgres_password_file is not None:
                try:
                    password = read_password_file(
                        self.postgres_password_file,
                        variable="SAFEREPLAY_PROJECTIONS_POSTGRES_PASSWORD_FILE",
                    )
                except ConfigurationError as exc:
                    raise ValueError(str(exc)) from None
                if params.get("password") not in (None, "", password):
                    raise ValueError(
                        "SAFEREPLAY_PROJECTIONS_POSTGRES_DSN holds a password and "
                        "SAFEREPLAY_PROJECTIONS_POSTGRES_PASSWORD_FILE is set: keep only one"
                    )
                # As in DomainSettings: the password joins the DSN (a SecretStr) once,
                # while the frozen model is being built.
                dsn = make_conninfo(self.postgres_dsn.get_secret_value(), password=password)
                object.__setattr__(self, "postgres_dsn", SecretStr(dsn))
        elif self.postgres_password_file is not None:
            raise ValueError(
                "SAFEREPLAY_PROJECTIONS_POSTGRES_PASSWORD_FILE is the password of "
                "SAFEREPLAY_PROJECTIONS_POSTGRES_DSN, which is not set (the event store's "
                "database takes SAFEREPLAY_POSTGRES_PASSWORD_FILE)"
            )
        if self.max_poll_interval < self.poll_interval:
            raise ValueError(
                "SAFEREPLAY_PROJECTIONS_MAX_POLL_INTERVAL must be >= "
                "SAFEREPLAY_PROJECTIONS_POLL_INTERVAL"
            )
        if self.retry_max < self.retry_initial:
            raise ValueError(
                "SAFEREPLAY_PROJECTIONS_RETRY_MAX must be >= SAFEREPLAY_PROJECTIONS_RETRY_INITIAL"
            )
        return self

    @classmethod
    def from_env(cls, **overrides: Any) -> ProjectionSettings:
        """Read the environment (plus ``overrides``); errors become ConfigurationError."""
        try:
            return cls(**overrides)
        except ValidationError as exc:
            raise settings_error(exc, prefix=ENV_PREFIX, known=variable_names(cls)) from None

    # -- where the store is -------------------------------------------------------------

    def sqlite_store_path(self, domain: DomainSettings) -> Path:
        if domain.backend != "sqlite":
            raise ConfigurationError("the event store is not SQLite")
        if self.postgres_dsn is not None or self.postgres_schema is not None:
            raise ConfigurationError(
                "SAFEREPLAY_PROJECTIONS_POSTGRES_* is set but the event store is SQLite: the "
                "projection store is a database of the same kind (set "
                "SAFEREPLAY_PROJECTIONS_SQLITE_PATH instead)"
            )
        return self.sqlite_path if self.sqlite_path is not None else domain.sqlite_path

    def watermark_options(self) -> dict[str, float]:
        """Options of :class:`~safereplay.projections.postgres_watermark.PostgresHighWaterMark`."""
        return {"hole_wait": self.hole_wait, "hole_proof_refresh": self.hole_proof_refresh}

    def postgres_store(self, domain: DomainSettings) -> tuple[str, str]:
        """``(conninfo, schema)`` of the projection store.

        The conninfo holds the password, if any (from the DSN or a password file),
        and the TLS parameters of ``domain`` (``SAFEREPLAY_POSTGRES_SSL*``);
        it is a :class:`~safereplay.domain.secret.Conninfo`, whose ``repr`` hides it.
        """
        if domain.backend != "postgres":
            raise ConfigurationError("the event store is not PostgreSQL")
        if self.sqlite_path is not None:
            raise ConfigurationError(
                "SAFEREPLAY_PROJECTIONS_SQLITE_PATH is set but the event store is PostgreSQL: "
                "the projection store is a database of the same kind (set "
                "SAFEREPLAY_PROJECTIONS_POSTGRES_DSN instead)"
            )
        dsn = self.postgres_dsn if self.postgres_dsn is not None else domain.postgres_dsn
        assert dsn is not None  # DomainSettings requires it for backend postgres
        schema = self.postgres_schema or domain.postgres_schema
        # The TLS settings (SAFEREPLAY_POSTGRES_SSL*) reach a store of its own too.
        return Conninfo(domain.postgres_tls().apply(dsn.get_secret_value())), schema

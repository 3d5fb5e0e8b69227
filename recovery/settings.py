"""Settings of the recovery layer, read from ``SAFEREPLAY_*`` environment variables.

Recovery stores (jobs, parked events, access control, audit trail) live in the
projection store's database. The audit MAC key and the caller's API token are
kept out of that database on purpose: the key in a file or the environment, the
token in the environment or a file — never on a command line, where ``ps``
would show it.

This is also where every layer's settings meet: :func:`check_environment`
refuses a ``SAFEREPLAY_*`` variable that none of them reads (a misspelling would
otherwise leave its setting at the default without a word). The domain and
projection layers cannot make that check themselves, as they do not know the
names of the layers above them.

Why this module is long: each recovery settings class (recovery, serve, alerts,
replay SLOs) is a short declaration, but :func:`check_environment` and
:data:`SETTINGS_CLASSES` must see every one of them, and their ``from_env``
calls ``check_environment`` first; kept in one module, the classes and the check
that knows them all cannot import each other in a circle.
"""

from __future__ import annotations

import json
import os
import re
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from safereplay.domain.limits import EdgeLimits
from safereplay.domain.secret import file_problem, read_owner_only
from safereplay.domain.settings import (
    DomainSettings,
    check_variables,
    settings_error,
    variable_names,
)
from safereplay.projections.settings import ProjectionSettings
from safereplay.reactions.settings import is_webhook_variable
from safereplay.recovery.errors import AuthenticationFailed

__all__ = [
    "DEFAULT_APPROVAL_REQUIRED",
    "SETTINGS_CLASSES",
    "AlertSettings",
    "RecoverySettings",
    "ServeSettings",
    "SLOSettings",
    "SLOTargetSet",
    "SLOTargets",
    "check_environment",
    "setting_names",
]


#: The operations that need a second person unless ``SAFEREPLAY_APPROVAL_REQUIRED``
#: says otherwise: those that change a live build, what reactions send, templates,
#: the key ring, and who is an admin.
DEFAULT_APPROVAL_REQUIRED = (
    "swap,rollback,replay:into=live,reactions.redeliver:force,templates.add,"
    "templates.update,keys.retire,grant:role=admin"
)
_RULE = r"[a-z][a-z0-9._-]*(:[a-z_][a-z0-9_]*(=[A-Za-z0-9_.:*-]+)?)?"
_APPROVAL_RULES = rf"^\s*({_RULE}(\s*,\s*{_RULE})*)?\s*$"
_TTL_DURATION = r"^\s*([0-9]+(\.[0-9]+)?)\s*[smhd]?\s*$"
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


_Settings = TypeVar("_Settings", bound=BaseSettings)


def _read(cls: type[_Settings], overrides: Mapping[str, Any], *, checked: bool) -> _Settings:
    """``cls`` from the environment (plus ``overrides``), after :func:`check_environment`
    when ``checked`` (a misspelt SAFEREPLAY_ variable refused first); a bad value
    becomes a ConfigurationError naming the variable."""
    if checked:
        check_environment()
    try:
        return cls(**overrides)
    except ValidationError as exc:
        prefix = str(cls.model_config.get("env_prefix", ""))
        raise settings_error(exc, prefix=prefix, known=variable_names(cls)) from None


class RecoverySettings(BaseSettings):
    """See ``docs/configuration.md`` (section "Recovery")."""

    model_config = SettingsConfigDict(
        env_prefix="SAFEREPLAY_", extra="forbid", frozen=True, hide_input_in_errors=True
    )

    audit_key_file: Path | None = Field(
        default=None, description="File holding the audit trail's HMAC key (base64, mode 0600)."
    )
    audit_key: SecretStr | None = Field(
        default=None, description="The audit trail's HMAC key (base64), instead of a file."
    )
    audit_anchor_dir: Path | None = Field(
        default=None,
        description=(
            "Directory outside the events database where signed digests of the audit "
            "trail's head are written (one file per digest, mode 0600); `audit verify` "
            "checks the trail against the latest one."
        ),
    )
    audit_anchor_interval_seconds: float = Field(
        default=3600.0,
        gt=0,
        description=(
            "A digest is anchored after an operation once the latest anchor is older "
            "than this (with SAFEREPLAY_AUDIT_ANCHOR_DIR set)."
        ),
    )
    token: SecretStr | None = Field(
        default=None, description="The caller's API token (sr_ID.SECRET)."
    )
    token_file: Path | None = Field(
        default=None, description="File holding the caller's API token."
    )
    partitions: int = Field(default=4, ge=1, le=256, description="Default partition count.")
    lease_seconds: float = Field(
        default=30.0, gt=0, description="How long a worker's claim on a partition lasts."
    )
    worker_host: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,39}$",
        description=(
            "The host identity this process names itself by: in the leases it takes "
            "(`HOST:PID:RANDOM`, shown by `jobs`) and, on PostgreSQL, in the "
            "`application_name` of its connections (`safereplay-HOST-...`). Default: the "
            "machine's hostname in leases, connections named `safereplay-...`."
        ),
    )
    catch_up_wait: float = Field(
        default=5.0,
        ge=0,
        le=3600,
        description=(
            "How long catch-up waits for the high-water mark to pass events held back above "
            "a position in doubt before it plans to the safe head (and exits 1)."
        ),
    )
    projections: str = Field(
        default="safereplay.projections.reference:REFERENCE_PROJECTIONS",
        min_length=1,
        description=(
            "The projections recovery knows, as comma-separated `module:attribute` entries "
            "(a Projection class or a sequence of them)."
        ),
    )
    reactions: str = Field(
        default="safereplay.reactions.reference:REFERENCE_REACTIONS",
        min_length=1,
        description=(
            "The reactions recovery knows, as comma-separated `module:attribute` entries "
            "(a Reaction instance or a sequence of them)."
        ),
    )
    reaction_attempts: int = Field(
        default=5,
        ge=1,
        le=100,
        description=(
            "Attempts of one delivery before `safereplay react` parks it (retry, then park)."
        ),
    )
    reaction_backoff_initial: float = Field(
        default=0.5, ge=0, description="Seconds before a delivery's first retry (doubling)."
    )
    reaction_backoff_max: float = Field(
        default=30.0, ge=0, description="Longest wait between two attempts of a delivery."
    )
    reaction_breaker_failures: int = Field(
        default=5,
        ge=1,
        description="Failures in a row that open a destination's circuit breaker.",
    )
    reaction_breaker_cool_down: float = Field(
        default=10.0,
        ge=0,
        description="Seconds an open breaker waits before it lets one probe call through.",
    )
    reaction_retry_budget_ratio: float = Field(
        default=0.2,
        ge=0,
        le=10,
        description=(
            "Retries to one destination at most this share of the calls made to it in the "
            "last 10 s (plus a floor): a recovering receiver is not flooded with retries."
        ),
    )
    reaction_retry_budget_floor: float = Field(
        default=1.0,
        ge=0,
        description="Retries per second always allowed to one destination, whatever the ratio.",
    )
    reaction_rate: float | None = Field(
        default=None,
        gt=0,
        description="Calls per second to each destination at most (unset: no cap).",
    )
    reaction_poll_seconds: float = Field(
        default=1.0,
        gt=0,
        le=3600,
        description="How often `safereplay react` looks for new events when idle.",
    )

    auth_failures_audited: int = Field(
        default=20,
        ge=1,
        le=100_000,
        description=(
            "Failed sign-ins audited one by one per claimed principal and reason in each "
            "window; further ones are counted into one aggregated entry."
        ),
    )
    auth_failure_window_seconds: float = Field(
        default=300.0,
        gt=0,
        le=86_400,
        description="The window (seconds) that SAFEREPLAY_AUTH_FAILURES_AUDITED counts in.",
    )

    on_integrity_failure: Literal["pause", "park", "fail"] = Field(
        default="pause",
        description=(
            "What a job does with a stored event that fails authentication or decryption, "
            "names a key not in the ring or cannot be decoded: `pause` (stop there and record "
            "a conflict), `park` (park it, go on) or `fail` (fail the partition)."
        ),
    )

    recovery_require_drill: str = Field(
        default="",
        pattern=r"^\s*(\*|[a-z0-9_]+(\s*,\s*[a-z0-9_]+)*)?\s*$",
        description=(
            "Projections (comma-separated, or `*` for all) whose swap needs a matching drill "
            "of the build first."
        ),
    )

    step_max_events: int = Field(
        default=200,
        ge=1,
        le=10_000,
        description=(
            "The most events `safereplay step` applies one at a time (and shows) in one call."
        ),
    )

    approval_required: str = Field(
        default=DEFAULT_APPROVAL_REQUIRED,
        pattern=_APPROVAL_RULES,
        description=(
            "Operations that need a second person's approval (four-eyes), as comma-separated "
            "rules `operation` or `operation:parameter` (the parameter is set) or "
            "`operation:parameter=value`; empty: none."
        ),
    )
    approval_ttl: str = Field(
        default="24h",
        pattern=_TTL_DURATION,
        description=(
            "How long a change request waits for its approval before it expires: seconds, "
            "or a number followed by s, m, h or d."
        ),
    )

    def approval_rules(self) -> tuple[tuple[str, str | None, str | None], ...]:
        """``SAFEREPLAY_APPROVAL_REQUIRED`` as (operation, parameter, value) rules: no
        parameter, every call; a parameter without a value, a call where it is set."""
        rules: list[tuple[str, str | None, str | None]] = []
        for text in self.approval_required.split(","):
            rule = text.strip()
            if not rule:
                continue
            operation, _, condition = rule.partition(":")
            if not condition:
                rules.append((operation, None, None))
                continue
            name, equals, value = condition.partition("=")
            rules.append((operation, name, value if equals else None))
        return tuple(rules)

    def approval_ttl_seconds(self) -> float:
        """``SAFEREPLAY_APPROVAL_TTL`` in seconds."""
        text = self.approval_ttl.strip().lower()
        unit = text[-1] if text and text[-1] in _UNITS else "s"
        number = text[:-1] if text and text[-1] in _UNITS else text
        return float(number) * _UNITS[unit]

    def drill_required(self, projection: str) -> bool:
        """Must a swap of ``projection`` be preceded by a matching drill?"""
        names = {n.strip() for n in self.recovery_require_drill.split(",") if n.strip()}
        return "*" in names or projection in names

    @model_validator(mode="after")
    def _one_source_each(self) -> RecoverySettings:
        if self.audit_key_file is not None and self.audit_key is not None:
            raise ValueError("set only one of SAFEREPLAY_AUDIT_KEY_FILE and SAFEREPLAY_AUDIT_KEY")
        if self.token is not None and self.token_file is not None:
            raise ValueError("set only one of SAFEREPLAY_TOKEN and SAFEREPLAY_TOKEN_FILE")
        return self

    @classmethod
    def from_env(cls, **overrides: object) -> RecoverySettings:
        """Read the environment (plus ``overrides``) after :func:`check_environment`."""
        return _read(cls, overrides, checked=True)

    def load_token(self) -> str:
        if self.token is not None:
            return self.token.get_secret_value()
        if self.token_file is not None:
            # A token is a credential like the key files: refused, not used, when others
            # may read it.
            text = read_owner_only(
                self.token_file,
                what="token file",
                error=lambda message: AuthenticationFailed(message, failure="token-file"),
            )
            return text.strip()
        raise AuthenticationFailed(
            "no API token: set SAFEREPLAY_TOKEN or SAFEREPLAY_TOKEN_FILE (never pass a token "
            "as a command-line argument)",
            failure="no-token",
        )


class ServeSettings(BaseSettings):
    """``safereplay serve``'s transport: TLS, and plaintext beyond this machine.

    Read by ``safereplay serve`` only (see ``docs/configuration.md``, section
    "Serve"); a problem names the variable, never a file's content.
    """

    model_config = SettingsConfigDict(
        env_prefix="SAFEREPLAY_SERVE_", extra="forbid", frozen=True, hide_input_in_errors=True
    )

    tls_cert_file: Path | None = Field(
        default=None,
        description="Certificate (PEM, the chain after it) that `safereplay serve` offers.",
    )
    tls_key_file: Path | None = Field(
        default=None, description="The certificate's private key (PEM, mode 0600)."
    )
    allow_plaintext_remote: bool = Field(
        default=False,
        description=(
            "Let `serve --allow-remote` listen beyond loopback without TLS (as "
            "--allow-plaintext-remote does); logged as a warning."
        ),
    )

    @model_validator(mode="after")
    def _tls_files(self) -> ServeSettings:
        cert, key = self.tls_cert_file, self.tls_key_file
        if (cert is None) != (key is None):
            raise ValueError(
                "SAFEREPLAY_SERVE_TLS_CERT_FILE and SAFEREPLAY_SERVE_TLS_KEY_FILE go "
                "together: set both (a certificate and its key) or neither"
            )
        if cert is None or key is None:
            return self
        problems = [
            f"{name} {problem}"
            for name, path, owner_only in (
                ("SAFEREPLAY_SERVE_TLS_CERT_FILE", cert, False),
                ("SAFEREPLAY_SERVE_TLS_KEY_FILE", key, True),
            )
            if (problem := file_problem(path, owner_only=owner_only)) is not None
        ]
        if problems:
            raise ValueError("; ".join(problems))
        try:
            # password: an encrypted key fails here rather than prompting on a terminal.
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
                cert, key, password=lambda: b""
            )
        except (ssl.SSLError, OSError) as exc:
            # The reason (e.g. KEY_VALUES_MISMATCH) is OpenSSL's, never the key's bytes.
            reason = getattr(exc, "reason", None) or type(exc).__name__
            raise ValueError(
                "SAFEREPLAY_SERVE_TLS_CERT_FILE and SAFEREPLAY_SERVE_TLS_KEY_FILE cannot be "
                f"used together ({reason}): a PEM certificate and the private key it was "
                "made for are needed (a key with a passphrase is not supported)"
            ) from None
        return self

    @property
    def tls(self) -> bool:
        """Does ``serve`` speak HTTPS?"""
        return self.tls_cert_file is not None

    @classmethod
    def from_env(cls, **overrides: object) -> ServeSettings:
        """Read the environment (plus ``overrides``); errors become ConfigurationError."""
        return _read(cls, overrides, checked=False)


class AlertSettings(BaseSettings):
    """Thresholds of the stall and anomaly rules: see ``docs/alerts.md`` (each rule,
    why it matters, and its settings). ``SAFEREPLAY_ALERT_*`` variables."""

    model_config = SettingsConfigDict(
        env_prefix="SAFEREPLAY_ALERT_", extra="forbid", frozen=True, hide_input_in_errors=True
    )

    stalled_after_seconds: float = Field(
        default=300.0,
        gt=0,
        le=604_800,
        description=(
            "A worker or follower that heartbeats but has not advanced for this long "
            "while it has a backlog is stalled."
        ),
    )
    parked_spike_factor: float = Field(
        default=5.0, gt=1, description="Parked events in the window above this times the usual."
    )
    parked_spike_window_seconds: float = Field(
        default=300.0, gt=0, le=86_400, description="The window parked events are counted in."
    )
    parked_spike_minimum: int = Field(
        default=10, ge=1, description="Fewer parked events than this in the window never alert."
    )
    retry_spike_factor: float = Field(
        default=5.0, gt=1, description="Retries in the window above this times the usual."
    )
    retry_spike_window_seconds: float = Field(
        default=300.0, gt=0, le=86_400, description="The window retries are counted in."
    )
    retry_spike_minimum: int = Field(
        default=50, ge=1, description="Fewer retries than this in the window never alert."
    )
    spike_baseline_windows: int = Field(
        default=6,
        ge=1,
        le=288,
        description="The usual rate of a spike rule: the windows before the current one.",
    )
    repeated_rebuilds_count: int = Field(
        default=3, ge=2, description="This many rebuilds of one projection in the window alert."
    )
    repeated_rebuilds_window_seconds: float = Field(
        default=86_400.0, gt=0, le=2_592_000, description="The window rebuilds are counted in."
    )
    replay_volume_factor: float = Field(
        default=2.0,
        gt=1,
        description="A job that applied more than this times the events it was planned for.",
    )
    lag_growing_window_seconds: float = Field(
        default=300.0,
        gt=0,
        le=86_400,
        description="A projection's lag grew over this window while the log's head stood still.",
    )

    @classmethod
    def from_env(cls) -> AlertSettings:
        """Read the environment after :func:`check_environment`."""
        return _read(cls, {}, checked=True)


class SLOTargetSet(BaseModel):
    """One projection's (or reaction's) replay SLO targets; every field optional.

    ``lag_seconds``: how long the oldest event it has not applied (or recorded) may
    wait; ``lag_events``: how many positions it may be behind the log's head;
    ``undelivered_age_seconds`` (reactions): the age of the oldest delivery still
    owed; ``rebuild_seconds`` (projections): how long a rebuild may run;
    ``objective``: the share of samples that must meet each target (default:
    ``SAFEREPLAY_SLO_OBJECTIVE``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    lag_seconds: float | None = Field(default=None, gt=0)
    lag_events: int | None = Field(default=None, ge=0)
    undelivered_age_seconds: float | None = Field(default=None, gt=0)
    rebuild_seconds: float | None = Field(default=None, gt=0)
    objective: float | None = Field(default=None, gt=0, lt=1)


class SLOTargets(BaseModel):
    """``SAFEREPLAY_SLO_TARGETS``: targets by projection and by reaction name (``*``:
    every one without targets of its own)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    projections: dict[str, SLOTargetSet] = Field(default_factory=dict)
    reactions: dict[str, SLOTargetSet] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _fitting_targets(self) -> SLOTargets:
        for name, spec in self.projections.items():
            if spec.undelivered_age_seconds is not None:
                raise ValueError(
                    f"projections.{name}.undelivered_age_seconds: only reactions have "
                    "undelivered deliveries"
                )
        for name, spec in self.reactions.items():
            if spec.rebuild_seconds is not None:
                raise ValueError(f"reactions.{name}.rebuild_seconds: only projections are rebuilt")
        return self


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNIT_SECONDS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3_600.0, "d": 86_400.0, "w": 604_800.0}


def _targets_of(raw: Any) -> SLOTargets:
    if isinstance(raw, SLOTargets):
        return raw
    if isinstance(raw, str):
        try:
            raw = json.loads(raw) if raw.strip() else {}
        except json.JSONDecodeError as exc:
            raise ValueError(f"not JSON ({exc.msg} at character {exc.pos})") from None
    try:
        return SLOTargets.model_validate(raw)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(p) for p in e['loc']) or 'targets'}: {e['msg']}"
            for e in exc.errors(include_input=False, include_url=False)
        ]
        raise ValueError("; ".join(problems)) from None


class SLOSettings(BaseSettings):
    """Replay SLOs: targets, the error budget's window and objective, how often they
    are sampled; see ``docs/slo.md``. ``SAFEREPLAY_SLO_*`` variables."""

    model_config = SettingsConfigDict(
        env_prefix="SAFEREPLAY_SLO_", extra="forbid", frozen=True, hide_input_in_errors=True
    )

    targets: Annotated[SLOTargets, NoDecode] = Field(
        default_factory=SLOTargets,
        description='JSON: {"projections": {NAME or "*": {...}}, "reactions": {...}}.',
    )
    window: Annotated[float, NoDecode] = Field(
        default=7 * 86_400.0,
        description="The error budget's window: seconds, or a number with s, m, h, d or w.",
    )
    objective: float = Field(
        default=0.99, gt=0, lt=1, description="The share of samples that must meet a target."
    )
    sample_seconds: float = Field(
        default=60.0, ge=1, le=3_600, description="How often each target is sampled."
    )

    @field_validator("targets", mode="before")
    @classmethod
    def _parse_targets(cls, raw: Any) -> SLOTargets:
        return _targets_of(raw)

    @field_validator("window", mode="before")
    @classmethod
    def _parse_window(cls, raw: Any) -> float:
        if isinstance(raw, (int, float)):
            seconds = float(raw)
        else:
            match = _DURATION.match(str(raw))
            if match is None:
                raise ValueError("a duration such as 7d, 12h, 90m or 3600 (seconds)")
            seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        if not 3_600 <= seconds <= 366 * 86_400:
            raise ValueError("between 1h and 366d")
        return seconds

    @classmethod
    def from_env(cls) -> SLOSettings:
        """Read the environment after :func:`check_environment`."""
        return _read(cls, {}, checked=True)


#: Every settings class of safereplay: the variables they read are all the settings.
SETTINGS_CLASSES: tuple[type[BaseSettings], ...] = (
    DomainSettings,
    EdgeLimits,
    ProjectionSettings,
    RecoverySettings,
    AlertSettings,
    ServeSettings,
    SLOSettings,
)


def setting_names() -> frozenset[str]:
    """Every ``SAFEREPLAY_*`` variable safereplay reads as a setting (upper case)."""
    return frozenset().union(*(variable_names(c) for c in SETTINGS_CLASSES))


def check_environment(environ: Mapping[str, str] | None = None) -> None:
    """Refuse any ``SAFEREPLAY_*`` variable that is not a setting (default: ``os.environ``).

    Raises one :class:`~safereplay.domain.errors.ConfigurationError` naming each
    unknown variable and the closest setting, e.g. ``unknown setting
    SAFEREPLAY_POSTGRES_DNS: did you mean SAFEREPLAY_POSTGRES_DSN?``. Every
    ``safereplay`` command runs it first; so does :meth:`RecoverySettings.from_env`.
    ``SAFEREPLAY_TEST_*`` and ``SAFEREPLAY_BENCH_*`` are reserved for the test
    suite and the benchmarks and are not checked.
    """
    environ = os.environ if environ is None else environ
    # A webhook destination's variables are named after it (SAFEREPLAY_WEBHOOK_<DEST>_URL
    # and the like): known by their shape, a misspelt suffix is still refused.
    check_variables(
        setting_names(), {k: v for k, v in environ.items() if not is_webhook_variable(k)}
    )

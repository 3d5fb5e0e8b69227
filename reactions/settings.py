"""Webhook destinations configured from the environment, one set of variables each.

For a destination named ``DEST`` (upper-cased, ``.`` and ``-`` written ``_``: the
destination ``crm.eu-1`` reads ``SAFEREPLAY_WEBHOOK_CRM_EU_1_*``)::

    SAFEREPLAY_WEBHOOK_<DEST>_URL          where to POST (http or https), required
    SAFEREPLAY_WEBHOOK_<DEST>_SECRET_FILE  the HMAC secret, in an owner-only file (preferred)
    SAFEREPLAY_WEBHOOK_<DEST>_SECRET       the HMAC secret itself (one of the two, required)
    SAFEREPLAY_WEBHOOK_<DEST>_TIMEOUT      seconds per connect, read and write [10]
    SAFEREPLAY_WEBHOOK_<DEST>_VERIFY_TLS   verify the server's certificate [true]
    SAFEREPLAY_WEBHOOK_<DEST>_CONCURRENCY  calls in flight to it [4]

:func:`webhook_settings` reads and checks them (pydantic); :func:`webhook_destination`
builds the :class:`~safereplay.reactions.webhook.WebhookDestination`. A missing or
invalid variable raises :class:`~safereplay.domain.errors.ConfigurationError`
naming it, never its value (a URL may carry a token, a secret is a secret).
:func:`is_webhook_variable` tells the environment check (which refuses unknown
``SAFEREPLAY_*`` names) which names these are.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from safereplay.domain.errors import ConfigurationError
from safereplay.reactions.reaction import check_destination_name
from safereplay.reactions.webhook import WebhookDestination, WebhookSecret

__all__ = [
    "WEBHOOK_PREFIX",
    "WEBHOOK_SUFFIXES",
    "WebhookSettings",
    "is_webhook_variable",
    "webhook_destination",
    "webhook_prefix",
    "webhook_settings",
]

WEBHOOK_PREFIX = "SAFEREPLAY_WEBHOOK_"
#: The variables of one destination, after its prefix, and the field each fills.
WEBHOOK_SUFFIXES = {
    "URL": "url",
    "SECRET_FILE": "secret_file",
    "SECRET": "secret",
    "TIMEOUT": "timeout",
    "VERIFY_TLS": "verify_tls",
    "CONCURRENCY": "concurrency",
}
_VARIABLE = re.compile(
    r"^SAFEREPLAY_WEBHOOK_[A-Z][A-Z0-9_]*_(" + "|".join(WEBHOOK_SUFFIXES) + r")$"
)


def webhook_prefix(destination: str) -> str:
    """``SAFEREPLAY_WEBHOOK_<DEST>_`` for ``destination``."""
    name = check_destination_name(destination)
    return WEBHOOK_PREFIX + re.sub(r"[.-]", "_", name).upper() + "_"


def is_webhook_variable(name: str) -> bool:
    """Is ``name`` one of some destination's webhook variables (any case)?"""
    return bool(_VARIABLE.match(name.upper()))


class WebhookSettings(BaseModel):
    """One destination's webhook: see the module's docstring for the variables."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    url: SecretStr = Field(description="Where to POST (http or https); may carry a token.")
    secret_file: Path | None = Field(default=None, description="Owner-only file with the secret.")
    secret: SecretStr | None = Field(default=None, description="The secret itself.")
    timeout: float = Field(default=10.0, gt=0, le=600, description="Seconds per connect/read.")
    verify_tls: bool = Field(default=True, description="Verify the server's TLS certificate.")
    concurrency: int = Field(default=4, ge=1, le=256, description="Calls in flight to it.")

    def load_secret(self) -> WebhookSecret:
        if self.secret_file is not None:
            return WebhookSecret.from_file(self.secret_file)
        assert self.secret is not None  # checked when read
        return WebhookSecret(self.secret.get_secret_value().encode("utf-8"))


def webhook_settings(destination: str, environ: Mapping[str, str] | None = None) -> WebhookSettings:
    """``destination``'s webhook settings from ``environ`` (default: ``os.environ``)."""
    environ = os.environ if environ is None else environ
    prefix = webhook_prefix(destination)
    upper = {name.upper(): value for name, value in environ.items()}
    values = {
        field: upper[prefix + suffix]
        for suffix, field in WEBHOOK_SUFFIXES.items()
        if prefix + suffix in upper
    }
    if "url" not in values:
        raise ConfigurationError(
            f"destination {destination!r} has no webhook URL: set {prefix}URL "
            f"(and {prefix}SECRET_FILE or {prefix}SECRET)"
        )
    if ("secret" in values) == ("secret_file" in values):
        raise ConfigurationError(
            f"destination {destination!r} needs exactly one of {prefix}SECRET_FILE "
            f"(preferred: an owner-only file) and {prefix}SECRET"
        )
    try:
        return WebhookSettings.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{prefix}{_suffix(str(error['loc'][0]))}: {error['msg']}" for error in exc.errors()
        )
        raise ConfigurationError(f"destination {destination!r}: {problems}") from None


def _suffix(field: str) -> str:
    return next((s for s, f in WEBHOOK_SUFFIXES.items() if f == field), field.upper())


def webhook_destination(
    destination: str, environ: Mapping[str, str] | None = None
) -> WebhookDestination:
    """The webhook destination ``destination``'s variables configure (see the module)."""
    settings = webhook_settings(destination, environ)
    return WebhookDestination(
        destination,
        settings.url.get_secret_value(),
        secret=settings.load_secret(),
        timeout=settings.timeout,
        verify=settings.verify_tls,
    )

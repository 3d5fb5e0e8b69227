"""Encryption in transit to PostgreSQL: the one place that computes the TLS options.

``SAFEREPLAY_POSTGRES_SSLMODE``, ``..._SSLROOTCERT``, ``..._SSLCERT`` and
``..._SSLKEY`` (see :class:`~safereplay.domain.settings.DomainSettings`) become a
:class:`PostgresTLS`, and every connection safereplay opens takes its parameters:

- the connection strings: ``DomainSettings.postgres_conninfo()`` is the DSN with
  them, which every direct connection and pool opened on the event store's
  database uses (the event source and its high-water mark, the reactions' ledger,
  store checks); ``ProjectionSettings.postgres_store`` adds them to the projection
  store's DSN (its own, ``SAFEREPLAY_PROJECTIONS_POSTGRES_DSN``, or the event
  store's), which the projection store, the recovery database (jobs, audit,
  access) and drills open; worker processes read the same settings;
- eventsourcing's recorder: its pool is built from single parameters (host,
  port, user, dbname), not from the DSN, so
  :meth:`~safereplay.domain.application.EventStoreApplication.construct_factory`
  adds :meth:`PostgresTLS.parameters` to the pool's connection arguments before
  the pool opens.

The mode is always passed, explicitly (``prefer``, libpq's own default, unless
set): libpq's ``PGSSLMODE`` and friends in the process environment are never
what decides. Only file names and the mode are handled here, never a file's
content: nothing here is a secret, but the client key file must still be
readable by its owner only (libpq refuses it otherwise, with a message that is
less clear than ours).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from safereplay.domain.errors import ConfigurationError
from safereplay.domain.secret import file_problem, hide_passwords

__all__ = [
    "SSLMODES",
    "TLS_PARAMETERS",
    "PostgresTLS",
    "SSLMode",
    "check_tls_connection",
]

SSLMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]
#: libpq's modes, weakest first.
SSLMODES: tuple[SSLMode, ...] = (
    "disable",
    "allow",
    "prefer",
    "require",
    "verify-ca",
    "verify-full",
)
#: The libpq parameters this module owns (a DSN may not set them itself).
TLS_PARAMETERS = frozenset({"sslmode", "sslrootcert", "sslcert", "sslkey"})


@dataclass(frozen=True, kw_only=True)
class PostgresTLS:
    """libpq's TLS parameters for every PostgreSQL connection.

    ``sslmode`` (default ``prefer``) is one of :data:`SSLMODES`; the files are
    optional: ``sslrootcert`` the CA certificate(s) to verify the server with
    (``verify-ca``, ``verify-full``), ``sslcert`` / ``sslkey`` a client
    certificate and its key (both or neither).
    """

    sslmode: SSLMode = "prefer"
    sslrootcert: Path | None = None
    sslcert: Path | None = None
    sslkey: Path | None = None

    def parameters(self) -> dict[str, str]:
        """The libpq parameters to connect with (``sslmode`` always, files when set)."""
        params: dict[str, str] = {"sslmode": self.sslmode}
        for name in ("sslrootcert", "sslcert", "sslkey"):
            value = getattr(self, name)
            if value is not None:
                params[name] = str(value)
        return params

    def apply(self, conninfo: str) -> str:
        """``conninfo`` with these parameters (they replace any it holds)."""
        return make_conninfo(conninfo, **self.parameters())

    def problems(self) -> list[str]:
        """What is wrong with the files, each naming its setting (never content)."""
        problems = []
        for name in ("sslrootcert", "sslcert", "sslkey"):
            path = getattr(self, name)
            if path is not None:
                problem = file_problem(path, owner_only=name == "sslkey")
                if problem:
                    problems.append(f"SAFEREPLAY_POSTGRES_{name.upper()} {problem}")
        if (self.sslcert is None) != (self.sslkey is None):
            problems.append(
                "SAFEREPLAY_POSTGRES_SSLCERT and SAFEREPLAY_POSTGRES_SSLKEY go together: "
                "set both (a client certificate and its key) or neither"
            )
        return problems


#: Modes under which a server without TLS (or with a certificate not trusted) is refused.
_REQUIRED = frozenset({"require", "verify-ca", "verify-full"})


def check_tls_connection(conninfo: str, *, what: str, connect_timeout: int = 10) -> None:
    """Connect once now if ``conninfo`` requires TLS, so a server that cannot offer it
    fails loudly, at once, with libpq's reason, the mode and the server named.

    Connection pools (eventsourcing's, the recovery database's) connect in
    background threads and would only report "couldn't get a connection after N
    sec" when a request gives up. Without a required mode this does nothing.
    """
    params = conninfo_to_dict(conninfo)
    mode = str(params.get("sslmode", "prefer"))
    if mode not in _REQUIRED:
        return
    timeout = int(str(params.get("connect_timeout", connect_timeout)))
    try:
        psycopg.connect(conninfo, connect_timeout=timeout).close()
    except psycopg.Error as exc:
        host = params.get("host", "localhost")
        port = params.get("port", "5432")
        reason = hide_passwords(" ".join(str(exc).split()) or type(exc).__name__)
        if "password" in reason.lower():
            reason = "authentication or connection parameters rejected"
        raise ConfigurationError(
            f"cannot connect to {what} at {host}:{port} with sslmode={mode} "
            f"(SAFEREPLAY_POSTGRES_SSLMODE): {reason}"
            + (
                ""
                if mode == "require"
                else "; the server's certificate is checked against SAFEREPLAY_POSTGRES_SSLROOTCERT"
            )
        ) from None

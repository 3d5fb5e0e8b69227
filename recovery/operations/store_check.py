"""Before a command opens any store: is it there, and can it be reached?

Without this check a mistyped SQLite path silently became a new, empty store
(whose first error blamed the token), a directory or a missing folder ended in
``sqlite3.OperationalError``, and a PostgreSQL server that refused the
connection, or a database that does not exist, left the connection pools
retrying for 30 s before ``PoolTimeout`` — without the cause. Here one direct
connection is tried first, within the DSN's ``connect_timeout``, and every
failure becomes one :class:`~safereplay.recovery.errors.StoreUnavailable`
that names the path or server and the real cause (never a password).

Only ``safereplay init``, ``migrate`` and ``principals bootstrap`` may create a
SQLite store; every other command refuses a file that is not there, so that a
read (``status``, ``jobs``, ``audit verify``) creates nothing.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict

from safereplay.domain import DomainSettings
from safereplay.projections import ProjectionSettings
from safereplay.recovery.errors import StoreUnavailable

__all__ = ["DEFAULT_CONNECT_TIMEOUT", "check_postgres", "check_sqlite_path", "check_store"]

#: Seconds to wait for a PostgreSQL connection when the DSN gives no connect_timeout.
DEFAULT_CONNECT_TIMEOUT = 5


def check_store(
    domain: DomainSettings, projections: ProjectionSettings, *, create: bool = False
) -> None:
    """Refuse, with the cause, a store that cannot be opened (``create``: may be new)."""
    if domain.backend == "sqlite":
        paths = {domain.sqlite_path, projections.sqlite_store_path(domain)}
        for path in sorted(paths):
            variable = (
                "SAFEREPLAY_SQLITE_PATH"
                if path == domain.sqlite_path
                else "SAFEREPLAY_PROJECTIONS_SQLITE_PATH"
            )
            check_sqlite_path(path, create=create, variable=variable)
        return
    assert domain.postgres_dsn is not None  # DomainSettings requires it for postgres
    conninfos = {str(domain.postgres_conninfo())}
    conninfos.add(str(projections.postgres_store(domain)[0]))
    for conninfo in sorted(conninfos):
        check_postgres(conninfo)


def check_sqlite_path(
    path: Path, *, create: bool, variable: str = "SAFEREPLAY_SQLITE_PATH"
) -> None:
    where = f"{variable}={str(path)!r}"
    if path.is_dir():
        raise StoreUnavailable(f"{where} is a directory, not a SQLite file: give the file's path")
    parent = path.parent
    if not parent.exists():
        raise StoreUnavailable(
            f"{where}: the directory {str(parent)!r} does not exist; correct the path, or "
            "create the store there with `safereplay init`"
        )
    if not parent.is_dir():
        raise StoreUnavailable(f"{where}: {str(parent)!r} is not a directory; correct the path")
    if not path.exists():
        if create:
            if not os.access(parent, os.W_OK | os.X_OK):
                raise StoreUnavailable(
                    f"{where}: cannot create a file in {str(parent)!r} (permission denied)"
                )
            return
        raise StoreUnavailable(
            f"no store at {str(path)!r} ({variable}); run `safereplay init` to create one, "
            "or correct the path"
        )
    if not os.access(path, os.R_OK | os.W_OK):
        raise StoreUnavailable(f"{where}: cannot read and write the file (permission denied)")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            conn.execute("PRAGMA schema_version").fetchone()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise StoreUnavailable(f"{where}: cannot open it as a SQLite database: {exc}") from None


def _describe(params: dict[str, str]) -> str:
    host = params.get("host") or os.environ.get("PGHOST") or "the default host"
    port = params.get("port") or os.environ.get("PGPORT") or "5432"
    dbname = params.get("dbname") or os.environ.get("PGDATABASE") or "(default)"
    user = params.get("user") or os.environ.get("PGUSER") or "(default)"
    return f"PostgreSQL at {host}:{port}, database {dbname!r}, user {user!r}"


def check_postgres(conninfo: str) -> None:
    """One direct connection within the connect timeout; its error, translated."""
    params = {k: str(v) for k, v in conninfo_to_dict(conninfo).items()}
    timeout = int(params.get("connect_timeout") or DEFAULT_CONNECT_TIMEOUT)
    password = params.get("password")
    try:
        with psycopg.connect(conninfo, connect_timeout=timeout, autocommit=True) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        cause = " ".join(str(exc).split())
        if password:
            cause = cause.replace(password, "***")
        mode = params.get("sslmode", "prefer")
        check = (
            f"sslmode={mode} (SAFEREPLAY_POSTGRES_SSLMODE) needs a server that offers TLS"
            if mode in {"require", "verify-ca", "verify-full"} and "ssl" in cause.lower()
            else "check SAFEREPLAY_POSTGRES_DSN, and that the server is running and reachable"
        )
        raise StoreUnavailable(
            f"cannot connect to {_describe(params)}: {cause} ({check})"
        ) from None

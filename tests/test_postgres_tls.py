"""Encryption in transit to PostgreSQL: ``SAFEREPLAY_POSTGRES_SSL*`` reach every
connection safereplay opens, and a required TLS that the server cannot offer fails
loudly, at once, naming the mode and the server.

- the settings are validated: a bad mode, a missing or unreadable file, a client key
  others can read, a certificate without its key, TLS parameters in the DSN;
- every opener (eventsourcing's pool, the recovery database's pool, the projection
  store, the event source and its high-water mark, the reactions' ledger, the store
  check) connects with the settings' mode, proven with libpq's ``PGSSLMODE=require``
  in the environment (which this server refuses) and ``SAFEREPLAY_POSTGRES_SSLMODE``
  set to ``disable``: any connection that left the mode to the environment fails;
- the package's source opens connections in the files listed here only, so an
  opener added later must be looked at (and given the TLS options);
- ``sslmode=require`` against this server (``SHOW ssl`` is off) fails from the
  library and from the CLI (exit 2) with libpq's reason, the mode and the server.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict
from typer.testing import CliRunner

from safereplay.domain import ConfigurationError, DomainSettings
from safereplay.domain.application import EventStoreApplication
from safereplay.projections.backends import open_source, open_store
from safereplay.projections.settings import ProjectionSettings
from safereplay.reactions.backends import open_ledger
from safereplay.recovery.cli.app import app as cli
from safereplay.recovery.database import PostgresDatabase
from safereplay.recovery.operations.store_check import check_store
from safereplay.recovery.security.audit import AuditKey

PACKAGE = Path(__file__).resolve().parent.parent
#: Every file of the package that opens PostgreSQL connections itself, and where its
#: connection string (with the TLS parameters) comes from. A new opener fails
#: test_every_opener_is_known until it is listed here (after a look at its source).
#: eventsourcing's pool is opened inside eventsourcing: EventStoreApplication adds the
#: parameters to its connection arguments (test_every_connection_... proves it).
OPENERS = {
    "domain/postgres_tls.py": "check_tls_connection: the conninfo it is given",
    "recovery/database.py": "ProjectionSettings.postgres_store (TLS applied)",
    "projections/postgres_connection.py": "ProjectionSettings.postgres_store or postgres_conninfo",
    "projections/postgres_source.py": "DomainSettings.postgres_conninfo()",
    "projections/postgres_watermark.py": "the event source's conninfo",
    "recovery/operations/store_check.py": "postgres_conninfo() and postgres_store",
    "recovery/drills/sandbox.py": "ProjectionSettings.postgres_store (TLS applied)",
    "recovery/drills/views.py": "ProjectionSettings.postgres_store (TLS applied)",
}
_OPENS = re.compile(r"psycopg\.connect\(|ConnectionPool\(|\.connect\(self\._conninfo")


def test_every_opener_is_known() -> None:
    found = set()
    for folder in ("domain", "projections", "reactions", "recovery"):
        for path in (PACKAGE / folder).rglob("*.py"):
            if _OPENS.search(path.read_text(encoding="utf-8")):
                found.add(str(path.relative_to(PACKAGE)))
    assert found - set(OPENERS) == set(), "new PostgreSQL openers: give them the TLS options"
    assert set(OPENERS) - found == set(), "listed openers that open nothing any more"


# -- settings -------------------------------------------------------------------------


def _pg(postgres_dsn: str, **overrides: Any) -> DomainSettings:
    return DomainSettings.from_env(
        backend="postgres", postgres_dsn=postgres_dsn, encryption=False, **overrides
    )


def test_the_mode_is_always_passed_explicitly(
    clean_safereplay_environment: None, postgres_dsn: str
) -> None:
    settings = _pg(postgres_dsn)
    assert settings.postgres_tls().parameters() == {"sslmode": "prefer"}
    assert conninfo_to_dict(settings.postgres_conninfo())["sslmode"] == "prefer"
    own = ProjectionSettings.from_env(postgres_dsn=postgres_dsn)
    assert conninfo_to_dict(own.postgres_store(settings)[0])["sslmode"] == "prefer"
    # The DSN itself is left as it was given.
    assert settings.postgres_dsn is not None
    assert settings.postgres_dsn.get_secret_value() == postgres_dsn


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"postgres_sslmode": "required"}, "SAFEREPLAY_POSTGRES_SSLMODE"),
        (
            {"postgres_sslrootcert": "missing.pem"},
            "SAFEREPLAY_POSTGRES_SSLROOTCERT 'missing.pem' does not exist",
        ),
        (
            {"postgres_sslcert": "client.pem"},
            "SAFEREPLAY_POSTGRES_SSLCERT and SAFEREPLAY_POSTGRES_SSLKEY go together",
        ),
        ({"postgres_sslrootcert": "."}, "is not a file"),
    ],
)
def test_bad_tls_settings_name_the_setting(
    clean_safereplay_environment: None,
    postgres_dsn: str,
    overrides: dict[str, str],
    expected: str,
) -> None:
    Path("client.pem").write_text("not read here")
    with pytest.raises(ConfigurationError, match=re.escape(expected)):
        _pg(postgres_dsn, **overrides)


def test_a_client_key_others_can_read_is_refused(
    clean_safereplay_environment: None, postgres_dsn: str
) -> None:
    Path("client.pem").write_text("certificate")
    key = Path("client.key")
    key.write_text("PRIVATE KEY MATERIAL")
    key.chmod(0o640)
    with pytest.raises(ConfigurationError) as caught:
        _pg(postgres_dsn, postgres_sslcert="client.pem", postgres_sslkey="client.key")
    said = str(caught.value)
    assert "SAFEREPLAY_POSTGRES_SSLKEY 'client.key' is readable by group or others" in said
    assert "chmod 600" in said and "PRIVATE" not in said
    key.chmod(0o600)
    settings = _pg(postgres_dsn, postgres_sslcert="client.pem", postgres_sslkey="client.key")
    assert settings.postgres_tls().parameters()["sslkey"] == "client.key"


def test_tls_parameters_in_the_dsn_are_refused(
    clean_safereplay_environment: None, postgres_dsn: str
) -> None:
    with pytest.raises(ConfigurationError, match="set SAFEREPLAY_POSTGRES_SSLMODE instead"):
        _pg(postgres_dsn + "?sslmode=require")


# -- every opener ---------------------------------------------------------------------


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The sslmode of every connection opened (in any thread), with libpq told by the
    environment to require TLS, which this server refuses: a connection that does
    not pass its mode explicitly fails."""
    monkeypatch.setenv("PGSSLMODE", "require")
    modes: list[str] = []
    original = psycopg.Connection.connect.__func__  # type: ignore[attr-defined]

    def connect(cls: type[psycopg.Connection[Any]], *args: Any, **kwargs: Any) -> Any:
        conn = original(cls, *args, **kwargs)
        modes.append(str(conninfo_to_dict(conn.info.dsn).get("sslmode", "?")))
        return conn

    monkeypatch.setattr(psycopg.Connection, "connect", classmethod(connect))
    return modes


def test_every_connection_takes_the_mode_of_the_settings(
    postgres_settings: Any, tmp_path: Path, connections: list[str]
) -> None:
    domain = postgres_settings(postgres_sslmode="disable")
    projections = ProjectionSettings.from_env()
    conninfo, schema = projections.postgres_store(domain)
    assert conninfo_to_dict(conninfo)["sslmode"] == "disable"

    check_store(domain, projections)
    app = EventStoreApplication(settings=domain)
    try:
        assert app.head_position() == 0
    finally:
        app.close()
    database = PostgresDatabase(conninfo, schema=schema)
    try:
        with database.transaction(write=False) as tx:
            assert tx.rows("SELECT 1 AS one") == [{"one": 1}]
    finally:
        database.close()
    store = open_store(domain, projections)
    source = open_source(domain, settings=projections, listen=False)
    ledger = open_ledger(domain)
    try:
        assert store.projection_names() == []
        assert source.head() == 0
        assert source.high_water_mark() == 0
        assert ledger.position("nothing") == 0
    finally:
        ledger.close()
        store.close()
        source.close()
    # check_store (2 DSNs, one here), the event store's pool, the recovery database's
    # pool, the projection store, the event source, the ledger: at least these.
    assert len(connections) >= 6, connections
    assert set(connections) == {"disable"}, connections


# -- a required TLS the server cannot offer -------------------------------------------


def _server_has_no_tls(postgres_dsn: str) -> None:
    with psycopg.connect(postgres_dsn) as conn:
        row = conn.execute("SHOW ssl").fetchone()
    assert row is not None and row[0] == "off", "these tests need a server without TLS"


def test_require_against_a_server_without_tls_fails_at_once_from_the_library(
    postgres_settings: Any, postgres_dsn: str
) -> None:
    _server_has_no_tls(postgres_dsn)
    domain = postgres_settings(postgres_sslmode="require")
    started = time.monotonic()
    with pytest.raises(ConfigurationError) as caught:
        EventStoreApplication(settings=domain)
    said = str(caught.value)
    assert "the event store at 127.0.0.1:5432 with sslmode=require" in said
    assert "server does not support SSL" in said
    conninfo, schema = ProjectionSettings.from_env().postgres_store(domain)
    with pytest.raises(
        ConfigurationError, match="the recovery database at 127.0.0.1:5432 with sslmode=require"
    ):
        PostgresDatabase(conninfo, schema=schema)
    # Not the pools' 30 s wait: one refused handshake each.
    assert time.monotonic() - started < 20


def test_require_against_a_server_without_tls_fails_from_the_cli(
    postgres_dsn: str, key_file: Path, tmp_path: Path, pg_schema: str
) -> None:
    _server_has_no_tls(postgres_dsn)
    audit_key = tmp_path / "audit.key"
    AuditKey.generate().save(audit_key)
    env = {
        "SAFEREPLAY_BACKEND": "postgres",
        "SAFEREPLAY_POSTGRES_DSN": postgres_dsn,
        "SAFEREPLAY_POSTGRES_SCHEMA": pg_schema,
        "SAFEREPLAY_POSTGRES_SSLMODE": "require",
        "SAFEREPLAY_KEY_FILE": str(key_file),
        "SAFEREPLAY_AUDIT_KEY_FILE": str(audit_key),
        "SAFEREPLAY_TOKEN": "sr_x.y",
    }
    for command in (["status"], ["jobs"]):
        started = time.monotonic()
        result = CliRunner().invoke(cli, command, env=env)
        said = " ".join(result.output.split())
        assert result.exit_code == 2, said
        assert "127.0.0.1:5432" in said and "sslmode=require" in said, said
        assert "SAFEREPLAY_POSTGRES_SSLMODE" in said and "does not support SSL" in said, said
        assert "Traceback" not in said and "PoolTimeout" not in said
        assert time.monotonic() - started < 20
    assert os.environ.get("SAFEREPLAY_POSTGRES_SSLMODE") is None

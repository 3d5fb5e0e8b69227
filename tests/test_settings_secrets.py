"""No PostgreSQL password in clear in anything that can be printed, logged, audited
or shown in an error; a password can come from a file (mode 0600) or from libpq's
own password file (PGPASSFILE).

The server trusts every local connection, so a wrong password would not be
noticed: the tests prove a password is *used* by what psycopg sent with it
(``conn.info.password``), on connections of a throwaway role made for the test.
"""

from __future__ import annotations

import logging
import os
import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from recovery_fixtures import bootstrap_args, bootstrapped_token
from typer.testing import CliRunner

from safereplay.domain import AutomationApp, ConfigurationError, DomainSettings
from safereplay.domain.secret import HIDDEN, Conninfo, Password, hide_passwords
from safereplay.projections import ProjectionSettings
from safereplay.recovery.cli.app import app as cli
from safereplay.recovery.database import PostgresDatabase, SQLiteDatabase
from safereplay.recovery.security.audit import AuditKey, AuditRecord, AuditTrail
from safereplay.recovery.settings import RecoverySettings, check_environment

PASSWORD = "pw-Hk27-never-printed"
DSN_WITH_PASSWORD = f"postgresql://app:{PASSWORD}@db.internal:6543/events"
DSN_WITHOUT_PASSWORD = "postgresql://app@db.internal:6543/events"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No SAFEREPLAY_* or libpq password variable from the outside world; a scratch cwd."""
    for name in list(os.environ):
        if name.startswith("SAFEREPLAY_") and name != "SAFEREPLAY_TEST_POSTGRES_DSN":
            monkeypatch.delenv(name)
    for name in ("PGPASSWORD", "PGPASSFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


def password_file(path: Path, password: str = PASSWORD, *, mode: int = 0o600) -> Path:
    path.write_text(password + "\n", encoding="utf-8")
    path.chmod(mode)
    return path


def shown(*objects: object) -> str:
    """Everything a print, a log line or an error report would show of ``objects``."""
    return "\n".join(f"{obj!s}\n{obj!r}" for obj in objects)


# -- a password from a file ----------------------------------------------------------------------


def test_the_password_can_come_from_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAFEREPLAY_BACKEND", "postgres")
    monkeypatch.setenv("SAFEREPLAY_POSTGRES_DSN", DSN_WITHOUT_PASSWORD)
    monkeypatch.setenv(
        "SAFEREPLAY_POSTGRES_PASSWORD_FILE", str(password_file(tmp_path / "pg.password"))
    )
    monkeypatch.setenv("SAFEREPLAY_ENCRYPTION", "false")
    check_environment()

    settings = DomainSettings.from_env()

    assert settings.postgres_password() == PASSWORD
    assert settings.postgres_dsn is not None
    params = conninfo_to_dict(settings.postgres_dsn.get_secret_value())
    assert (params["host"], params["port"], params["user"], params["dbname"]) == (
        "db.internal",
        "6543",
        "app",
        "events",
    )
    assert params["password"] == PASSWORD
    assert PASSWORD not in shown(settings) + repr(settings.postgres_password())


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_a_password_file_that_others_can_read_is_refused(tmp_path: Path, mode: int) -> None:
    path = password_file(tmp_path / "pg.password", mode=mode)

    with pytest.raises(ConfigurationError) as caught:
        DomainSettings.from_env(
            backend="postgres",
            postgres_dsn=DSN_WITHOUT_PASSWORD,
            postgres_password_file=path,
            encryption=False,
        )

    message = str(caught.value)
    assert "SAFEREPLAY_POSTGRES_PASSWORD_FILE" in message
    assert f"(mode {mode:o}); run: chmod 600 {path}" in message
    assert PASSWORD not in message


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "does not exist"),
        ("", "is empty"),
        ("\n", "is empty"),
        (f"{PASSWORD}\nsecond line\n", "holds more than one line"),
        (f"127.0.0.1:5432:test:app:{PASSWORD}\n*:*:*:*:{PASSWORD}\n", "PGPASSFILE"),
    ],
    ids=["missing", "empty", "blank", "two-lines", "pgpass-format"],
)
def test_an_unusable_password_file_is_named_without_its_content(
    tmp_path: Path, content: str | None, problem: str
) -> None:
    path = tmp_path / "pg.password"
    if content is not None:
        path.write_text(content, encoding="utf-8")
        path.chmod(0o600)

    with pytest.raises(ConfigurationError) as caught:
        DomainSettings.from_env(
            backend="postgres",
            postgres_dsn=DSN_WITHOUT_PASSWORD,
            postgres_password_file=path,
            encryption=False,
        )

    assert "SAFEREPLAY_POSTGRES_PASSWORD_FILE" in str(caught.value)
    assert problem in str(caught.value)
    assert PASSWORD not in str(caught.value)


def test_a_password_in_both_the_dsn_and_a_file_is_refused(tmp_path: Path) -> None:
    path = password_file(tmp_path / "pg.password", "another-password")

    with pytest.raises(ConfigurationError) as caught:
        DomainSettings.from_env(
            backend="postgres",
            postgres_dsn=DSN_WITH_PASSWORD,
            postgres_password_file=path,
            encryption=False,
        )

    assert "keep only one" in str(caught.value)
    assert PASSWORD not in str(caught.value) and "another-password" not in str(caught.value)


def test_the_projection_store_can_take_its_own_password_file(tmp_path: Path) -> None:
    domain = DomainSettings.from_env(
        backend="postgres", postgres_dsn="postgresql://ev@h/events", encryption=False
    )
    views = ProjectionSettings.from_env(
        postgres_dsn="postgresql://views@h2/views",
        postgres_password_file=password_file(tmp_path / "views.password"),
    )

    conninfo, _ = views.postgres_store(domain)

    assert conninfo_to_dict(conninfo)["password"] == PASSWORD
    assert isinstance(conninfo, Conninfo)
    assert PASSWORD not in shown(views) + repr(conninfo) + repr((conninfo, "schema"))
    with pytest.raises(ConfigurationError, match="SAFEREPLAY_PROJECTIONS_POSTGRES_DSN"):
        ProjectionSettings.from_env(postgres_password_file=tmp_path / "views.password")
    (tmp_path / "views.password").chmod(0o644)
    with pytest.raises(ConfigurationError, match="chmod 600"):
        ProjectionSettings.from_env(
            postgres_dsn="postgresql://views@h2/views",
            postgres_password_file=tmp_path / "views.password",
        )


# -- nothing shows it ----------------------------------------------------------------------------


def test_no_settings_object_shows_the_password(tmp_path: Path) -> None:
    from_dsn = DomainSettings.from_env(
        backend="postgres", postgres_dsn=DSN_WITH_PASSWORD, encryption=False
    )
    from_file = DomainSettings.from_env(
        backend="postgres",
        postgres_dsn=DSN_WITHOUT_PASSWORD,
        postgres_password_file=password_file(tmp_path / "pg.password"),
        encryption=False,
    )
    projections = ProjectionSettings.from_env(postgres_dsn=DSN_WITH_PASSWORD)
    recovery = RecoverySettings.from_env(token=f"sr_0123.{PASSWORD}", audit_key=PASSWORD)

    for settings in (from_dsn, from_file):
        assert settings.postgres_password() == PASSWORD
        assert PASSWORD not in shown(
            settings,
            settings.model_dump(),
            settings.model_dump_json(),
            settings.eventsourcing_env(),
        )
        # str() of these is the password or the DSN itself, for libpq; their repr is not.
        assert PASSWORD not in repr(
            (
                settings.postgres_password(),
                ProjectionSettings().postgres_store(settings),
                projections.postgres_store(settings),
            )
        )
    assert PASSWORD not in shown(projections, projections.model_dump_json(), recovery)


def test_the_eventsourcing_environment_never_holds_the_password() -> None:
    settings = DomainSettings.from_env(
        backend="postgres", postgres_dsn=DSN_WITH_PASSWORD, encryption=False
    )

    env = settings.eventsourcing_env()

    assert env["POSTGRES_PASSWORD"] == ""
    assert PASSWORD not in shown(env) and PASSWORD not in "".join(env.values())


@pytest.mark.parametrize(
    ("text", "hidden"),
    [
        (DSN_WITH_PASSWORD, f"postgresql://app:{HIDDEN}@db.internal:6543/events"),
        (f"postgres://a:{PASSWORD}@h", f"postgres://a:{HIDDEN}@h"),
        (f"host=h password={PASSWORD} user=app", f"host=h password={HIDDEN} user=app"),
        (f"host=h password = '{PASSWORD} x' dbname=d", f"host=h password = {HIDDEN} dbname=d"),
        (
            f"postgresql://h/d?user=a&password={PASSWORD}&sslmode=require",
            f"postgresql://h/d?user=a&password={HIDDEN}&sslmode=require",
        ),
        (
            f"failed to open 'postgresql://u:{PASSWORD}@h/d'",
            f"failed to open 'postgresql://u:{HIDDEN}@h/d'",
        ),
        ("postgresql://app@db.internal/events", "postgresql://app@db.internal/events"),
        ("host=h user=app", "host=h user=app"),
    ],
)
def test_error_text_quoting_a_connection_string_hides_its_password(text: str, hidden: str) -> None:
    assert hide_passwords(text) == hidden
    assert repr(Conninfo(text)) == repr(hidden)
    assert repr(Password(PASSWORD)) == repr(HIDDEN) and str(Password(PASSWORD)) == PASSWORD


def test_an_audit_entry_never_holds_a_password(tmp_path: Path) -> None:
    trail = AuditTrail(SQLiteDatabase(tmp_path / "audit.db"), AuditKey.generate())
    trail.create_tables()
    settings = DomainSettings.from_env(
        backend="postgres", postgres_dsn=DSN_WITH_PASSWORD, encryption=False
    )

    entry = trail.append(
        AuditRecord(
            actor="alice",
            action="rebuild",
            scope="projection:run_status",
            reason=f"moving to {DSN_WITH_PASSWORD}",
            outcome="succeeded",
            parameters={
                "target": DSN_WITH_PASSWORD,
                "conninfo_text": f"host=db.internal password={PASSWORD}",
                "settings": settings,
                "nested": {"stores": [DSN_WITH_PASSWORD, Conninfo(DSN_WITH_PASSWORD)]},
                "password": PASSWORD,
            },
        )
    )

    stored = trail.entries()
    assert PASSWORD not in shown(entry, stored)
    assert stored[0].parameters["target"] == f"postgresql://app:{HIDDEN}@db.internal:6543/events"
    assert trail.verify().ok


# -- with a real role and password ---------------------------------------------------------------


@dataclass(frozen=True)
class Role:
    name: str
    password: str = field(repr=False)
    #: The test server's DSN as this role, without a password.
    dsn: str = ""

    @property
    def schema(self) -> str:
        return self.name


@pytest.fixture
def role(postgres_dsn: str) -> Iterator[Role]:
    """A LOGIN role with a password and a schema of its own, dropped afterwards."""
    name = f"sr_pw_{uuid.uuid4().hex[:12]}"
    password = f"pw-{secrets.token_hex(12)}"
    params = conninfo_to_dict(postgres_dsn)
    params.pop("password", None)
    params.pop("passfile", None)
    params["user"] = name
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(name), sql.Literal(password)
            )
        )
        conn.execute(
            sql.SQL("CREATE SCHEMA {} AUTHORIZATION {}").format(
                sql.Identifier(name), sql.Identifier(name)
            )
        )
    try:
        yield Role(name, password, make_conninfo("", **params))
    finally:
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                (name,),
            )
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def sent(settings: DomainSettings) -> dict[str, tuple[str, str | None]]:
    """The user and password that each of safereplay's PostgreSQL connections sent."""
    sent: dict[str, tuple[str, str | None]] = {}
    app = AutomationApp(settings)
    try:
        with app.factory.datastore.pool.connection() as conn:  # type: ignore[attr-defined]
            sent["event store"] = (conn.info.user, conn.info.password)
    finally:
        app.close()
    conninfo, schema = ProjectionSettings.from_env().postgres_store(settings)
    with psycopg.connect(conninfo) as conn:
        sent["projection store"] = (conn.info.user, conn.info.password)
    database = PostgresDatabase(conninfo, schema=schema)
    try:
        with database._pool.connection() as conn:
            sent["recovery database"] = (conn.info.user, conn.info.password)
    finally:
        database.close()
    return sent


STORES = ("event store", "projection store", "recovery database")


@pytest.mark.postgres
def test_the_password_file_is_what_every_connection_sends(
    role: Role, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = DomainSettings.from_env(
        backend="postgres",
        postgres_dsn=role.dsn,
        postgres_password_file=password_file(tmp_path / "pg.password", role.password),
        postgres_schema=role.schema,
        encryption=False,
    )

    assert sent(settings) == dict.fromkeys(STORES, (role.name, role.password))
    assert role.password not in "\n".join(f"{r.getMessage()} {r.args!r}" for r in caplog.records)


@pytest.mark.postgres
def test_the_running_application_shows_no_password(
    role: Role, key_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = DomainSettings.from_env(
        backend="postgres",
        postgres_dsn=make_conninfo(role.dsn, password=role.password),
        postgres_schema=role.schema,
        key_file=key_file,
    )
    app = AutomationApp(settings)
    conninfo, schema = ProjectionSettings.from_env().postgres_store(settings)
    database = PostgresDatabase(conninfo, schema=schema)
    try:
        app.submit({"type": "CreateWorkflow", "name": "w", "owner": "o", "trigger": {}}, source="t")
        pool = app.factory.datastore.pool  # type: ignore[attr-defined]
        with pool.connection() as conn:
            assert conn.info.password == role.password  # it is used...
        with database.transaction(write=False) as tx:
            assert tx.rows("SELECT 1 AS one") == [{"one": 1}]

        # ...and shown nowhere.
        everything = shown(
            app.env,
            dict(app.env),
            app.factory.env,
            app.mapper,
            app.recorder,
            app.factory,
            app.settings,
            pool.kwargs,
            pool.conninfo,
            database._pool.kwargs,
            database._pool.conninfo,
            vars(database),
        )
        assert role.password not in everything
        assert role.password not in "\n".join(
            f"{r.getMessage()} {r.args!r}" for r in caplog.records
        )
    finally:
        database.close()
        app.close()


@pytest.mark.postgres
def test_libpqs_own_password_file_is_used(
    role: Role, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pgpass = tmp_path / "pgpass"
    pgpass.write_text(f"*:*:*:{role.name}:{role.password}\n", encoding="utf-8")
    pgpass.chmod(0o600)
    monkeypatch.setenv("PGPASSFILE", str(pgpass))
    check_environment()
    settings = DomainSettings.from_env(
        backend="postgres", postgres_dsn=role.dsn, postgres_schema=role.schema, encryption=False
    )
    assert settings.postgres_password() is None

    assert sent(settings) == dict.fromkeys(STORES, (role.name, role.password))


def test_a_failed_connection_shows_no_password(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Port 1 refuses at once; connect_timeout keeps the pool from retrying for long."""
    caplog.set_level(logging.DEBUG)
    settings = DomainSettings.from_env(
        backend="postgres",
        postgres_dsn="postgresql://app@127.0.0.1:1/events?connect_timeout=1",
        postgres_password_file=password_file(tmp_path / "pg.password"),
        encryption=False,
    )

    with pytest.raises(ConfigurationError) as caught:
        AutomationApp(settings)

    assert "cannot open the postgres event store" in str(caught.value)
    assert PASSWORD not in shown(caught.value, caught.value.__cause__)
    assert PASSWORD not in "\n".join(f"{r.getMessage()} {r.args!r}" for r in caplog.records)


# -- through the command line --------------------------------------------------------------------


def cli_env(tmp_path: Path, key_file: Path, **variables: str) -> dict[str, str]:
    audit_key = tmp_path / "audit.key"
    if not audit_key.exists():
        AuditKey.generate().save(audit_key)
    return {
        "SAFEREPLAY_BACKEND": "postgres",
        "SAFEREPLAY_KEY_FILE": str(key_file),
        "SAFEREPLAY_AUDIT_KEY_FILE": str(audit_key),
        **variables,
    }


def test_the_cli_refuses_a_readable_password_file_with_exit_code_2(
    tmp_path: Path, key_file: Path
) -> None:
    path = password_file(tmp_path / "pg.password", mode=0o644)
    env = cli_env(
        tmp_path,
        key_file,
        SAFEREPLAY_POSTGRES_DSN="postgresql://app@127.0.0.1:1/events",
        SAFEREPLAY_POSTGRES_PASSWORD_FILE=str(path),
    )

    result = CliRunner().invoke(cli, ["principals", "bootstrap", "root"], env=env)

    assert result.exit_code == 2, result.output
    assert "SAFEREPLAY_POSTGRES_PASSWORD_FILE" in result.output
    assert "chmod 600" in result.output
    assert PASSWORD not in result.output


@pytest.mark.postgres
def test_the_cli_connects_with_the_password_file(
    role: Role, tmp_path: Path, key_file: Path
) -> None:
    env = cli_env(
        tmp_path,
        key_file,
        SAFEREPLAY_POSTGRES_DSN=role.dsn,
        SAFEREPLAY_POSTGRES_PASSWORD_FILE=str(
            password_file(tmp_path / "pg.password", role.password)
        ),
        SAFEREPLAY_POSTGRES_SCHEMA=role.schema,
    )

    result = CliRunner().invoke(cli, bootstrap_args("root"), env=env)

    assert result.exit_code == 0, result.output
    token = bootstrapped_token(result.output)
    result = CliRunner().invoke(
        cli, ["audit", "list", "--json"], env={**env, "SAFEREPLAY_TOKEN": token}
    )
    assert result.exit_code == 0, result.output
    assert role.password not in result.output


@pytest.mark.postgres
def test_the_stores_sources_and_drill_readers_show_no_password(role: Role, key_file: Path) -> None:
    from safereplay.projections import PostgresEventSource, PostgresProjectionStore, open_source
    from safereplay.recovery.drills.sandbox import PostgresSandbox
    from safereplay.recovery.drills.views import PostgresStoreReader

    dsn = make_conninfo(role.dsn, password=role.password)
    settings = DomainSettings.from_env(
        backend="postgres", postgres_dsn=dsn, postgres_schema=role.schema, key_file=key_file
    )
    app = AutomationApp(settings)
    store = PostgresProjectionStore(dsn, schema=role.schema)
    source = open_source(app)
    assert isinstance(source, PostgresEventSource)
    try:
        assert source.head() == 0  # connected, with the password
        objects: list[object] = [
            store,
            source,
            PostgresStoreReader(dsn, schema=role.schema),
            PostgresSandbox(dsn, store_schema=role.schema),
        ]
        # What an error reporter capturing local variables would show: every attribute.
        everything = shown(*objects, *(vars(o) for o in objects))
        everything += shown(
            *(vars(v) for o in objects for v in vars(o).values() if hasattr(v, "__dict__"))
        )
        assert role.password not in everything
    finally:
        source.close()
        store.close()
        app.close()

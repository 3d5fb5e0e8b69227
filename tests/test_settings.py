"""Settings: read from SAFEREPLAY_* variables, refused at start-up when inconsistent
(naming the variable to change), mapped onto eventsourcing's environment, and
never showing a password or a key."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from safereplay.domain import (
    AutomationApp,
    ConfigurationError,
    DomainSettings,
    InvalidKey,
    KeyRing,
)

PASSWORD = "pw-Zq81-very-secret"
DSN_WITH_PASSWORD = f"postgresql://app:{PASSWORD}@db.internal:6543/events"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No SAFEREPLAY_* variable from the outside world, and a scratch working directory."""
    for name in list(os.environ):
        if name.startswith("SAFEREPLAY_") and name != "SAFEREPLAY_TEST_POSTGRES_DSN":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def encoded_keys(ring: KeyRing) -> str:
    return ",".join(f"{k}={base64.b64encode(v).decode()}" for k, v in ring.keys.items())


def key_texts(ring: KeyRing) -> list[str]:
    return [base64.b64encode(v).decode().rstrip("=") for v in ring.keys.values()]


# -- reading the environment ---------------------------------------------------------------


def test_defaults_need_only_a_key_ring() -> None:
    settings = DomainSettings.from_env(keys=encoded_keys(KeyRing.generate()))

    assert settings.backend == "sqlite"
    assert settings.sqlite_path == Path("safereplay.db")
    assert settings.postgres_schema == "public"
    assert settings.application_name == "safereplay"
    assert settings.encryption is True
    assert settings.pool_size == 5


def test_every_setting_is_read_from_its_safereplay_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ring = KeyRing.generate("k1").with_key("k2")
    monkeypatch.setenv("SAFEREPLAY_BACKEND", "postgres")
    monkeypatch.setenv("SAFEREPLAY_POSTGRES_DSN", DSN_WITH_PASSWORD)
    monkeypatch.setenv("SAFEREPLAY_POSTGRES_SCHEMA", "tenant_7")
    monkeypatch.setenv("SAFEREPLAY_APPLICATION_NAME", "billing")
    monkeypatch.setenv("SAFEREPLAY_SQLITE_PATH", "/var/lib/safereplay/other.db")
    monkeypatch.setenv("SAFEREPLAY_ENCRYPTION", "true")
    monkeypatch.setenv("SAFEREPLAY_KEYS", encoded_keys(ring))
    monkeypatch.setenv("SAFEREPLAY_ACTIVE_KEY_ID", "k1")
    monkeypatch.setenv("SAFEREPLAY_POOL_SIZE", "12")

    settings = DomainSettings.from_env()

    assert settings.backend == "postgres"
    assert settings.postgres_dsn is not None
    assert settings.postgres_dsn.get_secret_value() == DSN_WITH_PASSWORD
    assert settings.postgres_schema == "tenant_7"
    assert settings.application_name == "billing"
    assert settings.sqlite_path == Path("/var/lib/safereplay/other.db")
    assert settings.pool_size == 12
    assert settings.load_key_ring() == ring.activate("k1")


def test_the_key_file_is_read_from_safereplay_key_file(
    monkeypatch: pytest.MonkeyPatch, key_file: Path, key_ring: KeyRing
) -> None:
    monkeypatch.setenv("SAFEREPLAY_KEY_FILE", str(key_file))

    assert DomainSettings.from_env().load_key_ring() == key_ring


def test_without_an_active_key_id_the_last_listed_key_is_active(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ring = KeyRing.generate("old").with_key("new")
    monkeypatch.setenv("SAFEREPLAY_KEYS", encoded_keys(ring))

    loaded = DomainSettings.from_env().load_key_ring()

    assert loaded is not None and loaded.active_key_id == "new"


def test_explicit_overrides_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAFEREPLAY_ENCRYPTION", "false")
    monkeypatch.setenv("SAFEREPLAY_POOL_SIZE", "9")

    settings = DomainSettings.from_env(pool_size=3)

    assert settings.pool_size == 3 and settings.encryption is False


def test_encryption_off_needs_no_key_ring_and_yields_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAFEREPLAY_ENCRYPTION", "false")

    assert DomainSettings.from_env().load_key_ring() is None


def test_settings_are_frozen() -> None:
    settings = DomainSettings.from_env(encryption=False)

    with pytest.raises(ValueError, match="frozen"):
        settings.pool_size = 7  # type: ignore[misc]


# -- misconfiguration fails at start-up, naming the variable -----------------------------------

MISCONFIGURATIONS = [
    pytest.param(
        {"SAFEREPLAY_BACKEND": "postgres", "SAFEREPLAY_ENCRYPTION": "false"},
        ["SAFEREPLAY_POSTGRES_DSN"],
        id="postgres without DSN",
    ),
    pytest.param(
        {},
        ["SAFEREPLAY_KEY_FILE", "SAFEREPLAY_KEYS", "SAFEREPLAY_ENCRYPTION=false"],
        id="encryption without keys",
    ),
    pytest.param(
        {"SAFEREPLAY_KEY_FILE": "keyring.json", "SAFEREPLAY_KEYS": "k1=AAAA"},
        ["both SAFEREPLAY_KEY_FILE and SAFEREPLAY_KEYS are set"],
        id="key file and keys",
    ),
    pytest.param(
        {"SAFEREPLAY_POSTGRES_SCHEMA": "Events; DROP TABLE x", "SAFEREPLAY_ENCRYPTION": "false"},
        ["SAFEREPLAY_POSTGRES_SCHEMA must be a lower-case SQL identifier"],
        id="bad schema name",
    ),
    pytest.param(
        {"SAFEREPLAY_BACKEND": "mysql", "SAFEREPLAY_ENCRYPTION": "false"},
        ["SAFEREPLAY_BACKEND: Input should be 'sqlite' or 'postgres'"],
        id="bad backend",
    ),
    pytest.param(
        {"SAFEREPLAY_ENCRYPTION": "sometimes"},
        ["SAFEREPLAY_ENCRYPTION: Input should be a valid boolean"],
        id="bad boolean",
    ),
    pytest.param(
        {"SAFEREPLAY_POOL_SIZE": "0", "SAFEREPLAY_ENCRYPTION": "false"},
        ["SAFEREPLAY_POOL_SIZE: Input should be greater than or equal to 1"],
        id="pool size zero",
    ),
    pytest.param(
        {"SAFEREPLAY_APPLICATION_NAME": "Billing-App", "SAFEREPLAY_ENCRYPTION": "false"},
        ["SAFEREPLAY_APPLICATION_NAME must be lower-case letters"],
        id="bad application name",
    ),
    pytest.param(
        {
            "SAFEREPLAY_BACKEND": "postgres",
            "SAFEREPLAY_POSTGRES_DSN": (
                f"postgresql://app:{PASSWORD}@db:5432/events?target_session_attrs=any"
            ),
            "SAFEREPLAY_ENCRYPTION": "false",
        },
        [
            "SAFEREPLAY_POSTGRES_DSN has parameters the event store cannot pass on: "
            "target_session_attrs"
        ],
        id="DSN parameter that would be dropped",
    ),
    pytest.param(
        {
            "SAFEREPLAY_BACKEND": "postgres",
            "SAFEREPLAY_POSTGRES_DSN": f"postgresql://app:{PASSWORD}@db:5432/events?sslmode=require",
            "SAFEREPLAY_ENCRYPTION": "false",
        },
        ["SAFEREPLAY_POSTGRES_DSN sets sslmode: set SAFEREPLAY_POSTGRES_SSLMODE instead"],
        id="TLS in the DSN instead of its setting",
    ),
    pytest.param(
        {
            "SAFEREPLAY_BACKEND": "postgres",
            "SAFEREPLAY_POSTGRES_DSN": f"postgresql://app:{PASSWORD}@[db:5432",
            "SAFEREPLAY_ENCRYPTION": "false",
        },
        ["SAFEREPLAY_POSTGRES_DSN is not a valid connection string"],
        id="unparsable DSN",
    ),
]


@pytest.mark.parametrize(("environment", "expected"), MISCONFIGURATIONS)
def test_misconfiguration_fails_at_start_up_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], expected: list[str]
) -> None:
    for name, value in environment.items():
        monkeypatch.setenv(name, value)

    with pytest.raises(ConfigurationError) as caught:
        AutomationApp()

    message = str(caught.value)
    assert message.startswith("invalid configuration: ")
    for text in expected:
        assert text in message
    assert PASSWORD not in message
    assert not Path("safereplay.db").exists(), "nothing was created"


def test_every_wrong_variable_is_named_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAFEREPLAY_BACKEND", "oracle")
    monkeypatch.setenv("SAFEREPLAY_POOL_SIZE", "many")
    monkeypatch.setenv("SAFEREPLAY_ENCRYPTION", "perhaps")

    with pytest.raises(ConfigurationError) as caught:
        DomainSettings.from_env()

    for name in ("SAFEREPLAY_BACKEND", "SAFEREPLAY_POOL_SIZE", "SAFEREPLAY_ENCRYPTION"):
        assert f"{name}: " in str(caught.value)


def test_a_bad_key_in_safereplay_keys_fails_at_start_up_without_echoing_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    short_key = base64.b64encode(os.urandom(24)).decode()
    monkeypatch.setenv("SAFEREPLAY_KEYS", f"k1={short_key}")

    with pytest.raises(InvalidKey, match="'k1' is 24 bytes; AES-256-GCM needs 32") as caught:
        AutomationApp()

    assert short_key not in str(caught.value)


def test_an_unreachable_database_fails_at_start_up_without_the_password() -> None:
    """Port 1 refuses at once; connect_timeout keeps the pool from retrying for long."""
    settings = DomainSettings.from_env(
        backend="postgres",
        postgres_dsn=f"postgresql://app:{PASSWORD}@127.0.0.1:1/events?connect_timeout=1",
        encryption=False,
    )

    with pytest.raises(ConfigurationError) as caught:
        AutomationApp(settings)

    message = str(caught.value)
    assert "cannot open the postgres event store" in message
    assert "SAFEREPLAY_POSTGRES_DSN" in message
    assert PASSWORD not in message and PASSWORD not in repr(caught.value.__cause__)


def test_an_explicit_none_key_ring_needs_encryption_off(key_file: Path) -> None:
    settings = DomainSettings.from_env(key_file=key_file, sqlite_path=Path("events.db"))

    with pytest.raises(ConfigurationError, match="SAFEREPLAY_ENCRYPTION=false"):
        AutomationApp(settings, key_ring=None)


# -- the eventsourcing environment ---------------------------------------------------------------


def test_sqlite_settings_map_onto_eventsourcing_sqlite() -> None:
    settings = DomainSettings.from_env(sqlite_path=Path("/data/events.db"), encryption=False)

    assert settings.eventsourcing_env() == {
        "PERSISTENCE_MODULE": "eventsourcing.sqlite",
        "SQLITE_DBNAME": "/data/events.db",
        "SQLITE_LOCK_TIMEOUT": "30",
        "CREATE_TABLE": "no",  # tables are set up by the schema catalog
    }


def test_postgres_settings_map_onto_eventsourcing_postgres() -> None:
    settings = DomainSettings.from_env(
        backend="postgres",
        postgres_dsn=DSN_WITH_PASSWORD + "?connect_timeout=4",
        postgres_schema="tenant_7",
        pool_size=8,
        encryption=False,
    )

    assert settings.eventsourcing_env() == {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": "events",
        "POSTGRES_HOST": "db.internal",
        "POSTGRES_PORT": "6543",
        "POSTGRES_USER": "app",
        "POSTGRES_PASSWORD": "",  # the pool asks settings.postgres_password() instead
        "POSTGRES_SCHEMA": "tenant_7",
        "POSTGRES_POOL_SIZE": "8",
        "POSTGRES_LOCK_TIMEOUT": "5",
        "POSTGRES_IDLE_IN_TRANSACTION_SESSION_TIMEOUT": "10",
        "POSTGRES_CONNECT_TIMEOUT": "4",
        "CREATE_TABLE": "no",
    }
    assert settings.postgres_password() == PASSWORD


def test_a_minimal_dsn_gets_local_defaults() -> None:
    settings = DomainSettings.from_env(
        backend="postgres", postgres_dsn="postgresql://", encryption=False
    )

    env = settings.eventsourcing_env()

    assert (env["POSTGRES_HOST"], env["POSTGRES_PORT"], env["POSTGRES_USER"]) == (
        "127.0.0.1",
        "5432",
        "postgres",
    )
    assert (env["POSTGRES_DBNAME"], env["POSTGRES_PASSWORD"]) == ("postgres", "")
    assert "POSTGRES_CONNECT_TIMEOUT" not in env


def test_the_application_is_configured_by_its_settings_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """eventsourcing would also read os.environ, where SAFEREPLAY_PERSISTENCE_MODULE
    (its name-prefixed form of PERSISTENCE_MODULE) would switch to an in-memory store."""
    monkeypatch.setenv("SAFEREPLAY_PERSISTENCE_MODULE", "eventsourcing.popo")
    # (PERSISTENCE_MODULE itself is refused there: test_eventsourcing_settings.py.)
    monkeypatch.setenv("SAFEREPLAY_SQLITE_DBNAME", "elsewhere.db")
    monkeypatch.setenv("IS_SNAPSHOTTING_ENABLED", "y")
    settings = DomainSettings.from_env(sqlite_path=Path("events.db"), encryption=False)

    app = AutomationApp(settings)

    assert dict(app.env) == settings.eventsourcing_env()
    assert type(app.recorder).__module__ == "eventsourcing.sqlite"
    assert app.snapshots is None
    app.close()
    assert Path("events.db").exists() and not Path("elsewhere.db").exists()


# -- secrets stay hidden ---------------------------------------------------------------------------


def test_str_and_repr_hide_the_dsn_password_and_the_keys() -> None:
    ring = KeyRing.generate("k1").with_key("k2", activate=True)
    settings = DomainSettings.from_env(
        backend="postgres", postgres_dsn=DSN_WITH_PASSWORD, keys=encoded_keys(ring)
    )

    for text in (str(settings), repr(settings), settings.model_dump_json()):
        assert PASSWORD not in text
        assert "db.internal" not in text, "the whole DSN is hidden, not only the password"
        for key in key_texts(ring):
            assert key not in text
    assert "**********" in repr(settings)


def test_validation_errors_do_not_echo_input_values(monkeypatch: pytest.MonkeyPatch) -> None:
    ring = KeyRing.generate()
    monkeypatch.setenv("SAFEREPLAY_KEYS", encoded_keys(ring))
    monkeypatch.setenv("SAFEREPLAY_KEY_FILE", "keyring.json")
    monkeypatch.setenv("SAFEREPLAY_BACKEND", "postgres")
    monkeypatch.setenv("SAFEREPLAY_POSTGRES_DSN", f"postgresql://app:{PASSWORD}@h/db?options=x")

    with pytest.raises(ConfigurationError) as caught:
        DomainSettings.from_env()

    message = str(caught.value)
    assert "SAFEREPLAY_POSTGRES_DSN" in message
    assert PASSWORD not in message
    for key in key_texts(ring):
        assert key not in message

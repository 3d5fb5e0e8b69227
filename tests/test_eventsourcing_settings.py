"""Every eventsourcing setting is honoured, mapped or refused; the sources' precedence.

The walk reads eventsourcing's sources (the setting names its Application,
InfrastructureFactory and POPO, SQLite and PostgreSQL factories and ciphers
read): a setting a new eventsourcing version adds and the registry does not
know fails :func:`test_the_registry_knows_every_eventsourcing_setting`.
"""

from __future__ import annotations

import base64
import inspect
import os
import re
import sqlite3
from contextlib import closing
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import eventsourcing.application
import eventsourcing.cipher
import eventsourcing.cryptography
import eventsourcing.persistence
import eventsourcing.popo
import eventsourcing.postgres
import eventsourcing.sqlite
import pytest
from eventsourcing.compressor import ZlibCompressor

from safereplay.domain import (
    ConfigurationError,
    DomainSettings,
    EventStoreApplication,
    KeyRing,
    KeyRingCipher,
)
from safereplay.domain.eventsourcing_settings import REGISTRY, STORAGE_SETTINGS

MODULES: tuple[ModuleType, ...] = (
    eventsourcing.application,
    eventsourcing.persistence,
    eventsourcing.popo,
    eventsourcing.sqlite,
    eventsourcing.postgres,
    eventsourcing.cipher,
    eventsourcing.cryptography,
)
CLASSES = (
    eventsourcing.application.Application,
    eventsourcing.persistence.BaseInfrastructureFactory,
    eventsourcing.persistence.InfrastructureFactory,
    eventsourcing.popo.POPOFactory,
    eventsourcing.sqlite.SQLiteFactory,
    eventsourcing.postgres.BasePostgresFactory,
    eventsourcing.postgres.PostgresFactory,
    eventsourcing.cipher.AESCipher,
    eventsourcing.cryptography.AESCipher,
)
KEY_RING_CIPHER = "safereplay.domain.cipher:KeyRingCipher"


def eventsourcing_settings() -> set[str]:
    """The names eventsourcing reads from env: its classes' setting-name constants
    (``CREATE_TABLE = "CREATE_TABLE"``) and literal ``env.get("NAME"...)`` calls."""
    names = set()
    for cls in CLASSES:
        for attribute in dir(cls):
            value = getattr(cls, attribute)
            if (
                attribute.isupper()
                and isinstance(value, str)
                and re.fullmatch(r"[A-Z][A-Z0-9_]+", value)
            ):
                names.add(value)
    for module in MODULES:
        names |= set(re.findall(r'env\.get\(\s*"([A-Z][A-Z0-9_]+)"', inspect.getsource(module)))
    return names


#: No SAFEREPLAY_* variable of the shell reaches these applications (conftest).
pytestmark = pytest.mark.usefixtures("clean_safereplay_environment")


def spec(ring: KeyRing) -> str:
    return ",".join(f"{k}={base64.b64encode(v).decode()}" for k, v in ring.keys.items())


def test_the_registry_knows_every_eventsourcing_setting() -> None:
    walked = eventsourcing_settings()
    assert len(walked) > 30, "the walk finds eventsourcing's settings"
    assert walked - set(REGISTRY) == set(), "eventsourcing settings without a treatment"
    assert set(REGISTRY) - walked == set(), "treatments of settings eventsourcing no longer has"


# name -> (a value, what happens on a SQLite application). "env": honoured, in app.env;
# ("settings", field, expected): mapped; "refused": ConfigurationError naming it.
ON_SQLITE: dict[str, tuple[str, Any]] = {
    "PERSISTENCE_MODULE": ("eventsourcing.sqlite", ("settings", "backend", "sqlite")),
    "INFRASTRUCTURE_FACTORY": ("eventsourcing.popo:Factory", "refused"),
    "FACTORY_TOPIC": ("eventsourcing.popo:Factory", "refused"),
    "TRANSCODER_TOPIC": ("eventsourcing.persistence:Transcoder", "refused"),
    "MAPPER_TOPIC": ("safereplay.domain.mapper:EnvelopeMapper", "env"),
    "COMPRESSOR_TOPIC": ("eventsourcing.compressor:ZlibCompressor", "env"),
    "CIPHER_TOPIC": (KEY_RING_CIPHER, ("settings", "encryption", True)),
    "CIPHER_KEY": ("k9=" + "A" * 43 + "=", "refused"),  # without CIPHER_TOPIC: AESCipher's
    "ORIGINATOR_ID_TYPE": ("text", "refused"),
    "IS_SNAPSHOTTING_ENABLED": ("y", "env"),
    "AGGREGATE_CACHE_MAXSIZE": ("10", "env"),
    "AGGREGATE_CACHE_FASTFORWARD": ("n", "env"),
    "AGGREGATE_CACHE_FASTFORWARD_SKIPPING": ("y", "env"),
    "DEEPCOPY_FROM_AGGREGATE_CACHE": ("n", "env"),
    "APPLICATION_RECORDER_TOPIC": ("eventsourcing.sqlite:SQLiteApplicationRecorder", "env"),
    "TRACKING_RECORDER_TOPIC": ("eventsourcing.sqlite:SQLiteTrackingRecorder", "env"),
    "PROCESS_RECORDER_TOPIC": ("eventsourcing.sqlite:SQLiteProcessRecorder", "env"),
    "SINGLE_ROW_TRACKING": ("t", "env"),
    "CREATE_TABLE": ("n", "env"),  # "y" is refused: test_a_refusal_says_what_to_use_instead
    "SQLITE_DBNAME": ("other.db", ("settings", "sqlite_path", Path("other.db"))),
    "SQLITE_LOCK_TIMEOUT": ("7", "env"),
    "POSTGRES_DBNAME": ("db", "refused"),
    "POSTGRES_HOST": ("db.internal", "refused"),
    "POSTGRES_PORT": ("5433", "refused"),
    "POSTGRES_USER": ("app", "refused"),
    "POSTGRES_PASSWORD": ("hunter2-secret", "refused"),
    "POSTGRES_GET_PASSWORD_TOPIC": ("os:getcwd", "refused"),
    "POSTGRES_CONNECT_TIMEOUT": ("3", "refused"),
    "POSTGRES_SCHEMA": ("tenant_7", ("settings", "postgres_schema", "tenant_7")),
    "POSTGRES_POOL_SIZE": ("3", ("settings", "pool_size", 3)),
    # PostgreSQL's own knobs mean nothing on SQLite: refused there, not ignored.
    "POSTGRES_MAX_OVERFLOW": ("2", "refused"),
    "POSTGRES_MAX_WAITING": ("2", "refused"),
    "POSTGRES_CONN_MAX_AGE": ("60", "refused"),
    "POSTGRES_PRE_PING": ("y", "refused"),
    "POSTGRES_LOCK_TIMEOUT": ("3", "refused"),
    "POSTGRES_IDLE_IN_TRANSACTION_SESSION_TIMEOUT": ("3", "refused"),
    "POSTGRES_ENABLE_DB_FUNCTIONS": ("y", "refused"),
}


def test_every_setting_has_an_expectation() -> None:
    assert set(ON_SQLITE) == set(REGISTRY)


@pytest.mark.parametrize("name", sorted(ON_SQLITE))
def test_each_setting_is_honoured_mapped_or_refused(
    name: str, tmp_path: Path, key_file: Path
) -> None:
    value, outcome = ON_SQLITE[name]
    settings = DomainSettings.from_env(sqlite_path=tmp_path / "events.db", key_file=key_file)
    if outcome == "refused":
        with pytest.raises(ConfigurationError) as caught:
            EventStoreApplication({name: value}, settings=settings)
        assert name in str(caught.value)
        if len(value) > 3:
            assert value not in str(caught.value), "values are never shown (may be secrets)"
        return
    app = EventStoreApplication({name: value}, settings=settings)
    try:
        if outcome == "env":
            assert app.env[name] == value
            assert REGISTRY[name].kind != "mapped"
        else:
            _, field, expected = outcome
            assert getattr(app.settings, field) == expected
            assert REGISTRY[name].kind == "mapped"
    finally:
        app.close()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TRANSCODER_TOPIC", "eventsourcing.persistence:JSONTranscoder"),
        ("ORIGINATOR_ID_TYPE", "UUID"),
    ],
)
def test_refused_settings_take_the_values_safereplay_uses_anyway(
    name: str, value: str, tmp_path: Path, key_file: Path
) -> None:
    settings = DomainSettings.from_env(sqlite_path=tmp_path / "events.db", key_file=key_file)
    with EventStoreApplication({name: value}, settings=settings) as app:
        assert app.env[name] == value


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("PERSISTENCE_MODULE", "eventsourcing.popo", "SQLite or PostgreSQL"),
        ("SQLITE_DBNAME", ":memory:", "in-memory"),
        ("MAPPER_TOPIC", "eventsourcing.persistence:Mapper", "EnvelopeMapper"),
        ("CIPHER_TOPIC", "eventsourcing.cipher:AESCipher", "KeyRingCipher"),
        ("POSTGRES_PASSWORD", "hunter2-secret", "SAFEREPLAY_POSTGRES_PASSWORD_FILE"),
        ("POSTGRES_HOST", "db", "SAFEREPLAY_POSTGRES_DSN"),
        ("CREATE_TABLE", "y", "safereplay migrate"),
        ("CREATE_TABLE", "maybe", "only off is accepted"),
    ],
)
def test_a_refusal_says_what_to_use_instead(
    name: str, value: str, says: str, tmp_path: Path, key_file: Path
) -> None:
    settings = DomainSettings.from_env(sqlite_path=tmp_path / "events.db", key_file=key_file)
    with pytest.raises(ConfigurationError, match=says):
        EventStoreApplication({name: value}, settings=settings)


def test_every_problem_is_named_at_once(tmp_path: Path, key_file: Path) -> None:
    settings = DomainSettings.from_env(sqlite_path=tmp_path / "events.db", key_file=key_file)
    with pytest.raises(ConfigurationError) as caught:
        EventStoreApplication(
            {"POSTGRES_HOST": "db", "FACTORY_TOPIC": "x", "ORIGINATOR_ID_TYPE": "text"},
            settings=settings,
        )
    for name in ("POSTGRES_HOST", "FACTORY_TOPIC", "ORIGINATOR_ID_TYPE"):
        assert name in str(caught.value)


# -- the key ring through eventsourcing's cipher settings ---------------------------------------


def test_cipher_topic_and_key_configure_the_key_ring(tmp_path: Path) -> None:
    ring = KeyRing.generate("a").with_key("b", activate=True)
    env = {
        "SAFEREPLAY_SQLITE_PATH": str(tmp_path / "events.db"),
        "CIPHER_TOPIC": KEY_RING_CIPHER,
        "CIPHER_KEY": spec(ring),
    }
    with EventStoreApplication(env) as app:
        assert app.key_ring == ring
        assert isinstance(app.mapper.cipher, KeyRingCipher)
        assert "CIPHER_KEY" not in app.env, "key material stays out of env"
        assert spec(ring) not in repr(app.env)


def test_a_key_ring_given_twice_is_refused(tmp_path: Path, key_ring: KeyRing) -> None:
    env = {
        "SAFEREPLAY_SQLITE_PATH": str(tmp_path / "events.db"),
        "CIPHER_TOPIC": KEY_RING_CIPHER,
        "CIPHER_KEY": spec(key_ring),
    }
    with pytest.raises(ConfigurationError, match="give one"):
        EventStoreApplication(env, key_ring=key_ring)


def test_a_bare_aes_key_is_refused_without_being_shown(tmp_path: Path) -> None:
    key = base64.b64encode(os.urandom(32)).decode()
    env = {
        "SAFEREPLAY_SQLITE_PATH": str(tmp_path / "events.db"),
        "CIPHER_TOPIC": KEY_RING_CIPHER,
        "CIPHER_KEY": key,
    }
    with pytest.raises(ConfigurationError, match="KEY_ID=BASE64") as caught:
        EventStoreApplication(env)
    assert key not in str(caught.value) and key.rstrip("=") not in str(caught.value)


def test_compression_survives_a_reader_of_the_same_configuration(
    tmp_path: Path, key_file: Path
) -> None:
    env = {
        "SAFEREPLAY_SQLITE_PATH": str(tmp_path / "events.db"),
        "SAFEREPLAY_KEY_FILE": str(key_file),
        "COMPRESSOR_TOPIC": "eventsourcing.compressor:ZlibCompressor",
    }
    from safereplay.domain import AutomationApp

    with AutomationApp(env) as writer:
        workflow = writer.submit(
            {"type": "CreateWorkflow", "name": "n", "owner": "o", "trigger": {}}, source="t"
        )
    with AutomationApp(env) as reader:
        assert isinstance(reader.mapper.compressor, ZlibCompressor)
        [envelope] = reader.read()
        assert envelope.aggregate_id == workflow
        assert reader.read() == [envelope], "the common path (second read) agrees"
        assert reader.workflow(workflow).name == "n"


# -- precedence ---------------------------------------------------------------------------------


class Pooled(EventStoreApplication):
    env: ClassVar[dict[str, str]] = {
        "SAFEREPLAY_POOL_SIZE": "2",
        "SAFEREPLAY_ENCRYPTION": "false",
        "SAFEREPLAY_SQLITE_PATH": "class.db",
        "AGGREGATE_CACHE_MAXSIZE": "5",
    }


def test_class_env_is_the_lowest_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    with Pooled() as app:
        assert (app.settings.pool_size, app.settings.sqlite_path) == (2, Path("class.db"))
        assert app.env["AGGREGATE_CACHE_MAXSIZE"] == "5"
    monkeypatch.setenv("SAFEREPLAY_POOL_SIZE", "3")
    with Pooled() as app:
        assert app.settings.pool_size == 3, "the process environment wins over the class"
        assert app.settings.sqlite_path == Path("class.db")
    with Pooled({"SAFEREPLAY_POOL_SIZE": "4", "AGGREGATE_CACHE_MAXSIZE": "6"}) as app:
        assert app.settings.pool_size == 4, "the constructor's env wins over both"
        assert app.env["AGGREGATE_CACHE_MAXSIZE"] == "6"


def test_settings_replace_the_process_environment_layer(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SAFEREPLAY_POOL_SIZE", "3")
    settings = DomainSettings.from_env(
        sqlite_path=tmp_path / "given.db", encryption=False, pool_size=7
    )
    with Pooled(settings=settings) as app:
        assert app.settings is settings, "settings given and no env: taken as they are"
    with Pooled({"SAFEREPLAY_POOL_SIZE": "8"}, settings=settings) as app:
        assert (app.settings.pool_size, app.settings.sqlite_path) == (8, tmp_path / "given.db")


def test_a_name_prefixed_entry_wins_in_its_mapping(tmp_path: Path) -> None:
    class Orders(EventStoreApplication):
        pass

    env = {
        "SAFEREPLAY_ENCRYPTION": "false",
        "SAFEREPLAY_SQLITE_PATH": str(tmp_path / "shared.db"),
        "ORDERS_SAFEREPLAY_SQLITE_PATH": str(tmp_path / "orders.db"),
        "ORDERS_AGGREGATE_CACHE_MAXSIZE": "9",
        "SHIPPING_SAFEREPLAY_SQLITE_PATH": str(tmp_path / "shipping.db"),
        "MY_OWN_SETTING": "kept",
    }
    with Orders(env) as app:
        assert app.name == "Orders"
        assert app.settings.sqlite_path == tmp_path / "orders.db"
        assert app.env["AGGREGATE_CACHE_MAXSIZE"] == "9"
        assert app.env["MY_OWN_SETTING"] == "kept", "the application's own keys stay"


def test_an_unknown_safereplay_setting_in_env_is_refused(tmp_path: Path) -> None:
    env = {"SAFEREPLAY_SQLITE_PATH": str(tmp_path / "e.db"), "SAFEREPLAY_ENCRYPTON": "false"}
    with pytest.raises(ConfigurationError, match="did you mean SAFEREPLAY_ENCRYPTION"):
        EventStoreApplication(env)


def test_a_setting_given_twice_in_one_mapping_is_refused(tmp_path: Path) -> None:
    env = {
        "SAFEREPLAY_ENCRYPTION": "false",
        "SAFEREPLAY_SQLITE_PATH": str(tmp_path / "a.db"),
        "SQLITE_DBNAME": str(tmp_path / "b.db"),
    }
    with pytest.raises(ConfigurationError, match="give one"):
        EventStoreApplication(env)


def test_the_instance_name_follows_the_class_and_tables_keep_theirs(
    tmp_path: Path,
) -> None:
    class Billing(EventStoreApplication):
        pass

    class Named(EventStoreApplication):
        name = "Ledger"

    env = {"SAFEREPLAY_ENCRYPTION": "false", "SAFEREPLAY_SQLITE_PATH": str(tmp_path / "e.db")}
    with Billing(env) as billing, Named(env) as named:
        assert (billing.name, named.name) == ("Billing", "Ledger")
        assert billing.env.name == "safereplay", "table names come from the settings"
        assert billing.settings.application_name == "safereplay"


def test_the_documentation_lists_each_setting_with_its_treatment() -> None:
    text = (Path(__file__).resolve().parent.parent / "docs" / "eventsourcing.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    for name, treatment in REGISTRY.items():
        [row] = [r for r in rows if f"`{name}`" in r.split("|")[1]]
        assert treatment.kind in row.split("|")[2], name


@pytest.mark.parametrize("name", sorted(STORAGE_SETTINGS))
def test_a_storage_setting_only_in_the_process_environment_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str
) -> None:
    # eventsourcing would read it from os.environ; safereplay does not, and says so
    # rather than storing events in a form the shell's variable did not ask for.
    monkeypatch.setenv(name, "eventsourcing.compressor:ZlibCompressor")
    settings = DomainSettings.from_env(sqlite_path=tmp_path / "s.db", encryption=False)
    with pytest.raises(ConfigurationError, match=f"{name} is set in the process environment"):
        EventStoreApplication(settings=settings)
    assert not (tmp_path / "s.db").exists(), "refused before the store is opened"


def test_a_storage_setting_in_env_is_not_refused_for_the_process_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("COMPRESSOR_TOPIC", "eventsourcing.compressor:ZlibCompressor")
    settings = DomainSettings.from_env(sqlite_path=tmp_path / "s.db", encryption=False)
    env = {"COMPRESSOR_TOPIC": "eventsourcing.compressor:ZlibCompressor"}
    with EventStoreApplication(env, settings=settings) as app:
        assert isinstance(app.mapper.compressor, ZlibCompressor)


def test_create_table_off_is_taken_and_the_tables_come_from_the_schema_step(
    tmp_path: Path, key_file: Path
) -> None:
    # eventsourcing's own set-up would run DDL at every start; with CREATE_TABLE off
    # the schema step (safereplay.domain.schema) still sets a new store up, once.
    from safereplay.domain import AutomationApp

    env = {
        "SAFEREPLAY_SQLITE_PATH": str(tmp_path / "events.db"),
        "SAFEREPLAY_KEY_FILE": str(key_file),
        "CREATE_TABLE": "off",
    }
    with AutomationApp(env) as writer:
        assert writer.env["CREATE_TABLE"] == "off"
        workflow = writer.submit(
            {"type": "CreateWorkflow", "name": "n", "owner": "o", "trigger": {}}, source="t"
        )
    with AutomationApp(env) as reader:
        assert reader.workflow(workflow).name == "n"
    with closing(sqlite3.connect(tmp_path / "events.db")) as db:
        components = {
            row[0] for row in db.execute("SELECT component FROM safereplay_schema_versions")
        }
    assert any(name.startswith("events:") for name in components), components

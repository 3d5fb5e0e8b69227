"""eventsourcing's shipped test cases, run against safereplay as contract tests.

Each case runs on SQLite and on PostgreSQL where it applies. The shipped tests
name eventsourcing's ``Application`` (and ``BankAccounts``) as module globals:
they are replaced, for the duration of a test, by a safereplay application
configured for a fresh store (``SafeApplication``), so the very same test code
runs on safereplay. Where a shipped test cannot apply, the subclass overrides
it with a test of what safereplay does instead, and says why next to it.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar
from uuid import UUID

import eventsourcing.tests.application as es_application_tests
import eventsourcing.tests.persistence as es_persistence_tests
import eventsourcing.tests.projection as es_projection_tests
import pytest
from eventsourcing.cipher import AESCipher
from eventsourcing.domain import DomainEvent
from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    InfrastructureFactory,
    JSONTranscoder,
    ProcessRecorder,
    Tracking,
    TrackingRecorder,
    Transcoder,
    UUIDAsHex,
)
from eventsourcing.postgres import (
    PostgresAggregateRecorder,
    PostgresApplicationRecorder,
    PostgresFactory,
    PostgresProcessRecorder,
    PostgresTrackingRecorder,
)
from eventsourcing.sqlite import (
    SQLiteAggregateRecorder,
    SQLiteApplicationRecorder,
    SQLiteFactory,
    SQLiteProcessRecorder,
    SQLiteTrackingRecorder,
)
from eventsourcing.tests.application import BankAccounts
from eventsourcing.tests.persistence import CustomType1AsDict, CustomType2AsDict
from eventsourcing.tests.projection import EventCountersView
from eventsourcing.utils import Environment, get_topic
from psycopg.sql import SQL, Identifier

from benchmarks.es_baseline import plain_postgres_environment
from safereplay.domain import (
    ConfigurationError,
    DomainSettings,
    EnvelopeMapper,
    EventDecryptionError,
    EventStoreApplication,
    KeyRing,
    KeyRingCipher,
)
from safereplay.domain.mapper import _decode_json

T = TypeVar("T")
KEY_RING_CIPHER = get_topic(KeyRingCipher)
ENVELOPE_MAPPER = get_topic(EnvelopeMapper)


def spec(ring: KeyRing) -> str:
    return ",".join(f"{k}={base64.b64encode(v).decode()}" for k, v in ring.keys.items())


class SafeApplication(EventStoreApplication, Generic[T]):
    """Stands for eventsourcing's ``Application`` in its shipped tests (``Application[UUID]``
    works on it); each test gets a subclass whose class ``env`` names a fresh store."""


class SafeBankAccounts(SafeApplication[UUID], BankAccounts):
    """eventsourcing's example application on safereplay's store."""


#: No SAFEREPLAY_* variable of the shell reaches these applications (conftest).
pytestmark = pytest.mark.usefixtures("clean_safereplay_environment")


class OnSQLite:
    backend = "sqlite"
    expected_factory_topic = get_topic(SQLiteFactory)

    @pytest.fixture
    def store_env(self, tmp_path: Path) -> dict[str, str]:
        return {"SAFEREPLAY_SQLITE_PATH": str(tmp_path / "events.db")}


class OnPostgres:
    backend = "postgres"
    expected_factory_topic = get_topic(PostgresFactory)

    @pytest.fixture
    def store_env(self, postgres_dsn: str, pg_schema: str) -> dict[str, str]:
        return {
            "SAFEREPLAY_BACKEND": "postgres",
            "SAFEREPLAY_POSTGRES_DSN": postgres_dsn,
            "SAFEREPLAY_POSTGRES_SCHEMA": pg_schema,
        }


class SafeApplicationStore:
    """Replaces eventsourcing's ``Application`` (and ``BankAccounts``) in its test
    modules by safereplay applications on a fresh, encrypted store."""

    modules: ClassVar[tuple[Any, ...]] = (es_application_tests, es_projection_tests)

    @pytest.fixture(autouse=True)
    def safe_application(
        self, monkeypatch: pytest.MonkeyPatch, store_env: dict[str, str], key_file: Path
    ) -> None:
        env = {**store_env, "SAFEREPLAY_KEY_FILE": str(key_file)}
        # Named "Application", as eventsourcing's (ApplicationTestCase.test_name).
        application = type("Application", (SafeApplication,), {"env": env})
        bank_accounts = type("BankAccounts", (SafeBankAccounts,), {"env": env})
        for module in self.modules:
            monkeypatch.setattr(module, "Application", application)
        monkeypatch.setattr(es_application_tests, "BankAccounts", bank_accounts)


# -- Application --------------------------------------------------------------------------------


class ApplicationContract(SafeApplicationStore, es_application_tests.ApplicationTestCase):
    __test__ = False

    def test_resolve_persistence_topics(self) -> None:
        # Instead of eventsourcing's test: safereplay stores events in SQLite or
        # PostgreSQL only (where projections and recovery read them), so the legacy
        # factory names and the in-memory POPO module are refused, saying what to use.
        app: Any = es_application_tests.Application()
        assert isinstance(app.factory, InfrastructureFactory)
        assert get_topic(type(app.factory)) == self.expected_factory_topic  # type: ignore[attr-defined]
        app.close()
        for env in (
            {"INFRASTRUCTURE_FACTORY": "eventsourcing.popo:Factory"},
            {"FACTORY_TOPIC": "eventsourcing.popo:Factory"},
            {"PERSISTENCE_MODULE": "eventsourcing.popo"},
            {"PERSISTENCE_MODULE": "eventsourcing.application"},
        ):
            with pytest.raises(ConfigurationError, match="SAFEREPLAY_BACKEND"):
                es_application_tests.Application(env=env)


class TestApplicationOnSQLite(OnSQLite, ApplicationContract):
    __test__ = True
    pass


@pytest.mark.postgres
class TestApplicationOnPostgres(OnPostgres, ApplicationContract):
    __test__ = True
    pass


class TestExampleApplicationOnSQLite(
    OnSQLite, SafeApplicationStore, es_application_tests.ExampleApplicationTestCase
):
    __test__ = True
    pass


@pytest.mark.postgres
class TestExampleApplicationOnPostgres(
    OnPostgres, SafeApplicationStore, es_application_tests.ExampleApplicationTestCase
):
    __test__ = True
    pass


# -- InfrastructureFactory ----------------------------------------------------------------------


class FactoryContract(es_persistence_tests.InfrastructureFactoryTestCase[Any]):
    """eventsourcing's factory, with safereplay's mapper chosen by ``MAPPER_TOPIC``."""

    __test__ = False

    base_env: ClassVar[dict[str, str]]

    @pytest.fixture(autouse=True)
    def factory_env(self, request: pytest.FixtureRequest) -> None:
        self.env = Environment(
            "TestCase", {**self.environment(request), "MAPPER_TOPIC": ENVELOPE_MAPPER}
        )

    def environment(self, request: pytest.FixtureRequest) -> dict[str, str]:
        raise NotImplementedError

    def test_mapper(self) -> None:
        super().test_mapper()
        assert isinstance(self.factory.mapper(transcoder=self.transcoder), EnvelopeMapper)

    def test_mapper_with_cipher(self) -> None:
        # Instead of eventsourcing's test, which configures its AESCipher: safereplay's
        # mapper seals with the key ring (bound to each row), so the cipher is
        # KeyRingCipher. As with AESCipher, a cipher topic without a key is an
        # OSError and CIPHER_KEY configures the cipher; AESCipher itself is refused.
        self.env["CIPHER_TOPIC"] = KEY_RING_CIPHER
        with pytest.raises(OSError):
            self.factory.mapper(transcoder=self.transcoder)
        self.env["CIPHER_KEY"] = spec(KeyRing.generate("k1"))
        mapper = self.factory.mapper(transcoder=self.transcoder)
        assert isinstance(mapper, EnvelopeMapper) and isinstance(mapper.cipher, KeyRingCipher)
        assert mapper.compressor is None
        self.env["CIPHER_TOPIC"] = get_topic(AESCipher)
        self.env["CIPHER_KEY"] = AESCipher.create_key(16)
        with pytest.raises(ConfigurationError, match="KeyRingCipher"):
            self.factory.mapper(transcoder=self.transcoder)

    def test_mapper_with_cipher_and_compressor(self) -> None:
        # Instead of eventsourcing's test (AESCipher): KeyRingCipher, see above.
        self.env[self.factory.COMPRESSOR_TOPIC] = "eventsourcing.compressor:ZlibCompressor"
        self.env["CIPHER_TOPIC"] = KEY_RING_CIPHER
        self.env["CIPHER_KEY"] = spec(KeyRing.generate("k1"))
        mapper = self.factory.mapper(transcoder=self.transcoder)
        assert mapper.cipher is not None and mapper.compressor is not None

    def test_mapper_with_wrong_cipher_key(self) -> None:
        # eventsourcing's test with KeyRingCipher instead of AESCipher (see above):
        # each application reads its own CIPHER_KEY, and the other's key fails.
        self.env.name = "App1"
        self.env["CIPHER_TOPIC"] = KEY_RING_CIPHER
        self.env["APP1_CIPHER_KEY"] = spec(KeyRing.generate("k1"))
        self.env["APP2_CIPHER_KEY"] = spec(KeyRing.generate("k1"))
        mapper1 = self.factory.mapper(transcoder=self.transcoder)
        domain_event = DomainEvent(
            originator_id=UUID(int=1),
            originator_version=1,
            timestamp=DomainEvent.create_timestamp(),
        )
        stored_event = mapper1.to_stored_event(domain_event)
        assert mapper1.to_domain_event(stored_event).originator_id == UUID(int=1)
        self.env.name = "App2"
        mapper2 = self.factory.mapper(transcoder=self.transcoder)
        with pytest.raises(ValueError) as caught:
            mapper2.to_domain_event(stored_event)
        assert isinstance(caught.value, EventDecryptionError)


class MySQLiteTrackingRecorder(SQLiteTrackingRecorder):
    pass


class MyPostgresTrackingRecorder(PostgresTrackingRecorder):
    pass


class SQLiteFactoryContract(FactoryContract):
    __test__ = False

    def expected_factory_class(self) -> type[SQLiteFactory]:
        return SQLiteFactory

    def expected_aggregate_recorder_class(self) -> type[AggregateRecorder]:
        return SQLiteAggregateRecorder

    def expected_application_recorder_class(self) -> type[ApplicationRecorder]:
        return SQLiteApplicationRecorder

    def expected_tracking_recorder_class(self) -> type[TrackingRecorder]:
        return SQLiteTrackingRecorder

    def tracking_recorder_subclass(self) -> type[TrackingRecorder]:
        return MySQLiteTrackingRecorder

    def expected_process_recorder_class(self) -> type[ProcessRecorder]:
        return SQLiteProcessRecorder


class PostgresFactoryContract(FactoryContract):
    __test__ = False

    def expected_factory_class(self) -> type[PostgresFactory]:
        return PostgresFactory

    def expected_aggregate_recorder_class(self) -> type[AggregateRecorder]:
        return PostgresAggregateRecorder

    def expected_application_recorder_class(self) -> type[ApplicationRecorder]:
        return PostgresApplicationRecorder

    def expected_tracking_recorder_class(self) -> type[TrackingRecorder]:
        return PostgresTrackingRecorder

    def tracking_recorder_subclass(self) -> type[TrackingRecorder]:
        return MyPostgresTrackingRecorder

    def expected_process_recorder_class(self) -> type[ProcessRecorder]:
        return PostgresProcessRecorder


class TestFactoryByTopicOnSQLite(SQLiteFactoryContract):
    """eventsourcing's own SQLite settings, safereplay's mapper by MAPPER_TOPIC."""

    __test__ = True

    def environment(self, request: pytest.FixtureRequest) -> dict[str, str]:
        path = request.getfixturevalue("tmp_path") / "factory.db"
        return {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(path)}


class TestFactoryBySettingsOnSQLite(SQLiteFactoryContract):
    """The environment safereplay's own settings map to."""

    __test__ = True

    def environment(self, request: pytest.FixtureRequest) -> dict[str, str]:
        path = request.getfixturevalue("tmp_path") / "factory.db"
        return DomainSettings.from_env(sqlite_path=path, encryption=False).eventsourcing_env()


@pytest.mark.postgres
class TestFactoryByTopicOnPostgres(PostgresFactoryContract):
    __test__ = True

    def environment(self, request: pytest.FixtureRequest) -> dict[str, str]:
        dsn = request.getfixturevalue("postgres_dsn")
        return plain_postgres_environment(dsn, request.getfixturevalue("pg_schema"))


@pytest.mark.postgres
class TestFactoryBySettingsOnPostgres(PostgresFactoryContract):
    __test__ = True

    def environment(self, request: pytest.FixtureRequest) -> dict[str, str]:
        settings = DomainSettings.from_env(
            backend="postgres",
            postgres_dsn=request.getfixturevalue("postgres_dsn"),
            postgres_schema=request.getfixturevalue("pg_schema"),
            encryption=False,
        )
        return settings.eventsourcing_env()


# -- Transcoder: safereplay's decode path ------------------------------------------------------


class ReplayDecoding(Transcoder):
    """eventsourcing's JSONTranscoder encoding, safereplay's replay decoding (orjson,
    then eventsourcing's transcodings), as ``EnvelopeMapper`` decodes stored states."""

    def __init__(self) -> None:
        self.json = JSONTranscoder()
        self.json.register(UUIDAsHex())
        self.json.register(CustomType1AsDict())
        self.json.register(CustomType2AsDict())

    def encode(self, obj: Any) -> bytes:
        return self.json.encode(obj)

    def decode(self, data: bytes) -> Any:
        return _decode_json(self.json, data)


class TestReplayDecodingTranscoder(es_persistence_tests.TranscoderTestCase):
    __test__ = True

    def construct_transcoder(self) -> Transcoder:
        return ReplayDecoding()

    # Instead of the shipped tests of subclasses of built-in types and of tuples:
    # eventsourcing's JSONTranscoder, whose format safereplay stores, encodes these as
    # the plain JSON types (the shipped cases are written for transcoders that keep
    # them). What safereplay promises: its replay decoding gives what JSONTranscoder
    # decodes, for these values too.
    def assert_decodes_as_json_transcoder(self, *values: Any) -> None:
        transcoder = ReplayDecoding()
        for value in values:
            data = transcoder.encode(value)
            assert transcoder.decode(data) == transcoder.json.decode(data)

    def test_dict_subclass(self) -> None:
        self.assert_decodes_as_json_transcoder(es_persistence_tests.Mydict({"a": 1}))

    def test_list_subclass(self) -> None:
        self.assert_decodes_as_json_transcoder(es_persistence_tests.MyList((("a", 1),)))

    def test_str_subclass(self) -> None:
        self.assert_decodes_as_json_transcoder(es_persistence_tests.MyStr("a"))

    def test_int_subclass(self) -> None:
        self.assert_decodes_as_json_transcoder(es_persistence_tests.MyInt(3))

    def test_tuple(self) -> None:
        self.assert_decodes_as_json_transcoder((), ((),), ((1, 2),), (("a", "b"),), ((1, "a"),))

    def test_mixed(self) -> None:
        self.assert_decodes_as_json_transcoder([(1, "a"), {"b": 2}], {"a": [(1, 2)]})


# -- Projections --------------------------------------------------------------------------------


class PostgresEventCounters(PostgresTrackingRecorder, EventCountersView):
    """eventsourcing's event counters view on PostgreSQL (its test suite's own is not
    shipped): a counters table updated with the tracking record."""

    def __init__(self, datastore: Any, **kwargs: Any) -> None:
        super().__init__(datastore, **kwargs)
        self.counters = Identifier(self.datastore.schema, f"{self.tracking_table_name}_counters")
        self.sql_create_statements.append(
            SQL("CREATE TABLE IF NOT EXISTS {} (name text PRIMARY KEY, count bigint)").format(
                self.counters
            )
        )

    def _count(self, name: str) -> int:
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(SQL("SELECT count FROM {} WHERE name = %s").format(self.counters), (name,))
            row = curs.fetchone()
        return int(row["count"]) if row else 0

    def _increment(self, name: str, tracking: Tracking) -> None:
        with self.datastore.transaction(commit=True) as curs:
            self._insert_tracking(curs, tracking)
            curs.execute(
                SQL(
                    "INSERT INTO {0} VALUES (%s, 1) "
                    "ON CONFLICT (name) DO UPDATE SET count = {0}.count + 1"
                ).format(self.counters),
                (name,),
            )

    def get_created_event_counter(self) -> int:
        return self._count("created")

    def get_subsequent_event_counter(self) -> int:
        return self._count("subsequent")

    def incr_created_event_counter(self, tracking: Tracking) -> None:
        self._increment("created", tracking)

    def incr_subsequent_event_counter(self, tracking: Tracking) -> None:
        self._increment("subsequent", tracking)


class ProjectionEnv:
    """The runner's env: eventsourcing's settings for the view (and an event-sourced
    projection) under their names' prefixes; the safereplay application's own
    configuration is its class env (SafeApplicationStore)."""

    env: ClassVar[dict[str, str]] = {}

    @pytest.fixture(autouse=True)
    def projection_env(
        self, postgres_dsn: str, pg_schema: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        plain = plain_postgres_environment(postgres_dsn, pg_schema)
        env = {f"{name}_{k}": v for name in ("EVENTCOUNTERS", "COUNTERS") for k, v in plain.items()}
        monkeypatch.setattr(self, "env", env)


@pytest.mark.postgres
class TestEventCountersViewOnPostgres(es_projection_tests.EventCountersViewTestCase):
    __test__ = True

    @pytest.fixture(autouse=True)
    def view_env(self, postgres_dsn: str, pg_schema: str) -> None:
        self.factory_env = Environment(
            "eventcounters", plain_postgres_environment(postgres_dsn, pg_schema)
        )

    def construct_event_counters_view(self) -> EventCountersView:
        factory = InfrastructureFactory.construct(self.factory_env)
        return factory.tracking_recorder(PostgresEventCounters)


@pytest.mark.postgres
class TestAggregateEventCountersProjectionOnPostgres(
    OnPostgres,
    SafeApplicationStore,
    ProjectionEnv,
    es_projection_tests.AggregateEventCountersProjectionTestCase,
):
    __test__ = True
    view_class = PostgresEventCounters


@pytest.mark.postgres
class TestEventSourcedProjectionOnPostgres(
    OnPostgres,
    SafeApplicationStore,
    ProjectionEnv,
    es_projection_tests.EventSourcedProjectionTestCase,
):
    __test__ = True
    pass


@pytest.mark.postgres
class TestTaggedDecisionCountersProjectionOnPostgres(
    es_projection_tests.TaggedDecisionCountersProjectionTestCase
):
    __test__ = True
    view_class = PostgresEventCounters

    # Instead of eventsourcing's tests: they run a DCBApplication (dynamic consistency
    # boundaries: tagged decisions in its own tables, not aggregate events), which
    # safereplay does not replace; safereplay applications are aggregate-event
    # applications, covered by the aggregate projection test cases above. What
    # safereplay does: it leaves eventsourcing's DCB applications alone.
    def test_event_counters_projection(self) -> None:
        assert not issubclass(es_projection_tests.DCBApplication, EventStoreApplication)

    def test_run_forever_raises_projection_error(self) -> None:
        assert not issubclass(es_projection_tests.DCBApplication, EventStoreApplication)


class TestAggregateEventCountersProjectionOnSQLite(
    OnSQLite, SafeApplicationStore, es_projection_tests.AggregateEventCountersProjectionTestCase
):
    __test__ = True
    # Instead of eventsourcing's tests: its ProjectionRunner subscribes to the
    # application's recorder, and eventsourcing's SQLite recorder has no
    # subscriptions (NotImplementedError, with or without safereplay). On SQLite,
    # safereplay's own ProjectionRunner (safereplay.projections) polls the log below
    # its high-water mark instead; tests/test_runner_contract.py covers it.
    view_class = PostgresEventCounters

    def test_event_counters_projection(self) -> None:
        app: Any = es_application_tests.Application()
        with pytest.raises(NotImplementedError, match="does not support subscriptions"):
            app.recorder.subscribe(gt=None)
        app.close()

    def test_run_forever_raises_projection_error(self) -> None:
        self.test_event_counters_projection()

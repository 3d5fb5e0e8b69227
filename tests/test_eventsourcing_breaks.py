"""The five breaks of issue #16 ("a good eventsourcing citizen"), one test (or two) each.

Each test failed before the fix. They use eventsourcing's own means (topics as
text, ``ProcessApplication``, ``System``) rather than the new safereplay names,
so that on the old code they fail on the break itself, not on an import.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import Any, ClassVar
from uuid import UUID

import pytest
from eventsourcing.application import ProcessingEvent
from eventsourcing.compressor import ZlibCompressor
from eventsourcing.dispatch import singledispatchmethod
from eventsourcing.domain import Aggregate, DomainEventProtocol
from eventsourcing.persistence import (
    DatetimeAsISO,
    InfrastructureFactory,
    JSONTranscoder,
    MapperDeserialisationError,
    UUIDAsHex,
)
from eventsourcing.system import ProcessApplication, SingleThreadedRunner, System
from eventsourcing.utils import Environment

from safereplay.domain import (
    ConfigurationError,
    DomainSettings,
    EnvelopeMapper,
    EventStoreApplication,
    KeyRing,
)
from safereplay.domain.mapper import associated_data

KEY_RING_CIPHER = "safereplay.domain.cipher:KeyRingCipher"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.upper().startswith("SAFEREPLAY_") and not name.upper().startswith(
            "SAFEREPLAY_TEST_"
        ):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def spec(ring: KeyRing) -> str:
    import base64

    return ",".join(f"{k}={base64.b64encode(v).decode()}" for k, v in ring.keys.items())


class Note(Aggregate):
    def __init__(self, text: str) -> None:
        self.text = text


# -- 1. settings silently ignored -------------------------------------------------------------


class Compressed(EventStoreApplication):
    env: ClassVar[dict[str, str]] = {"COMPRESSOR_TOPIC": "eventsourcing.compressor:ZlibCompressor"}


def test_compressor_topic_compresses_then_seals(tmp_path: Path, key_ring: KeyRing) -> None:
    settings = DomainSettings.from_env(sqlite_path=tmp_path / "events.db", keys=spec(key_ring))
    app = Compressed(settings=settings)
    try:
        assert isinstance(app.mapper.compressor, ZlibCompressor)
        note = Note("hello " * 50)
        app.save(note)
        (stored,) = app.recorder.select_events(note.id)
        plaintext = key_ring.open(stored.state, associated_data(note.id, 1, stored.topic))
        assert b"hello" in zlib.decompress(plaintext), "compressed, then sealed"
        assert app.repository.get(note.id).text == "hello " * 50
    finally:
        app.close()


@pytest.mark.parametrize(
    "cipher_env",
    [
        {"CIPHER_TOPIC": "eventsourcing.cipher:AESCipher"},
        {"CIPHER_KEY": "3q2+7wAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="},
        {
            "CIPHER_TOPIC": KEY_RING_CIPHER,
            "CIPHER_KEY": "k1=3q2+7wAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        },
    ],
)
def test_a_cipher_with_encryption_off_is_refused_not_plaintext(
    tmp_path: Path, cipher_env: dict[str, str]
) -> None:
    class Ciphered(EventStoreApplication):
        env = cipher_env

    settings = DomainSettings.from_env(sqlite_path=tmp_path / "events.db", encryption=False)
    with pytest.raises(ConfigurationError, match="CIPHER_"):
        Ciphered(settings=settings)
    assert not (tmp_path / "events.db").exists(), "refused before anything was stored"


# -- 2. the mapper cannot be built the way eventsourcing builds mappers -----------------------


def transcoder() -> JSONTranscoder:
    transcoder = JSONTranscoder()
    transcoder.register(UUIDAsHex())
    transcoder.register(DatetimeAsISO())
    return transcoder


def test_the_mapper_takes_eventsourcings_arguments() -> None:
    mapper = EnvelopeMapper(transcoder=transcoder(), compressor=None, cipher=None)
    event = Note("x").collect_events()[0]
    assert mapper.to_domain_event(mapper.to_stored_event(event)) == event


def test_infrastructure_factory_builds_the_mapper_by_topic(
    tmp_path: Path, key_ring: KeyRing
) -> None:
    factory = InfrastructureFactory.construct(
        Environment(
            "App",
            {
                "PERSISTENCE_MODULE": "eventsourcing.sqlite",
                "SQLITE_DBNAME": str(tmp_path / "es.db"),
                "MAPPER_TOPIC": "safereplay.domain.mapper:EnvelopeMapper",
                "CIPHER_TOPIC": KEY_RING_CIPHER,
                "CIPHER_KEY": spec(key_ring),
                "COMPRESSOR_TOPIC": "eventsourcing.compressor:ZlibCompressor",
            },
        )
    )
    try:
        mapper = factory.mapper(transcoder=transcoder())
        assert isinstance(mapper, EnvelopeMapper)
        assert mapper.key_ring == key_ring
        event = Note("secret").collect_events()[0]
        stored = mapper.to_stored_event(event)
        assert b"secret" not in stored.state
        assert mapper.to_domain_event(stored) == event
    finally:
        factory.close()


# -- 3. the application cannot be constructed with env ----------------------------------------


@pytest.mark.parametrize("positional", [True, False])
def test_the_application_takes_env(tmp_path: Path, positional: bool) -> None:
    env = {"SAFEREPLAY_SQLITE_PATH": str(tmp_path / "env.db"), "SAFEREPLAY_ENCRYPTION": "false"}
    app = EventStoreApplication(env) if positional else EventStoreApplication(env=env)
    try:
        app.save(Note("x"))
        assert app.settings.sqlite_path == tmp_path / "env.db"
        assert app.head_position() == 1
    finally:
        app.close()


# -- 4. process pipelines do nothing, silently ------------------------------------------------


class Counted(Aggregate):
    def __init__(self, note_id: UUID) -> None:
        self.note_id = note_id


class Writer(EventStoreApplication):
    def write(self, text: str) -> UUID:
        note = Note(text)
        self.save(note)
        return note.id


class Counting(EventStoreApplication, ProcessApplication[UUID]):
    @singledispatchmethod
    def policy(
        self, domain_event: DomainEventProtocol[UUID], processing_event: ProcessingEvent[UUID]
    ) -> None:
        if isinstance(domain_event, Note.Created):
            processing_event.collect_events(Counted(domain_event.originator_id))


def test_a_follower_is_prompted_in_a_system(tmp_path: Path, key_file: Path) -> None:
    env: dict[str, Any] = {
        "SAFEREPLAY_KEY_FILE": str(key_file),
        "WRITER_SAFEREPLAY_SQLITE_PATH": str(tmp_path / "writer.db"),
        "COUNTING_SAFEREPLAY_SQLITE_PATH": str(tmp_path / "counting.db"),
    }
    runner: SingleThreadedRunner[UUID] = SingleThreadedRunner(
        System(pipes=[[Writer, Counting]]), env=env
    )
    runner.start()
    try:
        writer = runner.get(Writer)
        counting = runner.get(Counting)
        assert (writer.name, counting.name) == ("Writer", "Counting")
        writer.write("hello")
        assert counting.recorder.max_tracking_id("Writer") == 1
        assert [e.event_type for e in counting.read()] == ["Counted.Created"]
    finally:
        runner.stop()


# -- 5. errors of a wrong key are not eventsourcing's types -----------------------------------


def test_a_wrong_key_raises_what_eventsourcing_users_catch(tmp_path: Path) -> None:
    settings = DomainSettings.from_env(sqlite_path=tmp_path / "events.db", encryption=False)
    writer = EventStoreApplication(
        settings=settings.model_copy(update={"encryption": True}), key_ring=KeyRing.generate("k1")
    )
    note = Note("x")
    writer.save(note)
    writer.close()
    reader = EventStoreApplication(
        settings=settings.model_copy(update={"encryption": True}), key_ring=KeyRing.generate("k1")
    )
    try:
        with pytest.raises(MapperDeserialisationError):
            reader.repository.get(note.id)
        with pytest.raises(ValueError, match="failed authentication"):
            reader.repository.get(note.id)
    finally:
        reader.close()

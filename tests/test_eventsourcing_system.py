"""eventsourcing's systems run safereplay applications, on SQLite and on PostgreSQL.

A ``System`` of a safereplay leader and a safereplay process application
(:class:`~safereplay.domain.EventStoreProcessApplication`), run by
``SingleThreadedRunner`` and ``MultiThreadedRunner``: the follower decodes the
leader's sealed events with its key ring and records its own, sealed, with the
leader's position. A follower without the key stops with a key error naming
the row, and records nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from eventsourcing.application import ProcessingEvent
from eventsourcing.dispatch import singledispatchmethod
from eventsourcing.domain import Aggregate, DomainEventProtocol
from eventsourcing.persistence import MapperDeserialisationError
from eventsourcing.system import (
    EventProcessingError,
    MultiThreadedRunner,
    Runner,
    SingleThreadedRunner,
    System,
)

from safereplay.domain import (
    EventDecryptionError,
    EventStoreApplication,
    EventStoreProcessApplication,
    KeyRing,
    UnknownKeyId,
)

EnvFactory = Callable[..., dict[str, str]]


class Note(Aggregate):
    def __init__(self, text: str) -> None:
        self.text = text


class Tally(Aggregate):
    def __init__(self, note_id: UUID, text: str) -> None:
        self.note_id = note_id
        self.text = text


class Notes(EventStoreApplication):
    def write(self, text: str) -> UUID:
        note = Note(text)
        self.save(note)
        return note.id


class Tallies(EventStoreProcessApplication):
    @singledispatchmethod
    def policy(
        self, domain_event: DomainEventProtocol[UUID], processing_event: ProcessingEvent[UUID]
    ) -> None:
        if isinstance(domain_event, Note.Created):
            processing_event.collect_events(Tally(domain_event.originator_id, domain_event.text))


#: No SAFEREPLAY_* variable of the shell reaches these applications (conftest).
pytestmark = pytest.mark.usefixtures("clean_safereplay_environment")


@pytest.fixture(params=["sqlite", "postgres"])
def system_env(request: pytest.FixtureRequest, tmp_path: Path, key_file: Path) -> EnvFactory:
    """One env for the runner: each application's store named with its class's prefix."""

    def make(**per_app: str) -> dict[str, str]:
        env = {"SAFEREPLAY_KEY_FILE": str(key_file)}
        if request.param == "sqlite":
            env.update(
                NOTES_SAFEREPLAY_SQLITE_PATH=str(tmp_path / "notes.db"),
                TALLIES_SAFEREPLAY_SQLITE_PATH=str(tmp_path / "tallies.db"),
            )
        else:
            dsn = request.getfixturevalue("postgres_dsn")
            env.update(
                SAFEREPLAY_BACKEND="postgres",
                SAFEREPLAY_POSTGRES_DSN=dsn,
                SAFEREPLAY_POSTGRES_SCHEMA=request.getfixturevalue("pg_schema"),
                # On PostgreSQL the application name prefixes the tables.
                NOTES_SAFEREPLAY_APPLICATION_NAME="notes",
                TALLIES_SAFEREPLAY_APPLICATION_NAME="tallies",
            )
        env.update(per_app)
        return env

    return make


def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> bool:
    done = threading.Event()
    for _ in range(int(timeout / 0.05)):
        if condition():
            return True
        done.wait(0.05)
    return condition()


@pytest.mark.parametrize("runner_class", [SingleThreadedRunner, MultiThreadedRunner])
def test_a_safereplay_process_application_follows_a_safereplay_leader(
    system_env: EnvFactory, runner_class: type[Runner[UUID]]
) -> None:
    runner = runner_class(System(pipes=[[Notes, Tallies]]), env=system_env())
    runner.start()
    try:
        notes = runner.get(Notes)
        tallies = runner.get(Tallies)
        first = notes.write("first")
        second = notes.write("second")
        assert wait_for(lambda: tallies.recorder.max_tracking_id("Notes") == 2)
        read = tallies.read()
        assert [e.event_type for e in read] == ["Tally.Created", "Tally.Created"]
        assert [(e.payload["note_id"], e.payload["text"]) for e in read] == [
            (first, "first"),
            (second, "second"),
        ]
        # The follower's own events are sealed with the ring too.
        stored = tallies.recorder.select_events(read[0].aggregate_id)
        assert b"first" not in stored[0].state
        assert notes.settings.application_name != tallies.settings.application_name or (
            notes.settings.sqlite_path != tallies.settings.sqlite_path
        )
    finally:
        runner.stop()


def test_a_follower_without_the_key_stops_with_a_key_error(
    system_env: EnvFactory, tmp_path: Path
) -> None:
    other = tmp_path / "other-keys.json"
    KeyRing.generate("other").save(other)
    env = system_env(TALLIES_SAFEREPLAY_KEY_FILE=str(other))
    runner: SingleThreadedRunner[UUID] = SingleThreadedRunner(
        System(pipes=[[Notes, Tallies]]), env=env
    )
    runner.start()
    try:
        notes, tallies = runner.get(Notes), runner.get(Tallies)
        with pytest.raises(UnknownKeyId, match="'k1'") as caught:
            notes.write("secret")
        assert isinstance(caught.value, MapperDeserialisationError)
        assert "secret" not in str(caught.value)
        assert tallies.recorder.max_tracking_id("Notes") in (None, 0)
        assert tallies.read() == []
    finally:
        runner.stop()


def test_a_follower_with_encryption_off_says_the_events_are_encrypted(
    system_env: EnvFactory,
) -> None:
    env = system_env(TALLIES_SAFEREPLAY_ENCRYPTION="false")
    env["NOTES_SAFEREPLAY_KEY_FILE"] = env.pop("SAFEREPLAY_KEY_FILE")
    runner: MultiThreadedRunner[UUID] = MultiThreadedRunner(
        System(pipes=[[Notes, Tallies]]), env=env
    )
    runner.start()
    try:
        runner.get(Notes).write("secret")
        with pytest.raises(EventProcessingError) as caught:
            runner.watch_for_errors(timeout=20)  # stops the runner, re-raises
    finally:
        if runner.apps:
            runner.stop()
    assert isinstance(caught.value.__cause__, EventDecryptionError)
    assert "encryption is turned off" in str(caught.value.__cause__)


def test_eventsourcing_leader_classes_are_made_from_safereplay_applications() -> None:
    """System mixes eventsourcing's Leader into a leader class by its name."""
    system = System(pipes=[[Notes, Tallies]])
    leader_class: Any = system.leader_cls("Notes")
    assert leader_class.name == "Notes" and issubclass(leader_class, Notes)

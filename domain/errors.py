"""Errors raised by the write side.

Every error safereplay's domain layer raises derives from :class:`DomainError`;
third-party errors (pydantic, cryptography, eventsourcing, the database
drivers) are translated where they are caught, with ``raise ... from``::

    DomainError
    ├── ConfigurationError        settings or environment are wrong; says what to change
    ├── InvalidInput              external input failed validation; names every bad field
    │   ├── MalformedJSON         the input is not JSON at all
    │   ├── UnknownEventType      an event type that this application does not define
    │   │                         (also eventsourcing's TopicError)
    │   ├── UnknownSchemaVersion  a schema version newer than (or unknown to) the code
    │   │                         (also MapperDeserialisationError, so a ValueError)
    │   └── UndecodableEvent      a stored state that cannot be decoded (damaged
    │                             plaintext or compressed data; also
    │                             MapperDeserialisationError, so a ValueError)
    ├── CommandRejected           valid input that breaks an aggregate's rules
    │   └── AggregateNotFound     the command names an aggregate that does not exist
    ├── KeyRingError              key material problems; never carries key bytes
    │   ├── KeyFileError          the key file is missing, empty, unreadable or malformed
    │   ├── InvalidKey            a key has the wrong length or is not base64
    │   ├── UnknownKeyId          a ciphertext names a key the ring does not hold
    │   │                         (also MapperDeserialisationError, so a ValueError)
    │   └── EventDecryptionError  the ciphertext failed authentication (wrong key, or
    │                             the blob was altered or moved to another row; also
    │                             MapperDeserialisationError, so a ValueError)
    └── SchemaError               the database's schema does not fit this code
        ├── DatabaseSchemaOutdated   a component is missing or older than this code
        │                            and migrate-on-start is off: run `safereplay migrate`
        ├── DatabaseSchemaTooNew     a component is newer than this code (a newer
        │                            release migrated it): upgrade this process
        └── SchemaMigrationFailed    a migration could not run (a lock was not granted
                                     in time, a statement failed); nothing of it stays

**eventsourcing's types too.** Where eventsourcing raises an error of its own in
the same situation, safereplay's error derives from that type as well, so an
``except`` clause written for eventsourcing keeps working on a safereplay
application: eventsourcing's ``Mapper`` raises ``MapperDeserialisationError``
(an ``EventSourcingError`` and a ``ValueError``) when a stored state cannot be
decrypted, decompressed or decoded, and ``resolve_topic`` raises ``TopicError``
for a topic that names no class. The errors above that say *also* are those
types as well as safereplay's.

Messages name key *ids*, aggregate ids, versions and positions, never key
bytes and never decrypted payloads.
"""

from __future__ import annotations

from collections.abc import Sequence

from eventsourcing.persistence import MapperDeserialisationError
from eventsourcing.utils import TopicError

__all__ = [
    "AggregateNotFound",
    "CommandRejected",
    "ConfigurationError",
    "DatabaseSchemaOutdated",
    "DatabaseSchemaTooNew",
    "DomainError",
    "EventDecryptionError",
    "FieldProblem",
    "InvalidInput",
    "InvalidKey",
    "KeyFileError",
    "KeyRingError",
    "MalformedJSON",
    "UndecodableEvent",
    "SchemaError",
    "SchemaMigrationFailed",
    "UnknownEventType",
    "UnknownKeyId",
    "UnknownSchemaVersion",
]


class DomainError(Exception):
    """Base class of every error raised by :mod:`domain`."""


class ConfigurationError(DomainError):
    """Settings are missing or inconsistent; the message says what to change."""


class FieldProblem(tuple[str, str]):
    """One invalid field: ``(dotted.location, what is wrong)``."""

    __slots__ = ()

    def __new__(cls, location: str, message: str) -> FieldProblem:
        return super().__new__(cls, (location, message))

    @property
    def location(self) -> str:
        return self[0]

    @property
    def message(self) -> str:
        return self[1]


class InvalidInput(DomainError):
    """External input was rejected before any aggregate saw it.

    ``problems`` lists every invalid field, not only the first one.
    """

    def __init__(self, what: str, problems: Sequence[FieldProblem]) -> None:
        self.what = what
        self.problems = tuple(problems)
        details = "; ".join(f"{p.location}: {p.message}" for p in self.problems)
        super().__init__(f"invalid {what}: {details}" if details else f"invalid {what}")


class MalformedJSON(InvalidInput):
    """The input could not be parsed as JSON."""


class UnknownEventType(InvalidInput, TopicError):
    """An event type that no registered event class declares.

    Also eventsourcing's ``TopicError``, what ``resolve_topic`` raises for a stored
    event whose topic names no class.
    """


class UnknownSchemaVersion(InvalidInput, MapperDeserialisationError):
    """A schema version that the code cannot read (newer than it knows, or < 1)."""


class UndecodableEvent(InvalidInput, MapperDeserialisationError):
    """A stored state that does not decode (or decompress) to an event's state.

    Also eventsourcing's ``MapperDeserialisationError``, what its ``Mapper`` raises
    when a stored state cannot be deserialised.
    """


class CommandRejected(DomainError):
    """The input was valid but an aggregate's rule refused it; nothing was recorded."""


class AggregateNotFound(CommandRejected):
    """The command names an aggregate id that has no events."""


class KeyRingError(DomainError):
    """Key material is missing or unusable. Never includes key bytes."""


class KeyFileError(KeyRingError):
    """The key file is missing, empty, unreadable, malformed or too widely readable."""


class InvalidKey(KeyRingError):
    """A key is not valid base64 or is not 32 bytes (AES-256)."""


class UnknownKeyId(KeyRingError, MapperDeserialisationError):
    """A stored ciphertext was sealed with a key id that the ring does not hold."""


class EventDecryptionError(KeyRingError, MapperDeserialisationError):
    """Authentication of a stored ciphertext failed.

    Either the key with that id is not the key that sealed it, or the blob was
    modified, truncated, or moved from another row (the row identity is bound
    into the ciphertext as associated data).
    """


class SchemaError(DomainError):
    """The database's schema (``safereplay_schema_versions``) does not fit this code."""


class DatabaseSchemaOutdated(SchemaError):
    """A component's tables are missing or older than this code needs, and this
    process may not migrate them (``SAFEREPLAY_MIGRATE_ON_START=false``)."""


class DatabaseSchemaTooNew(SchemaError):
    """A component's tables were set up by a newer release than this code."""


class SchemaMigrationFailed(SchemaError):
    """A migration was rolled back: a lock was not granted in time, or a step failed."""

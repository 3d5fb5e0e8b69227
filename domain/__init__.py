"""safereplay's write side: enveloped, validated, encrypted events on eventsourcing."""

from safereplay.domain.application import EventStoreApplication
from safereplay.domain.automation import Run, Workflow
from safereplay.domain.automation_app import AutomationApp
from safereplay.domain.cipher import KeyRingCipher
from safereplay.domain.edge import EdgeModel, MessageRegistry, ParsedMessage
from safereplay.domain.envelope import Envelope, RecordingContext, event_id_for, recording
from safereplay.domain.errors import (
    AggregateNotFound,
    CommandRejected,
    ConfigurationError,
    DomainError,
    EventDecryptionError,
    InvalidInput,
    InvalidKey,
    KeyFileError,
    KeyRingError,
    MalformedJSON,
    UndecodableEvent,
    UnknownEventType,
    UnknownKeyId,
    UnknownSchemaVersion,
)
from safereplay.domain.events import EnvelopedAggregate
from safereplay.domain.keyring import KeyRing
from safereplay.domain.mapper import EnvelopeMapper
from safereplay.domain.process import EventStoreProcessApplication
from safereplay.domain.settings import DEFAULT_POSTGRES_DSN, DomainSettings

__all__ = [
    "DEFAULT_POSTGRES_DSN",
    "AggregateNotFound",
    "AutomationApp",
    "CommandRejected",
    "ConfigurationError",
    "DomainError",
    "DomainSettings",
    "EdgeModel",
    "Envelope",
    "EnvelopeMapper",
    "EnvelopedAggregate",
    "EventDecryptionError",
    "EventStoreApplication",
    "EventStoreProcessApplication",
    "InvalidInput",
    "InvalidKey",
    "KeyFileError",
    "KeyRing",
    "KeyRingCipher",
    "KeyRingError",
    "MalformedJSON",
    "MessageRegistry",
    "ParsedMessage",
    "RecordingContext",
    "Run",
    "UndecodableEvent",
    "UnknownEventType",
    "UnknownKeyId",
    "UnknownSchemaVersion",
    "Workflow",
    "event_id_for",
    "recording",
]

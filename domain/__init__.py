"""safereplay's write side: enveloped, validated, encrypted events on eventsourcing."""

from domain.application import EventStoreApplication
from domain.automation import Run, Workflow
from domain.automation_app import AutomationApp
from domain.edge import EdgeModel, MessageRegistry, ParsedMessage
from domain.envelope import Envelope, RecordingContext, event_id_for, recording
from domain.errors import (
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
    UnknownEventType,
    UnknownKeyId,
    UnknownSchemaVersion,
)
from domain.events import EnvelopedAggregate
from domain.keyring import KeyRing
from domain.mapper import EnvelopeMapper
from domain.settings import DEFAULT_POSTGRES_DSN, DomainSettings

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
    "InvalidInput",
    "InvalidKey",
    "KeyFileError",
    "KeyRing",
    "KeyRingError",
    "MalformedJSON",
    "MessageRegistry",
    "ParsedMessage",
    "RecordingContext",
    "Run",
    "UnknownEventType",
    "UnknownKeyId",
    "UnknownSchemaVersion",
    "Workflow",
    "event_id_for",
    "recording",
]

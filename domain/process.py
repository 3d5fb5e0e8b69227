"""A safereplay process application for eventsourcing's systems.

eventsourcing's ``System`` runs pipes of applications: a leader's new events
prompt its followers, which pull them, decode them with a mapper built for the
leader (``Follower.follow``) and record what their ``policy`` decides together
with the leader's position (a tracking record), in one transaction.

:class:`EventStoreProcessApplication` is eventsourcing's ``ProcessApplication``
with safereplay's store: its own events are enveloped and sealed, and the
mapper it builds for each leader is an
:class:`~safereplay.domain.mapper.EnvelopeMapper` holding its key ring. A
follower that lacks the key that sealed a leader's event stops with
``UnknownKeyId`` (``EventDecryptionError`` with a wrong key or with encryption
off) naming the row, never with a wrongly decoded event.

A safereplay leader needs nothing more: ``System`` makes any application a
leader (``Leader`` mixed in by class name). Each application of a system has
its own store: give each its ``SAFEREPLAY_SQLITE_PATH`` (or, on PostgreSQL, its
``SAFEREPLAY_APPLICATION_NAME``, the table prefix), for instance through the
runner's ``env`` with the class's name as prefix
(``PROC_SAFEREPLAY_SQLITE_PATH``).
"""

from __future__ import annotations

from uuid import UUID

from eventsourcing.system import ProcessApplication

from safereplay.domain.application import EventStoreApplication

__all__ = ["EventStoreProcessApplication"]


class EventStoreProcessApplication(EventStoreApplication, ProcessApplication[UUID]):
    """eventsourcing's ``ProcessApplication`` on safereplay's event store.

    Subclass it and register ``policy`` handlers as with eventsourcing
    (``@singledispatchmethod`` ``policy(domain_event, processing_event)``);
    constructed like :class:`~safereplay.domain.application.EventStoreApplication`.
    """

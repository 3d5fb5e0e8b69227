"""Errors raised by the projections layer.

Every error :mod:`projections` raises derives from :class:`ProjectionError`, but
one: the PostgreSQL high-water mark's own :class:`WatermarkError` (drawn below).
Third-party errors (psycopg, sqlite3) are translated where they are caught, at
the store and event-source adapters, with ``raise ... from``::

    ProjectionError
    ├── ProjectionDefinitionError  a projection class is invalid (name, tables, handlers)
    │   └── InvalidWrite           a handler wrote what its tables cannot hold
    ├── UnknownProjection          the store has no projection (or build) of that name
    ├── VersionMismatch            the live build was built by another projection version
    ├── PositionConflict           the optimistic position check failed: another
    │                              worker moved the position (fencing)
    │   └── FencedOff              the commit's fence (e.g. a job lease) no longer holds
    ├── PartitioningMismatch       a build's positions are kept in another partitioning
    ├── RedriveConflict            parked events were redriven by someone else meanwhile
    ├── HandlerFailed              an event could not be applied (handler or decoding
    │                              error) and the failure policy said "fail"
    ├── StoreError                 the projection store or the event source failed
    │   └── DatabaseUnavailable    transient: connection lost, server down, database
    │                              busy or locked; the runner retries with back-off
    └── WaitTimeout                wait_for_position ran out of time (also a TimeoutError)

    Exception
    └── WatermarkError             the PostgreSQL high-water mark cannot be computed
                                   safely (raised by PostgresHighWaterMark, which
                                   stands alone; the PostgreSQL event source turns it
                                   into StoreError / DatabaseUnavailable)

Messages name projections, builds, partitions, positions, aggregate ids and event
types; never decrypted payloads, never connection strings.
"""

from __future__ import annotations

from uuid import UUID

__all__ = [
    "DatabaseUnavailable",
    "FencedOff",
    "HandlerFailed",
    "InvalidWrite",
    "ParkedEventNotFound",
    "PartitioningMismatch",
    "PositionConflict",
    "RedriveConflict",
    "ProjectionDefinitionError",
    "ProjectionError",
    "StoreError",
    "UnknownProjection",
    "VersionMismatch",
    "WaitTimeout",
    "WatermarkError",
]


class ProjectionError(Exception):
    """Base class of every error raised by :mod:`projections`."""


class ProjectionDefinitionError(ProjectionError):
    """A projection class is invalid; the message says what to change."""


class InvalidWrite(ProjectionDefinitionError):
    """A handler wrote an unknown table or column, or a value of the wrong type."""


class UnknownProjection(ProjectionError):
    """The store holds no projection (or no such build) by that name."""


class VersionMismatch(ProjectionError):
    """The live build was built by a different version of the projection's code."""


class PositionConflict(ProjectionError):
    """The stored position is not the one this writer started from.

    Another worker committed to the same projection partition in the meantime;
    the batch was rolled back. Issue 4's partition leases rely on this as a fence.
    """

    def __init__(
        self,
        projection: str,
        build: int,
        partition: str,
        *,
        expected: int,
        found: int | None,
    ) -> None:
        self.projection = projection
        self.build = build
        self.partition = partition
        self.expected = expected
        self.found = found
        where = f"projection {projection!r} build {build} partition {partition}"
        now = "is missing" if found is None else f"is now {found}"
        super().__init__(
            f"{where}: expected position {expected} but it {now}; another worker "
            "committed to this partition, the batch was rolled back"
        )


class FencedOff(PositionConflict):
    """The commit's fence no longer holds: the writer lost its lease; nothing was written."""

    def __init__(self, projection: str, build: int, partition: str, *, fence: str) -> None:
        ProjectionError.__init__(
            self,
            f"projection {projection!r} build {build} partition {partition}: {fence} no "
            "longer holds (the lease was taken over or released); the batch was rolled back",
        )
        self.projection = projection
        self.build = build
        self.partition = partition
        self.expected = -1
        self.found = None


class PartitioningMismatch(ProjectionError):
    """A build's positions are kept in one partitioning at a time.

    Running a build in two partitionings at once would apply events twice; a
    recovery job moves a build between partitionings with
    :meth:`~safereplay.projections.store.ProjectionStore.repartition`.
    """


class ParkedEventNotFound(ProjectionError):
    """No event is parked now at that position of that build (never parked there, or
    re-driven or skipped already)."""


class RedriveConflict(ProjectionError):
    """Some parked events were resolved by a concurrent redrive; nothing was written."""

    def __init__(self, projection: str, build: int, *, expected: int, resolved: int) -> None:
        super().__init__(
            f"projection {projection!r} build {build}: only {resolved} of {expected} parked "
            "events were still unresolved (another redrive ran meanwhile); rolled back, "
            "run the redrive again"
        )


class HandlerFailed(ProjectionError):
    """An event could not be applied and the failure policy decided to stop.

    Names the projection, the position, the aggregate, the event type and the
    exception's type and first line; the event's payload is never included. The
    original exception is the ``__cause__``.
    """

    def __init__(
        self,
        projection: str,
        *,
        position: int,
        aggregate_id: UUID,
        aggregate_version: int,
        event_type: str,
        error: BaseException,
        attempt: int,
        reason: str = "",
    ) -> None:
        self.projection = projection
        self.position = position
        self.aggregate_id = aggregate_id
        self.aggregate_version = aggregate_version
        self.event_type = event_type
        self.error_type = type(error).__name__
        self.error_message = error_summary(error)
        self.attempt = attempt
        because = f" ({reason})" if reason else ""
        super().__init__(
            f"projection {projection!r} cannot apply position {position} "
            f"({event_type} of aggregate {aggregate_id} version {aggregate_version}), "
            f"attempt {attempt}: {self.error_type}: {self.error_message}{because}"
        )


class LiveBuildChanged(ProjectionError):
    """A build was to replace the live build ``expected``, but another one went live
    meanwhile (a second swap or rollback at the same time): nothing was changed."""

    def __init__(self, projection: str, build: int, *, expected: int, found: int | None) -> None:
        if found == build:
            now = f"build {build} of {projection!r} is live already"
        else:
            now = f"build {build} of {projection!r} was to replace live build {expected}, but " + (
                "no build is live now" if found is None else f"build {found} is live now"
            )
        super().__init__(f"{now} (another swap or rollback went first); nothing was changed")
        self.projection, self.build, self.expected, self.found = projection, build, expected, found


class StoreError(ProjectionError):
    """The projection store or the event source failed (not transient)."""


class DatabaseUnavailable(StoreError):
    """Transient: the connection was lost, the server is down or the database is busy."""


class WaitTimeout(ProjectionError, TimeoutError):
    """``wait_for_position`` ran out of time before the projection got there."""


class WatermarkError(Exception):
    """The high-water mark cannot be computed safely; the message says why.

    Not a :class:`ProjectionError`: :class:`~safereplay.projections.postgres_watermark.
    PostgresHighWaterMark` is usable on its own, and its users catch this one error.
    """


def error_summary(error: BaseException, *, limit: int = 300) -> str:
    """First line of an exception's message, bounded (no tracebacks, no dumps)."""
    text = str(error).strip()
    line = text.splitlines()[0] if text else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"

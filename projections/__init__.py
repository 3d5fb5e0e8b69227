"""Read models that track their position atomically with their state.

- :mod:`projections.projection`: the projection API (tables, ``@handles``);
- :mod:`projections.batch`: the batch state handlers write to;
- :mod:`projections.store`, :mod:`projections.sqlite`, :mod:`projections.postgres`:
  tables, positions, builds and parked events, one transaction per batch;
- :mod:`projections.source`: the notification log, read below the high-water mark
  (:mod:`projections.watermark`, :mod:`projections.postgres_watermark`);
- :mod:`projections.runner`: catch-up and live following;
- :mod:`projections.failure`: the failure-policy seam;
- :mod:`projections.status`: lag, status and read-your-writes;
- :mod:`projections.reference`: the reference projections.
"""

from projections.backends import open_source, open_store
from projections.batch import BatchState, MergeShape, TableWrites
from projections.errors import (
    DatabaseUnavailable,
    FencedOff,
    HandlerFailed,
    InvalidWrite,
    PartitioningMismatch,
    PositionConflict,
    ProjectionDefinitionError,
    ProjectionError,
    StoreError,
    UnknownProjection,
    VersionMismatch,
    WaitTimeout,
)
from projections.failure import Decision, EventFailure, EventRef, FailFast, FailurePolicy
from projections.postgres import PostgresEventSource, PostgresProjectionStore
from projections.postgres_watermark import PostgresHighWaterMark
from projections.projection import Column, ColumnType, Projection, Table, handles
from projections.reference import (
    REFERENCE_PROJECTIONS,
    FailedSteps,
    RunStatusBoard,
    WorkflowStatistics,
)
from projections.runner import (
    FAULT_POINTS,
    BatchResult,
    CatchUpResult,
    ProjectionRunner,
    RunnerOptions,
    RunnerThread,
)
from projections.settings import ProjectionSettings
from projections.source import EventSource, Partition, partition_of
from projections.sqlite import SQLiteEventSource, SQLiteProjectionStore
from projections.status import (
    PartitionStatus,
    ProjectionStatus,
    StatusReport,
    projection_status,
    status,
    wait_for_position,
)
from projections.store import BuildInfo, Checkpoint, Fence, ParkedEvent, ProjectionStore
from projections.watermark import HighWaterMark, SkippedHole, SQLiteHighWaterMark

__all__ = [
    "FAULT_POINTS",
    "REFERENCE_PROJECTIONS",
    "BatchResult",
    "BatchState",
    "BuildInfo",
    "CatchUpResult",
    "Checkpoint",
    "Column",
    "ColumnType",
    "DatabaseUnavailable",
    "Decision",
    "EventFailure",
    "EventRef",
    "EventSource",
    "FailFast",
    "FencedOff",
    "FailedSteps",
    "Fence",
    "FailurePolicy",
    "HandlerFailed",
    "HighWaterMark",
    "InvalidWrite",
    "MergeShape",
    "ParkedEvent",
    "Partition",
    "PartitioningMismatch",
    "PartitionStatus",
    "PositionConflict",
    "PostgresEventSource",
    "PostgresHighWaterMark",
    "PostgresProjectionStore",
    "Projection",
    "ProjectionDefinitionError",
    "ProjectionError",
    "ProjectionRunner",
    "ProjectionSettings",
    "ProjectionStatus",
    "ProjectionStore",
    "RunStatusBoard",
    "RunnerOptions",
    "RunnerThread",
    "SQLiteEventSource",
    "SQLiteHighWaterMark",
    "SQLiteProjectionStore",
    "SkippedHole",
    "StatusReport",
    "StoreError",
    "Table",
    "TableWrites",
    "UnknownProjection",
    "VersionMismatch",
    "WaitTimeout",
    "WorkflowStatistics",
    "handles",
    "open_source",
    "open_store",
    "partition_of",
    "projection_status",
    "status",
    "wait_for_position",
]

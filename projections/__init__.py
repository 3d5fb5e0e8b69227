"""Read models that track their position atomically with their state.

- :mod:`safereplay.projections.projection`: the projection API (``@handles``), with
  :mod:`safereplay.projections.tables` (the tables a projection declares);
- :mod:`safereplay.projections.batch`: the batch state handlers write to;
- :mod:`safereplay.projections.store`: tables, positions, builds and parked events,
  one transaction per batch;
- :mod:`safereplay.projections.source`: the notification log, read below the high-water mark
  (:mod:`safereplay.projections.watermark`, :mod:`safereplay.projections.postgres_watermark`);
- the backends, side by side: :mod:`safereplay.projections.sqlite` and
  :mod:`safereplay.projections.postgres` (each a store, a source and a connection
  module), their logic written once (:mod:`safereplay.projections.sql_store`,
  :mod:`safereplay.projections.sql_source`), their SQL too
  (:mod:`safereplay.projections.store_sql`, :mod:`safereplay.projections.source_sql`,
  :mod:`safereplay.projections.sqltemplate`);
- :mod:`safereplay.projections.runner`: catch-up and live following, reading the next
  batch while one commits where that pays (:mod:`safereplay.projections.read_ahead`);
- :mod:`safereplay.projections.failure`: the failure-policy seam;
- :mod:`safereplay.projections.replay_context`: why a handler runs (live, catch-up,
  rebuild, replay, re-delivery), for handlers to read;
- :mod:`safereplay.projections.observer`: the seam for process metrics;
- :mod:`safereplay.projections.status`: lag, status and read-your-writes;
- :mod:`safereplay.projections.reference`: the reference projections.
"""

from safereplay.projections.backends import open_source, open_store
from safereplay.projections.batch import BatchState, MergeShape, TableWrites
from safereplay.projections.errors import (
    DatabaseUnavailable,
    FencedOff,
    HandlerFailed,
    InvalidWrite,
    LiveBuildChanged,
    PartitioningMismatch,
    PositionConflict,
    ProjectionDefinitionError,
    ProjectionError,
    StoreError,
    UnknownProjection,
    VersionMismatch,
    WaitTimeout,
)
from safereplay.projections.failure import Decision, EventFailure, EventRef, FailFast, FailurePolicy
from safereplay.projections.observer import NO_OBSERVER, NoObserver, RunnerObserver
from safereplay.projections.postgres_source import PostgresEventSource
from safereplay.projections.postgres_store import PostgresProjectionStore
from safereplay.projections.postgres_watermark import PostgresHighWaterMark
from safereplay.projections.projection import Projection, handles
from safereplay.projections.reference import (
    REFERENCE_PROJECTIONS,
    FailedSteps,
    RunStatusBoard,
    WorkflowStatistics,
)
from safereplay.projections.replay_context import (
    ReplayContext,
    ReplayReason,
    current_replay_context,
    replaying,
)
from safereplay.projections.runner import (
    FAULT_POINTS,
    BatchResult,
    CatchUpResult,
    ProjectionRunner,
    RunnerOptions,
    RunnerThread,
)
from safereplay.projections.settings import ProjectionSettings
from safereplay.projections.source import (
    READ_AHEAD_MODES,
    EventSource,
    Partition,
    ReadAheadMode,
    partition_of,
)
from safereplay.projections.sqlite_source import SQLiteEventSource
from safereplay.projections.sqlite_store import SQLiteProjectionStore
from safereplay.projections.status import (
    PartitionStatus,
    ProjectionStatus,
    StatusReport,
    projection_status,
    status,
    wait_for_position,
)
from safereplay.projections.store import (
    BuildInfo,
    Checkpoint,
    Fence,
    ParkedEvent,
    ProjectionStore,
    Tally,
)
from safereplay.projections.tables import Column, ColumnType, Table
from safereplay.projections.watermark import HighWaterMark, SkippedHole, SQLiteHighWaterMark

__all__ = [
    "FAULT_POINTS",
    "NO_OBSERVER",
    "READ_AHEAD_MODES",
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
    "FailedSteps",
    "FailurePolicy",
    "Fence",
    "FencedOff",
    "HandlerFailed",
    "HighWaterMark",
    "InvalidWrite",
    "LiveBuildChanged",
    "MergeShape",
    "NoObserver",
    "ParkedEvent",
    "Partition",
    "PartitionStatus",
    "PartitioningMismatch",
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
    "ReadAheadMode",
    "ReplayContext",
    "ReplayReason",
    "RunStatusBoard",
    "RunnerObserver",
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
    "Tally",
    "UnknownProjection",
    "VersionMismatch",
    "WaitTimeout",
    "WorkflowStatistics",
    "current_replay_context",
    "handles",
    "open_source",
    "open_store",
    "partition_of",
    "projection_status",
    "replaying",
    "status",
    "wait_for_position",
]

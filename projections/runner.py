"""One runner for catch-up and live following, one transaction per batch.

Per batch:

1. read the partition's committed position (cached between batches) and the
   log's high-water mark; read at most ``batch_size`` notifications with
   ``position < p <= mark``, filtered by topic and partition in the database;
2. skip any notification at or below the committed position (a re-delivery is a
   no-op), decrypt and decode the others, and apply their handlers to a fresh
   :class:`~safereplay.projections.batch.BatchState`;
3. commit the batch's folded writes **and** the new position in one transaction,
   guarded by the position the batch started from.

The new position is the last notification read when the batch was full, else
the high-water mark itself (every matching event up to it has been applied).

Crash anywhere and restart: before the commit nothing of the batch is in the
database; after it, everything is, with the position. A restarted runner starts
from the committed position, so no event is missed or applied twice. Tests make
the crash points injectable: ``faults`` is called with ``"before_read"``,
``"before_apply"``, ``"after_event"`` (after each applied event),
``"before_commit"``, ``"in_commit"`` (inside the transaction, writes flushed,
position not yet moved) and ``"after_commit"``; whatever it raises propagates.

A lost connection (:class:`~safereplay.projections.errors.DatabaseUnavailable`, translated
from psycopg or sqlite3 by the adapters) is retried with exponential back-off and
the batch re-applied from the position the store then holds. A handler error
goes to the failure policy (:mod:`safereplay.projections.failure`) after the events before
it are committed. In :meth:`ProjectionRunner.catch_up` and :meth:`run_batch`, a
:class:`~safereplay.projections.errors.PositionConflict` means another worker owns the
partition: the runner stops with it (a recovery worker counts it and goes on).

Live following (:meth:`ProjectionRunner.follow`) polls with back-off on SQLite
(``poll_interval`` doubling to ``max_poll_interval``, reset when events arrive)
and waits for a NOTIFY on PostgreSQL, re-polling every ``repoll_interval``
anyway, so a lost notification or a killed listening connection never leaves
it idle. A follower that meets a position moved by someone else (a recovery job that
took the build over and gave it back, or another follower) re-reads it and goes
on: the position check guarantees nothing was applied twice.

Why this module is long (about 820 lines): it is one class,
whose batch loop, connection retries and failure-policy path share the same
state (the cached position, the blocked aggregates, the attempts of the failing
event) and the one crash-safety argument above. Split by concern, each part
would reach into the others' internals; its values (options, results) are small
and read with it.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal, TypeVar
from uuid import UUID

from eventsourcing.persistence import Notification

from safereplay.domain.envelope import Envelope
from safereplay.projections.batch import BatchState
from safereplay.projections.errors import (
    DatabaseUnavailable,
    FencedOff,
    HandlerFailed,
    PartitioningMismatch,
    PositionConflict,
    ProjectionDefinitionError,
    StoreError,
    error_summary,
)
from safereplay.projections.failure import Decision, EventFailure, EventRef, FailFast, FailurePolicy
from safereplay.projections.observer import NO_OBSERVER, RunnerObserver
from safereplay.projections.projection import Projection
from safereplay.projections.read_ahead import DecodeFailed, Prefetched, ReadAhead
from safereplay.projections.replay_context import ReplayContext, ReplayReason, replaying
from safereplay.projections.settings import ProjectionSettings
from safereplay.projections.source import (
    READ_AHEAD_MODES,
    WHOLE,
    EventSource,
    Partition,
    ReadAheadMode,
)
from safereplay.projections.store import Checkpoint, Fence, ParkedEvent, ProjectionStore

__all__ = [
    "FAULT_POINTS",
    "BatchResult",
    "CatchUpResult",
    "FaultHook",
    "ProjectionRunner",
    "RunnerOptions",
    "RunnerThread",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

FaultHook = Callable[[str], None]
FAULT_POINTS = (
    "before_read",
    "before_apply",
    "after_event",
    "before_commit",
    "in_commit",
    "after_commit",
)


@dataclass(frozen=True)
class RunnerOptions:
    """Batch size and pacing; see :class:`~safereplay.projections.settings.ProjectionSettings`."""

    batch_size: int = 5000
    poll_interval: float = 0.01
    max_poll_interval: float = 1.0
    repoll_interval: float = 1.0
    retry_initial: float = 0.05
    retry_max: float = 5.0
    give_up_after: float | None = None
    #: Read the next batch while this one commits (:mod:`~safereplay.projections.read_ahead`):
    #: ``"off"``, ``"read"`` (the notifications), ``"decode"`` (decoded too), or None for
    #: what the source does best (:attr:`~safereplay.projections.source.EventSource.read_ahead`).
    read_ahead: ReadAheadMode | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if self.read_ahead not in (None, *READ_AHEAD_MODES):
            raise ValueError(
                f"read_ahead must be one of {', '.join(READ_AHEAD_MODES)} or None, "
                f"not {self.read_ahead!r}"
            )
        if min(self.poll_interval, self.max_poll_interval, self.repoll_interval) <= 0:
            raise ValueError("poll intervals must be positive")
        if self.retry_initial <= 0 or self.retry_max < self.retry_initial:
            raise ValueError("retry back-off must be positive, retry_max >= retry_initial")

    @classmethod
    def from_settings(cls, settings: ProjectionSettings) -> RunnerOptions:
        return cls(
            batch_size=settings.batch_size,
            poll_interval=settings.poll_interval,
            max_poll_interval=settings.max_poll_interval,
            repoll_interval=settings.repoll_interval,
            retry_initial=settings.retry_initial,
            retry_max=settings.retry_max,
            give_up_after=settings.give_up_after,
            read_ahead=settings.read_ahead,
        )


@dataclass(frozen=True)
class BatchResult:
    """What one batch did."""

    position: int
    high_water_mark: int
    read: int
    applied: int
    skipped: int
    parked: int
    committed: bool
    retried: bool = False
    stopped: bool = False

    @property
    def caught_up(self) -> bool:
        return self.position >= self.high_water_mark


@dataclass(frozen=True)
class CatchUpResult:
    """Totals of a catch-up."""

    position: int
    high_water_mark: int
    batches: int
    applied: int
    parked: int


@dataclass
class _Applied:
    state: BatchState
    applied: int
    parked: list[ParkedEvent]


@dataclass
class _Failure:
    index: int
    ref: EventRef
    envelope: Envelope | None
    error: Exception
    stage: Literal["decode", "apply"]


class _Stopped(Exception):
    """Internal: stop was requested while backing off."""


@dataclass
class _Attempts:
    position: int = 0
    failures: int = 0
    first_seen: datetime = field(default_factory=lambda: datetime.now(UTC))


class ProjectionRunner:
    """Applies one projection (one partition of it) from ``source`` into ``store``.

    ``build`` defaults to the projection's live build (made on first use); such
    a runner *follows the live build*: after a swap or a rollback,
    :meth:`follow` moves to the new live build and goes on from its position.
    ``policy`` decides about events that cannot be applied (default
    :class:`~safereplay.projections.failure.FailFast`). ``fence`` is checked inside every
    commit (a recovery worker's lease: see :class:`~safereplay.projections.store.Fence`).
    ``on_parked`` is told of the events each commit parked (an audit trail).
    ``observer`` is told of each batch, commit and handler failure (process
    metrics; default: nobody, see :mod:`safereplay.projections.observer`).
    ``faults`` is a test hook (see the module docstring). ``replay``: the replay
    context handlers run in (:mod:`safereplay.projections.replay_context`); default:
    ``catch-up`` inside :meth:`catch_up`, ``live`` otherwise (a follower).
    """

    def __init__(
        self,
        projection: Projection,
        *,
        source: EventSource,
        store: ProjectionStore,
        partition: Partition = WHOLE,
        build: int | None = None,
        options: RunnerOptions | None = None,
        policy: FailurePolicy | None = None,
        fence: Fence | None = None,
        on_parked: Callable[[Sequence[ParkedEvent]], None] | None = None,
        faults: FaultHook | None = None,
        observer: RunnerObserver = NO_OBSERVER,
        replay: ReplayContext | None = None,
    ) -> None:
        cls = type(projection)
        if not partition.is_whole and not cls.partitionable:
            raise ProjectionDefinitionError(
                f"projection {cls.name!r} declares partitionable = False: run it as one partition"
            )
        self.projection = projection
        self.name = cls.name
        self.source = source
        self.store = store
        self.partition = partition
        self.options = options or RunnerOptions()
        self.policy: FailurePolicy = policy or FailFast()
        self.fence = fence
        self._on_parked = on_parked
        self._faults = faults
        self.observer = observer
        self.replay = replay
        self._reason: ReplayReason = "live"
        self._follows_live = build is None
        self._handlers = projection.handlers()
        self._tables = cls.table_map
        self._topics = list(cls.topics)
        self._checkpoint: Checkpoint | None = None
        self._blocked: dict[UUID, int] | None = None
        self._attempts = _Attempts()
        mode = self.options.read_ahead or source.read_ahead
        self._read_ahead = (
            ReadAhead(
                source,
                topics=self._topics,
                partition=partition,
                handlers=self._handlers,
                decode=mode == "decode",
            )
            if mode != "off"
            else None
        )
        #: Events applied, parked and batches committed by this runner object.
        self.applied = 0
        self.parked = 0
        self.commits = 0
        #: Failure-policy retries, and batches retried after a lost connection.
        self.retries = 0
        self.connection_retries = 0
        #: The build this runner writes (the live one unless given).
        self.build: int = self._retrying(lambda: store.prepare(projection, build=build), None)

    def __repr__(self) -> str:
        return f"ProjectionRunner({self.name!r}, build={self.build}, partition={self.partition})"

    # -- public API -----------------------------------------------------------------------

    def run_batch(
        self, stop: threading.Event | None = None, *, until: int | None = None
    ) -> BatchResult:
        """Run one batch (retrying lost connections); the result says what it did.

        ``until`` caps the batch: no event after that position is read, and the
        position stops there (a job's target, so that every partition of a job
        ends at the same position).
        """
        try:
            result = self._retrying(lambda: self._batch(stop, until), stop)
            self.observer.polled(self.name)
            return result
        except _Stopped:
            position = self._checkpoint.position if self._checkpoint is not None else 0
            return BatchResult(position, position, 0, 0, 0, 0, committed=False, stopped=True)

    def catch_up(
        self, stop: threading.Event | None = None, *, until: int | None = None
    ) -> CatchUpResult:
        """Apply batches until the position reaches the high-water mark, or ``until``
        if given (the mark may still be below it: then stop at the mark)."""
        self._reason = "catch-up"  # what handlers see, unless given ``replay``
        try:
            return self._catch_up(stop, until)
        finally:
            self._reason = "live"

    def _catch_up(self, stop: threading.Event | None, until: int | None) -> CatchUpResult:
        batches = applied = parked = 0
        position = hwm = 0
        while stop is None or not stop.is_set():
            result = self.run_batch(stop, until=until)
            if result.stopped:
                break
            batches += 1
            applied += result.applied
            parked += result.parked
            position, hwm = result.position, result.high_water_mark
            if result.caught_up and not result.retried:
                break
        return CatchUpResult(position, hwm, batches, applied, parked)

    def follow(self, stop: threading.Event) -> None:
        """Catch up, then follow new events until ``stop`` is set.

        A runner of the live build moves to the new live build after a swap or a
        rollback. While a recovery job holds the build in another partitioning
        (a partitioned catch-up), it waits and then goes on from the position the
        job leaves.
        """
        pause = self.options.poll_interval
        while not stop.is_set():
            try:
                result = self.run_batch(stop)
            except (PartitioningMismatch, PositionConflict) as exc:
                if isinstance(exc, FencedOff):
                    raise
                # Someone else moved the position: a recovery job took the build over
                # (or gave it back at a later position), or another follower commits
                # too. Nothing of this batch was written: re-read the position, go on.
                self._checkpoint = None
                self._blocked = None
                logger.info("projection %r: %s; re-reading the position", self.name, exc)
                if isinstance(exc, PartitioningMismatch) or exc.found is None:
                    stop.wait(self.options.repoll_interval)  # the job holds the build
                continue
            if result.stopped:
                return
            if result.read or result.retried or not result.caught_up:
                pause = self.options.poll_interval
                if not result.caught_up or result.retried:
                    continue
            if self.source.notifies:
                self.source.wait(self.options.repoll_interval, stop)
            else:
                self.source.wait(pause, stop)
                pause = min(pause * 2, self.options.max_poll_interval)
            if self._follows_live:
                try:
                    self._retrying(self._follow_live_build, stop)
                except _Stopped:
                    return  # stop was requested while backing off from a lost connection

    def _follow_live_build(self) -> None:
        live = self.store.live_build(self.name)
        if live is not None and live != self.build:
            logger.info(
                "projection %r: build %d is live now (was %d); following it",
                self.name,
                live,
                self.build,
            )
            self.build = self.store.prepare(self.projection, build=live)
            self._checkpoint = None
            self._blocked = None

    def in_background(self) -> RunnerThread:
        """A started thread following live; ``stop()`` it (re-raises its error)."""
        thread = RunnerThread(self)
        thread.start()
        return thread

    @property
    def position(self) -> int | None:
        """The position this runner last read or committed, from memory (None: not read
        yet). Another thread may read it (a heartbeat): it never touches the store."""
        checkpoint = self._checkpoint
        return None if checkpoint is None else checkpoint.position

    def checkpoint(self) -> Checkpoint:
        """The committed position of this runner's partition (read from the store)."""
        return self.store.checkpoint(self.name, self.build, self.partition)

    # -- one batch ------------------------------------------------------------------------

    def _fault(self, point: str) -> None:
        if self._faults is not None:
            self._faults(point)

    def _current(self) -> Checkpoint:
        if self._checkpoint is None:
            self._checkpoint = self.store.checkpoint(self.name, self.build, self.partition)
        return self._checkpoint

    def _blocked_aggregates(self) -> dict[UUID, int]:
        if self._blocked is None:
            self._blocked = self.store.blocked_aggregates(self.name, self.build, self.partition)
        return self._blocked

    def _batch(self, stop: threading.Event | None, until: int | None) -> BatchResult:
        checkpoint = self._current()
        if self._blocked:
            # A redrive may have resolved them since: re-read (only while any are blocked).
            self._blocked = None
        self._blocked_aggregates()
        self._fault("before_read")
        limit = self.options.batch_size
        prefetched = self._prefetched(checkpoint, limit)
        envelopes: list[Envelope | DecodeFailed | None] | None = None
        if prefetched is not None:
            # Read (and decoded) while the previous batch committed, up to that batch's
            # mark: complete below it (see projections/read_ahead.py).
            mark, notifications, envelopes = (
                prefetched.upto,
                prefetched.notifications,
                prefetched.envelopes,
            )
        else:
            mark = self.source.high_water_mark()
            if until is not None:
                mark = min(mark, until)
            if mark <= checkpoint.position:
                return BatchResult(checkpoint.position, mark, 0, 0, 0, 0, committed=False)
            notifications = self.source.read(
                after=checkpoint.position,
                upto=mark,
                limit=limit,
                topics=self._topics,
                partition=self.partition,
            )
        target = notifications[-1].id if len(notifications) >= limit else mark
        fresh = [n for n in notifications if checkpoint.position < n.id <= mark]
        skipped = len(notifications) - len(fresh)
        if skipped:
            envelopes = None  # paired with every notification read, not with the fresh ones
        self._fault("before_apply")
        outcome = self._apply(fresh, envelopes)
        if isinstance(outcome, _Failure):
            return self._failed(checkpoint, fresh, outcome, mark, stop, read=len(notifications))
        if self._read_ahead is not None and len(notifications) >= limit and target < mark:
            # Behind: read the batch after this one while this one commits.
            self._read_ahead.start(build=self.build, after=target, upto=mark, limit=limit)
        try:
            committed = self._commit(
                checkpoint, target, outcome.state, outcome.applied, outcome.parked
            )
        except BaseException:
            if self._read_ahead is not None:
                self._read_ahead.discard()  # the position did not move: read it again
            raise
        return BatchResult(
            self._current().position,
            mark,
            len(notifications),
            outcome.applied,
            skipped,
            len(outcome.parked),
            committed=committed,
        )

    def _prefetched(self, checkpoint: Checkpoint, limit: int) -> Prefetched | None:
        """The batch read ahead from the committed position, if there is one."""
        if self._read_ahead is None:
            return None
        return self._read_ahead.take(build=self.build, after=checkpoint.position, limit=limit)

    def _apply(
        self,
        notifications: Sequence[Notification],
        envelopes: Sequence[Envelope | DecodeFailed | None] | None,
    ) -> _Applied | _Failure:
        context = self.replay or ReplayContext(self._reason, self.name)
        with replaying(context):
            return self._apply_events(notifications, envelopes)

    def _apply_events(
        self,
        notifications: Sequence[Notification],
        envelopes: Sequence[Envelope | DecodeFailed | None] | None,
    ) -> _Applied | _Failure:
        state = BatchState(self._tables, self.store.row_reader(self.name, self.build))
        blocked = self._blocked_aggregates()
        applied = 0
        parked: list[ParkedEvent] = []
        # The per-event loop of every catch-up: look-ups are hoisted out of it, and the
        # EventRef (a frozen dataclass, ~1 µs to build) is made only for an event that
        # is parked or fails. The fault hook is a test seam: skipped when not set.
        handlers = self._handlers
        decode = self.source.decode
        faults = self._faults
        for index, notification in enumerate(notifications):
            aggregate_id = notification.originator_id
            if not isinstance(aggregate_id, UUID):
                aggregate_id = _uuid(aggregate_id)
            if blocked:
                blocked_by = blocked.get(aggregate_id)
                if blocked_by is not None:
                    ref = _ref(notification, aggregate_id)
                    parked.append(self._parked_record(ref, None, 0, blocked_by=blocked_by))
                    continue
            handler = handlers.get(notification.topic)
            if handler is None:
                continue  # a source that does not filter by topic
            try:
                if envelopes is None:
                    envelope = decode(notification)
                else:
                    decoded = envelopes[index]
                    if isinstance(decoded, DecodeFailed):
                        raise decoded.error
                    envelope = decoded if decoded is not None else decode(notification)
            except StoreError:
                raise
            except Exception as exc:
                return _Failure(index, _ref(notification, aggregate_id), None, exc, "decode")
            try:
                handler(envelope, state)
            except StoreError:
                raise  # a read through to the store failed: not the handler's fault
            except Exception as exc:
                return _Failure(index, _ref(notification, aggregate_id), envelope, exc, "apply")
            applied += 1
            if faults is not None:
                faults("after_event")
        return _Applied(state, applied, parked)

    def _commit(
        self,
        checkpoint: Checkpoint,
        position: int,
        state: BatchState | None,
        applied: int,
        parked: list[ParkedEvent],
    ) -> bool:
        writes = state.writes() if state is not None else []
        if position == checkpoint.position and not writes and not parked:
            return False
        self._fault("before_commit")
        during = (lambda: self._fault("in_commit")) if self._faults is not None else None
        try:
            self._checkpoint = self.store.commit(
                self.name,
                self.build,
                self.partition,
                expected=checkpoint.position,
                position=position,
                writes=writes,
                applied=applied,
                parked=parked,
                during=during,
                fence=self.fence,
            )
        except BaseException:
            self._checkpoint = None
            raise
        self.applied += applied
        self.parked += len(parked)
        self.commits += 1
        self.observer.committed(self.name, applied, parked)
        for record in parked:
            self._blocked_aggregates().setdefault(record.aggregate_id, record.position)
        if parked and self._on_parked is not None:
            self._on_parked(parked)  # after the commit: they are parked for good
        self._fault("after_commit")
        return True

    # -- failures -------------------------------------------------------------------------

    def _failed(
        self,
        checkpoint: Checkpoint,
        fresh: list[Notification],
        failure: _Failure,
        mark: int,
        stop: threading.Event | None,
        *,
        read: int,
    ) -> BatchResult:
        # Discard the poisoned buffer; re-apply and commit the events before the failure.
        prefix = fresh[: failure.index]
        outcome = self._apply(prefix, None)
        while isinstance(outcome, _Failure):  # a handler that is not deterministic
            failure = outcome
            prefix = fresh[: failure.index]
            outcome = self._apply(prefix, None)
        applied = outcome.applied
        parked = len(outcome.parked)
        self._commit(
            checkpoint, failure.ref.position - 1, outcome.state, outcome.applied, outcome.parked
        )
        checkpoint = self._current()
        attempts = self._attempts
        if attempts.position != failure.ref.position:
            attempts = self._attempts = _Attempts(position=failure.ref.position)
        attempts.failures += 1
        decision = self._decide(failure, attempts.failures)
        self.observer.failed(self.name, failure.error, retrying=decision.action == "retry")
        if decision.action == "retry":
            self.retries += 1
            logger.warning(
                "projection %r: position %d failed (attempt %d, %s: %s); retrying in %.2fs",
                self.name,
                failure.ref.position,
                attempts.failures,
                type(failure.error).__name__,
                error_summary(failure.error),
                decision.delay,
            )
            if decision.delay > 0:
                (stop or threading.Event()).wait(decision.delay)
            return BatchResult(
                checkpoint.position, mark, read, applied, 0, parked, committed=True, retried=True
            )
        if decision.action == "park":
            record = self._parked_record(
                failure.ref, failure.error, attempts.failures, reason=decision.reason
            )
            self._commit(checkpoint, failure.ref.position, None, 0, [record])
            self._attempts = _Attempts()
            logger.warning(
                "projection %r: parked position %d (%s of aggregate %s) after %d attempt(s): %s",
                self.name,
                failure.ref.position,
                failure.ref.event_type,
                failure.ref.aggregate_id,
                record.attempts,
                decision.reason or record.error_type,
            )
            return BatchResult(
                self._current().position,
                mark,
                read,
                applied,
                0,
                parked + 1,
                committed=True,
                retried=True,
            )
        raise HandlerFailed(
            self.name,
            position=failure.ref.position,
            aggregate_id=failure.ref.aggregate_id,
            aggregate_version=failure.ref.aggregate_version,
            event_type=failure.ref.event_type,
            error=failure.error,
            attempt=attempts.failures,
            reason=decision.reason,
        ) from failure.error

    def _decide(self, failure: _Failure, attempt: int) -> Decision:
        return self.policy.decide(
            EventFailure(
                projection=self.name,
                build=self.build,
                partition_index=self.partition.index,
                partition_count=self.partition.count,
                event=failure.ref,
                envelope=failure.envelope,
                error=failure.error,
                attempt=attempt,
                stage=failure.stage,
            )
        )

    def _parked_record(
        self,
        ref: EventRef,
        error: BaseException | None,
        attempts: int,
        *,
        reason: str = "",
        blocked_by: int | None = None,
    ) -> ParkedEvent:
        now = datetime.now(UTC)
        if error is None:
            error_type, message = "Blocked", f"waiting behind parked position {blocked_by}"
            reason = reason or "an earlier event of the same aggregate is parked"
        else:
            error_type, message = type(error).__name__, error_summary(error)
        return ParkedEvent(
            projection=self.name,
            build=self.build,
            position=ref.position,
            partition=self.partition,
            aggregate_id=ref.aggregate_id,
            aggregate_version=ref.aggregate_version,
            topic=ref.topic,
            event_type=ref.event_type,
            error_type=error_type,
            error_message=message,
            attempts=attempts,
            first_seen_at=self._attempts.first_seen if error is not None else now,
            last_seen_at=now,
            reason=reason or "parked by the failure policy",
            blocked_by=blocked_by,
        )

    # -- lost connections -----------------------------------------------------------------

    def _retrying(self, operation: Callable[[], T], stop: threading.Event | None) -> T:
        started: float | None = None
        attempt = 0
        while True:
            try:
                return operation()
            except DatabaseUnavailable as exc:
                self._checkpoint = None
                self._blocked = None
                self.connection_retries += 1
                attempt += 1
                now = time.monotonic()
                started = now if started is None else started
                give_up = self.options.give_up_after
                if give_up is not None and now - started >= give_up:
                    raise
                ceiling = min(
                    self.options.retry_max, self.options.retry_initial * 2 ** min(attempt - 1, 30)
                )
                delay = ceiling * (0.5 + random.random() / 2)  # noqa: S311 - jitter
                logger.warning(
                    "projection %r partition %s: %s; retrying the batch in %.2fs",
                    self.name,
                    self.partition,
                    exc,
                    delay,
                )
                if stop is not None:
                    if stop.wait(delay):
                        raise _Stopped from exc
                else:
                    time.sleep(delay)
            except PositionConflict:
                self._checkpoint = None
                raise


class RunnerThread:
    """A runner following live in a daemon thread; :meth:`stop` joins and re-raises."""

    def __init__(self, runner: ProjectionRunner) -> None:
        self.runner = runner
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, name=f"safereplay-{runner.name}-{runner.partition}", daemon=True
        )

    def _run(self) -> None:
        try:
            self.runner.follow(self.stop_event)
        except BaseException as exc:
            self.error = exc
            logger.error("projection runner %r stopped: %s", self.runner, exc)

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 30.0) -> None:
        self.stop_event.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"{self.runner!r} did not stop within {timeout}s")
        if self.error is not None:
            raise self.error

    def __enter__(self) -> RunnerThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _uuid(value: object) -> UUID:
    return value if isinstance(value, UUID) else UUID(str(value))


def _ref(notification: Notification, aggregate_id: UUID) -> EventRef:
    return EventRef(
        position=notification.id,
        aggregate_id=aggregate_id,
        aggregate_version=notification.originator_version,
        topic=notification.topic,
    )

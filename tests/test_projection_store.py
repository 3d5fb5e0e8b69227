"""The projection store contract, on SQLite and on PostgreSQL.

A batch's writes, its parked events and the new position commit in one
transaction, guarded by the position it started from; the stores' SQL merges
mean what the batch state means; builds live side by side and swap atomically;
every column type round-trips; the store may live in another database.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from projection_fixtures import (
    BATCH_OPS,
    ROWS_TABLE,
    Backend,
    Crash,
    Log,
    OnPostgres,
    OnSQLite,
    PostgresBackend,
    Row,
    apply_sequentially,
    parked_event,
)
from psycopg import sql

from safereplay.domain import Envelope
from safereplay.domain.automation import Run
from safereplay.domain.workload import record_workload
from safereplay.projections import (
    BatchState,
    FencedOff,
    LiveBuildChanged,
    ParkedEvent,
    Partition,
    PartitioningMismatch,
    PositionConflict,
    PostgresProjectionStore,
    Projection,
    ProjectionRunner,
    ProjectionStore,
    RunStatusBoard,
    SQLiteProjectionStore,
    StoreError,
    Table,
    UnknownProjection,
    handles,
)
from safereplay.projections.errors import ParkedEventNotFound, RedriveConflict
from safereplay.projections.store import Fence


class Rows(Projection):
    name = "rows"
    tables = (ROWS_TABLE,)

    @handles(Run.Started)
    def started(self, envelope: Envelope, state: BatchState) -> None:
        pass


class Everything(Projection):
    """One column of each type, and a composite key of every key type."""

    name = "everything"
    tables = (
        Table(
            "values",
            key={"k": "text", "n": "integer", "b": "boolean", "at": "timestamp"},
            values={
                "text": "text",
                "integer": "integer",
                "real": "real",
                "boolean": "boolean",
                "json": "json",
                "timestamp": "timestamp",
            },
        ),
    )

    @handles(Run.Started)
    def started(self, envelope: Envelope, state: BatchState) -> None:
        pass


class Renamed(Everything):
    """Same tables, a new version (for builds)."""

    version = 2


P = Partition()


def parked_behind_the_first(
    aggregate: UUID, positions: list[int], *, seen_at: datetime
) -> list[ParkedEvent]:
    """One aggregate's parked events of ``rows``: the one at position 1 failed, every
    later one waits behind it (blocked)."""
    return [
        parked_event(
            projection="rows",
            position=position,
            partition=P,
            aggregate_id=aggregate,
            aggregate_version=position,
            error_type="ValueError" if position == 1 else "Blocked",
            blocked_by=None if position == 1 else 1,
            seen_at=seen_at,
        )
        for position in positions
    ]


def commit(
    store: ProjectionStore, projection: type[Projection], state: BatchState, **kw: Any
) -> Any:
    name = projection.name
    expected = store.checkpoint(name, kw.pop("build", 1), P).position
    return store.commit(
        name,
        1,
        P,
        expected=expected,
        position=kw.pop("position", expected + 1),
        writes=state.writes(),
        **kw,
    )


def batches_property(max_examples: int) -> Any:
    """The property test, one per backend class (Hypothesis wants one executor each)."""

    @settings(
        max_examples=max_examples,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(batches=st.lists(BATCH_OPS, min_size=1, max_size=4))
    def test_flushed_batches_mean_the_calls_applied_one_by_one(
        self: ProjectionStoreContract, backend: Backend, batches: list[list[tuple[Any, ...]]]
    ) -> None:
        self.check_batches(backend, batches)

    return test_flushed_batches_mean_the_calls_applied_one_by_one


class ProjectionStoreContract:
    @pytest.fixture
    def backend(self) -> Iterator[Backend]:
        raise NotImplementedError

    @pytest.fixture
    def log(self, backend: Backend) -> Iterator[Log]:
        with backend.fresh() as log:
            yield log

    @pytest.fixture
    def store(self, log: Log) -> ProjectionStore:
        return log.store()

    def state(
        self, store: ProjectionStore, projection: type[Projection], build: int = 1
    ) -> BatchState:
        return BatchState(projection.table_map, store.row_reader(projection.name, build))

    # -- preparing and builds --------------------------------------------------------------

    def test_prepare_makes_build_1_live_once(self, store: ProjectionStore) -> None:
        assert store.projection_names() == []
        assert store.builds("rows") == []
        assert store.prepare(Rows) == 1
        assert store.prepare(Rows()) == 1
        [info] = store.builds("rows")
        assert (info.build, info.version, info.status) == (1, 1, "live")
        assert info.tables == ("rows__t__b1",)
        assert store.projection_names() == ["rows"]
        assert store.live_build("rows") == 1
        checkpoint = store.checkpoint("rows", 1, P)
        assert (checkpoint.position, checkpoint.events_applied, checkpoint.committed_at) == (
            0,
            0,
            None,
        )
        with pytest.raises(UnknownProjection, match="no build 7"):
            store.prepare(Rows, build=7)
        with pytest.raises(UnknownProjection, match="no live build"):
            store.rows(Everything, "values")

    def test_builds_live_side_by_side_and_swap_atomically(self, store: ProjectionStore) -> None:
        store.prepare(Everything)
        key = ("a", 1, True, datetime(2026, 1, 1, tzinfo=UTC))
        state = self.state(store, Everything)
        state.put("values", key, {"text": "build one"})
        commit(store, Everything, state)
        build = store.create_build(Renamed)
        assert build == 2
        assert [(i.build, i.status, i.version) for i in store.builds("everything")] == [
            (1, "live", 1),
            (2, "building", 2),
        ]
        assert store.prepare(Renamed, build=2) == 2
        second = BatchState(Everything.table_map, store.row_reader("everything", 2))
        second.put("values", key, {"text": "build two"})
        store.commit("everything", 2, P, expected=0, position=5, writes=second.writes())
        assert store.get(Everything, "values", key)["text"] == "build one"  # type: ignore[index]
        assert store.get(Everything, "values", key, build=2)["text"] == "build two"  # type: ignore[index]
        store.set_live("everything", 2, replacing=1)
        # A second swap that saw build 1 live is refused: build 2 is live already.
        with pytest.raises(LiveBuildChanged, match="build 2 of .everything. is live already"):
            store.set_live("everything", 2, replacing=1)
        assert store.get(Everything, "values", key)["text"] == "build two"  # type: ignore[index]
        assert [c.position for c in store.checkpoints("everything")] == [5]
        assert [(i.build, i.status) for i in store.builds("everything")] == [
            (1, "retired"),
            (2, "live"),
        ]
        with pytest.raises(StoreError, match="is live"):
            store.drop_build("everything", 2)
        store.drop_build("everything", 1)
        assert [i.build for i in store.builds("everything")] == [2]
        with pytest.raises(UnknownProjection):
            store.set_live("everything", 1)

    # -- one transaction per batch ------------------------------------------------------------

    def test_writes_and_position_commit_together(self, store: ProjectionStore) -> None:
        store.prepare(Rows)
        state = self.state(store, Rows)
        state.put("t", 1, {"n": 1, "s": "one"})
        state.merge("t", 2, add={"n": 5})
        checkpoint = store.commit(
            "rows", 1, P, expected=0, position=10, writes=state.writes(), applied=3
        )
        assert (checkpoint.position, checkpoint.events_applied) == (10, 3)
        assert checkpoint.committed_at is not None
        assert [r["n"] for r in store.rows(Rows, "t")] == [1, 5]

        state = self.state(store, Rows)
        state.delete("t", 1)
        state.merge("t", 2, add={"n": 1})

        def crash() -> None:
            raise Crash("inside the transaction")

        with pytest.raises(Crash):
            store.commit(
                "rows", 1, P, expected=10, position=20, writes=state.writes(), during=crash
            )
        assert store.checkpoint("rows", 1, P).position == 10
        assert [r["n"] for r in store.rows(Rows, "t")] == [1, 5], "a crashed batch left writes"

        with pytest.raises(PositionConflict) as info:
            store.commit("rows", 1, P, expected=9, position=20, writes=state.writes(), applied=2)
        assert (info.value.expected, info.value.found) == (9, 10)
        assert "partition 0/1" in str(info.value)
        assert [r["n"] for r in store.rows(Rows, "t")] == [1, 5], "a rejected batch left writes"
        assert store.checkpoint("rows", 1, P).events_applied == 3

        store.commit("rows", 1, P, expected=10, position=20, writes=state.writes(), applied=2)
        assert [(r["k"], r["n"]) for r in store.rows(Rows, "t")] == [(2, 6)]
        with pytest.raises(ValueError, match="cannot move back"):
            store.commit("rows", 1, P, expected=20, position=19)

    def test_positions_are_kept_per_partition(self, store: ProjectionStore) -> None:
        store.prepare(Rows)
        for index in (1, 0):
            store.checkpoint("rows", 1, Partition(index, 2))
        store.commit("rows", 1, Partition(1, 2), expected=0, position=7)
        assert [(str(c.partition), c.position) for c in store.checkpoints("rows")] == [
            ("0/2", 0),
            ("1/2", 7),
        ]

    def check_batches(self, backend: Backend, batches: list[list[tuple[Any, ...]]]) -> None:
        with backend.fresh() as log:
            store = log.store()
            store.prepare(Rows)
            expected: dict[int, Row] = {}
            for number, ops in enumerate(batches):
                state = self.state(store, Rows)
                for op in ops:
                    if op[0] == "get":
                        assert state.get("t", op[1]) == expected.get(op[1])
                        continue
                    if op[0] == "put":
                        state.put("t", op[1], op[2])
                    elif op[0] == "delete":
                        state.delete("t", op[1])
                    else:
                        state.merge("t", op[1], add=op[2], maximum=op[3], minimum=op[4], set=op[5])
                    apply_sequentially(expected, op)
                store.commit(
                    "rows", 1, P, expected=number, position=number + 1, writes=state.writes()
                )
                for row in expected.values():
                    if row["r"] is not None:
                        row["r"] = float(row["r"])
                assert {r["k"]: r for r in store.rows(Rows, "t")} == expected

    def test_merges_from_concurrent_partitions_commute(self, log: Log) -> None:
        stores = [log.store() for _ in range(4)]
        stores[0].prepare(Rows)
        barrier = threading.Barrier(len(stores))

        def partition(index: int) -> None:
            store = stores[index]
            part = Partition(index, len(stores))
            store.checkpoint("rows", 1, part)
            barrier.wait()
            for batch in range(10):
                state = self.state(store, Rows)
                state.merge(
                    "t", 0, add={"n": 1, "r": 0.5}, maximum={"hi": index}, minimum={"lo": -batch}
                )
                state.merge("t", 1, add={"n": index})
                store.commit(
                    "rows", 1, part, expected=batch, position=batch + 1, writes=state.writes()
                )

        threads = [threading.Thread(target=partition, args=(i,)) for i in range(len(stores))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        rows = {r["k"]: r for r in stores[0].rows(Rows, "t")}
        assert (rows[0]["n"], rows[0]["r"], rows[0]["hi"], rows[0]["lo"]) == (40, 20.0, 3, -9)
        assert rows[1]["n"] == 10 * (0 + 1 + 2 + 3)

    # -- values ----------------------------------------------------------------------------

    def test_every_column_type_round_trips(self, store: ProjectionStore) -> None:
        store.prepare(Everything)
        plus_two = timezone(timedelta(hours=2))
        at = datetime(2026, 3, 1, 12, 30, 15, 123456, tzinfo=plus_two)
        full = {
            "text": "héllo '\"; DROP TABLE x; -- ✓",
            "integer": -(2**62),
            "real": 1.5e-7,
            "boolean": False,
            "json": {"nested": [1, 2.5, None, True, "x"], "empty": {}},
            "timestamp": at,
        }
        state = self.state(store, Everything)
        keys = [("k", 1, True, at), (str(uuid4()), -5, False, at + timedelta(microseconds=1))]
        state.put("values", keys[0], full)
        state.put("values", keys[1], {})
        commit(store, Everything, state)
        first = store.get(Everything, "values", keys[0])
        assert first == {
            "k": "k",
            "n": 1,
            "b": True,
            "at": at.astimezone(UTC),
            **full,
            "timestamp": at.astimezone(UTC),
        }
        assert first["timestamp"].tzinfo == UTC and isinstance(first["real"], float)
        second = store.get(Everything, "values", keys[1])
        assert second is not None and all(second[c] is None for c in full)
        assert store.get(Everything, "values", ("nope", 1, True, at)) is None
        assert [r["k"] for r in store.rows(Everything, "values")] == sorted(
            [keys[0][0], keys[1][0]]
        )

    # -- parking ---------------------------------------------------------------------------

    def test_parked_events_commit_with_the_position(self, store: ProjectionStore) -> None:
        store.prepare(Rows)
        now = datetime.now(UTC)
        aggregates = [uuid4() for _ in range(6)]
        parked = [
            parked_event(
                projection="rows",
                position=3 + i,
                partition=P,
                aggregate_id=aggregate,
                attempts=2,
                seen_at=now,
            )
            for i, aggregate in enumerate(aggregates)
        ]
        store.commit("rows", 1, P, expected=0, position=10, parked=parked)
        assert store.parked("rows") == parked
        assert store.checkpoint("rows", 1, P).events_parked == 6
        assert store.blocked_aggregates("rows", 1, P) == {
            a: 3 + i for i, a in enumerate(aggregates)
        }
        halves = [store.blocked_aggregates("rows", 1, p) for p in Partition.all(2)]
        assert halves[0].keys().isdisjoint(halves[1].keys())
        assert halves[0] | halves[1] == store.blocked_aggregates("rows", 1, P)

    # -- partitionings, fences, redrive ---------------------------------------------------

    def execute(self, log: Log, statement: str) -> None:
        """Run ``statement`` in the store's database (and schema)."""
        raise NotImplementedError

    def test_a_build_is_kept_in_one_partitioning_at_a_time(self, store: ProjectionStore) -> None:
        store.prepare(Rows)
        store.commit("rows", 1, P, expected=0, position=5, applied=3)
        with pytest.raises(PartitioningMismatch, match="keeps its positions in 1 partition"):
            store.checkpoint("rows", 1, Partition(0, 3))
        split = store.repartition("rows", 1, 3)
        assert [(str(c.partition), c.position) for c in split] == [
            ("0/3", 5),
            ("1/3", 5),
            ("2/3", 5),
        ]
        assert sum(c.events_applied for c in split) == 3
        # The whole-log row is gone: a runner of it gets a conflict, not a fresh start at 0.
        with pytest.raises(PositionConflict, match="is missing"):
            store.commit("rows", 1, P, expected=5, position=6)
        with pytest.raises(PartitioningMismatch, match="keeps its positions in 3 partition"):
            store.checkpoint("rows", 1, P)
        store.commit("rows", 1, Partition(1, 3), expected=5, position=9)
        with pytest.raises(PartitioningMismatch, match="different positions"):
            store.repartition("rows", 1, 1)
        for index in (0, 2):
            store.commit("rows", 1, Partition(index, 3), expected=5, position=9)
        [whole] = store.repartition("rows", 1, 1)
        assert (whole.partition, whole.position, whole.events_applied) == (P, 9, 3)

    def test_a_commit_goes_through_only_while_its_fence_holds(
        self, log: Log, store: ProjectionStore
    ) -> None:
        store.prepare(Rows)
        self.execute(log, "CREATE TABLE leases (job_id TEXT, part INTEGER, token INTEGER)")
        self.execute(log, "INSERT INTO leases VALUES ('j', 0, 1)")
        held = Fence("leases", (("job_id", "j"), ("part", 0), ("token", 1)), "lease of j/0")
        state = self.state(store, Rows)
        state.put("t", 1, {"n": 1})
        store.commit("rows", 1, P, expected=0, position=1, writes=state.writes(), fence=held)
        self.execute(log, "UPDATE leases SET token = 2")  # taken over by another worker
        state = self.state(store, Rows)
        state.put("t", 2, {"n": 2})
        with pytest.raises(FencedOff, match="lease of j/0 no longer holds"):
            store.commit("rows", 1, P, expected=1, position=2, writes=state.writes(), fence=held)
        assert [r["k"] for r in store.rows(Rows, "t")] == [1]
        assert store.checkpoint("rows", 1, P).position == 1
        with pytest.raises(ValueError, match="SQL identifiers"):
            Fence("leases; drop table x", (("a", 1),), "bad")

    def test_redrive_resolves_parked_events_with_their_writes_once(
        self, store: ProjectionStore
    ) -> None:
        store.prepare(Rows)
        now = datetime.now(UTC)
        aggregate = uuid4()
        parked = parked_behind_the_first(aggregate, [1, 2, 3], seen_at=now)
        store.commit("rows", 1, P, expected=0, position=3, parked=parked)
        state = self.state(store, Rows)
        state.put("t", 7, {"n": 1})
        again = replace(parked[2], attempts=2, error_type="KeyError", last_seen_at=now)
        assert (
            store.resolve_parked("rows", 1, resolved=[1, 2], writes=state.writes(), failed=[again])
            == 2
        )
        assert [(p.position, p.attempts, p.error_type) for p in store.parked("rows")] == [
            (3, 2, "KeyError")
        ]
        assert store.blocked_aggregates("rows", 1, P) == {aggregate: 3}
        assert [r["k"] for r in store.rows(Rows, "t")] == [7]
        state = self.state(store, Rows)
        state.put("t", 8, {"n": 1})
        with pytest.raises(RedriveConflict, match="only 1 of 2"):
            store.resolve_parked("rows", 1, resolved=[2, 3], writes=state.writes())
        assert [r["k"] for r in store.rows(Rows, "t")] == [7]
        assert len(store.parked("rows", include_resolved=True)) == 3

    def test_a_skipped_parked_event_is_resolved_never_applied_and_says_why(
        self, store: ProjectionStore
    ) -> None:
        store.prepare(Rows)
        now = datetime.now(UTC)
        aggregate = uuid4()
        parked = parked_behind_the_first(aggregate, [1, 2], seen_at=now)
        store.commit("rows", 1, P, expected=0, position=2, parked=parked)
        skipped = store.skip_parked("rows", 1, 1, reason="INC-9: the payload can never apply")
        assert skipped.skipped and skipped.resolved_at is not None
        assert skipped.skipped_reason == "INC-9: the payload can never apply"
        # No longer parked now; the one behind it still is, and now heads its aggregate.
        assert [p.position for p in store.parked("rows")] == [2]
        assert store.blocked_aggregates("rows", 1, P) == {aggregate: 2}
        every = store.parked("rows", include_resolved=True)
        assert [(p.position, p.skipped) for p in every] == [(1, True), (2, False)]
        assert store.rows(Rows, "t") == [], "nothing was applied"
        for position in (1, 3):  # skipped already; never parked
            with pytest.raises(ParkedEventNotFound, match=f"parked now at position {position}"):
                store.skip_parked("rows", 1, position, reason="again")
        # A redrive of the one left resolves it as re-driven, not skipped.
        store.resolve_parked("rows", 1, resolved=[2])
        assert [p.skipped for p in store.parked("rows", include_resolved=True)] == [True, False]

    # -- where the store lives ----------------------------------------------------------------

    def test_the_store_may_live_in_another_database(self, log: Log) -> None:
        record_workload(log.app, workflows=1, runs_per_workflow=2)
        other = self.other_store(log)
        try:
            runner = ProjectionRunner(RunStatusBoard(), source=log.source(), store=other)
            assert runner.catch_up().position == log.app.head_position()
            assert len(other.rows(RunStatusBoard, "runs")) == 2
            assert log.store().projection_names() == []
        finally:
            other.close()

    def other_store(self, log: Log) -> ProjectionStore:
        raise NotImplementedError


class TestSQLiteProjectionStore(OnSQLite, ProjectionStoreContract):
    test_flushed_batches_mean_the_calls_applied_one_by_one = batches_property(60)

    def other_store(self, log: Log) -> ProjectionStore:
        return SQLiteProjectionStore(log.settings.sqlite_path.with_name("projections.db"))

    def execute(self, log: Log, statement: str) -> None:
        with sqlite3.connect(log.settings.sqlite_path) as conn:
            conn.execute(statement)

    def test_identifiers_are_quoted(self, store: ProjectionStore) -> None:
        from safereplay.projections.sqlite import quote

        assert quote('a"b') == '"a""b"'


@pytest.mark.postgres
class TestPostgresProjectionStore(OnPostgres, ProjectionStoreContract):
    test_flushed_batches_mean_the_calls_applied_one_by_one = batches_property(40)

    def execute(self, log: Log, statement: str) -> None:
        assert isinstance(log.backend, PostgresBackend)
        schema = log.settings.postgres_schema
        with psycopg.connect(log.backend.dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
            conn.execute(statement.encode())

    def other_store(self, log: Log) -> ProjectionStore:
        assert isinstance(log.backend, PostgresBackend)
        schema = f"{log.settings.postgres_schema}_views"
        log.backend.schemas.append(schema)  # dropped with the backend
        return PostgresProjectionStore(log.backend.dsn, schema=schema)

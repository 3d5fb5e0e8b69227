"""The event source contract, on SQLite and on PostgreSQL.

Reads are bounded by ``after < position <= upto`` and ``limit``, ordered, and
filtered in the database by topic and by partition; the partition computed in
SQL equals :func:`projections.partition_of` for every id; a runner never reads
past the high-water mark.
"""

from __future__ import annotations

import itertools
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from projection_fixtures import Backend, Log, OnPostgres, OnSQLite, PostgresBackend
from psycopg import sql

from safereplay.domain.automation import Run
from safereplay.domain.workload import record_workload
from safereplay.projections import (
    HighWaterMark,
    Partition,
    ProjectionError,
    RunStatusBoard,
    SkippedHole,
    partition_of,
)
from safereplay.projections.backends import open_source

EDGE_IDS = [
    uuid.UUID(int=0),
    uuid.UUID("ffffffff-ffff-ffff-ffff-ffffffffffff"),
    uuid.UUID("7fffffff-0000-0000-0000-000000000000"),
    uuid.UUID("80000000-0000-0000-0000-000000000000"),
    uuid.UUID("00000001-ffff-ffff-ffff-ffffffffffff"),
]


class FixedMark(HighWaterMark):
    def __init__(self, mark: int) -> None:
        self.mark = mark

    def advance(self) -> int:
        return self.mark

    def skipped_holes(self, *, after: int = 0, upto: int | None = None) -> list[SkippedHole]:
        return []


class EventSourceContract:
    @pytest.fixture
    def backend(self) -> Iterator[Backend]:
        raise NotImplementedError

    @pytest.fixture
    def log(self, backend: Backend) -> Iterator[Log]:
        with backend.fresh() as log:
            yield log

    def insert_raw(self, log: Log, ids: list[uuid.UUID]) -> None:
        raise NotImplementedError

    def test_reads_are_bounded_ordered_and_filtered_by_topic(self, log: Log) -> None:
        record_workload(log.app, workflows=2, runs_per_workflow=3)
        source = log.source()
        envelopes = log.envelopes()
        head = log.app.head_position()
        assert source.head() == head == source.high_water_mark()
        assert [n.id for n in source.read(after=0, upto=head, limit=10**6)] == list(
            range(1, head + 1)
        )
        window = source.read(after=5, upto=20, limit=4)
        assert [n.id for n in window] == [6, 7, 8, 9]
        assert source.read(after=20, upto=20, limit=5) == []
        topics = RunStatusBoard.topics
        filtered = source.read(after=3, upto=head - 2, limit=10**6, topics=topics)
        assert [n.id for n in filtered] == [
            e.position for e in envelopes if e.topic in topics and 3 < (e.position or 0) <= head - 2
        ]
        decoded = source.decode(filtered[0])
        assert decoded.position == filtered[0].id and decoded.topic in topics
        assert decoded == envelopes[filtered[0].id - 1]

    def test_the_partition_computed_in_sql_agrees_with_python(self, log: Log) -> None:
        ids = EDGE_IDS + [uuid.uuid4() for _ in range(1500)]
        self.insert_raw(log, ids)
        source = log.source()
        head = source.head()
        everything = source.read(after=0, upto=head, limit=10**6)
        assert [n.originator_id for n in everything] == ids
        for count in (2, 3, 7, 16, 1000):
            seen: set[int] = set()
            for index in range(count):
                rows = source.read(
                    after=0, upto=head, limit=10**6, partition=Partition(index, count)
                )
                assert all(partition_of(n.originator_id, count) == index for n in rows)
                assert source.count(after=0, upto=head, partition=Partition(index, count)) == len(
                    rows
                )
                seen.update(n.id for n in rows)
            assert seen == set(range(1, head + 1)), f"rows lost or duplicated with {count}"

    def test_partition_and_topic_filters_combine(self, log: Log) -> None:
        record_workload(log.app, workflows=2, runs_per_workflow=5)
        source = log.source()
        head = source.head()
        topics = [Run.Completed.__module__ + ":Run.Completed"]
        got = {
            n.id
            for p in Partition.all(3)
            for n in source.read(after=0, upto=head, limit=10**6, topics=topics, partition=p)
        }
        assert (
            got == {e.position for e in log.envelopes() if e.topic == topics[0]} and len(got) == 10
        )
        counted = [
            source.count(after=0, upto=head, topics=topics, partition=p) for p in Partition.all(3)
        ]
        assert sum(counted) == 10 and source.count(after=3, upto=3, topics=topics) == 0
        # The counts of every partition in one scan are the counts one by one.
        for after, count, only in itertools.product((0, 5), (1, 2, 3, 7), (topics, [])):
            one_by_one = [
                source.count(after=after, upto=head, topics=only, partition=p)
                for p in Partition.all(count)
            ]
            in_one_scan = source.count_by_partition(
                after=after, upto=head, partitions=count, topics=only
            )
            assert in_one_scan == one_by_one, (after, count, only)
        assert source.count_by_partition(after=head, upto=head, partitions=3) == [0, 0, 0]
        assert source.count(after=0, upto=head) == head

    def test_an_empty_log_is_at_zero(self, log: Log) -> None:
        source = log.source()
        assert (source.head(), source.high_water_mark()) == (0, 0)
        assert source.read(after=0, upto=10, limit=10) == []

    def test_a_runner_never_reads_past_the_high_water_mark(self, log: Log) -> None:
        record_workload(log.app, workflows=1, runs_per_workflow=3)
        head = log.app.head_position()
        source = log.source()
        source.watermark = FixedMark(head - 5)
        reads: list[dict[str, Any]] = []
        original = source.read

        def spy(**kwargs: Any) -> Any:
            reads.append(kwargs)
            return original(**kwargs)

        source.read = spy  # type: ignore[method-assign]
        runner = log.runner(RunStatusBoard(), source=source, batch_size=3)
        assert runner.catch_up().position == head - 5
        assert reads and all(r["upto"] <= head - 5 for r in reads)
        assert runner.run_batch().read == 0
        source.watermark = FixedMark(head)
        assert runner.catch_up().position == head

    def test_a_source_without_a_key_ring_reports_but_cannot_decode(self, log: Log) -> None:
        record_workload(log.app, workflows=1, runs_per_workflow=1)
        with open_source(log.settings) as source:
            assert source.head() == log.app.head_position()
            [first] = source.read(after=0, upto=1, limit=1)
            with pytest.raises(ProjectionError, match="without a mapper"):
                source.decode(first)


class TestSQLiteEventSource(OnSQLite, EventSourceContract):
    def insert_raw(self, log: Log, ids: list[uuid.UUID]) -> None:
        with sqlite3.connect(log.settings.sqlite_path) as conn:
            conn.executemany(
                "INSERT INTO stored_events (originator_id, originator_version, topic, state) "
                "VALUES (?, 1, 'raw:Event', x'00')",
                [(i.hex,) for i in ids],
            )
        conn.close()

    def test_a_missing_database_file_is_an_empty_log(self, tmp_path: Path) -> None:
        from safereplay.projections import SQLiteEventSource

        source = SQLiteEventSource(tmp_path / "nothing-yet.db")
        assert source.high_water_mark() == 0
        source.close()


@pytest.mark.postgres
class TestPostgresEventSource(OnPostgres, EventSourceContract):
    def insert_raw(self, log: Log, ids: list[uuid.UUID]) -> None:
        assert isinstance(log.backend, PostgresBackend)
        table = sql.Identifier(log.settings.postgres_schema, "safereplay_events")
        with log.backend.connect() as conn, conn.cursor() as cursor:
            cursor.executemany(
                sql.SQL(
                    "INSERT INTO {} (originator_id, originator_version, topic, state) "
                    "VALUES (%s, 1, 'raw:Event', '\\x00')"
                ).format(table),
                [(i,) for i in ids],
            )

    def test_a_missing_events_table_is_an_empty_log(self, log: Log) -> None:
        from safereplay.projections import PostgresEventSource

        assert isinstance(log.backend, PostgresBackend)
        source = PostgresEventSource(
            log.backend.dsn, schema=log.settings.postgres_schema, table="nothing_events"
        )
        assert (source.head(), source.high_water_mark()) == (0, 0)
        assert source.read(after=0, upto=5, limit=5) == []
        source.close()

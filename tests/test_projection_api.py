"""The projection API and the batch state, without a database.

- A projection class is checked when it is defined (names, tables, handlers) and
  derives its topics from its handlers.
- The batch state folds writes per row; whatever the sequence of put, merge,
  delete and get calls, what it returns and what it flushes (applied to the
  committed rows the way the stores' SQL does) equal applying the calls one by
  one to a plain dict.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from uuid import UUID, uuid4

import pytest
from eventsourcing.utils import get_topic
from hypothesis import given, settings
from hypothesis import strategies as st
from projection_fixtures import BATCH_OPS, ROWS_TABLE, Row, apply_sequentially

from safereplay.domain import Envelope
from safereplay.domain.automation import Run, Workflow
from safereplay.projections import (
    BatchState,
    Column,
    InvalidWrite,
    Partition,
    Projection,
    ProjectionDefinitionError,
    RunStatusBoard,
    Table,
    TableWrites,
    WorkflowStatistics,
    handles,
    partition_of,
)
from safereplay.projections.projection import physical_table_name

# -- definitions ------------------------------------------------------------------------------


def test_topics_come_from_the_handlers() -> None:
    assert RunStatusBoard.topics == tuple(
        sorted(
            get_topic(c) for c in (Run.Started, Run.StepSucceeded, Run.StepFailed, Run.Completed)
        )
    )
    assert get_topic(Workflow.Created) in WorkflowStatistics.topics
    assert set(RunStatusBoard.handler_names.values()) == {
        "started",
        "step_succeeded",
        "step_failed",
        "completed",
    }


def test_a_subclass_inherits_and_may_override_handlers() -> None:
    class Quieter(RunStatusBoard):
        name = "quieter"

        @handles(Run.Completed)
        def completed(self, envelope: Envelope, state: BatchState) -> None:
            pass

    assert Quieter.topics == RunStatusBoard.topics
    assert Quieter.handler_names[get_topic(Run.Completed)] == "completed"
    assert Quieter().handlers()[get_topic(Run.Completed)].__qualname__.startswith("test_a_subclass")


def test_a_base_without_a_name_is_abstract() -> None:
    class Base(Projection):
        @handles(Run.Started)
        def started(self, envelope: Envelope, state: BatchState) -> None:
            pass

    class Concrete(Base):
        name = "concrete"
        tables = (Table("t", key={"k": "text"}),)

    assert Concrete.topics == (get_topic(Run.Started),)


@pytest.mark.parametrize(
    ("attributes", "message"),
    [
        ({"name": "Bad-Name"}, "name 'Bad-Name'"),
        ({"name": "double__underscore"}, "single '_'"),
        ({"name": "x" * 31}, "at most 30"),
        ({"name": "ok", "version": 0}, "version"),
        ({"name": "ok", "tables": [Table("t", key={"k": "text"})]}, "tuple of Table"),
        (
            {
                "name": "ok",
                "tables": (Table("t", key={"k": "text"}), Table("t", key={"k": "text"})),
            },
            "share a name",
        ),
    ],
)
def test_invalid_projections_are_refused_when_defined(
    attributes: dict[str, Any], message: str
) -> None:
    namespace: dict[str, Any] = {"tables": (Table("t", key={"k": "text"}),)}
    namespace.update(attributes)

    def started(self: Any, envelope: Envelope, state: BatchState) -> None:
        pass

    namespace["started"] = handles(Run.Started)(started)
    with pytest.raises(ProjectionDefinitionError, match=message):
        type("Broken", (Projection,), namespace)


def test_a_projection_must_handle_something_and_each_event_once() -> None:
    with pytest.raises(ProjectionDefinitionError, match="handles no event type"):
        type("Idle", (Projection,), {"name": "idle"})

    def one(self: Any, envelope: Envelope, state: BatchState) -> None:
        pass

    def two(self: Any, envelope: Envelope, state: BatchState) -> None:
        pass

    with pytest.raises(ProjectionDefinitionError, match="twice"):
        type(
            "Twice",
            (Projection,),
            {"name": "twice", "a": handles(Run.Started)(one), "b": handles(Run.Started)(two)},
        )


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Table("Bad", key={"k": "text"}), "table name"),
        (lambda: Table("t", key={}), "at least one key"),
        (lambda: Table("t", key={"k": "json"}), "key column 'k' cannot be json"),
        (lambda: Table("t", key={"k": "text"}, values={"k": "text"}), "more than once"),
        (lambda: Table("t", key={"k": "text"}, values={"v": "uuid"}), "has type 'uuid'"),
        (lambda: Column("Robert'); DROP TABLE", "text"), "column name"),
    ],
)
def test_invalid_tables_are_refused(build: Any, message: str) -> None:
    with pytest.raises(ProjectionDefinitionError, match=message):
        build()


def test_physical_names_carry_the_build_and_fit_postgres() -> None:
    assert physical_table_name("run_status", "runs", 2) == "run_status__runs__b2"
    longest = physical_table_name("p" * 30, "t" * 23, 99999)
    assert len(longest.encode()) <= 63


# -- values -------------------------------------------------------------------------------------


def test_values_are_normalised_to_what_a_read_returns() -> None:
    table = Table(
        "t",
        key={"k": "text"},
        values={"i": "integer", "r": "real", "b": "boolean", "j": "json", "ts": "timestamp"},
    )
    state = BatchState({"t": table}, lambda t, k: None)
    key = uuid4()
    paris = timezone(timedelta(hours=1))
    state.put(
        "t",
        key,
        {
            "i": 3,
            "r": 2,
            "b": True,
            "j": {"a": (1, 2)},
            "ts": datetime(2026, 1, 1, 12, tzinfo=paris),
        },
    )
    row = state.get("t", str(key))
    assert row == {
        "k": str(key),
        "i": 3,
        "r": 2.0,
        "b": True,
        "j": {"a": [1, 2]},
        "ts": datetime(2026, 1, 1, 11, tzinfo=UTC),
    }
    assert isinstance(row["r"], float) and row["ts"].tzinfo is UTC


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"i": "3"}, "integer column, not str"),
        ({"i": True}, "integer column, not bool"),
        ({"i": 2**63}, "64 bits"),
        ({"b": 1}, "boolean column"),
        ({"ts": datetime(2026, 1, 1)}, "naive"),
        ({"j": {"x": object()}}, "not JSON"),
        ({"nope": 1}, "no column 'nope'"),
        ({"k": "other"}, "differs from the row's key"),
    ],
)
def test_bad_writes_are_refused(values: dict[str, Any], message: str) -> None:
    table = Table(
        "t",
        key={"k": "text"},
        values={"i": "integer", "b": "boolean", "j": "json", "ts": "timestamp"},
    )
    state = BatchState({"t": table}, lambda t, k: None)
    with pytest.raises(InvalidWrite, match=message):
        state.put("t", "key", values)


def test_bad_merges_and_keys_are_refused() -> None:
    table = Table(
        "t", key={"a": "text", "b": "integer"}, values={"n": "integer", "s": "text", "j": "json"}
    )
    state = BatchState({"t": table}, lambda t, k: None)
    with pytest.raises(InvalidWrite, match="got 1 value"):
        state.merge("t", "only-one", add={"n": 1})
    with pytest.raises(InvalidWrite, match="must not be null"):
        state.merge("t", ("a", None), add={"n": 1})
    with pytest.raises(InvalidWrite, match="cannot use that operation on text"):
        state.merge("t", ("a", 1), add={"s": 1})
    with pytest.raises(InvalidWrite, match="cannot use that operation on json"):
        state.merge("t", ("a", 1), maximum={"j": 1})
    with pytest.raises(InvalidWrite, match="appears in two operations"):
        state.merge("t", ("a", 1), add={"n": 1}, set={"n": 2})
    with pytest.raises(InvalidWrite, match="needs a value"):
        state.merge("t", ("a", 1), maximum={"n": None})
    with pytest.raises(InvalidWrite, match="is a key column"):
        state.merge("t", ("a", 1), set={"a": "x"})
    with pytest.raises(InvalidWrite, match="nothing to merge"):
        state.merge("t", ("a", 1))
    with pytest.raises(InvalidWrite, match="no table 'u'"):
        state.get("u", "x")
    assert len(state) == 0


# -- the fold of a batch equals the calls applied one by one ---------------------------------


def flush_like_sql(rows: dict[int, Row], writes: list[TableWrites]) -> None:
    """What the stores' statements do with the folded writes."""
    for table_writes in writes:
        for key in table_writes.deletes:
            rows.pop(key[0], None)
        for row in table_writes.upserts:
            rows[row["k"]] = dict(row)
        for shape, merged in table_writes.merges.items():
            for values in merged:
                key = values["k"]
                if key not in rows:
                    fresh = {"k": key, "n": None, "r": None, "hi": None, "lo": None, "s": None}
                    rows[key] = fresh | {c: values[c] for c in shape.columns}
                    continue
                row = rows[key]
                for column in shape.add:
                    row[column] = (row[column] or 0) + values[column]
                for column in shape.maximum:
                    row[column] = (
                        values[column] if row[column] is None else max(row[column], values[column])
                    )
                for column in shape.minimum:
                    row[column] = (
                        values[column] if row[column] is None else min(row[column], values[column])
                    )
                for column in shape.set:
                    row[column] = values[column]


@settings(max_examples=500, deadline=None)
@given(committed=st.dictionaries(st.integers(0, 3), st.integers(-5, 5), max_size=4), ops=BATCH_OPS)
def test_a_batch_folds_to_the_same_rows_as_the_calls_one_by_one(
    committed: dict[int, int], ops: list[tuple[Any, ...]]
) -> None:
    base = {
        k: {"k": k, "n": n, "r": None, "hi": n, "lo": None, "s": "x"} for k, n in committed.items()
    }
    reads: list[int] = []

    def reader(table: Table, key: tuple[Any, ...]) -> Row | None:
        reads.append(key[0])
        row = base.get(key[0])
        return None if row is None else dict(row)

    state = BatchState({"t": ROWS_TABLE}, reader)
    expected = {k: dict(v) for k, v in base.items()}
    for op in ops:
        if op[0] == "get":
            row = state.get("t", op[1])
            assert row == expected.get(op[1])
        elif op[0] == "put":
            state.put("t", op[1], op[2])
        elif op[0] == "delete":
            state.delete("t", op[1])
        else:
            state.merge("t", op[1], add=op[2], maximum=op[3], minimum=op[4], set=op[5])
        if op[0] != "get":
            apply_sequentially(expected, op)
    flushed = {k: dict(v) for k, v in base.items()}
    flush_like_sql(flushed, state.writes())
    for row in [*flushed.values(), *expected.values()]:
        if row.get("r") is not None:
            row["r"] = float(row["r"])
    assert flushed == expected
    assert len(reads) == len(set(reads)), "a row was read through more than once"


def test_merges_stay_relative_after_a_read() -> None:
    """A read does not turn a merge into an overwrite (another partition may add too)."""
    table = Table("t", key={"k": "text"}, values={"n": "integer"})
    state = BatchState({"t": table}, lambda t, k: {"k": k[0], "n": 10})
    state.merge("t", "a", add={"n": 1})
    assert state.get("t", "a") == {"k": "a", "n": 11}
    state.merge("t", "a", add={"n": 2})
    [writes] = state.writes()
    assert not writes.upserts
    [(shape, rows)] = writes.merges.items()
    assert shape.add == ("n",) and rows == [{"k": "a", "n": 3}]


# -- partitions ---------------------------------------------------------------------------------


def test_partition_of_uses_the_first_32_bits() -> None:
    aggregate = UUID("00000007-0000-4000-8000-000000000000")
    assert partition_of(aggregate, 4) == 3
    assert partition_of(UUID("ffffffff-ffff-4fff-bfff-ffffffffffff"), 1000) == (2**32 - 1) % 1000
    assert Partition(1, 4).contains(UUID("00000005-0000-4000-8000-000000000000"))
    assert str(Partition(1, 4)) == "1/4" and Partition().is_whole
    with pytest.raises(ValueError, match="index"):
        Partition(4, 4)
    with pytest.raises(ValueError, match="count"):
        Partition(0, 0)

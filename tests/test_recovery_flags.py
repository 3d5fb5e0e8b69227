"""Recovery flags and the operations switch: one contract, SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from safereplay.recovery.database import Database, PostgresDatabase, SQLiteDatabase
from safereplay.recovery.errors import InvalidRequest, OperationsFrozen
from safereplay.recovery.security.flags import (
    DEFAULT_BACKLOG_THRESHOLD,
    DEFAULT_MAX_RESTARTS,
    Flag,
    FlagName,
    FlagStore,
    Rollout,
)

TARGET = "projection:run_status"


class FlagStoreContract:
    @pytest.fixture
    def store(self) -> Iterator[FlagStore]:
        raise NotImplementedError

    def test_an_unset_flag_is_off_with_its_default_thresholds(self, store: FlagStore) -> None:
        assert store.get("auto_catch_up", TARGET) is None
        flag = store.effective("auto_catch_up", TARGET)
        assert not flag.enabled and not flag.applies_to("0")
        assert flag.backlog_threshold == DEFAULT_BACKLOG_THRESHOLD
        restart = store.effective("auto_restart_stalled", TARGET)
        assert restart.max_restarts == DEFAULT_MAX_RESTARTS
        assert store.flags() == []

    def test_set_and_unset_keep_a_history_of_old_and_new(self, store: FlagStore) -> None:
        on = Flag(FlagName.AUTO_CATCH_UP, TARGET, enabled=True, backlog_threshold=500)
        first = store.set(on, actor="alice", reason="incident 42")
        assert first.old is None and first.new == on
        assert store.get("auto_catch_up", TARGET) == on
        wider = store.update(
            "auto_catch_up", TARGET, actor="bob", reason="canary fine", backlog_threshold=900
        )
        assert wider.old == on and wider.new is not None and wider.new.backlog_threshold == 900
        gone = store.unset("auto_catch_up", TARGET, actor="carol", reason="done")
        assert gone.new is None and store.get("auto_catch_up", TARGET) is None
        history = store.history()
        assert [h.actor for h in history] == ["carol", "bob", "alice"]
        assert [h.seq for h in history] == [3, 2, 1]
        assert history[2].old_value is None
        assert history[2].new_value is not None and history[2].new_value["enabled"] is True
        assert history[1].old_value is not None and history[1].old_value["backlog_threshold"] == 500
        assert history[0].new_value is None and history[0].reason == "done"
        assert history[0].subject == f"flag:auto_catch_up:{TARGET}"
        with pytest.raises(InvalidRequest, match="not set"):
            store.unset("auto_catch_up", TARGET, actor="carol", reason="again")

    def test_bad_values_are_refused_before_anything_is_written(self, store: FlagStore) -> None:
        with pytest.raises(InvalidRequest, match="unknown flag"):
            store.effective("auto_everything", TARGET)
        with pytest.raises(InvalidRequest, match="projection:NAME or reaction:NAME"):
            Flag(FlagName.AUTO_REDRIVE, "projection:*")
        with pytest.raises(InvalidRequest, match="auto_catch_up only"):
            Flag(FlagName.AUTO_REDRIVE, TARGET, backlog_threshold=5)
        with pytest.raises(InvalidRequest, match="applies to projections"):
            Flag(FlagName.AUTO_REBUILD, "reaction:notify")
        with pytest.raises(InvalidRequest, match="share is 1 to 100"):
            Rollout(share=101)
        assert store.history() == []

    def test_a_share_only_adds_partitions_as_it_grows(self, store: FlagStore) -> None:
        partitions = [str(i) for i in range(200)]
        previous: set[str] = set()
        for share in (5, 25, 50, 100):
            rollout = Rollout(share=share)
            covered = {p for p in partitions if rollout.covers(TARGET, p)}
            assert previous <= covered
            previous = covered
        assert previous == set(partitions)
        assert 0 < len({p for p in partitions if Rollout(share=25).covers(TARGET, p)}) < 100
        listed = Flag(FlagName.AUTO_REDRIVE, TARGET, enabled=True, rollout=Rollout(("1", "3")))
        store.set(listed, actor="alice", reason="canary partitions")
        stored = store.get("auto_redrive", TARGET)
        assert stored is not None
        assert [p for p in ("0", "1", "2", "3") if stored.applies_to(p)] == ["1", "3"]

    def test_the_switch_is_held_by_one_and_released_by_them_or_an_admin(
        self, store: FlagStore
    ) -> None:
        assert not store.switch().frozen
        state = store.freeze(actor="alice", reason="incident 42")
        assert store.switch() == state and state.held_by == "alice"
        with pytest.raises(OperationsFrozen, match="frozen by 'alice' \\(incident 42\\)"):
            store.freeze(actor="bob", reason="me too")
        with pytest.raises(InvalidRequest, match="only they or an admin"):
            store.unfreeze(actor="bob", reason="let me")
        store.unfreeze(actor="alice", reason="resolved")
        assert not store.switch().frozen
        store.freeze(actor="alice", reason="again")
        store.unfreeze(actor="root", reason="alice is away", may_override=True)
        history = store.history(subject="switch")
        assert [(h.actor, h.new_value and h.new_value["frozen"]) for h in history] == [
            ("root", False),
            ("alice", True),
            ("alice", False),
            ("alice", True),
        ]
        assert history[0].old_value is not None and history[0].old_value["held_by"] == "alice"

    def test_marks_are_kept_per_flag_and_target(self, store: FlagStore) -> None:
        assert store.mark("auto_redrive", TARGET) is None
        store.set_mark("auto_redrive", TARGET, "1")
        store.set_mark("auto_redrive", TARGET, "2")
        store.set_mark("auto_redrive", "projection:other", "7")
        assert store.mark("auto_redrive", TARGET) == "2"
        assert store.mark("auto_catch_up", TARGET) is None
        assert store.history() == [], "bookkeeping, not a change of a flag"

    def test_concurrent_writers_never_share_a_history_seq(self, store: FlagStore) -> None:
        errors: list[BaseException] = []

        def write(worker: int) -> None:
            try:
                for i in range(5):
                    flag = Flag(FlagName.AUTO_REDRIVE, f"projection:p{worker}", enabled=i % 2 == 0)
                    store.set(flag, actor=f"w{worker}", reason=f"round {i}")
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert errors == []
        assert sorted(h.seq for h in store.history(limit=100)) == list(range(1, 21))
        assert len(store.flags()) == 4


class TestSQLiteFlagStore(FlagStoreContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[FlagStore]:
        database: Database = SQLiteDatabase(tmp_path / "recovery.db")
        store = FlagStore(database)
        store.create_tables()
        yield store
        database.close()


class TestPostgresFlagStore(FlagStoreContract):
    @pytest.fixture
    def store(self, postgres_dsn: str, pg_schema: str) -> Iterator[FlagStore]:
        database: Database = PostgresDatabase(postgres_dsn, schema=pg_schema, pool_size=6)
        store = FlagStore(database)
        store.create_tables()
        yield store
        database.close()

"""The event store contract: every backend-dependent behaviour, proven on each backend.

``EventStoreContract`` holds the tests; ``TestSQLiteEventStore`` and
``TestPostgresEventStore`` supply settings (from the conftest fixtures, so the
PostgreSQL class skips without a server and fails under ``CI=true``) and raw SQL
access to their tables, used to inspect and tamper with stored rows directly.
"""

from __future__ import annotations

import base64
import sqlite3
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest
from eventsourcing.persistence import StoredEvent
from eventsourcing.utils import get_topic
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from safereplay.domain import (
    AutomationApp,
    CommandRejected,
    DomainError,
    DomainSettings,
    EventDecryptionError,
    InvalidInput,
    KeyRing,
    UnknownEventType,
    UnknownKeyId,
    UnknownSchemaVersion,
    event_id_for,
)
from safereplay.domain.automation import Run, Workflow
from safereplay.domain.keyring import MAGIC, sealed_key_id
from safereplay.domain.mapper import associated_data
from safereplay.domain.workload import record_workload

SettingsFactory = Callable[..., DomainSettings]
FROM_SETTINGS: Any = object()

# Distinctive strings that must never be visible in a stored row while encryption is on.
MARKERS = {
    "name": "Payroll export ZEBRA-7731",
    "owner": "treasurer-QUOKKA@example.com",
    "secret_ref": "vault:payroll/XYZZY-PLUGH",
    "url": "https://ledger.example.com/WOMBAT-4412",
    "source": "gateway-NARWHAL",
}


@dataclass(frozen=True)
class RawRow:
    position: int
    originator_id: str
    originator_version: int
    topic: str
    state: bytes


class SnapshottingApp(AutomationApp):
    is_snapshotting_enabled = True


def record_marked_workflow(app: AutomationApp) -> UUID:
    """A workflow whose every field carries one of the MARKERS."""
    workflow_id = app.submit(
        {
            "type": "CreateWorkflow",
            "name": MARKERS["name"],
            "owner": MARKERS["owner"],
            "trigger": {"kind": "schedule", "secret_ref": MARKERS["secret_ref"]},
        },
        source=MARKERS["source"],
    )
    app.submit(
        {
            "type": "AddStep",
            "workflow_id": str(workflow_id),
            "step_name": "post-ledger",
            "action": "http.request",
            "config": {"url": MARKERS["url"]},
        },
        source=MARKERS["source"],
    )
    return workflow_id


def published_workflow(app: AutomationApp) -> UUID:
    workflow_id = record_marked_workflow(app)
    app.submit({"type": "PublishWorkflow", "workflow_id": str(workflow_id)}, source="test")
    return workflow_id


def started_run(app: AutomationApp) -> UUID:
    return app.submit(
        {"type": "StartRun", "workflow_id": str(published_workflow(app)), "started_by": "cron"},
        source="test",
    )


def insert_raw_event(
    app: AutomationApp, aggregate_id: UUID, version: int, topic: str, state: dict[str, Any]
) -> None:
    """Store ``state`` as an older (or foreign) writer would have: transcoded with the
    app's transcoder, sealed with its key ring and bound to the row, bypassing the mapper."""
    plaintext = app.mapper.transcoder.encode(state)
    assert app.key_ring is not None
    sealed = app.key_ring.seal(plaintext, associated_data(aggregate_id, version, topic))
    app.recorder.insert_events(
        [
            StoredEvent(
                originator_id=aggregate_id, originator_version=version, topic=topic, state=sealed
            )
        ]
    )


def step_failed_state(**changes: Any) -> dict[str, Any]:
    """The stored state of a Run.StepFailed as version 1 wrote it (no 'retryable')."""
    state: dict[str, Any] = {
        "timestamp": datetime.now(UTC),
        "source": "executor-legacy",
        "correlation_id": uuid4(),
        "causation_id": None,
        "step_name": "post-ledger",
        "attempt": 1,
        "duration_ms": 1200,
        "error_code": "HTTP_502",
        "error_message": "upstream returned 502 Bad Gateway",
        "class_version": 1,
    }
    state.update(changes)
    return state


def key_texts(*rings: KeyRing | None) -> list[str]:
    texts = []
    for ring in rings:
        for key in (ring.keys if ring else {}).values():
            encoded = base64.b64encode(key).decode()
            texts += [encoded.rstrip("="), base64.urlsafe_b64encode(key).decode().rstrip("=")]
            texts.append(key.hex())
    return texts


class EventStoreContract:
    """Tests every backend must pass. Subclasses provide the fixture ``make_settings``
    and the raw table access below."""

    # -- what a backend supplies ---------------------------------------------------------

    @pytest.fixture
    def make_settings(self) -> SettingsFactory:
        raise NotImplementedError

    def other_store(self, settings: DomainSettings, name: str) -> dict[str, Any]:
        """Overrides giving a second, empty store beside the one ``settings`` names."""
        raise NotImplementedError

    def raw_rows(self, settings: DomainSettings, purpose: str = "events") -> list[RawRow]:
        """Every row of the events (or snapshots) table, by position, read with SQL."""
        raise NotImplementedError

    def update_row(self, settings: DomainSettings, position: int, column: str, value: Any) -> None:
        """Write ``column`` of the event at ``position`` directly, bypassing safereplay."""
        raise NotImplementedError

    def update_snapshots(self, settings: DomainSettings, state: bytes) -> None:
        raise NotImplementedError

    # -- shared fixtures and checks ------------------------------------------------------

    @pytest.fixture
    def open_app(self) -> Iterator[Callable[..., AutomationApp]]:
        opened: list[AutomationApp] = []

        def open_app(
            settings: DomainSettings,
            *,
            key_ring: KeyRing | None = FROM_SETTINGS,
            cls: type[AutomationApp] = AutomationApp,
        ) -> AutomationApp:
            app = cls(settings) if key_ring is FROM_SETTINGS else cls(settings, key_ring=key_ring)
            opened.append(app)
            return app

        yield open_app
        for app in opened:
            app.close()

    @pytest.fixture
    def domain_settings(self, make_settings: SettingsFactory) -> DomainSettings:
        return make_settings()

    @pytest.fixture
    def app(
        self, open_app: Callable[..., AutomationApp], domain_settings: DomainSettings
    ) -> AutomationApp:
        return open_app(domain_settings)

    def store_state(self, app: AutomationApp) -> tuple[int, int]:
        return app.head_position(), len(self.raw_rows(app.settings))

    @contextmanager
    def refused(
        self,
        app: AutomationApp,
        error: type[BaseException] | tuple[type[BaseException], ...],
        match: str | None = None,
        *rings: KeyRing,
    ) -> Iterator[pytest.ExceptionInfo[Any]]:
        """``pytest.raises``, then: the error shows no key of the app's ring (or of
        ``rings``) and no database password."""
        with pytest.raises(error, match=match) as caught:
            yield caught
        self.assert_clean(caught.value, app.settings, app.key_ring, *rings)

    def assert_clean(self, error: BaseException, settings: DomainSettings, *rings: Any) -> None:
        """No key (in any encoding) and no database password in the error or its causes."""
        secrets = key_texts(*rings)
        if settings.postgres_dsn is not None:
            password = conninfo_to_dict(settings.postgres_dsn.get_secret_value()).get("password")
            secrets += [str(password)] if password else []
        seen: BaseException | None = error
        while seen is not None:
            for secret in secrets:
                assert secret not in str(seen) and secret not in repr(seen)
            seen = seen.__cause__ or seen.__context__

    # -- recording and reading back -------------------------------------------------------

    def test_a_workload_reads_back_at_positions_1_to_n_in_order(self, app: AutomationApp) -> None:
        summary = record_workload(app, workflows=2, runs_per_workflow=3, seed=11)

        envelopes = app.read(after=0, limit=10_000)

        assert summary.events == summary.head_position == app.head_position() == len(envelopes)
        assert [e.position for e in envelopes] == list(range(1, summary.events + 1))
        assert [r.position for r in self.raw_rows(app.settings)] == list(
            range(1, summary.events + 1)
        )
        versions: dict[UUID, list[int]] = defaultdict(list)
        for envelope in envelopes:
            versions[envelope.aggregate_id].append(envelope.aggregate_version)
        assert all(v == list(range(1, len(v) + 1)) for v in versions.values())
        kinds = Counter(e.event_type for e in envelopes)
        assert kinds["Workflow.Created"] == 2 and kinds["Run.Started"] == 6
        assert kinds["Run.Completed"] == 6

    def test_reading_in_pages_gives_the_same_log(self, app: AutomationApp) -> None:
        record_workload(app, workflows=1, runs_per_workflow=3, seed=5)
        whole = app.read(after=0, limit=10_000)

        paged, after = [], 0
        while page := app.read(after=after, limit=7):
            paged += page
            after = page[-1].position or 0

        assert [e.event_id for e in paged] == [e.event_id for e in whole]
        assert app.read(after=app.head_position()) == []

    def test_envelope_fields(self, app: AutomationApp) -> None:
        correlation_id, causation_id = uuid4(), uuid4()
        workflow_id = app.submit(
            {
                "type": "CreateWorkflow",
                "name": "Invoices",
                "owner": "ap@example.com",
                "trigger": {},
            },
            source="api-gateway",
            correlation_id=correlation_id,
            causation_id=causation_id,
        )
        app.submit(
            {
                "type": "AddStep",
                "workflow_id": str(workflow_id),
                "step_name": "mail",
                "action": "send.email",
            },
            source="editor-ui",
        )

        created, added = app.read()

        assert created.position == 1 and added.position == 2
        assert created.event_id == event_id_for(workflow_id, 1)
        assert added.event_id == event_id_for(workflow_id, 2) != created.event_id
        assert (created.aggregate_id, created.aggregate_version) == (workflow_id, 1)
        assert created.topic == get_topic(Workflow.Created)
        assert created.topic == "safereplay.domain.automation:Workflow.Created"
        assert created.event_type == "Workflow.Created" and added.event_type == "Workflow.StepAdded"
        assert created.schema_version == 1
        for envelope in (created, added):
            assert envelope.occurred_at.tzinfo is not None
            assert envelope.occurred_at.utcoffset() == timedelta(0)
        assert created.source == "api-gateway"
        assert created.correlation_id == correlation_id
        assert created.causation_id == causation_id
        assert added.source == "editor-ui"
        assert added.correlation_id not in (correlation_id, None), "a fresh correlation"
        assert added.causation_id is None
        assert created.payload == {
            "name": "Invoices",
            "owner": "ap@example.com",
            "description": "",
            "trigger": {},
        }
        assert isinstance(created.event, Workflow.Created)
        assert created.event.event_id == created.event_id

    def test_envelopes_are_identical_on_every_read_and_in_a_fresh_app(
        self, app: AutomationApp, open_app: Callable[..., AutomationApp]
    ) -> None:
        record_workload(app, workflows=1, runs_per_workflow=2, seed=3)

        def fields(a: AutomationApp) -> list[tuple[Any, ...]]:
            return [
                (
                    e.position,
                    e.event_id,
                    e.aggregate_id,
                    e.aggregate_version,
                    e.topic,
                    e.schema_version,
                    e.occurred_at,
                    e.source,
                    e.correlation_id,
                    e.causation_id,
                    dict(e.payload),
                )
                for e in a.read(limit=1000)
            ]

        first = fields(app)

        assert fields(app) == first
        assert fields(open_app(app.settings)) == first
        assert all(row[1] == event_id_for(row[2], row[3]) for row in first)

    def test_history_lists_one_aggregate_in_version_order(self, app: AutomationApp) -> None:
        run_id = started_run(app)
        app.submit(
            {"type": "CompleteRun", "run_id": str(run_id), "status": "cancelled", "duration_ms": 9},
            source="test",
        )

        history = app.history(run_id)

        assert [(e.aggregate_version, e.event_type) for e in history] == [
            (1, "Run.Started"),
            (2, "Run.Completed"),
        ]
        assert all(e.position is None for e in history)
        assert [e.event_id for e in history] == [
            e.event_id for e in app.read(limit=100) if e.aggregate_id == run_id
        ]

    def test_aggregates_are_reconstructed_from_the_store(
        self, app: AutomationApp, open_app: Callable[..., AutomationApp]
    ) -> None:
        record_workload(app, workflows=2, runs_per_workflow=3, seed=2)
        envelopes = app.read(limit=10_000)
        fresh = open_app(app.settings)

        for created in (e for e in envelopes if e.event_type == "Workflow.Created"):
            workflow = fresh.workflow(created.aggregate_id)
            own = [e for e in envelopes if e.aggregate_id == created.aggregate_id]
            assert workflow.name == created.payload["name"]
            assert [s["name"] for s in workflow.steps] == [
                e.payload["step_name"] for e in own if e.event_type == "Workflow.StepAdded"
            ]
            assert workflow.published and workflow.revision == 1
            assert workflow.version == len(own)
        for started in (e for e in envelopes if e.event_type == "Run.Started"):
            run = fresh.run(started.aggregate_id)
            own = [e for e in envelopes if e.aggregate_id == started.aggregate_id]
            assert run.status == own[-1].payload["status"]
            assert run.failures == sum(e.event_type == "Run.StepFailed" for e in own)
            assert run.workflow_id == started.payload["workflow_id"]

    # -- encryption at rest ----------------------------------------------------------------------

    def test_stored_rows_show_no_plaintext(self, app: AutomationApp) -> None:
        record_marked_workflow(app)

        rows = self.raw_rows(app.settings)

        assert len(rows) == 2
        for row in rows:
            assert row.state.startswith(MAGIC)
            assert sealed_key_id(row.state) == "k1"
            for marker in MARKERS.values():
                assert marker.encode() not in row.state
                assert marker.encode("utf-16-le") not in row.state

    def test_with_encryption_off_the_same_rows_are_plaintext(
        self,
        make_settings: SettingsFactory,
        domain_settings: DomainSettings,
        open_app: Callable[..., AutomationApp],
    ) -> None:
        """The control for the test above: the markers are findable when not encrypted."""
        plain = make_settings(encryption=False, **self.other_store(domain_settings, "plain"))
        app = open_app(plain)
        assert app.key_ring is None

        record_marked_workflow(app)

        raw = b"".join(row.state for row in self.raw_rows(plain))
        for marker in MARKERS.values():
            assert marker.encode() in raw
        assert [e.event_type for e in app.read()] == ["Workflow.Created", "Workflow.StepAdded"]

    def test_snapshots_are_sealed_too(
        self, domain_settings: DomainSettings, open_app: Callable[..., AutomationApp]
    ) -> None:
        app = open_app(domain_settings, cls=SnapshottingApp)
        workflow_id = published_workflow(app)

        app.take_snapshot(workflow_id)

        (snapshot,) = self.raw_rows(domain_settings, "snapshots")
        assert snapshot.originator_version == 3
        assert snapshot.state.startswith(MAGIC)
        for marker in MARKERS.values():
            assert marker.encode() not in snapshot.state
        assert open_app(domain_settings, cls=SnapshottingApp).workflow(workflow_id).published

        tampered = bytearray(snapshot.state)
        tampered[-1] ^= 0x01
        self.update_snapshots(domain_settings, bytes(tampered))
        reader = open_app(domain_settings, cls=SnapshottingApp)
        with self.refused(reader, EventDecryptionError, f"aggregate {workflow_id} version 3"):
            reader.workflow(workflow_id)

    # -- tampering with stored rows ------------------------------------------------------------

    def test_state_swapped_between_two_rows_is_detected(self, app: AutomationApp) -> None:
        record_workload(app, workflows=1, runs_per_workflow=2, seed=9)
        rows = self.raw_rows(app.settings)
        positions = [row.position for row in rows]

        @settings(max_examples=40, deadline=None)
        @given(pair=st.lists(st.sampled_from(positions), min_size=2, max_size=2, unique=True))
        def swapping(pair: list[int]) -> None:
            first, second = (rows[p - 1] for p in pair)
            self.update_row(app.settings, first.position, "state", second.state)
            self.update_row(app.settings, second.position, "state", first.state)
            try:
                for row in (first, second):
                    with self.refused(
                        app, EventDecryptionError, f"position {row.position}, aggregate"
                    ) as caught:
                        app.read(after=row.position - 1, limit=1)
                    assert "moved from another row" in str(caught.value)
            finally:
                self.update_row(app.settings, first.position, "state", first.state)
                self.update_row(app.settings, second.position, "state", second.state)

        swapping()
        assert len(app.read(limit=1000)) == len(rows), "restored rows read again"

    def test_any_bit_flip_in_a_stored_state_is_detected(self, app: AutomationApp) -> None:
        record_marked_workflow(app)
        rows = self.raw_rows(app.settings)

        @settings(max_examples=40, deadline=None)
        @given(data=st.data())
        def flipping(data: st.DataObject) -> None:
            row = data.draw(st.sampled_from(rows))
            index = data.draw(st.integers(0, len(row.state) - 1), label="byte")
            tampered = bytearray(row.state)
            tampered[index] ^= 1 << data.draw(st.integers(0, 7), label="bit")
            self.update_row(app.settings, row.position, "state", bytes(tampered))
            try:
                with self.refused(app, (EventDecryptionError, UnknownKeyId), "position"):
                    app.read(after=row.position - 1, limit=1)
            finally:
                self.update_row(app.settings, row.position, "state", row.state)

        flipping()

    def test_a_state_truncated_in_the_database_is_detected(self, app: AutomationApp) -> None:
        record_marked_workflow(app)
        row = self.raw_rows(app.settings)[1]

        for length in (0, 3, 7, len(row.state) // 2, len(row.state) - 1):
            self.update_row(app.settings, row.position, "state", row.state[:length])
            with self.refused(app, EventDecryptionError, "position 2"):
                app.read(after=1)

    def test_a_row_relabelled_with_another_event_type_is_detected(self, app: AutomationApp) -> None:
        """The topic is bound too: the state cannot be decoded as a different event class."""
        record_marked_workflow(app)

        self.update_row(app.settings, 2, "topic", get_topic(Workflow.Archived))

        with self.refused(app, EventDecryptionError, "position 2, aggregate"):
            app.read()

    def test_plaintext_smuggled_into_an_encrypted_store_is_refused(
        self, app: AutomationApp
    ) -> None:
        workflow_id = record_marked_workflow(app)
        forged = app.mapper.transcoder.encode({"step_name": "exfiltrate", "action": "http.request"})

        self.update_row(app.settings, 2, "state", forged)

        with self.refused(app, EventDecryptionError, "not a key ring ciphertext.*position 2"):
            app.read()
        with self.refused(app, EventDecryptionError, f"aggregate {workflow_id} version 2"):
            app.workflow(workflow_id)

    def test_a_sealed_row_met_with_encryption_off_is_named(
        self,
        app: AutomationApp,
        make_settings: SettingsFactory,
        open_app: Callable[..., AutomationApp],
    ) -> None:
        record_marked_workflow(app)
        plain_reader = open_app(make_settings(encryption=False))

        with self.refused(app, EventDecryptionError) as caught:
            plain_reader.read()

        assert "event at position 1, aggregate" in str(caught.value)
        assert "is encrypted but encryption is turned off" in str(caught.value)

    def test_a_damaged_plaintext_row_is_reported_with_its_position(
        self,
        make_settings: SettingsFactory,
        domain_settings: DomainSettings,
        open_app: Callable[..., AutomationApp],
    ) -> None:
        plain = make_settings(encryption=False, **self.other_store(domain_settings, "plain"))
        app = open_app(plain)
        record_marked_workflow(app)

        for damaged in (b'{"step_name": "post-led', b"\xff\xfe", b"[1, 2]"):
            self.update_row(plain, 2, "state", damaged)
            with self.refused(app, InvalidInput, "state at position 2, aggregate") as caught:
                app.read()
            assert caught.value.problems[0].location == "state"

    # -- schema versions and event types --------------------------------------------------------

    def test_a_version_1_step_failed_is_upcast_to_version_2(
        self, app: AutomationApp, open_app: Callable[..., AutomationApp]
    ) -> None:
        run_id = started_run(app)
        insert_raw_event(app, run_id, 2, get_topic(Run.StepFailed), step_failed_state())
        # eventsourcing's own mapper omits class_version 1 altogether: read that too.
        legacy = step_failed_state(attempt=2)
        del legacy["class_version"]
        insert_raw_event(app, run_id, 3, get_topic(Run.StepFailed), legacy)
        head = app.head_position()

        reader = open_app(app.settings)
        first, second = reader.read(after=head - 2)

        for envelope in (first, second):
            assert isinstance(envelope.event, Run.StepFailed)
            assert envelope.event.retryable is True
            assert envelope.payload["retryable"] is True
            assert envelope.schema_version == 1, "the version it was written with"
            assert envelope.source == "executor-legacy"
        run = reader.run(run_id)
        assert run.failures == 2 and run.attempts == {"post-ledger": 2}
        reader.submit(
            {"type": "CompleteRun", "run_id": str(run_id), "status": "failed", "duration_ms": 1},
            source="test",
        )
        assert reader.run(run_id).version == 4

    @pytest.mark.parametrize(
        "class_version", [3, 0, True, "2"], ids=["newer", "zero", "boolean", "string"]
    )
    def test_a_schema_version_the_code_does_not_know_is_refused(
        self, app: AutomationApp, class_version: Any
    ) -> None:
        run_id = started_run(app)
        insert_raw_event(
            app,
            run_id,
            2,
            get_topic(Run.StepFailed),
            step_failed_state(class_version=class_version),
        )
        position = app.head_position()
        before = self.store_state(app)

        with self.refused(app, UnknownSchemaVersion) as caught:
            app.read(after=position - 1)

        message = str(caught.value)
        assert f"schema version {class_version!r} of Run.StepFailed at position {position}," in (
            message
        )
        assert "reads versions 1..2" in message
        assert caught.value.problems[0].location == "class_version"
        with self.refused(app, UnknownSchemaVersion, f"aggregate {run_id} version 2"):
            app.run(run_id)
        assert self.store_state(app) == before

    @pytest.mark.parametrize(
        "topic",
        ["safereplay.domain.automation:Run.StepExploded", "legacy.billing:Invoice.Paid"],
        ids=["unknown class", "unknown module"],
    )
    def test_an_unknown_event_type_is_refused(self, app: AutomationApp, topic: str) -> None:
        run_id = started_run(app)
        insert_raw_event(app, run_id, 2, topic, step_failed_state())
        position = app.head_position()

        with self.refused(app, UnknownEventType) as caught:
            app.read(after=position - 1)

        assert f"unknown event type '{topic}' at position {position}," in str(caught.value)
        assert caught.value.problems[0].location == "topic"

    # -- key rotation -----------------------------------------------------------------------------

    def test_key_rotation_without_downtime(
        self,
        domain_settings: DomainSettings,
        key_file: Path,
        key_ring: KeyRing,
        open_app: Callable[..., AutomationApp],
    ) -> None:
        writer = open_app(domain_settings)
        old = record_workload(writer, workflows=1, runs_per_workflow=1, seed=4).events
        workflow_id = writer.read(limit=1)[0].aggregate_id

        rotated = key_ring.with_key("k2", activate=True)
        rotated.save(key_file)
        writer = open_app(domain_settings)
        writer.submit(
            {"type": "ArchiveWorkflow", "workflow_id": str(workflow_id), "reason": "rotated"},
            source="test",
        )
        record_marked_workflow(writer)
        total = writer.head_position()

        rows = self.raw_rows(domain_settings)
        assert [sealed_key_id(r.state) for r in rows] == ["k1"] * old + ["k2"] * (total - old)

        both = open_app(domain_settings, key_ring=KeyRing.load(key_file))
        assert [e.position for e in both.read(limit=1000)] == list(range(1, total + 1))
        assert both.workflow(workflow_id).archived, "an aggregate spanning both keys"

        only_new = open_app(domain_settings, key_ring=rotated.without_key("k1"))
        before = self.store_state(only_new)
        for position in range(1, total + 1):
            if position <= old:
                with self.refused(only_new, UnknownKeyId, None, key_ring, rotated) as caught:
                    only_new.read(after=position - 1, limit=1)
                assert f"key id 'k1' which is not in the key ring (position {position}," in str(
                    caught.value
                )
                assert "the ring holds k2" in str(caught.value)
            else:
                (envelope,) = only_new.read(after=position - 1, limit=1)
                assert envelope.position == position
        with self.refused(only_new, UnknownKeyId, "'k1'", key_ring, rotated):
            only_new.workflow(workflow_id)
        assert self.store_state(only_new) == before

    # -- rejected input changes nothing -----------------------------------------------------------

    @pytest.mark.parametrize(
        ("message", "error"),
        [
            pytest.param('{"type": "CreateWorkflow", "name": ', InvalidInput, id="malformed JSON"),
            pytest.param({"type": "CreateWorkflow", "nme": "x"}, InvalidInput, id="bad fields"),
            pytest.param({"type": "DropAll"}, UnknownEventType, id="unknown type"),
            pytest.param(
                {"type": "StepFailed", "schema_version": 9}, UnknownSchemaVersion, id="version"
            ),
            pytest.param(
                {"type": "PublishWorkflow", "workflow_id": str(UUID(int=7))},
                CommandRejected,
                id="aggregate not found",
            ),
            pytest.param("publish-without-steps", CommandRejected, id="domain rule"),
            pytest.param("run-on-unpublished", CommandRejected, id="unpublished"),
        ],
    )
    def test_rejected_input_leaves_the_store_unchanged(
        self, app: AutomationApp, message: Any, error: type[DomainError]
    ) -> None:
        workflow_id = record_marked_workflow(app)
        draft = app.submit(
            {"type": "CreateWorkflow", "name": "draft", "owner": "o", "trigger": {}}, source="t"
        )
        if message == "publish-without-steps":
            message = {"type": "PublishWorkflow", "workflow_id": str(draft)}
        elif message == "run-on-unpublished":
            message = {"type": "StartRun", "workflow_id": str(workflow_id), "started_by": "x"}
        before = self.store_state(app)

        with self.refused(app, error):
            app.submit(message, source="test")

        assert self.store_state(app) == before

    # -- configuration ----------------------------------------------------------------------

    def test_stray_eventsourcing_variables_do_not_redirect_the_store(
        self, make_settings: SettingsFactory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        """eventsourcing merges os.environ, where name-prefixed variables win: the app
        must use its settings only."""
        monkeypatch.setenv("SAFEREPLAY_PERSISTENCE_MODULE", "eventsourcing.popo")
        monkeypatch.setenv("SAFEREPLAY_SQLITE_DBNAME", str(tmp_path / "elsewhere.db"))
        monkeypatch.setenv("SAFEREPLAY_POSTGRES_SCHEMA", "public")
        monkeypatch.setenv("SAFEREPLAY_POSTGRES_DBNAME", "postgres")
        domain_settings = make_settings()
        app = AutomationApp(domain_settings)
        try:
            record_marked_workflow(app)
            assert len(self.raw_rows(domain_settings)) == 2
        finally:
            app.close()


class TestSQLiteEventStore(EventStoreContract):
    @pytest.fixture
    def make_settings(self, sqlite_settings: SettingsFactory) -> SettingsFactory:
        return sqlite_settings

    def other_store(self, settings: DomainSettings, name: str) -> dict[str, Any]:
        return {"sqlite_path": settings.sqlite_path.with_name(f"{name}.db")}

    @staticmethod
    def table(purpose: str) -> str:
        return {"events": "stored_events", "snapshots": "stored_snapshots"}[purpose]

    def raw_rows(self, settings: DomainSettings, purpose: str = "events") -> list[RawRow]:
        # Snapshots are kept WITHOUT ROWID: they have no position (0 here).
        position, order = ("rowid", "rowid") if purpose == "events" else ("0", "originator_id")
        with closing(sqlite3.connect(settings.sqlite_path)) as connection, connection:
            rows = connection.execute(
                f"SELECT {position}, originator_id, originator_version, topic, state "
                f"FROM {self.table(purpose)} ORDER BY {order}, originator_version"
            ).fetchall()
        return [RawRow(*row) for row in rows]

    def update_row(self, settings: DomainSettings, position: int, column: str, value: Any) -> None:
        assert column in {"state", "topic"}
        with closing(sqlite3.connect(settings.sqlite_path)) as connection, connection:
            connection.execute(
                f"UPDATE stored_events SET {column} = ? WHERE rowid = ?", (value, position)
            )

    def update_snapshots(self, settings: DomainSettings, state: bytes) -> None:
        with closing(sqlite3.connect(settings.sqlite_path)) as connection, connection:
            connection.execute("UPDATE stored_snapshots SET state = ?", (state,))


class TestPostgresEventStore(EventStoreContract):
    @pytest.fixture
    def make_settings(self, postgres_settings: SettingsFactory) -> SettingsFactory:
        return postgres_settings

    def other_store(self, settings: DomainSettings, name: str) -> dict[str, Any]:
        return {"application_name": name}

    @staticmethod
    def table(settings: DomainSettings, purpose: str) -> sql.Identifier:
        return sql.Identifier(settings.postgres_schema, f"{settings.application_name}_{purpose}")

    @staticmethod
    def connect(settings: DomainSettings) -> psycopg.Connection[Any]:
        assert settings.postgres_dsn is not None
        return psycopg.connect(settings.postgres_dsn.get_secret_value(), autocommit=True)

    def raw_rows(self, settings: DomainSettings, purpose: str = "events") -> list[RawRow]:
        position = "notification_id" if purpose == "events" else "0"
        order = "notification_id" if purpose == "events" else "originator_id, originator_version"
        query = sql.SQL(
            "SELECT {position}, originator_id::text, originator_version, topic, state "
            "FROM {table} ORDER BY {order}"
        ).format(
            position=sql.SQL(position), table=self.table(settings, purpose), order=sql.SQL(order)
        )
        with self.connect(settings) as connection:
            rows = connection.execute(query).fetchall()
        return [RawRow(row[0], row[1], row[2], row[3], bytes(row[4])) for row in rows]

    def update_row(self, settings: DomainSettings, position: int, column: str, value: Any) -> None:
        assert column in {"state", "topic"}
        query = sql.SQL("UPDATE {table} SET {column} = %s WHERE notification_id = %s").format(
            table=self.table(settings, "events"), column=sql.Identifier(column)
        )
        with self.connect(settings) as connection:
            connection.execute(query, (value, position))

    def update_snapshots(self, settings: DomainSettings, state: bytes) -> None:
        query = sql.SQL("UPDATE {table} SET state = %s").format(
            table=self.table(settings, "snapshots")
        )
        with self.connect(settings) as connection:
            connection.execute(query, (state,))

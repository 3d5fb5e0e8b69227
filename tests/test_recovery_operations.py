"""The dispatch layer: permission is checked before anything runs, and every attempt is audited."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher

from safereplay.recovery.database import SQLiteDatabase
from safereplay.recovery.errors import InvalidRequest
from safereplay.recovery.operations.dispatch import (
    Diverted,
    GateCall,
    OperationContext,
    Operations,
)
from safereplay.recovery.security.access import (
    AccessControl,
    AccessDenied,
    Permission,
    Principal,
    Role,
)
from safereplay.recovery.security.audit import AuditKey, AuditTrail


@pytest.fixture
def operations(tmp_path: Path) -> Iterator[Operations]:
    database = SQLiteDatabase(tmp_path / "recovery.db")
    access = AccessControl(database, hasher=PasswordHasher(time_cost=1, memory_cost=8))
    audit = AuditTrail(database, AuditKey.generate())
    access.create_tables()
    audit.create_tables()
    operations = Operations(access=access, audit=audit)
    calls: list[Mapping[str, Any]] = []

    def rebuild(ctx: OperationContext, params: Mapping[str, Any]) -> dict[str, str]:
        if params.get("explode"):
            raise RuntimeError("boom")
        calls.append(params)
        return {"job_id": "00000000-0000-0000-0000-000000000007"}

    operations.register("rebuild", permission=Permission.OPERATE, handler=rebuild)
    operations.register(
        "status", permission=Permission.VIEW, handler=lambda ctx, p: "ok", scope="*"
    )
    operations.calls = calls  # type: ignore[attr-defined]
    yield operations
    database.close()


ALICE = Principal("alice", "person")


def test_a_denied_operation_never_runs_and_is_audited(operations: Operations) -> None:
    operations.access.add_principal("alice", kind="person", created_by="setup")
    with pytest.raises(AccessDenied, match="'alice' may not rebuild on 'projection:runs'"):
        operations.run(ALICE, "rebuild", reason="fix", projection="runs")
    assert operations.calls == []  # type: ignore[attr-defined]
    (entry,) = operations.audit.entries()
    assert (entry.actor, entry.action, entry.outcome) == ("alice", "rebuild", "denied")
    assert entry.scope == "projection:runs"


def test_an_allowed_operation_runs_and_is_audited_with_its_job(operations: Operations) -> None:
    operations.access.add_principal("alice", kind="person", created_by="setup")
    operations.access.grant("alice", Role.OPERATOR, "projection:runs", granted_by="setup")
    result = operations.run(ALICE, "rebuild", reason="bad deploy", projection="runs")
    assert result["job_id"].endswith("7")
    intent, entry = operations.audit.entries()
    assert (intent.outcome, entry.outcome) == ("started", "succeeded")
    assert entry.parameters["intent_seq"] == intent.seq
    assert entry.reason == "bad deploy"
    assert entry.job_id == "00000000-0000-0000-0000-000000000007"


def test_failures_are_audited_and_reraised(operations: Operations) -> None:
    operations.access.add_principal("alice", kind="person", created_by="setup")
    operations.access.grant("alice", Role.OPERATOR, "*", granted_by="setup")
    with pytest.raises(RuntimeError, match="boom"):
        operations.run(ALICE, "rebuild", reason="try", projection="runs", explode=True)
    intent, entry = operations.audit.entries()
    assert (intent.outcome, entry.outcome) == ("started", "failed")
    assert "RuntimeError: boom" in entry.parameters["error"]


def test_changes_need_a_reason_reads_do_not(operations: Operations) -> None:
    operations.access.add_principal("alice", kind="person", created_by="setup")
    operations.access.grant("alice", Role.OPERATOR, "*", granted_by="setup")
    with pytest.raises(InvalidRequest, match="give a reason"):
        operations.run(ALICE, "rebuild", projection="runs")
    assert operations.run(ALICE, "status") == "ok"
    assert [e.outcome for e in operations.audit.entries()] == ["failed", "succeeded"]
    assert operations.audit.verify().ok


def test_unknown_operations_are_refused(operations: Operations) -> None:
    with pytest.raises(InvalidRequest, match="unknown operation 'nuke'"):
        operations.run(ALICE, "nuke", reason="x")


def test_gates_refuse_or_divert_a_call_after_its_checks_and_before_it_runs(
    operations: Operations,
) -> None:
    operations.access.add_principal("alice", kind="person", created_by="setup")
    operations.access.grant("alice", Role.OPERATOR, "projection:*", granted_by="setup")
    seen: list[GateCall] = []

    def frozen(call: GateCall) -> None:
        seen.append(call)
        if call.parameters.get("projection") == "frozen":
            raise InvalidRequest("operations are switched off")

    def four_eyes(call: GateCall) -> None:
        if call.operation == "rebuild" and call.approval is None:
            raise Diverted({"change_request": "r-1"}, {"change_request": "r-1"})

    operations.add_gate(frozen)
    operations.add_gate(four_eyes)

    # Refused by the first gate: never run, never diverted; audited as denied, with why.
    with pytest.raises(InvalidRequest, match="switched off"):
        operations.run(ALICE, "rebuild", reason="fix", projection="frozen")
    # Diverted by the second: the caller gets the request, the handler never runs.
    assert operations.run(ALICE, "rebuild", reason="fix", projection="runs") == {
        "change_request": "r-1"
    }
    assert operations.calls == []  # type: ignore[attr-defined]
    # Approved: it runs, and every entry of that run names the approval.
    approval = {"change_request": "r-1", "approved_by": "bob"}
    operations.run(ALICE, "rebuild", reason="fix", approval=approval, projection="runs")
    assert len(operations.calls) == 1  # type: ignore[attr-defined]
    assert "approval" not in operations.calls[0]  # type: ignore[attr-defined]

    entries = operations.audit.entries()
    assert [e.outcome for e in entries] == ["denied", "deferred", "started", "succeeded"]
    assert "switched off" in entries[0].parameters["error"]
    assert entries[1].parameters["change_request"] == "r-1"
    assert entries[2].parameters["approval"] == entries[3].parameters["approval"] == approval
    # Gates see the checked call: its scope and reason.
    assert {(c.scope, c.reason) for c in seen} == {
        ("projection:frozen", "fix"),
        ("projection:runs", "fix"),
    }

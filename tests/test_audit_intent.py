"""A change never goes without its audit entry: a crash between the handler's commit and
the outcome entry leaves the intent entry (outcome ``started``) written before it, and
``audit verify`` names it (outcome unknown) without failing."""

from __future__ import annotations

import json
from typing import Any

import pytest
from test_every_operation_denied import world  # noqa: F401 - the fixture
from typer.testing import CliRunner

from safereplay.domain import KeyRing
from safereplay.recovery.cli.app import app
from safereplay.recovery.operations.catalog import open_operations
from safereplay.recovery.security.audit import AuditRecord, AuditTrail
from safereplay.recovery.security.audit_verify import verify_audit
from safereplay.recovery.templates.store import TemplateStore

TEMPLATE = '[template]\nname = "org"\nkind = "rebuild"\n[scope]\nprojections = ["run_status"]\n'


class Crash(BaseException):
    """The process dies (SIGKILL) right after the handler committed its change."""


def crash_before_the_outcome(monkeypatch: pytest.MonkeyPatch) -> None:
    original = AuditTrail.append

    def append(self: AuditTrail, record: AuditRecord) -> Any:
        if record.outcome in ("succeeded", "failed"):
            raise Crash
        return original(self, record)

    monkeypatch.setattr(AuditTrail, "append", append)


CHANGES: dict[str, tuple[dict[str, Any], Any]] = {
    "grant": (
        {"name": "mallory", "role": "viewer", "grant_scope": "*"},
        lambda w: [g.role for g in w["context"].access.grants("mallory")] == ["viewer"],
    ),
    "keys.add": (
        {"key_id": "k9", "activate": True},
        lambda w: KeyRing.load(w["context"].domain.key_file).active_key_id == "k9",
    ),
    "templates.update": (
        {"toml": TEMPLATE.replace("[scope]", "# v2\n[scope]")},
        lambda w: "# v2" in TemplateStore(w["context"].database).get("org").text,
    ),
}


@pytest.mark.parametrize("operation", sorted(CHANGES))
def test_a_crash_after_the_change_leaves_its_intent_entry(
    operation: str,
    world: dict[str, Any],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    context, admin = world["context"], world["admin"]
    open_operations(context).run(admin, "templates.add", reason="setup", toml=TEMPLATE)
    parameters, changed = CHANGES[operation]
    crash_before_the_outcome(monkeypatch)
    with pytest.raises(Crash):
        open_operations(context).run(admin, operation, reason="crash test", **parameters)
    monkeypatch.undo()
    assert changed(world), "the handler committed its change"
    last = context.audit.entries()[-1]
    assert (last.action, last.outcome, last.reason) == (operation, "started", "crash test")
    assert context.audit.verify().ok


def test_verify_lists_intents_without_an_outcome_and_still_passes(
    world: dict[str, Any],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    context, admin = world["context"], world["admin"]
    open_operations(context).run(admin, "templates.add", reason="setup", toml=TEMPLATE)
    crash_before_the_outcome(monkeypatch)
    with pytest.raises(Crash):
        open_operations(context).run(admin, "grant", reason="crash test", **CHANGES["grant"][0])
    monkeypatch.undo()
    intent = context.audit.entries()[-1]
    assert intent.outcome == "started"
    open_operations(context).run(admin, "revoke", reason="done", **CHANGES["grant"][0])

    report = verify_audit(context.audit, context.anchoring)
    assert report.ok, str(report)
    assert [(u.operation, u.seq, u.principal) for u in report.outcome_unknown] == [
        ("grant", intent.seq, "ada")
    ], "the revoke has its outcome; only the grant's is unknown"

    env = world["env"] | {"SAFEREPLAY_TOKEN": context.access.issue_token("ada")}
    human = CliRunner().invoke(app, ["audit", "verify"], env=env)
    assert human.exit_code == 0, human.output
    assert "1 operation(s) with outcome unknown" in human.output
    assert f"entry {intent.seq} at {intent.at}: grant on * by ada" in human.output
    as_json = CliRunner().invoke(app, ["audit", "verify", "--json"], env=env)
    assert as_json.exit_code == 0, as_json.output
    [unknown] = json.loads(as_json.output)["outcome_unknown"]
    assert unknown == {
        "operation": "grant",
        "seq": intent.seq,
        "at": intent.at,
        "principal": "ada",
        "scope": "*",
    }

"""A change never goes without its audit entry: a crash between the handler's commit and
the outcome entry leaves the intent entry (outcome ``started``) written before it."""

from __future__ import annotations

from typing import Any

import pytest
from test_every_operation_denied import world  # noqa: F401 - the fixture

from safereplay.domain import KeyRing
from safereplay.recovery.operations.catalog import open_operations
from safereplay.recovery.security.audit import AuditRecord, AuditTrail
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

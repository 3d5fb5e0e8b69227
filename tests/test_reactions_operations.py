"""Issue #20, the reactions' recovery surface through the dispatch layer, on both backends:

- ``reactions.plan`` counts, per destination, exactly the rows delivered, failed,
  parked, pending, never attempted and the events not recorded, and lists what
  would be sent (payloads only when asked);
- a principal without a grant on ``reaction:NAME`` is refused (and audited);
  ``reaction:*`` covers every reaction;
- an outage during live delivery (the receiver answers 503) leaves rows parked;
  with the receiver back, the plan shows them and ``reactions.redeliver`` sends
  each one once: distinct idempotency keys == events, none acknowledged twice,
  and the ledger agrees with the receiver; a forced re-delivery (audited as
  forced) sends the acknowledged ones again, with the same keys;
- ``reactions.status`` shows the position and each destination's rows by state.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from webhook_receiver import Receiver

from safereplay.domain import AutomationApp, DomainSettings
from safereplay.domain.workload import record_workload
from safereplay.reactions import DeliveryOutcome, WebhookSecret
from safereplay.reactions.reference import RunCompletions
from safereplay.recovery.errors import AccessDenied, InvalidRequest
from safereplay.recovery.operations.catalog import open_operations
from safereplay.recovery.operations.context import RecoveryContext
from safereplay.recovery.operations.dispatch import Operations
from safereplay.recovery.operations.security import bootstrap_admin
from safereplay.recovery.security.access import Principal
from safereplay.recovery.security.audit import AuditKey
from safereplay.recovery.settings import RecoverySettings

SECRET = WebhookSecret(b"s" * 32)
REACTION = "run_completions"


@dataclass
class World:
    context: RecoveryContext
    operations: Operations
    admin: Principal
    receiver: Receiver

    def run(self, operation: str, *, as_: Principal | None = None, **parameters: Any) -> Any:
        return self.operations.run(as_ or self.admin, operation, **parameters)

    def completions(self) -> list[int]:
        """Positions of every Run.Completed event."""
        source = self.context.log
        mark = source.high_water_mark()
        return [
            n.id
            for n in source.read(after=0, upto=mark, limit=100_000, topics=RunCompletions.topics)
        ]

    def principal(self, name: str, *grants: tuple[str, str]) -> Principal:
        access = self.context.access
        access.add_principal(name, kind="person", created_by="ada")
        for role, scope in grants:
            access.grant(name, role, scope, granted_by="ada")
        return access.authenticate(access.issue_token(name))


def make_world(
    settings: DomainSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[World]:
    key = tmp_path / "audit.key"
    AuditKey.generate().save(key)
    with AutomationApp(settings) as application:
        record_workload(application, workflows=2, runs_per_workflow=4, seed=5)
    receiver = Receiver(SECRET).start()
    monkeypatch.setenv("SAFEREPLAY_WEBHOOK_COMPLETIONS_URL", receiver.url)
    monkeypatch.setenv("SAFEREPLAY_WEBHOOK_COMPLETIONS_SECRET", SECRET.value.decode())
    context = RecoveryContext(
        domain=settings,
        recovery=RecoverySettings(
            audit_key_file=key,
            reaction_attempts=2,
            reaction_backoff_initial=0.001,
            reaction_backoff_max=0.01,
            reaction_breaker_cool_down=0.0,
        ),
    )
    admin = context.access.authenticate(bootstrap_admin(context, "ada"))
    try:
        yield World(context, open_operations(context), admin, receiver)
    finally:
        receiver.stop()
        context.close()


class OperationCases:
    @pytest.fixture
    def world(self, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
        raise NotImplementedError

    def test_the_plan_counts_every_state_exactly(self, world: World) -> None:
        reaction = world.context.reactions[REACTION]
        source, ledger = world.context.source, world.context.ledger
        positions = world.completions()
        assert len(positions) >= 6, "the workload completes enough runs"
        # Recorded up to the fifth completion; the others are not recorded yet.
        upto = positions[4]
        events = source.read(after=0, upto=upto, limit=100_000, topics=reaction.topics)
        deliveries = [d for n in events for d in reaction.deliveries(source.decode(n))]
        ledger.record(REACTION, expected=0, position=upto, deliveries=deliveries)
        rows = ledger.owed(REACTION)
        ledger.record_attempt(rows[0], DeliveryOutcome.ok(200))
        ledger.record_attempt(rows[1], DeliveryOutcome.retry(503))
        ledger.record_attempt(rows[2], DeliveryOutcome.retry(503), park="gave up")
        failed_then_reopened = ledger.record_attempt(rows[3], DeliveryOutcome.retry(503))
        assert failed_then_reopened is not None
        assert ledger.reopen([failed_then_reopened], forced=False) == 1  # pending, attempted
        # rows[4]: never attempted.

        plan = world.run("reactions.plan", reaction=REACTION)
        assert plan["destinations"] == [
            {
                "destination": "completions",
                "delivered": 1,
                "failed": 1,
                "parked": 1,
                "pending": 1,
                "never_attempted": 1,
                "not_recorded": len(positions) - 5,
                "would_send": 4,
            }
        ]
        assert plan["would_send"] == 4 and plan["sample_limit"] == 20
        assert [(s["position"], s["state"]) for s in plan["sample"]] == [
            (positions[1], "failed"),
            (positions[2], "parked"),
            (positions[3], "pending"),
            (positions[4], "pending"),
        ]
        assert all(s["payload_bytes"] > 0 and "payload" not in s for s in plan["sample"])

        forced = world.run(
            "reactions.plan", reaction=REACTION, force=True, payloads=True, last=upto
        )
        assert forced["would_send"] == 5 and forced["destinations"][0]["not_recorded"] == 0
        assert forced["sample"][0]["payload"]["event_type"] == "Run.Completed"
        assert forced["selection"] == {
            "reaction": REACTION,
            "first": None,
            "last": upto,
            "since": None,
            "destination": None,
            "force": True,
        }
        ranged = world.run(
            "reactions.plan", reaction=REACTION, first=positions[2], last=positions[3]
        )
        assert ranged["would_send"] == 2
        with pytest.raises(InvalidRequest, match="no destination 'crm' .*delivers to completions"):
            world.run("reactions.plan", reaction=REACTION, destination="crm")
        with pytest.raises(InvalidRequest, match="first .* must not be above last"):
            world.run("reactions.plan", reaction=REACTION, first=9, last=3)
        with pytest.raises(
            InvalidRequest, match="unknown reaction 'nope'; known reactions: run_completions"
        ):
            world.run("reactions.plan", reaction="nope")

    def test_a_grant_on_the_reaction_is_needed(self, world: World) -> None:
        stranger = world.principal("mallory")
        projections_only = world.principal("vic", ("viewer", "projection:*"))
        viewer = world.principal("val", ("viewer", f"reaction:{REACTION}"))
        everywhere = world.principal("rob", ("operator", "reaction:*"))
        for who in (stranger, projections_only):
            with pytest.raises(AccessDenied):
                world.run("reactions.plan", as_=who, reaction=REACTION)
        assert world.run("reactions.plan", as_=viewer, reaction=REACTION)["would_send"] == 0
        with pytest.raises(AccessDenied, match="operate"):
            world.run("reactions.redeliver", as_=viewer, reaction=REACTION, reason="try")
        status = world.run("reactions.status", as_=everywhere)
        assert [r["name"] for r in status["reactions"]] == [REACTION]
        denied = [
            (e.actor, e.action, e.scope)
            for e in world.context.audit.entries()
            if e.outcome == "denied"
        ]
        assert ("vic", "reactions.plan", f"reaction:{REACTION}") in denied
        assert ("val", "reactions.redeliver", f"reaction:{REACTION}") in denied

    def test_an_outage_is_planned_and_redelivered_once(self, world: World) -> None:
        receiver = world.receiver
        events = world.completions()
        receiver.mode = 503  # the downstream service is down during live delivery
        ran = world.run("reactions.run", reaction=REACTION, once=True, reason="live")
        assert ran["recorded"] == len(events) and ran["delivered"] == 0
        assert receiver.acknowledged == []
        status = world.run("reactions.status", reaction=REACTION)["reactions"][0]
        (dest,) = status["destinations"]
        assert status["position"] >= events[-1] and status["behind"] == 0
        assert dest["configured"] and dest["delivered"] == 0
        # Retried, then parked: nothing is owed any more until an operator redelivers.
        assert dest["parked"] == len(events) and dest["owed"] == 0
        assert dest["oldest_owed_at"] is None and dest["oldest_owed_age_seconds"] is None
        # The runner closed (its lease released); its breaker opened during the outage.
        assert status["lease"] is None and dest["breaker_state"] in ("open", "half-open")

        receiver.mode = "ok"  # it is back
        plan = world.run("reactions.plan", reaction=REACTION, since="1h")
        assert plan["would_send"] == len(events)
        assert plan["destinations"][0]["delivered"] == 0
        result = world.run("reactions.redeliver", reaction=REACTION, since="1h", reason="CRM back")
        assert result["delivered"] == len(events) and result["still_owed"] == 0
        assert result["delivered_by"] == "this command" and result["forced"] == 0
        keys = Counter(receiver.acknowledged)
        assert len(keys) == len(events), "every event delivered, nothing missed"
        assert max(keys.values()) == 1, "no key acknowledged twice"
        ledger = world.context.ledger.select(REACTION)
        assert {e.idempotency_key for e in ledger if e.state == "delivered"} == set(keys)
        assert all(e.redeliveries >= 1 for e in ledger)

        # Nothing is owed: a second re-delivery sends nothing, unless forced.
        again = world.run("reactions.redeliver", reaction=REACTION, reason="again")
        assert again["reopened"] == 0 and len(receiver.acknowledged) == len(events)
        forced = world.run(
            "reactions.redeliver", reaction=REACTION, force=True, reason="replay all"
        )
        assert forced["forced"] == len(events) and forced["delivered"] == len(events)
        assert Counter(receiver.acknowledged) == Counter(dict.fromkeys(keys, 2)), "same keys"
        rows = world.context.ledger.select(REACTION)
        assert all(e.forced_redeliveries == 1 and e.acknowledgements == 2 for e in rows)
        audited = [
            e
            for e in world.context.audit.entries()
            if e.action == "reactions.redeliver" and e.outcome == "succeeded"
        ]
        assert [bool(e.parameters.get("force")) for e in audited] == [False, False, True]
        assert audited[-1].reason == "replay all"


class TestSQLiteReactionOperations(OperationCases):
    @pytest.fixture
    def world(
        self, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> Iterator[World]:
        yield from make_world(request.getfixturevalue("sqlite_settings")(), tmp_path, monkeypatch)


@pytest.mark.postgres
class TestPostgresReactionOperations(OperationCases):
    @pytest.fixture
    def world(
        self, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> Iterator[World]:
        yield from make_world(request.getfixturevalue("postgres_settings")(), tmp_path, monkeypatch)

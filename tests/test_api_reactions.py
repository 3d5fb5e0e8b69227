"""Issue #20 points 3 and 5, the API's reactions endpoints, on SQLite and PostgreSQL,
against a real webhook receiver on 127.0.0.1 (tests/webhook_receiver.py):

- ``GET /api/reactions`` (and ``/api/reactions/{name}``) shows the reference reaction's
  position and, per destination, what is pending, failed, parked and delivered, the
  oldest undelivered one's age and the breaker: the ledger's own figures;
- after the receiver was down, a plan (``redelivery-plan``) lists the failed
  deliveries and what would be sent, sends nothing and is audited; a re-delivery
  (``redeliveries``, with a reason) sends each of them once, with its idempotency
  key, and the ledger agrees with the receiver; acknowledged ones only with force;
- without a token: 401; without a grant on ``reaction:run_completions``: 403, audited,
  nothing sent; a viewer of the reaction may plan but not re-deliver;
- malformed bodies: 422 naming the field, nothing sent.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from api_fixtures import ApiContract, ApiWorld, postgres_settings, sqlite_settings
from webhook_receiver import Receiver

from safereplay.reactions import ReactionRunner, WebhookDestination, WebhookSecret
from safereplay.reactions.backends import open_ledger
from safereplay.reactions.ledger import LedgerEntry
from safereplay.reactions.reference import RunCompletions
from safereplay.recovery.operations.catalog import open_operations
from safereplay.recovery.resilience.policies import Fail

pytestmark = pytest.mark.usefixtures("clean_safereplay_environment")

REACTION = "run_completions"
DESTINATION = "completions"
ROOT = f"/api/reactions/{REACTION}"
SECRET = b"api-test-webhook-secret-of-32-bytes-or-more"

#: (method, path, body, operation) of every reactions endpoint, with a valid body.
ENDPOINTS: tuple[tuple[str, str, dict[str, Any] | None, str], ...] = (
    ("get", "/api/reactions", None, "reactions.status"),
    ("get", ROOT, None, "reactions.status"),
    ("post", f"{ROOT}/redelivery-plan", {}, "reactions.plan"),
    ("post", f"{ROOT}/redeliveries", {"reason": "CRM back"}, "reactions.redeliver"),
)


@pytest.fixture
def receiver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    """The ``completions`` webhook's receiver, configured for the server's contexts."""
    secret_file = tmp_path / "completions.secret"
    secret_file.write_bytes(SECRET)
    secret_file.chmod(0o600)
    with Receiver(WebhookSecret(SECRET)).start() as started:
        monkeypatch.setenv("SAFEREPLAY_WEBHOOK_COMPLETIONS_URL", started.url)
        monkeypatch.setenv("SAFEREPLAY_WEBHOOK_COMPLETIONS_SECRET_FILE", str(secret_file))
        yield started


def call(world: ApiWorld, who: str | None, method: str, path: str, body: Any) -> Any:
    headers = {} if who is None else world.headers(who)
    return world.client.request(method, path, headers=headers, json=body)


def entries(world: ApiWorld) -> list[LedgerEntry]:
    with open_ledger(world.settings) as ledger:
        return ledger.entries(REACTION)


def deliver_while_down(world: ApiWorld, receiver: Receiver) -> list[LedgerEntry]:
    """The reaction records every completion and sends each once while the receiver
    answers 503; the policy gives up at once, so each stays owed as ``failed``."""
    receiver.mode = 503
    destination = WebhookDestination(DESTINATION, receiver.url, secret=WebhookSecret(SECRET))
    with (
        open_ledger(world.settings) as ledger,
        ReactionRunner(
            RunCompletions(destinations=(DESTINATION,)),
            source=world.context.source,
            ledger=ledger,
            destinations=[destination],
            policy=Fail(),
        ) as runner,
    ):
        runner.run_once()
    receiver.mode = "ok"
    failed = entries(world)
    assert failed and {e.state for e in failed} == {"failed"}, failed
    assert len(receiver.keys()) == len(failed), "each was sent once, and refused"
    return failed


def reaction_of(response: Any) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    [reaction] = [r for r in response.json()["reactions"] if r["name"] == REACTION]
    return dict(reaction)


def grant(world: ApiWorld, role: str, scope: str) -> None:
    """Give vic (a viewer of every projection) a role over ``scope``, as ada."""
    admin = world.context.access.authenticate(world.envs["admin"]["SAFEREPLAY_TOKEN"])
    open_operations(world.context).run(
        admin, "grant", reason="test", name="vic", role=role, grant_scope=scope
    )


def outcomes(world: ApiWorld, action: str) -> list[tuple[str, str, str]]:
    return [
        (e.actor, e.outcome, e.reason) for e in world.context.audit.entries() if e.action == action
    ]


class ReactionsApiContract(ApiContract):
    def test_status_shows_each_destination_as_the_ledger_has_it(
        self, world: ApiWorld, receiver: Receiver
    ) -> None:
        log = world.context.log
        before = reaction_of(world.get("admin", "/api/reactions"))
        assert (before["position"], before["lease"], before["head"]) == (0, None, log.head())
        # Behind: the events of its types not recorded yet (not positions).
        completions = log.count(after=0, upto=log.head(), topics=RunCompletions.topics)
        assert before["behind"] == completions > 0
        [destination] = before["destinations"]
        assert destination["destination"] == DESTINATION and destination["configured"]
        assert (destination["pending"], destination["failed"], destination["delivered"]) == (
            0,
            0,
            0,
        )
        assert destination["oldest_owed_age_seconds"] is None

        failed = deliver_while_down(world, receiver)
        after = reaction_of(world.get("admin", "/api/reactions"))
        assert (after["position"], after["behind"]) == (log.high_water_mark(), 0)
        assert len(failed) == completions, "one delivery per completion"
        [destination] = after["destinations"]
        assert (destination["failed"], destination["pending"], destination["parked"]) == (
            len(failed),
            0,
            0,
        )
        assert destination["owed"] == len(failed) and destination["delivered"] == 0
        assert destination["oldest_owed_at"] == min(e.recorded_at for e in failed)
        assert destination["oldest_owed_age_seconds"] >= 0
        one = world.get("admin", ROOT)
        assert one.status_code == 200, one.text
        assert (one.json()["name"], one.json()["position"]) == (REACTION, after["position"])
        assert one.json()["destinations"][0]["failed"] == len(failed)
        missing = world.get("admin", "/api/reactions/no_such_reaction")
        assert missing.status_code == 404, missing.text
        assert "no_such_reaction" in missing.json()["error"]["message"]
        assert len(receiver.keys()) == len(failed), "reading the status sends nothing"

    def test_a_plan_lists_what_was_missed_then_a_redelivery_sends_it_once(
        self, world: ApiWorld, receiver: Receiver
    ) -> None:
        failed = deliver_while_down(world, receiver)
        sent_before = len(receiver.keys())
        plan = world.post("admin", f"{ROOT}/redelivery-plan", {"destination": DESTINATION})
        assert plan.status_code == 200, plan.text
        planned = plan.json()
        assert (planned["reaction"], planned["would_send"]) == (REACTION, len(failed))
        [by_destination] = planned["destinations"]
        assert (by_destination["failed"], by_destination["would_send"]) == (len(failed),) * 2
        assert by_destination["delivered"] == by_destination["parked"] == 0
        sample = planned["sample"]
        assert len(sample) == min(len(failed), planned["sample_limit"])
        assert [s["idempotency_key"] for s in sample] == [
            e.idempotency_key for e in failed[: len(sample)]
        ]
        assert not {"payload", "body", "data"} & {k for s in sample for k in s}
        assert len(receiver.keys()) == sent_before, "a plan sends nothing"

        redelivered = world.post(
            "admin", f"{ROOT}/redeliveries", {"destination": DESTINATION, "reason": "CRM back"}
        )
        assert redelivered.status_code == 200, redelivered.text
        result = redelivered.json()
        assert (result["delivered"], result["still_owed"], result["failed"]) == (len(failed), 0, 0)
        assert result["forced"] == 0
        # The receiver's record and the ledger agree: every completion acknowledged
        # once, with its own key (distinct keys = events: nothing missed).
        keys = {e.idempotency_key for e in failed}
        assert sorted(receiver.acknowledged) == sorted(keys) and len(keys) == len(failed)
        assert all(r.signed for r in receiver.received)
        assert {(e.state, e.acknowledgements) for e in entries(world)} == {("delivered", 1)}
        [destination] = reaction_of(world.get("admin", "/api/reactions"))["destinations"]
        assert (destination["delivered"], destination["owed"]) == (len(failed), 0)
        assert destination["oldest_owed_age_seconds"] is None

        assert outcomes(world, "reactions.plan") == [("ada", "succeeded", "")]
        assert outcomes(world, "reactions.redeliver") == [
            ("ada", "started", "CRM back"),
            ("ada", "succeeded", "CRM back"),
        ]

    def test_acknowledged_deliveries_are_sent_again_only_when_forced(
        self, world: ApiWorld, receiver: Receiver
    ) -> None:
        failed = deliver_while_down(world, receiver)
        world.post("admin", f"{ROOT}/redeliveries", {"reason": "CRM back"})
        first = failed[0].position
        nothing = world.post("admin", f"{ROOT}/redelivery-plan", {"first": first, "last": first})
        assert nothing.status_code == 200, nothing.text
        assert nothing.json()["would_send"] == 0
        assert nothing.json()["destinations"][0]["delivered"] == 1
        forced_plan = world.post(
            "admin", f"{ROOT}/redelivery-plan", {"first": first, "last": first, "force": True}
        )
        assert forced_plan.json()["would_send"] == 1, forced_plan.text

        body = {"first": first, "last": first, "force": True, "reason": "receiver lost it"}
        forced = world.post("admin", f"{ROOT}/redeliveries", body)
        assert forced.status_code == 200, forced.text
        assert (forced.json()["forced"], forced.json()["delivered"]) == (1, 1)
        assert receiver.acknowledged.count(failed[0].idempotency_key) == 2
        again = {e.idempotency_key: e for e in entries(world)}[failed[0].idempotency_key]
        assert (again.acknowledgements, again.forced_redeliveries) == (2, 1)
        assert ("ada", "succeeded", "receiver lost it") in outcomes(world, "reactions.redeliver")

    def test_without_a_token_every_endpoint_is_401(
        self, world: ApiWorld, receiver: Receiver
    ) -> None:
        failed = deliver_while_down(world, receiver)
        for method, path, body, _ in ENDPOINTS:
            response = call(world, None, method, path, body)
            assert response.status_code == 401, (path, response.text)
            assert response.json()["error"]["code"] == "unauthenticated"
        assert len(receiver.keys()) == len(failed)
        assert {e.state for e in entries(world)} == {"failed"}

    def test_without_a_grant_on_the_reaction_it_is_403_audited_and_nothing_is_sent(
        self, world: ApiWorld, receiver: Receiver
    ) -> None:
        failed = deliver_while_down(world, receiver)
        # vic views every projection, mallory nothing: neither has reaction:run_completions.
        for who, actor in (("viewer", "vic"), ("stranger", "mallory")):
            for method, path, body, operation in ENDPOINTS:
                refused = call(world, who, method, path, body)
                assert refused.status_code == 403, (who, path, refused.text)
                assert refused.json()["error"]["code"] == "denied"
                assert (actor, operation, "denied") in world.audit_actions()
        # A viewer of the reaction reads and plans, but may not re-deliver.
        grant(world, "viewer", f"reaction:{REACTION}")
        shown = world.get("viewer", ROOT)
        assert shown.status_code == 200 and shown.json()["name"] == REACTION, shown.text
        # The list is every reaction's: it needs reaction:* (or *).
        assert world.get("viewer", "/api/reactions").status_code == 403
        plan = world.post("viewer", f"{ROOT}/redelivery-plan", {})
        assert plan.status_code == 200 and plan.json()["would_send"] == len(failed), plan.text
        refused = world.post("viewer", f"{ROOT}/redeliveries", {"reason": "let me"})
        assert refused.status_code == 403, refused.text
        assert ("vic", "denied", "let me") in outcomes(world, "reactions.redeliver")
        assert len(receiver.keys()) == len(failed)
        assert {e.state for e in entries(world)} == {"failed"}

    def test_malformed_bodies_are_422_naming_the_field(
        self, world: ApiWorld, receiver: Receiver
    ) -> None:
        failed = deliver_while_down(world, receiver)
        plan, redeliver = f"{ROOT}/redelivery-plan", f"{ROOT}/redeliveries"
        for path, body, field in (
            (redeliver, {}, "reason"),
            (redeliver, {"reason": ""}, "reason"),
            (plan, {"first": 0}, "first"),
            (plan, {"last": "end"}, "last"),
            (plan, {"since": "yesterday"}, "since"),
            (plan, {"since": "2026-12-06T14:00:00"}, "since"),  # no offset: which zone?
            (plan, {"force": "maybe"}, "force"),
            (plan, {"destination": ""}, "destination"),
            (plan, {"from": 3}, "from"),
            (redeliver, {"reason": "r", "first": 9, "last": 3}, "before first"),
        ):
            response = world.post("admin", path, body)
            assert response.status_code == 422, (path, body, response.text)
            message = response.json()["error"]["message"]
            assert message.startswith(field) or field in message, (body, message)
        assert len(receiver.keys()) == len(failed)
        assert {e.state for e in entries(world)} == {"failed"}
        assert outcomes(world, "reactions.redeliver") == []


class TestSQLiteReactionsApi(ReactionsApiContract):
    settings = staticmethod(sqlite_settings)


@pytest.mark.postgres
class TestPostgresReactionsApi(ReactionsApiContract):
    settings = staticmethod(postgres_settings)

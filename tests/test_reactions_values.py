"""Issue #20, the reactions' values: a delivery's idempotency key is derived, never
drawn; the payload sent is the event's public form as JSON types; an outcome's
detail is one bounded line; a reaction's definition is checked when it is written.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from uuid import UUID, uuid4

import pytest

from safereplay.domain.automation import Run
from safereplay.domain.envelope import Envelope, event_id_for
from safereplay.reactions import (
    Delivery,
    DeliveryOutcome,
    Reaction,
    ReactionDefinitionError,
    idempotency_key,
    public_form,
)


def envelope(position: int = 7) -> Envelope:
    aggregate = UUID("12345678-1234-5678-1234-567812345678")
    return Envelope(
        position=position,
        event_id=event_id_for(aggregate, 3),
        aggregate_id=aggregate,
        aggregate_version=3,
        topic="safereplay.domain.automation:Run.Completed",
        event_type="Run.Completed",
        schema_version=1,
        occurred_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        source="test",
        correlation_id=UUID(int=1),
        causation_id=None,
        payload={"status": "succeeded", "summary": {"workflow": uuid4()}},
        event=None,
    )


class Completions(Reaction):
    name = "completions"
    reacts_to = (Run.Completed,)


def test_the_key_is_the_same_for_the_same_reaction_destination_and_event() -> None:
    event = uuid4()
    key = idempotency_key("completions", "crm", event)
    assert key == idempotency_key("completions", "crm", event)
    assert UUID(key).version == 5
    others = {
        idempotency_key("completions", "mail", event),
        idempotency_key("invoices", "crm", event),
        idempotency_key("completions", "crm", uuid4()),
    }
    assert key not in others and len(others) == 3


def test_a_reaction_maps_an_event_to_one_delivery_per_destination() -> None:
    reaction = Completions(destinations=("crm", "mail"))
    assert reaction.topics == ("safereplay.domain.automation:Run.Completed",)
    crm, mail = reaction.deliveries(envelope())
    assert (crm.destination, mail.destination) == ("crm", "mail")
    assert crm.idempotency_key == idempotency_key("completions", "crm", crm.event_id)
    assert crm.idempotency_key != mail.idempotency_key
    # Mapped again (as a resumed runner does), the same delivery with the same key.
    assert reaction.deliveries(envelope()) == [crm, mail]
    with pytest.raises(TypeError):
        crm.payload["status"] = "changed"  # type: ignore[index]


def test_the_public_form_is_json_with_no_topic_or_internals() -> None:
    form = public_form(envelope())
    assert json.loads(json.dumps(form)) == form
    assert form["event_type"] == "Run.Completed" and form["position"] == 7
    assert form["occurred_at"] == "2026-01-02T03:04:05+00:00"
    assert form["payload"]["status"] == "succeeded"
    assert isinstance(form["payload"]["summary"]["workflow"], str)
    assert not {"topic", "source", "schema_version", "event"} & set(form)


def test_a_delivery_needs_an_event_read_from_the_log() -> None:
    unplaced = envelope(position=7)
    object.__setattr__(unplaced, "position", None)
    with pytest.raises(ValueError, match="position"):
        Delivery.of("completions", "crm", unplaced)


def test_an_outcome_keeps_one_bounded_line_of_detail() -> None:
    outcome = DeliveryOutcome.retry(502, "bad gateway\n<html>a body with secrets</html>")
    assert outcome.detail == "bad gateway" and not outcome.delivered
    assert len(DeliveryOutcome.permanent(400, "x" * 1000).detail) == 300
    assert DeliveryOutcome.ok(200).delivered
    with pytest.raises(ValueError):
        DeliveryOutcome("maybe")  # type: ignore[arg-type]


def test_invalid_reactions_are_refused_when_defined() -> None:
    with pytest.raises(ReactionDefinitionError, match="name"):

        class BadName(Reaction):
            name = "Bad-Name"
            reacts_to = (Run.Completed,)

    with pytest.raises(ReactionDefinitionError, match="reacts to nothing"):

        class Nothing(Reaction):
            name = "nothing"

    with pytest.raises(ReactionDefinitionError, match="destination name"):
        Completions(destinations=("CRM!",))
    with pytest.raises(ReactionDefinitionError, match="twice"):
        Completions(destinations=("crm", "crm"))
    with pytest.raises(ReactionDefinitionError, match="no destination"):
        Completions(destinations=("crm",)).delivery("mail", envelope())

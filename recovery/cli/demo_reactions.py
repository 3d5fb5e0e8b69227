"""The reactions chapter of ``safereplay demo``: a downstream service was down.

The reference reaction ``run_completions`` posts every completed run to a webhook:
here the demo's own receiver (:mod:`.demo_receiver`, the "CRM"), signed with a
secret in an owner-only file. The CRM goes down while runs complete: the live
runner retries, its breaker opens, the deliveries are parked, and the ledger
keeps them. Once the CRM is back, an operator plans the re-delivery (a dry run)
and runs it through the dispatch layer (checked, audited): every completion
arrives once, under the same idempotency key it always had.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from safereplay.domain import AutomationApp
from safereplay.domain.workload import record_workload
from safereplay.reactions.settings import webhook_prefix
from safereplay.reactions.webhook import WebhookSecret
from safereplay.recovery.cli.demo_receiver import DemoReceiver
from safereplay.recovery.operations.initialise import write_secret_file
from safereplay.recovery.security.access import Principal

__all__ = ["DEMO_REACTION_SETTINGS", "ReactionStory", "tell_reaction_story"]

REACTION = "run_completions"
DESTINATION = "completions"
#: The destination's variables: its URL and the path of its secret's file.
DESTINATION_VARIABLES = (
    webhook_prefix(DESTINATION) + "URL",
    webhook_prefix(DESTINATION) + "SECRET_FILE",
)

#: Quick retries and a quick breaker, so that the outage is told in seconds (the
#: defaults wait up to 30 s between attempts and 10 s before a probe).
DEMO_REACTION_SETTINGS: dict[str, Any] = {
    "reaction_attempts": 3,
    "reaction_backoff_initial": 0.05,
    "reaction_backoff_max": 0.2,
    "reaction_breaker_failures": 3,
    "reaction_breaker_cool_down": 0.2,
}


@dataclass(frozen=True)
class ReactionStory:
    """What the chapter did: completions owed, parked by the outage, re-delivered, and
    what the CRM processed (distinct idempotency keys; none twice)."""

    completions: int
    parked: int
    redelivered: int
    processed: int
    processed_twice: int


def tell_reaction_story(
    directory: Path,
    app: AutomationApp,
    run: Callable[..., Any],
    *,
    operator: Principal,
    viewer: Principal,
    console: Console,
) -> ReactionStory:
    secret_text = secrets.token_hex(32)
    secret_file = directory / "crm-webhook.secret"
    write_secret_file(secret_file, secret_text)
    crm = DemoReceiver(WebhookSecret(secret_text.encode("utf-8")))
    crm.start()
    # The destination's settings, as an operator would export them (the URL and the
    # path of the secret's file: the secret itself never sits in the environment).
    saved = {name: os.environ.get(name) for name in DESTINATION_VARIABLES}
    os.environ[DESTINATION_VARIABLES[0]] = crm.url
    os.environ[DESTINATION_VARIABLES[1]] = str(secret_file)
    try:
        return _story(app, run, crm, operator=operator, viewer=viewer, console=console)
    finally:
        crm.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _story(
    app: AutomationApp,
    run: Callable[..., Any],
    crm: DemoReceiver,
    *,
    operator: Principal,
    viewer: Principal,
    console: Console,
) -> ReactionStory:
    # Caught up first: the story is about the runs that complete during the outage.
    run(operator, "reactions.run", reaction=REACTION, once=True, reason="demo: start the CRM feed")
    before = crm.processed
    crm.down = True
    record_workload(app, workflows=2, runs_per_workflow=6, source="demo", seed=81)
    run(operator, "reactions.run", reaction=REACTION, once=True, reason="demo: live delivery")
    status = run(viewer, "reactions.status", reaction=REACTION)["reactions"][0]
    (completions,) = status["destinations"]
    console.print(
        f"reaction {REACTION} posts each completed run to the CRM (a signed webhook on "
        f"127.0.0.1); the CRM went down (503): {crm.refused} calls refused, breaker "
        f"{completions['breaker_state']}, {completions['parked']} deliveries parked in the "
        f"ledger ({completions['delivered']} delivered before the outage)"
    )
    parked = int(completions["parked"])

    crm.down = False
    plan = run(operator, "reactions.plan", reaction=REACTION, since="1h")
    (planned,) = plan["destinations"]
    console.print(
        f"the CRM is back; plan (dry run): {planned['parked']} parked, "
        f"{planned['never_attempted']} never attempted, {planned['delivered']} already "
        f"delivered (skipped unless forced): {plan['would_send']} would be sent"
    )
    result = run(
        operator, "reactions.redeliver", reaction=REACTION, since="1h", reason="demo: CRM back"
    )
    processed = crm.processed - before
    twice = sum(1 for count in crm.acknowledged.values() if count > 1)
    console.print(
        f"re-delivered by demo-operator (audited): {result['delivered']} delivered, "
        f"{result['still_owed']} still owed; the CRM processed {processed} distinct "
        f"idempotency keys for the {parked} parked completions, {twice} twice"
    )
    return ReactionStory(
        completions=int(completions["delivered"]) + parked,
        parked=parked,
        redelivered=int(result["delivered"]),
        processed=processed,
        processed_twice=twice,
    )

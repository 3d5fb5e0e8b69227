"""A delivering process to SIGKILL: it runs the ``run_events`` reaction (every run
event to one webhook) until idle, against the store its environment names.

Run as a script by the reactions' kill tests (``test_reactions_sigkill`` and the
reliability suite's ``test_reliability_hostile_reactions_sigkill``)::

    python tests/deliver_run_events.py URL SECRET_FILE [--timeout S] [--attempts N]
        [--concurrency N] [--batch-size N] [--lease-seconds S]

It defines its reaction itself rather than importing ``reaction_fixtures`` so that
it imports nothing but the product: what is killed is the product's runner.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from safereplay.domain import AutomationApp, DomainSettings
from safereplay.domain.automation import Run
from safereplay.projections import open_source
from safereplay.reactions import (
    Reaction,
    ReactionOptions,
    ReactionRunner,
    WebhookDestination,
    WebhookSecret,
    open_ledger,
)
from safereplay.recovery.resilience.policies import RetryThenPark


class RunEvents(Reaction):
    name = "run_events"
    reacts_to = (Run.Started, Run.StepSucceeded, Run.StepFailed, Run.StepRetried, Run.Completed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("secret_file", type=Path)
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--attempts", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--lease-seconds", type=float, default=2.0)
    args = parser.parse_args()

    settings = DomainSettings.from_env()
    secret = WebhookSecret.from_file(args.secret_file)
    options = ReactionOptions(
        concurrency=args.concurrency,
        batch_size=args.batch_size,
        lease_seconds=args.lease_seconds,
    )
    with AutomationApp(settings) as app:
        hooks = WebhookDestination("hooks", args.url, secret=secret, timeout=args.timeout)
        runner = ReactionRunner(
            RunEvents(destinations=["hooks"]),
            source=open_source(app),
            ledger=open_ledger(settings),
            destinations=[hooks],
            policy=RetryThenPark(attempts=args.attempts),
            options=options,
        )
        runner.run_until_idle()


if __name__ == "__main__":
    main()

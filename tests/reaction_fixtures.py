"""Reactions' test worlds: a ledger per backend, and a recorded workload to react to.

``LedgerContract`` / ``ReactionContract`` are subclassed per backend (SQLite,
PostgreSQL); ``ReactionWorld`` holds the application (its events recorded through
the validated edge), its event source and a ledger in the same database, and makes
runners of the :class:`RunEvents` reaction with recording destinations.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest

from safereplay.domain import AutomationApp, DomainSettings
from safereplay.domain.automation import Run
from safereplay.domain.workload import record_workload
from safereplay.projections import open_source
from safereplay.projections.source import EventSource
from safereplay.reactions import (
    Delivery,
    DeliveryLedger,
    PostgresDeliveryLedger,
    Reaction,
    ReactionOptions,
    ReactionRunner,
    RecordingDestination,
    RetryPolicy,
    SQLiteDeliveryLedger,
    idempotency_key,
)
from safereplay.reactions.resilience import BreakerFactory, RetryBudget
from safereplay.recovery.resilience.backoff import Backoff
from safereplay.recovery.resilience.policies import RetryThenPark

#: Retries quick enough for tests (jittered, below 20 ms).
QUICK = Backoff(initial=0.002, multiplier=2.0, maximum=0.02)


A, B = UUID(int=0xA), UUID(int=0xB)


def delivery(position: int, aggregate: UUID = A, destination: str = "crm") -> Delivery:
    """A delivery of reaction ``orders`` (a fresh event id) for ledger-level tests."""
    event = uuid4()
    return Delivery(
        reaction="orders",
        destination=destination,
        event_id=event,
        position=position,
        aggregate_id=aggregate,
        aggregate_version=position,
        event_type="Order.Placed",
        idempotency_key=idempotency_key("orders", destination, event),
        payload={},
    )


class RunEvents(Reaction):
    """Every event of a run, to each destination, in its public form."""

    name = "run_events"
    reacts_to = (Run.Started, Run.StepSucceeded, Run.StepFailed, Run.StepRetried, Run.Completed)


def reaction_named(name: str) -> type[RunEvents]:
    """A RunEvents of another name: a reaction of its own, at position 0."""
    return type(f"RunEvents_{name}", (RunEvents,), {"name": name})


class LedgerContract:
    """Subclassed per backend: ``ledger_at`` opens a ledger (a fresh one per test)."""

    @pytest.fixture
    def ledger_at(self, request: pytest.FixtureRequest, tmp_path: Path) -> Any:
        raise NotImplementedError

    @pytest.fixture
    def ledger(self, ledger_at: Callable[..., DeliveryLedger]) -> Iterator[DeliveryLedger]:
        ledger = ledger_at()
        yield ledger
        ledger.close()


def sqlite_ledgers(tmp_path: Path) -> Iterator[Callable[..., DeliveryLedger]]:
    opened: list[DeliveryLedger] = []

    def make(**options: Any) -> DeliveryLedger:
        ledger = SQLiteDeliveryLedger(tmp_path / "ledger.db", **options)
        opened.append(ledger)
        return ledger

    yield make
    for ledger in opened:
        ledger.close()


def postgres_ledgers(request: pytest.FixtureRequest) -> Iterator[Callable[..., DeliveryLedger]]:
    dsn: str = request.getfixturevalue("postgres_dsn")
    schema: str = request.getfixturevalue("pg_schema")
    opened: list[DeliveryLedger] = []

    def make(**options: Any) -> DeliveryLedger:
        ledger = PostgresDeliveryLedger(dsn, schema=schema, **options)
        opened.append(ledger)
        return ledger

    yield make
    for ledger in opened:
        ledger.close()


@dataclass
class ReactionWorld:
    settings: DomainSettings
    app: AutomationApp
    source: EventSource
    open_ledger: Callable[[], DeliveryLedger]
    runners: list[ReactionRunner] = field(default_factory=list)

    def runner(
        self,
        destinations: Sequence[RecordingDestination],
        *,
        reaction: Reaction | None = None,
        policy: RetryPolicy | None = None,
        breakers: BreakerFactory | None = None,
        concurrency: int = 4,
        batch_size: int = 500,
        holder: str | None = None,
        budgets: Callable[[str], RetryBudget | None] | None = None,
        lease_seconds: float = 30.0,
    ) -> ReactionRunner:
        """A runner with a ledger (and a source) of its own, as a new process has."""
        runner = ReactionRunner(
            reaction or RunEvents(destinations=[d.name for d in destinations]),
            source=open_source(self.app),
            ledger=self.open_ledger(),
            destinations=destinations,
            policy=policy or RetryThenPark(attempts=3, backoff=QUICK),
            breakers=breakers,
            budgets=budgets,
            options=ReactionOptions(
                concurrency=concurrency,
                batch_size=batch_size,
                breaker_poll=0.005,
                lease_seconds=lease_seconds,
            ),
            holder=holder,
        )
        self.runners.append(runner)
        return runner

    def events(self, reaction: type[Reaction] = RunEvents) -> list[tuple[int, UUID, UUID]]:
        """(position, event id, aggregate id) of every event the reaction reacts to."""
        mark = self.source.high_water_mark()
        found = self.source.read(after=0, upto=mark, limit=1_000_000, topics=reaction.topics)
        envelopes = [self.source.decode(n) for n in found]
        return [(e.position or 0, e.event_id, e.aggregate_id) for e in envelopes]


def reaction_world(
    settings: DomainSettings, open_ledger: Callable[[], DeliveryLedger]
) -> Iterator[ReactionWorld]:
    with AutomationApp(settings) as app:
        record_workload(app, workflows=2, runs_per_workflow=3, seed=5)
        world = ReactionWorld(settings, app, open_source(app), open_ledger)
        try:
            yield world
        finally:
            for runner in world.runners:
                runner.close()
                runner.ledger.close()
                runner.source.close()
            world.source.close()


class ReactionContract:
    """Subclassed per backend: ``world`` is a recorded workload and a ledger beside it."""

    @pytest.fixture
    def world(self, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ReactionWorld]:
        raise NotImplementedError


class SQLiteReactionWorld(ReactionContract):
    """Put first in a SQLite test class's bases: its ``world`` is on SQLite, ledger in a file."""

    @pytest.fixture
    def world(self, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ReactionWorld]:
        settings = request.getfixturevalue("sqlite_settings")()
        open_ledger = next(sqlite_ledgers(tmp_path))
        yield from reaction_world(settings, lambda: open_ledger())


class PostgresReactionWorld(ReactionContract):
    """Put first in a PostgreSQL test class's bases (marked ``postgres``)."""

    @pytest.fixture
    def world(self, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ReactionWorld]:
        settings = request.getfixturevalue("postgres_settings")()
        open_ledger = next(postgres_ledgers(request))
        yield from reaction_world(settings, lambda: open_ledger())

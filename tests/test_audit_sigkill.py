"""A change never goes without its audit entry, under a real SIGKILL (issue #17, 6a).

A child process runs audited changes in a fixed, endless sequence — swap and
rollback of a projection's live build, grant and revoke, template add and
update, key add and activate — and is killed (SIGKILL) at random moments. After
each kill, the state found (live build, grants, templates, key ring) is matched
to the one step of the sequence that produced it, and every step up to that one
must have an audit entry: its outcome, or its intent (outcome unknown) for the
step the kill interrupted. No step past it may claim to have succeeded, and the
trail still verifies.

Each step's reason is ``step N``, so entries are matched to steps without any
timing; the kill moments are random, and nothing is asserted about time.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from safereplay.domain import AutomationApp, DomainSettings, KeyRing
from safereplay.domain.workload import record_workload
from safereplay.recovery.jobs.worker import WorkerOptions
from safereplay.recovery.operations.catalog import open_operations
from safereplay.recovery.operations.context import RecoveryContext
from safereplay.recovery.operations.security import bootstrap_admin
from safereplay.recovery.security.audit import AuditKey
from safereplay.recovery.security.audit_verify import verify_audit
from safereplay.recovery.settings import RecoverySettings
from safereplay.recovery.templates.store import TemplateStore

PROJECTION = "run_status"
TRIALS = 10
TEMPLATE = '[template]\nname = "{name}"\nkind = "rebuild"\n[scope]\nprojections = ["run_status"]\n'
#: One cycle of steps; every step changes the state, and no two steps of the
#: sequence leave the same state (live build, grants, templates, keys).
CYCLE = (
    "swap",
    "grant",
    "rollback",
    "revoke",
    "templates.add",
    "templates.update",
    "keys.add",
    "keys.activate",
)


def step(number: int) -> tuple[str, dict[str, Any]]:
    """Step ``number`` (from 1) of the endless sequence: an operation and its parameters."""
    cycle, index = divmod(number - 1, len(CYCLE))
    c = cycle + 1
    name = CYCLE[index]
    parameters: dict[str, dict[str, Any]] = {
        "swap": {"projection": PROJECTION, "build": 2},
        "rollback": {"projection": PROJECTION},
        "grant": {"name": "mallory", "role": "viewer", "grant_scope": f"projection:p{c}"},
        "revoke": {"name": "mallory", "role": "viewer", "grant_scope": f"projection:p{c - 1}"},
        "templates.add": {"toml": TEMPLATE.format(name=f"t{c}")},
        "templates.update": {"toml": TEMPLATE.format(name="org") + f"# version {c + 1}\n"},
        "keys.add": {"key_id": f"r{c}"},
        "keys.activate": {"key_id": f"r{c}"},
    }
    return name, parameters[name]


@dataclass(frozen=True)
class State:
    """What the steps change, as found in the database (and the key file)."""

    live: int | None
    grants: frozenset[str]
    templates: frozenset[str]
    org_versions: int
    keys: frozenset[str]
    active_key: str


def expected(number: int, initial: State) -> State:
    """The state after step ``number`` (0: the state before the first step)."""
    state = initial
    for n in range(1, number + 1):
        name, p = step(n)
        if name == "swap":
            state = replace(state, live=2)
        elif name == "rollback":
            state = replace(state, live=1)
        elif name == "grant":
            state = replace(state, grants=state.grants | {p["grant_scope"]})
        elif name == "revoke":
            state = replace(state, grants=state.grants - {p["grant_scope"]})
        elif name == "templates.add":
            state = replace(state, templates=state.templates | {f"t{(n - 1) // len(CYCLE) + 1}"})
        elif name == "templates.update":
            state = replace(state, org_versions=state.org_versions + 1)
        elif name == "keys.add":
            state = replace(state, keys=state.keys | {p["key_id"]})
        else:
            state = replace(state, active_key=p["key_id"])
    return state


def observe(context: RecoveryContext) -> State:
    templates = TemplateStore(context.database)
    assert context.domain.key_file is not None
    ring = KeyRing.load(context.domain.key_file)
    return State(
        live=context.projection_store.live_build(PROJECTION),
        grants=frozenset(g.scope for g in context.access.grants("mallory")),
        templates=frozenset(t.name for t in templates.templates()) - {"org"},
        org_versions=len(templates.versions("org")),
        keys=frozenset(ring.key_ids),
        active_key=ring.active_key_id,
    )


def run_steps(start: int) -> None:
    """The child: every step from ``start`` on, until it is killed."""
    context = RecoveryContext.from_env()
    caller = context.caller()
    number = start
    while True:
        name, parameters = step(number)
        open_operations(context).run(caller, name, reason=f"step {number}", **parameters)
        number += 1


def wait_for(what: str, predicate: Callable[[], bool], *, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


class SigkillContract:
    """Both backends; subclasses give the domain settings and their environment."""

    @pytest.fixture
    def settings(self) -> DomainSettings:
        raise NotImplementedError

    def backend_env(self, settings: DomainSettings) -> dict[str, str]:
        raise NotImplementedError

    @pytest.fixture
    def world(self, settings: DomainSettings, tmp_path: Path) -> Iterator[dict[str, Any]]:
        """A store with a completed rebuild (build 2) beside the live build 1, a template
        'org', 'mallory' with one grant, and the admin's token for the child."""
        AuditKey.generate().save(tmp_path / "audit.key")
        with AutomationApp(settings) as application:
            record_workload(application, workflows=1, runs_per_workflow=3, seed=2)
        context = RecoveryContext(
            domain=settings, recovery=RecoverySettings(audit_key_file=tmp_path / "audit.key")
        )
        token = bootstrap_admin(context, "ada")
        admin = context.access.authenticate(token)
        operations = open_operations(context)
        # A never-built projection's first rebuild is its live build 1; the second
        # builds 2 beside it, which the steps swap in and roll back.
        for _ in ("build 1, live", "build 2 beside it"):
            operations.run(admin, "rebuild", reason="setup", projection=PROJECTION)
            context.worker(
                options=WorkerOptions(lease_seconds=30, idle_interval=0.02, exit_when_idle=True)
            ).run()
        context.access.add_principal("mallory", kind="person", created_by="ada")
        operations.run(
            admin,
            "grant",
            reason="setup",
            name="mallory",
            role="viewer",
            grant_scope="projection:p0",
        )
        operations.run(admin, "templates.add", reason="setup", toml=TEMPLATE.format(name="org"))
        base = {k: v for k, v in os.environ.items() if not k.startswith("SAFEREPLAY_")} | {
            "SAFEREPLAY_APPROVAL_REQUIRED": ""
        }
        env = base | self.backend_env(settings)
        env |= {
            "SAFEREPLAY_AUDIT_KEY_FILE": str(tmp_path / "audit.key"),
            "SAFEREPLAY_TOKEN": token,
            "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path]),
        }
        yield {"context": context, "env": env}
        context.close()

    def test_every_change_a_kill_leaves_has_its_audit_entry(self, world: dict[str, Any]) -> None:
        context: RecoveryContext = world["context"]
        initial = observe(context)
        assert initial.live == 1
        rng = random.Random()
        start = 1
        for trial in range(TRIALS):
            self.kill_at_random(context, world["env"], start, rng)
            start = self.check_after_kill(context, initial, start, trial)

    def kill_at_random(
        self, context: RecoveryContext, env: dict[str, str], start: int, rng: random.Random
    ) -> None:
        """Run the steps from ``start`` in a child; SIGKILL it after a random number of
        audit entries and a random pause (a kill may land anywhere in a step)."""
        seen_before = self.head_seq(context)
        target = rng.randint(1, 2 * len(CYCLE))
        child = subprocess.Popen(
            [sys.executable, "-c", f"import {__name__} as t; t.run_steps({start})"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_for(
                "the child's audited steps",
                lambda: child.poll() is not None or self.head_seq(context) - seen_before >= target,
            )
            time.sleep(rng.uniform(0, 0.2))
        finally:
            child.kill()
            _, errors = child.communicate(timeout=120)
        assert child.returncode == -signal.SIGKILL, f"the child died by itself: {errors}"

    @staticmethod
    def head_seq(context: RecoveryContext) -> int:
        head = context.audit.head()
        return 0 if head is None else head.seq

    def check_after_kill(
        self, context: RecoveryContext, initial: State, start: int, trial: int
    ) -> int:
        """Assert every visible change has its entry; the step to resume from."""
        outcomes: dict[int, list[str]] = {}
        for entry in context.audit.entries(limit=1_000_000):
            if entry.reason.startswith("step "):
                outcomes.setdefault(int(entry.reason.split()[1]), []).append(entry.outcome)
        reached = max(outcomes, default=start - 1)
        found = observe(context)
        matching = [n for n in range(start - 1, reached + 3) if expected(n, initial) == found]
        assert len(matching) == 1, f"trial {trial}: the state is no step's: {found}"
        [done] = matching
        unaudited = [n for n in range(start, done + 1) if n not in outcomes]
        assert not unaudited, (
            f"trial {trial}: steps {unaudited} ({[step(n)[0] for n in unaudited]}) changed the "
            "store with no audit entry at all"
        )
        for n in range(start, done):
            assert "succeeded" in outcomes[n], f"trial {trial}: step {n} ran to its end"
        claimed = [n for n in outcomes if n > done and "succeeded" in outcomes[n]]
        assert not claimed, f"trial {trial}: steps {claimed} claim a change that is not there"
        assert context.audit.verify().ok
        assert verify_audit(context.audit, context.anchoring).ok
        return done + 1


class TestSQLiteSigkill(SigkillContract):
    @pytest.fixture
    def settings(self, tmp_path: Path, key_file: Path) -> DomainSettings:
        return DomainSettings.from_env(
            backend="sqlite", sqlite_path=tmp_path / "events.db", key_file=key_file
        )

    def backend_env(self, settings: DomainSettings) -> dict[str, str]:
        return {
            "SAFEREPLAY_BACKEND": "sqlite",
            "SAFEREPLAY_SQLITE_PATH": str(settings.sqlite_path),
            "SAFEREPLAY_KEY_FILE": str(settings.key_file),
        }


@pytest.mark.postgres
class TestPostgresSigkill(SigkillContract):
    @pytest.fixture
    def settings(self, postgres_settings: Callable[..., DomainSettings]) -> DomainSettings:
        return postgres_settings()

    def backend_env(self, settings: DomainSettings) -> dict[str, str]:
        assert settings.postgres_dsn is not None
        return {
            "SAFEREPLAY_BACKEND": "postgres",
            "SAFEREPLAY_KEY_FILE": str(settings.key_file),
            "SAFEREPLAY_POSTGRES_DSN": settings.postgres_dsn.get_secret_value(),
            "SAFEREPLAY_POSTGRES_SCHEMA": settings.postgres_schema,
        }

"""Four-eyes approval: the change request store (one contract, per backend), and the
gate and ``requests.*`` operations over a real store (per backend).

A swap asked for by one principal waits; a different principal with the approve
permission approves it and the swap runs as the requester, the audit naming both.
Refused: self-approval, an approver without a grant on the scope, an expired
request, a decided one, a stale one (another build went live since it was asked).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from api_fixtures import postgres_settings, sqlite_settings
from fastapi.testclient import TestClient
from recovery_fixtures import principals_world
from typer.testing import CliRunner

from safereplay.domain import AutomationApp, DomainSettings
from safereplay.domain.workload import record_workload
from safereplay.recovery.api.app import create_app
from safereplay.recovery.cli.app import app
from safereplay.recovery.database import Database, PostgresDatabase, SQLiteDatabase
from safereplay.recovery.errors import (
    AccessDenied,
    ChangeRequestConflict,
    ChangeRequestNotFound,
    InvalidRequest,
)
from safereplay.recovery.jobs.worker import WorkerOptions
from safereplay.recovery.operations.approvals import AwaitingApproval
from safereplay.recovery.operations.catalog import open_operations
from safereplay.recovery.operations.context import RecoveryContext
from safereplay.recovery.operations.dispatch import Operations
from safereplay.recovery.operations.metrics import render_metrics
from safereplay.recovery.security.access import Principal, VerifiedSecrets
from safereplay.recovery.security.approvals import (
    ChangeRequestStore,
    NewChangeRequest,
    parameters_digest,
)
from safereplay.recovery.security.audit import AuditKey
from safereplay.recovery.settings import DEFAULT_APPROVAL_REQUIRED, RecoverySettings


def new_request(**overrides: Any) -> NewChangeRequest:
    values: dict[str, Any] = {
        "operation": "swap",
        "parameters": {"projection": "run_status", "build": 2},
        "scope": "projection:run_status",
        "requester": "olga",
        "reason": "rebuild verified",
        "fingerprint": "projection run_status: live build 1",
        "ttl_seconds": 3600.0,
    }
    values.update(overrides)
    return NewChangeRequest(**values)


def backdate(database: Database, request_id: str, *, by: float) -> None:
    """Move a request's expiry ``by`` seconds into the past (as if that much time passed)."""
    with database.transaction(write=True) as tx:
        changed = tx.execute(
            "UPDATE {change_requests} SET expires_at = expires_at - %(by)s "
            "WHERE request_id = %(id)s",
            {"by": by, "id": request_id},
        )
    assert changed == 1


class ChangeRequestStoreContract:
    """Every backend must pass these."""

    @pytest.fixture
    def database(self) -> Iterator[Database]:
        raise NotImplementedError

    @pytest.fixture
    def store(self, database: Database) -> ChangeRequestStore:
        store = ChangeRequestStore(database)
        store.create_tables()
        return store

    def test_a_request_keeps_its_exact_parameters_and_their_hash(
        self, store: ChangeRequestStore
    ) -> None:
        made = store.create(new_request())
        assert made.state == "pending" and made.requester == "olga"
        assert made.parameters == {"projection": "run_status", "build": 2}
        assert made.parameters_sha256 == parameters_digest({"build": 2, "projection": "run_status"})
        assert made.intact
        assert made.expires_at == pytest.approx(made.created_at + 3600.0)
        assert store.get(made.request_id[:10]) == made  # a prefix of its id finds it
        assert store.pending() == 1
        with pytest.raises(ChangeRequestNotFound, match="no change request"):
            store.get("0" * 32)

    def test_a_decision_is_taken_once(self, store: ChangeRequestStore) -> None:
        made = store.create(new_request())
        rejected = store.decide(made.request_id, state="rejected", by="abe", reason="not now")
        assert (rejected.state, rejected.decided_by, rejected.decision_reason) == (
            "rejected",
            "abe",
            "not now",
        )
        with pytest.raises(ChangeRequestConflict, match="already decided: it is rejected"):
            store.decide(made.request_id, state="approved", by="ann", reason="go")
        assert store.pending() == 0

    def test_an_expired_request_cannot_be_decided(
        self, store: ChangeRequestStore, database: Database
    ) -> None:
        made = store.create(new_request())
        backdate(database, made.request_id, by=7200)
        with pytest.raises(ChangeRequestConflict, match="expired"):
            store.decide(made.request_id, state="approved", by="abe", reason="go")
        assert store.get(made.request_id).state == "expired"
        assert [r.request_id for r in store.list(state="expired")] == [made.request_id]

    def test_an_approved_request_records_its_outcome_or_its_error(
        self, store: ChangeRequestStore
    ) -> None:
        good, bad = store.create(new_request()), store.create(new_request())
        for made in (good, bad):
            store.decide(made.request_id, state="approved", by="abe", reason="go")
        done = store.finish(good.request_id, outcome={"live": 2})
        failed = store.finish(bad.request_id, error="JobConflict: busy")
        assert (done.state, done.outcome) == ("approved", {"live": 2})
        assert (failed.state, failed.error) == ("failed", "JobConflict: busy")
        assert {r.request_id for r in store.list()} == {good.request_id, bad.request_id}

    def test_two_approvers_at_once_exactly_one_wins(
        self, store: ChangeRequestStore, database: Database
    ) -> None:
        for _ in range(5):
            made = store.create(new_request())
            won, lost = self.race(made.request_id, database)
            assert len(won) == 1 and len(lost) == 1, (won, lost)
            assert store.get(made.request_id).decided_by == won[0]

    def race(self, request_id: str, database: Database) -> tuple[list[str], list[str]]:
        """abe and ann approve at once, each with a connection of their own."""
        barrier = threading.Barrier(2, timeout=60)
        won: list[str] = []
        lost: list[str] = []

        def decide(who: str) -> None:
            mine = ChangeRequestStore(self.another(database))
            barrier.wait()
            try:
                mine.decide(request_id, state="approved", by=who, reason="go")
                won.append(who)
            except ChangeRequestConflict:
                lost.append(who)
            finally:
                mine.database.close()

        threads = [threading.Thread(target=decide, args=(who,)) for who in ("abe", "ann")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        return won, lost

    def another(self, database: Database) -> Database:
        raise NotImplementedError


class TestSQLiteChangeRequestStore(ChangeRequestStoreContract):
    @pytest.fixture
    def database(self, tmp_path: Path) -> Iterator[Database]:
        database = SQLiteDatabase(tmp_path / "recovery.db")
        yield database
        database.close()

    def another(self, database: Database) -> Database:
        assert isinstance(database, SQLiteDatabase)
        return SQLiteDatabase(database.path)


class TestPostgresChangeRequestStore(ChangeRequestStoreContract):
    @pytest.fixture
    def database(self, postgres_dsn: str, pg_schema: str) -> Iterator[Database]:
        database = PostgresDatabase(postgres_dsn, schema=pg_schema)
        self.dsn, self.schema = postgres_dsn, pg_schema
        yield database
        database.close()

    def another(self, database: Database) -> Database:
        return PostgresDatabase(self.dsn, schema=self.schema)


# -- the gate and the operations, over a real store ---------------------------------------


class World:
    """A recorded workload; ada (admin), olga (operator), abe and ann (approvers on
    projection:*), pia (approver on projection:run_status only)."""

    def __init__(self, settings: DomainSettings, tmp_path: Path) -> None:
        key = tmp_path / "audit.key"
        AuditKey.generate().save(key)
        with AutomationApp(settings) as application:
            record_workload(application, workflows=2, runs_per_workflow=3, seed=5)
        setup, self.envs = principals_world(settings, key)
        setup.close()
        self.context = RecoveryContext(
            domain=settings,
            recovery=RecoverySettings(
                audit_key_file=key, approval_required=DEFAULT_APPROVAL_REQUIRED
            ),
        )
        self.operations: Operations = open_operations(self.context)
        access = self.context.access
        self.ada = Principal("ada", "person")
        for name, role, scope in (
            ("olga", "operator", "projection:*"),
            ("abe", "approver", "projection:*"),
            ("ann", "approver", "projection:*"),
            ("pia", "approver", "projection:run_status"),
        ):
            access.add_principal(name, kind="person", created_by="ada")
            access.grant(name, role, scope, granted_by="ada")
        self.olga, self.abe, self.ann, self.pia = (
            Principal(n, "person") for n in ("olga", "abe", "ann", "pia")
        )

    def run(self, who: Principal, operation: str, /, **parameters: Any) -> Any:
        return self.operations.run(who, operation, **parameters)

    def rebuilt(self, projection: str) -> int:
        """Rebuild ``projection`` to completion (its build number)."""
        started = self.run(self.olga, "rebuild", reason="fix", projection=projection)
        self.context.worker(options=WorkerOptions(lease_seconds=30, exit_when_idle=True)).run(
            job_id=UUID(started["job_id"])
        )
        return int(started["build"])

    def swap_request(self, projection: str = "workflow_stats") -> str:
        waiting = self.run(self.olga, "swap", reason="rebuild verified", projection=projection)
        assert isinstance(waiting, AwaitingApproval), waiting
        assert "waits for a principal other than olga" in waiting.message
        return waiting.change_request.request_id

    def close(self) -> None:
        self.context.close()


class WorldContract:
    """Subclassed per backend: ``settings`` gives the store's settings."""

    def settings(self, request: pytest.FixtureRequest, tmp_path: Path) -> DomainSettings:
        raise NotImplementedError

    @pytest.fixture
    def world(self, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
        world = World(self.settings(request, tmp_path), tmp_path)
        yield world
        world.close()


class ApprovalContract(WorldContract):
    def test_a_swap_waits_for_a_second_person_and_runs_as_its_requester(self, world: World) -> None:
        store = world.context.projection_store
        world.rebuilt("workflow_stats")  # the first build goes live by itself
        build = world.rebuilt("workflow_stats")
        live = store.live_build("workflow_stats")
        request_id = world.swap_request()
        assert store.live_build("workflow_stats") == live, "nothing ran yet"
        pending = "safereplay_change_requests_pending 1.0"
        assert pending in render_metrics(world.context).decode()

        # An approver too: still not of her own request.
        world.context.access.grant("olga", "approver", "projection:*", granted_by="ada")
        with pytest.raises(AccessDenied, match="no self-approval"):
            world.run(world.olga, "requests.approve", reason="mine", request_id=request_id)
        with pytest.raises(InvalidRequest, match="give a reason"):
            world.run(world.abe, "requests.approve", request_id=request_id)
        with pytest.raises(AccessDenied, match=r"requests.list on 'projection:\*'"):
            world.run(world.pia, "requests.list")  # checked on projection:* by default
        shown = world.run(world.pia, "requests.list", filter_scope="projection:run_status")
        assert shown == [], "pia sees no request outside her scope"
        (listed,) = world.run(world.abe, "requests.list", filter_scope="projection:*")
        assert listed.request_id == request_id
        with pytest.raises(AccessDenied):
            world.run(world.pia, "requests.approve", reason="ok", request_id=request_id)

        approved = world.run(
            world.abe, "requests.approve", reason="checked the drill", request_id=request_id
        )
        assert (approved.state, approved.decided_by, approved.error) == ("approved", "abe", None)
        assert approved.outcome["live"] == build
        assert store.live_build("workflow_stats") == build

        swaps = [e for e in world.context.audit.entries() if e.action == "swap"]
        assert [e.outcome for e in swaps] == ["deferred", "started", "succeeded"]
        assert swaps[0].parameters["change_request"] == request_id
        ran = swaps[-1]
        assert ran.actor == "olga" and ran.reason == "rebuild verified"
        assert ran.parameters["approval"] == {
            "request": request_id,
            "approved_by": "abe",
            "approval_reason": "checked the drill",
        }
        with pytest.raises(ChangeRequestConflict, match="already decided"):
            world.run(world.ann, "requests.approve", reason="me too", request_id=request_id)
        assert "safereplay_change_requests_pending 0.0" in render_metrics(world.context).decode()
        assert world.context.audit.verify().ok

    def test_a_request_whose_subject_changed_is_stale(self, world: World) -> None:
        world.rebuilt("workflow_stats")
        build = world.rebuilt("workflow_stats")
        first, second = world.swap_request(), world.swap_request()
        world.run(world.abe, "requests.approve", reason="go", request_id=first)
        assert world.context.projection_store.live_build("workflow_stats") == build
        with pytest.raises(ChangeRequestConflict, match="is stale: its subject changed"):
            world.run(world.ann, "requests.approve", reason="go", request_id=second)
        assert world.run(world.ann, "requests.show", request_id=second).state == "pending"

    def test_a_rejected_or_expired_request_never_runs(self, world: World) -> None:
        world.rebuilt("workflow_stats")
        world.rebuilt("workflow_stats")
        live = world.context.projection_store.live_build("workflow_stats")
        rejected, expired = world.swap_request(), world.swap_request()
        with pytest.raises(InvalidRequest, match="give a reason"):
            world.run(world.abe, "requests.reject", request_id=rejected)
        world.run(world.abe, "requests.reject", reason="not during the freeze", request_id=rejected)
        with pytest.raises(ChangeRequestConflict, match="already decided: it is rejected"):
            world.run(world.ann, "requests.approve", reason="go", request_id=rejected)
        backdate(world.context.database, expired, by=2 * 86_400)
        with pytest.raises(ChangeRequestConflict, match="expired"):
            world.run(world.ann, "requests.approve", reason="go", request_id=expired)
        assert world.context.projection_store.live_build("workflow_stats") == live
        states = {r.request_id: r.state for r in world.run(world.ada, "requests.list")}
        assert states == {rejected: "rejected", expired: "expired"}
        assert world.run(world.ada, "requests.list", state="pending") == []

    def test_only_the_calls_the_rules_name_are_diverted(self, world: World) -> None:
        # Granting viewer runs at once; granting admin waits; an admin may approve it.
        granted = world.run(
            world.ada, "grant", reason="t", name="olga", role="viewer", grant_scope="*"
        )
        assert granted["role"] == "viewer"
        waiting = world.run(
            world.ada, "grant", reason="on call", name="olga", role="admin", grant_scope="*"
        )
        assert isinstance(waiting, AwaitingApproval)
        assert waiting.change_request.scope == "*"
        request_id = waiting.change_request.request_id
        with pytest.raises(AccessDenied):  # abe approves on projection:* only
            world.run(world.abe, "requests.approve", reason="ok", request_id=request_id)
        world.context.access.grant("ann", "approver", "*", granted_by="ada")
        done = world.run(
            world.ann, "requests.approve", reason="on call this week", request_id=request_id
        )
        assert done.state == "approved"
        assert "admin@*" in {f"{g.role}@{g.scope}" for g in world.context.access.grants("olga")}

    def test_a_rule_naming_no_operation_is_refused(self, world: World) -> None:
        recovery = world.context.recovery.model_copy(update={"approval_required": "swpa"})
        context = RecoveryContext(domain=world.context.domain, recovery=recovery)
        try:
            with pytest.raises(InvalidRequest, match="APPROVAL_REQUIRED names unknown .* swpa"):
                open_operations(context)
        finally:
            context.close()


class TestSQLiteApproval(ApprovalContract):
    def settings(self, request: pytest.FixtureRequest, tmp_path: Path) -> DomainSettings:
        return sqlite_settings(request, tmp_path)


class TestPostgresApproval(ApprovalContract):
    def settings(self, request: pytest.FixtureRequest, tmp_path: Path) -> DomainSettings:
        return postgres_settings(request, tmp_path)


def test_the_rules_setting_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    from safereplay.domain.errors import ConfigurationError

    rules = RecoverySettings(approval_required="swap, replay:into=live, reactions.redeliver:force")
    assert rules.approval_rules() == (
        ("swap", None, None),
        ("replay", "into", "live"),
        ("reactions.redeliver", "force", None),
    )
    assert RecoverySettings(approval_required="").approval_rules() == ()
    assert RecoverySettings(approval_ttl="90m").approval_ttl_seconds() == 5400.0
    assert RecoverySettings(approval_ttl="3600").approval_ttl_seconds() == 3600.0
    monkeypatch.setenv("SAFEREPLAY_APPROVAL_REQUIRED", "swap;rollback")
    with pytest.raises(ConfigurationError, match="SAFEREPLAY_APPROVAL_REQUIRED"):
        RecoverySettings.from_env()
    monkeypatch.setenv("SAFEREPLAY_APPROVAL_REQUIRED", "")
    monkeypatch.setenv("SAFEREPLAY_APPROVAL_TTL", "a day")
    with pytest.raises(ConfigurationError, match="SAFEREPLAY_APPROVAL_TTL"):
        RecoverySettings.from_env()


# -- the command line and the API ------------------------------------------------------------


def _token_env(world: World, name: str) -> dict[str, str]:
    return world.envs["admin"] | {
        "SAFEREPLAY_TOKEN": world.context.access.issue_token(name),
        "SAFEREPLAY_APPROVAL_REQUIRED": DEFAULT_APPROVAL_REQUIRED,
    }


class SurfaceContract(WorldContract):
    def test_the_command_line_asks_lists_and_approves(self, world: World) -> None:
        world.rebuilt("workflow_stats")
        build = world.rebuilt("workflow_stats")
        olga, abe = _token_env(world, "olga"), _token_env(world, "abe")
        runner = CliRunner()

        asked = runner.invoke(app, ["swap", "workflow_stats", "-r", "verified"], env=olga)
        assert asked.exit_code == 0, asked.output
        assert "waiting for approval: swap needs a second person's approval" in asked.output
        listed = runner.invoke(app, ["requests", "list", "--json"], env=abe)
        assert listed.exit_code == 0, listed.output
        (request,) = json.loads(listed.output)
        assert (request["operation"], request["requester"]) == ("swap", "olga")
        own = runner.invoke(
            app, ["requests", "approve", request["request_id"], "-r", "x"], env=olga
        )
        assert own.exit_code == 3, own.output
        approved = runner.invoke(
            app, ["requests", "approve", request["request_id"][:10], "-r", "drill ok"], env=abe
        )
        assert approved.exit_code == 0, approved.output
        assert "approved" in approved.output and "decided by: abe" in approved.output
        assert world.context.projection_store.live_build("workflow_stats") == build

    def test_a_template_change_waits_too(self, world: World, tmp_path: Path) -> None:
        template = tmp_path / "ours.toml"
        template.write_text(
            '[template]\nname = "ours"\nkind = "rebuild"\n[scope]\nprojections = ["run_status"]\n'
        )
        ada = world.envs["admin"] | {"SAFEREPLAY_APPROVAL_REQUIRED": DEFAULT_APPROVAL_REQUIRED}
        runner = CliRunner()
        asked = runner.invoke(
            app, ["templates", "add", str(template), "-r", "ours", "--json"], env=ada
        )
        assert asked.exit_code == 0, asked.output
        waiting = json.loads(asked.output)
        assert waiting["awaiting_approval"]["operation"] == "templates.add"
        assert waiting["awaiting_approval"]["fingerprint"] == "template ours: version 0"
        request_id = waiting["awaiting_approval"]["request_id"]
        world.context.access.grant("ann", "approver", "*", granted_by="ada")
        ann = _token_env(world, "ann")
        approved = runner.invoke(app, ["requests", "approve", request_id, "-r", "ok"], env=ann)
        assert approved.exit_code == 0, approved.output
        listed = runner.invoke(app, ["templates", "list", "--json"], env=ada)
        (stored,) = [t for t in json.loads(listed.output) if t["name"] == "ours"]
        assert stored["version"] == 1 and stored["author"] == "ada"

    def test_the_api_answers_202_and_approves(self, world: World) -> None:
        world.rebuilt("workflow_stats")
        build = world.rebuilt("workflow_stats")
        tokens = {n: world.context.access.issue_token(n) for n in ("olga", "abe")}

        def new_context(verified: VerifiedSecrets) -> RecoveryContext:
            return RecoveryContext(
                domain=world.context.domain,
                recovery=world.context.recovery,
                verified_secrets=verified,
            )

        with TestClient(create_app(new_context=new_context)) as client:

            def post(who: str, path: str, body: dict[str, Any]) -> Any:
                headers = {"Authorization": f"Bearer {tokens[who]}"}
                return client.post(path, headers=headers, json=body)

            asked = post("olga", "/api/projections/workflow_stats/swap", {"reason": "verified"})
            assert asked.status_code == 202, asked.text
            request_id = asked.json()["awaiting_approval"]["request_id"]
            assert "second person" in asked.json()["message"]
            headers = {"Authorization": f"Bearer {tokens['abe']}"}
            (listed,) = client.get("/api/requests?state=pending", headers=headers).json()
            assert listed["request_id"] == request_id
            own = post("olga", f"/api/requests/{request_id}/approve", {"reason": "mine"})
            assert own.status_code == 403, own.text
            done = post("abe", f"/api/requests/{request_id}/approve", {"reason": "drill ok"})
            assert done.status_code == 200, done.text
            assert done.json()["state"] == "approved"
            again = post("abe", f"/api/requests/{request_id}/reject", {"reason": "late"})
            assert again.status_code == 409, again.text
        assert world.context.projection_store.live_build("workflow_stats") == build


class TestSQLiteSurfaces(SurfaceContract):
    def settings(self, request: pytest.FixtureRequest, tmp_path: Path) -> DomainSettings:
        return sqlite_settings(request, tmp_path)


class TestPostgresSurfaces(SurfaceContract):
    def settings(self, request: pytest.FixtureRequest, tmp_path: Path) -> DomainSettings:
        return postgres_settings(request, tmp_path)

"""Issue #20, reactions' configuration: webhook destinations from the environment, the
reactions recovery knows, ``since`` of a re-delivery, and the ``reaction:`` scopes.

- a destination's variables are named after it (upper case, ``.``/``-`` as ``_``);
  a missing URL or secret is named in the error, never a value; the environment
  check accepts these names by their shape and still refuses a misspelt suffix;
- ``SAFEREPLAY_REACTIONS`` entries hold Reaction instances; an unknown name is
  refused with the known ones listed;
- ``since``: epoch seconds, a duration back from now, or an ISO time;
- grants on ``reaction:NAME`` and ``reaction:*`` are valid scopes; ``reaction:*``
  and ``*`` cover a reaction, ``projection:*`` does not.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from safereplay.domain.errors import ConfigurationError
from safereplay.reactions.reference import REFERENCE_REACTIONS, RunCompletions
from safereplay.reactions.settings import (
    is_webhook_variable,
    webhook_destination,
    webhook_prefix,
    webhook_settings,
)
from safereplay.recovery.errors import InvalidRequest, UnregisteredReaction
from safereplay.recovery.operations.reaction_runtime import parse_since, running
from safereplay.recovery.registry import ReactionRegistry
from safereplay.recovery.resilience.budget import RetryBudget
from safereplay.recovery.security.access import check_scope, scope_covers
from safereplay.recovery.settings import RecoverySettings, check_environment

SECRET = "s" * 32


def test_a_destination_reads_variables_named_after_it(tmp_path: Path) -> None:
    assert webhook_prefix("crm.eu-1") == "SAFEREPLAY_WEBHOOK_CRM_EU_1_"
    secret_file = tmp_path / "crm.secret"
    secret_file.write_text(SECRET + "\n")
    secret_file.chmod(0o600)
    environ = {
        "SAFEREPLAY_WEBHOOK_CRM_EU_1_URL": "https://crm.example/hook?token=hidden",
        "SAFEREPLAY_WEBHOOK_CRM_EU_1_SECRET_FILE": str(secret_file),
        "SAFEREPLAY_WEBHOOK_CRM_EU_1_TIMEOUT": "2.5",
        "SAFEREPLAY_WEBHOOK_CRM_EU_1_CONCURRENCY": "8",
    }
    settings = webhook_settings("crm.eu-1", environ)
    assert (settings.timeout, settings.verify_tls, settings.concurrency) == (2.5, True, 8)
    assert "hidden" not in repr(settings)
    with webhook_destination("crm.eu-1", environ) as destination:
        assert destination.where == "https://crm.example" and destination.name == "crm.eu-1"


def test_a_missing_or_bad_variable_is_named_never_its_value() -> None:
    with pytest.raises(ConfigurationError, match="set SAFEREPLAY_WEBHOOK_COMPLETIONS_URL"):
        webhook_settings("completions", {})
    url = {"SAFEREPLAY_WEBHOOK_COMPLETIONS_URL": "http://127.0.0.1:9/x?token=hidden"}
    with pytest.raises(ConfigurationError, match="exactly one of .*_SECRET_FILE"):
        webhook_settings("completions", url)
    with pytest.raises(ConfigurationError) as caught:
        webhook_settings(
            "completions",
            url
            | {
                "SAFEREPLAY_WEBHOOK_COMPLETIONS_SECRET": SECRET,
                "SAFEREPLAY_WEBHOOK_COMPLETIONS_TIMEOUT": "-1",
            },
        )
    assert "SAFEREPLAY_WEBHOOK_COMPLETIONS_TIMEOUT" in str(caught.value)
    assert "hidden" not in str(caught.value) and SECRET not in str(caught.value)


def test_the_environment_check_knows_webhook_variables_by_their_shape() -> None:
    assert is_webhook_variable("SAFEREPLAY_WEBHOOK_COMPLETIONS_VERIFY_TLS")
    check_environment(
        {
            "SAFEREPLAY_WEBHOOK_COMPLETIONS_URL": "http://127.0.0.1/x",
            "SAFEREPLAY_WEBHOOK_COMPLETIONS_SECRET_FILE": "/x",
            "SAFEREPLAY_REACTION_ATTEMPTS": "3",
            "SAFEREPLAY_REACTIONS": "safereplay.reactions.reference:REFERENCE_REACTIONS",
        }
    )
    with pytest.raises(ConfigurationError, match="SAFEREPLAY_WEBHOOK_COMPLETIONS_ULR"):
        check_environment({"SAFEREPLAY_WEBHOOK_COMPLETIONS_ULR": "http://127.0.0.1/x"})


def test_the_registry_holds_reaction_instances() -> None:
    registry = ReactionRegistry.load("safereplay.reactions.reference:REFERENCE_REACTIONS")
    assert list(registry) == ["run_completions"]
    assert registry["run_completions"] is REFERENCE_REACTIONS[0]
    assert registry["run_completions"].destinations == ("completions",)
    assert RunCompletions.topics == ("safereplay.domain.automation:Run.Completed",)
    with pytest.raises(UnregisteredReaction, match="known reactions: run_completions"):
        registry["nope"]
    with pytest.raises(InvalidRequest, match="not a Reaction instance"):
        ReactionRegistry.load("safereplay.reactions.reference:RunCompletions")
    with pytest.raises(InvalidRequest, match="not 'module:attribute'"):
        ReactionRegistry.load("safereplay.reactions.reference")


def test_since_is_a_time_a_duration_or_an_iso_time() -> None:
    assert parse_since(None) is None and parse_since(1234.5) == 1234.5
    assert parse_since("40m", now=10_000.0) == 10_000.0 - 2400
    assert parse_since("2h", now=10_000.0) == 10_000.0 - 7200
    assert parse_since("1d", now=100_000.0) == 100_000.0 - 86_400
    assert parse_since("1970-01-01T01:00:00Z") == 3600.0
    assert parse_since("1970-01-01T01:00:00") == 3600.0, "a naive time is UTC"
    with pytest.raises(InvalidRequest, match="neither a duration"):
        parse_since("yesterday")


def test_reaction_scopes() -> None:
    assert check_scope("reaction:run_completions") and check_scope("reaction:*")
    with pytest.raises(InvalidRequest, match="reaction:NAME"):
        check_scope("reaction:Bad Name")
    assert scope_covers("reaction:*", "reaction:run_completions")
    assert scope_covers("*", "reaction:run_completions")
    assert not scope_covers("projection:*", "reaction:run_completions")
    assert not scope_covers("reaction:*", "projection:run_status")


def test_the_runner_of_the_commands_has_a_retry_budget_per_destination(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret_file = tmp_path / "completions.secret"
    secret_file.write_text(SECRET)
    secret_file.chmod(0o600)
    monkeypatch.setenv("SAFEREPLAY_WEBHOOK_COMPLETIONS_URL", "http://127.0.0.1:9/hook")
    monkeypatch.setenv("SAFEREPLAY_WEBHOOK_COMPLETIONS_SECRET_FILE", str(secret_file))
    settings = RecoverySettings(reaction_retry_budget_ratio=0.5, reaction_retry_budget_floor=0.25)
    # The runner only keeps its source and ledger until it runs: stand-ins suffice.
    context = SimpleNamespace(recovery=settings, source=object(), ledger=object())

    reaction = RunCompletions(destinations=("completions",))
    with running(context, reaction) as runner:  # type: ignore[arg-type]
        budget = runner.budget("completions")

    assert isinstance(budget, RetryBudget)
    assert (budget.ratio, budget.min_retries_per_second) == (0.5, 0.25)

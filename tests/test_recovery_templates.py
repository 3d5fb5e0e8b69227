"""Recovery templates: the shipped runbooks validate; each invalid template names its problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from safereplay.recovery.resilience.policies import RetryThenPark
from safereplay.recovery.templates.model import (
    RUNBOOKS,
    InvalidTemplate,
    load_template,
    parse_template,
)

VALID = """
[template]
name = "ok"
kind = "rebuild"
[scope]
projections = ["run_status"]
partitions = 4
"""


@pytest.mark.parametrize("path", sorted(RUNBOOKS.glob("*.toml")), ids=lambda p: p.stem)
def test_every_shipped_runbook_template_is_valid(path: Path) -> None:
    template = load_template(path)
    assert template.template.name == path.stem


def test_a_template_becomes_policy_values() -> None:
    template = load_template(RUNBOOKS / "behind-after-outage.toml")
    policy = template.failure_rules().default
    assert isinstance(policy, RetryThenPark)
    assert policy.attempts == 5
    assert template.throttle.max_concurrent_partitions == 2


INVALID = {
    "not TOML": ("[template\nname=", "(toml)"),
    "missing header": ("[scope]\nprojections=['a']", "template: Field required"),
    "unknown kind": (VALID.replace('"rebuild"', '"nuke"'), "template.kind"),
    "bad name": (VALID.replace('"ok"', '"Not OK!"'), "template.name"),
    "unknown field": (VALID + "\ncolour = 'red'\n", "scope.colour: Extra inputs"),
    "no projections": (VALID.replace('["run_status"]', "[]"), "needs at least one projection"),
    "zero partitions": (VALID.replace("partitions = 4", "partitions = 0"), "scope.partitions"),
    "partition outside": (VALID + "only_partitions = [7]\n", "outside 0..3"),
    "replay without range": (VALID.replace('"rebuild"', '"replay-range"'), "needs {from, to}"),
    "range backwards": (
        VALID.replace('"rebuild"', '"replay-range"') + "positions = { from = 9, to = 2 }\n",
        "is before 'from'",
    ),
    "positions on a rebuild": (VALID + "positions = { from = 1, to = 2 }\n", "only replay-range"),
    "reencrypt with projections": (VALID.replace('"rebuild"', '"reencrypt"'), "touches events"),
    "bad policy": (VALID + "[policy]\non_error = 'ignore'\n", "policy.on_error"),
    "negative backoff": (
        VALID + "[policy]\nbackoff = { initial = -1.0 }\n",
        "policy.backoff.initial",
    ),
    "zero rate": (VALID + "[throttle]\nevents_per_second = 0\n", "throttle.events_per_second"),
    "canary outside": (VALID + "[rollout]\ncanary_partitions = [9]\n", "rollout.canary_partitions"),
    "canary is everything": (
        VALID + "[rollout]\ncanary_partitions = [0, 1, 2, 3]\n",
        "must leave some partitions",
    ),
    "bad breaker": (VALID + "[breaker]\nerror_rate = 2.0\n", "breaker.error_rate"),
    "bad aggregate id": (VALID + "aggregates = ['nope']\n", "scope.aggregates.0"),
}


@pytest.mark.parametrize(("text", "expected"), INVALID.values(), ids=INVALID.keys())
def test_invalid_templates_are_rejected_naming_the_problem(text: str, expected: str) -> None:
    with pytest.raises(InvalidTemplate) as rejected:
        parse_template(text, source="t.toml")
    assert expected in str(rejected.value)


def test_every_problem_is_listed_not_just_the_first() -> None:
    text = (
        VALID.replace('"rebuild"', '"nuke"').replace("partitions = 4", "partitions = -1")
        + "[throttle]\nevents_per_second = -5\n"
    )
    with pytest.raises(InvalidTemplate) as rejected:
        parse_template(text)
    locations = {where for where, _ in rejected.value.problems}
    assert {"template.kind", "scope.partitions", "throttle.events_per_second"} <= locations

"""Issue #20, the reactions' commands as an operator runs them, each in a process of its
own against a ``safereplay init`` store and a real receiver on 127.0.0.1:

- ``safereplay react run_completions --once`` while the receiver is down: every
  completion is retried, then parked (exit 1, saying what to run next);
- ``safereplay reactions`` shows them parked; ``safereplay status --json`` has them
  under ``reactions``;
- with the receiver back, ``safereplay redeliver --since 1h --dry-run`` plans them
  and sends nothing; without ``--dry-run`` each is delivered once (distinct keys ==
  completions, none acknowledged twice); ``--force`` sends them all again, with the
  same keys; a bad ``--since`` is refused (exit 2);
- ``safereplay redeliver --help`` says how to use it.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from recovery_fixtures import cli_process, seeded_store_env
from webhook_receiver import Receiver

from safereplay.reactions import WebhookSecret

SECRET = WebhookSecret(b"k" * 32)


def safereplay(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``safereplay ARGS`` in a process of its own, whatever its exit code."""
    return subprocess.run(
        [sys.executable, "-m", "safereplay.recovery.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(result.stdout)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_an_outage_seen_planned_and_redelivered_from_the_command_line(tmp_path: Path) -> None:
    env = seeded_store_env(tmp_path / "store")
    secret_file = tmp_path / "hook.secret"
    secret_file.write_bytes(SECRET.value)
    secret_file.chmod(0o600)
    receiver = Receiver(SECRET, port=free_port())  # not started: the receiver is down
    env |= {
        "SAFEREPLAY_WEBHOOK_COMPLETIONS_URL": receiver.url,
        "SAFEREPLAY_WEBHOOK_COMPLETIONS_SECRET_FILE": str(secret_file),
        "SAFEREPLAY_REACTION_ATTEMPTS": "2",
        "SAFEREPLAY_REACTION_BACKOFF_INITIAL": "0.01",
        "SAFEREPLAY_REACTION_BREAKER_COOL_DOWN": "0",
    }

    down = safereplay(env, "react", "run_completions", "--once", "--json")
    assert down.returncode == 1, down.stderr + down.stdout
    ran = as_json(down)
    completions = ran["recorded"]
    assert completions > 0 and ran["delivered"] == 0 and ran["parked"] == completions
    assert "safereplay redeliver run_completions --dry-run" in down.stderr

    shown = as_json(cli_process(env, "reactions", "run_completions", "--json"))
    (reaction,) = shown["reactions"]
    (dest,) = reaction["destinations"]
    assert (dest["destination"], dest["parked"], dest["delivered"]) == (
        "completions",
        completions,
        0,
    )
    assert dest["configured"] and reaction["behind"] == 0
    status = as_json(cli_process(env, "status", "--json"))
    assert status["reactions"] == shown["reactions"], "status shows the same, nothing owed"
    human = cli_process(env, "reactions").stdout
    assert "run_completions" in human and "safereplay redeliver run_completions" in human

    with receiver.start():
        plan = as_json(
            cli_process(
                env,
                "redeliver",
                "run_completions",
                "--since",
                "1h",
                "--dry-run",
                "--reason",
                "receiver was down",
                "--json",
            )
        )
        assert plan["would_send"] == completions and receiver.received == []
        assert plan["destinations"][0]["parked"] == completions

        sent = as_json(
            cli_process(
                env, "redeliver", "run_completions", "--since", "1h", "-r", "back", "--json"
            )
        )
        assert (sent["reopened"], sent["delivered"], sent["still_owed"]) == (
            completions,
            completions,
            0,
        )
        assert sent["delivered_by"] == "this command"
        keys = Counter(receiver.acknowledged)
        assert len(keys) == completions and max(keys.values()) == 1

        again = cli_process(env, "redeliver", "run_completions", "-r", "nothing left")
        assert "0 reopened" in again.stdout and len(receiver.acknowledged) == completions
        forced = as_json(
            cli_process(env, "redeliver", "run_completions", "--force", "-r", "all", "--json")
        )
        assert forced["forced"] == completions
        assert Counter(receiver.acknowledged) == Counter(dict.fromkeys(keys, 2))

    refused = safereplay(env, "redeliver", "run_completions", "--since", "soon", "-r", "x")
    assert refused.returncode == 2 and "neither a duration" in refused.stderr
    unknown = safereplay(env, "reactions", "nope", "--json")
    assert unknown.returncode == 2
    assert "known reactions: run_completions" in as_json(unknown)["error"]["message"]


def test_redeliver_help_reads_well() -> None:
    result = safereplay({"PATH": "/usr/bin:/bin", "COLUMNS": "120"}, "redeliver", "--help")
    assert result.returncode == 0, result.stderr
    for option in ("--from", "--to", "--since", "--destination", "--dry-run", "--force"):
        assert option in result.stdout
    text = " ".join(re.sub(r"[│╭╮╰╯─]", " ", result.stdout).split())  # unwrapped
    assert "40m, 2h, 1d" in text and "plan with --dry-run first" in text

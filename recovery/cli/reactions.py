"""CLI: ``reactions`` (what each reaction delivered and owes), ``redeliver`` (plan, then
send again what a downstream outage missed) and ``react`` (run a reaction live).

All go through the dispatch layer, scoped ``reaction:NAME``: ``reactions`` and
``redeliver --dry-run`` need a viewer grant, ``redeliver`` and ``react`` an operator
one. See docs/reactions.md and the runbook's "A downstream service was down".
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich import box
from rich.table import Table

from safereplay.reactions.settings import webhook_prefix
from safereplay.recovery.cli.security import Json
from safereplay.recovery.cli.support import (
    EXIT_NO,
    RunAsCaller,
    console,
    emit,
    error_console,
    operation,
)
from safereplay.recovery.security.access import AccessDenied

__all__ = ["print_reactions", "reactions_for_status", "register"]

ReactionName = Annotated[str, typer.Argument(help="The reaction's name (SAFEREPLAY_REACTIONS).")]


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    whole = int(seconds)
    if whole < 120:
        return f"{whole}s"
    if whole < 7200:
        return f"{whole // 60}m {whole % 60}s"
    if whole < 172_800:
        return f"{whole // 3600}h {whole % 3600 // 60}m"
    return f"{whole // 86_400}d {whole % 86_400 // 3600}h"


def print_reactions(reactions: list[dict[str, Any]]) -> None:
    """One table per reaction (where it is, in its title), one row per destination:
    seven narrow columns, so that it reads in 80 columns."""
    for reaction in reactions:
        lease = reaction["lease"]
        runner = "no runner" if lease is None else f"run by {lease['holder']}"
        table = Table(
            box=box.SIMPLE_HEAD,
            title=(
                f"reaction {reaction['name']}: position {reaction['position']}, "
                f"{reaction['behind']} events behind, {runner}"
            ),
        )
        table.add_column("destination")
        for column in ("pending", "failed", "parked", "delivered"):
            table.add_column(column, justify="right")
        table.add_column("oldest owed", justify="right")
        table.add_column("breaker")
        for dest in reaction["destinations"]:
            table.add_row(
                dest["destination"],
                str(dest["pending"]),
                str(dest["failed"]),
                str(dest["parked"]),
                str(dest["delivered"]),
                _age(dest["oldest_owed_age_seconds"]),
                dest["breaker_state"] or "-",
            )
        console.print(table)
        for dest in reaction["destinations"]:
            if not dest["configured"]:
                prefix = webhook_prefix(dest["destination"])
                console.print(
                    f"{dest['destination']} is not configured here: set {prefix}URL and "
                    f"{prefix}SECRET_FILE to run or re-deliver {reaction['name']}",
                    highlight=False,
                )
        missed = sum(d["failed"] + d["parked"] for d in reaction["destinations"])
        if missed:
            console.print(
                f"{reaction['name']}: {missed} delivery(ies) failed or parked; plan their "
                f"re-delivery with `safereplay redeliver {reaction['name']} --dry-run "
                "--reason ...`",
                highlight=False,
            )


def reactions_for_status(run: RunAsCaller) -> list[dict[str, Any]] | None:
    """``status``'s reactions (as ``reactions.status`` gives them); None when the
    caller may not read them (a grant on reaction:* is needed)."""
    try:
        found: list[dict[str, Any]] = run("reactions.status")["reactions"]
    except AccessDenied:
        return None
    return found


def reactions_command(
    reaction: Annotated[
        str | None, typer.Argument(help="Only this reaction (default: every one).")
    ] = None,
    as_json: Json = False,
) -> None:
    """Each reaction's position and, per destination, its deliveries by state:
    pending, failed, parked, delivered, the oldest undelivered one's age and the
    destination's breaker. Needs a viewer grant on reaction:NAME (reaction:* for all)."""
    result = operation("reactions.status", reaction=reaction)
    emit(result, as_json=as_json, human=lambda r: print_reactions(r["reactions"]))


def _print_plan(plan: dict[str, Any]) -> None:
    # States down the side, one column per destination: it fits 80 columns.
    destinations = plan["destinations"]
    table = Table(box=box.SIMPLE_HEAD, title=f"re-delivery plan of {plan['reaction']}")
    table.add_column("deliveries in the selection")
    for dest in destinations:
        table.add_column(dest["destination"], justify="right")
    rows = (
        ("delivered", "delivered (skipped unless --force)"),
        ("failed", "failed"),
        ("parked", "parked"),
        ("pending", "pending (attempted before)"),
        ("never_attempted", "never attempted"),
        ("not_recorded", "not recorded yet"),
        ("would_send", "would be sent"),
    )
    for key, label in rows:
        table.add_row(label, *(str(dest[key]) for dest in destinations))
    console.print(table)
    for item in plan["sample"]:
        console.print(
            f"  would send position {item['position']} ({item['event_type']}) to "
            f"{item['destination']}: {item['state']}, {item['attempts']} attempt(s), "
            f"{item['payload_bytes']} bytes, key {item['idempotency_key']}",
            highlight=False,
        )
        if "payload" in item:
            console.print_json(data=item["payload"])
    more = plan["would_send"] - len(plan["sample"])
    if more > 0:
        console.print(f"  ... and {more} more")
    forced = " (acknowledged ones included: --force)" if plan["selection"]["force"] else ""
    console.print(
        f"dry run: nothing was sent. {plan['would_send']} delivery(ies) would be sent{forced}; "
        "run the same command without --dry-run to send them"
    )


def _print_result(result: dict[str, Any]) -> None:
    console.print(
        f"{result['reaction']}: {result['reopened']} reopened ({result['forced']} forced), "
        f"{result['recorded']} recorded; {result['delivered']} delivered, "
        f"{result['parked']} parked, {result['still_owed']} still owed"
    )
    if result["delivered_by"] != "this command":
        console.print(
            f"another runner ({result['delivered_by']}) holds the reaction: it delivers "
            "the reopened rows; follow them with `safereplay reactions "
            f"{result['reaction']}`"
        )


def redeliver_command(
    reaction: ReactionName,
    reason: Annotated[
        str,
        typer.Option(
            "--reason",
            "-r",
            help="Why (recorded in the audit trail; required, even with --dry-run).",
        ),
    ],
    first: Annotated[
        int | None, typer.Option("--from", min=1, help="From this position (inclusive).")
    ] = None,
    last: Annotated[
        int | None, typer.Option("--to", min=1, help="Up to this position (inclusive).")
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            help="Only deliveries recorded since WHEN: a duration back from now (40m, 2h, "
            "1d) or an ISO 8601 time (2026-01-31T12:00:00Z).",
        ),
    ] = None,
    destination: Annotated[
        str | None, typer.Option("--destination", "-d", help="Only this destination.")
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Only plan: count what is delivered, failed, parked, never attempted or "
            "not recorded in the selection, and list what would be sent. Sends nothing.",
        ),
    ] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Send acknowledged deliveries again too (same idempotency keys; audited "
            "as forced, with the reason).",
        ),
    ] = False,
    payloads: Annotated[
        bool,
        typer.Option(
            "--payloads", help="With --dry-run: show what would be sent, not only its size."
        ),
    ] = False,
    as_json: Json = False,
) -> None:
    """Send REACTION's missed deliveries again: plan with --dry-run first.

    Selects the reaction's deliveries (--from/--to positions, --since, --destination);
    records the ones missing below its position, reopens the failed, parked and
    pending ones (acknowledged ones only with --force) and delivers them, each with
    its unchanged idempotency key (only to --destination when given; nothing after
    the selection's last position). If a live runner (`safereplay react`) holds the
    reaction, it delivers them instead. Exit 1 when some are still owed afterwards.
    Needs an operator grant on reaction:NAME (a viewer one for --dry-run).

    Example, after a 40-minute outage of the completions receiver:
    `safereplay redeliver run_completions --since 1h --dry-run --reason "receiver down"`,
    then the same without --dry-run.
    """
    selection = {
        "reaction": reaction,
        "first": first,
        "last": last,
        "since": since,
        "destination": destination,
        "force": force,
    }
    if dry_run:
        plan = operation("reactions.plan", reason=reason, payloads=payloads, **selection)
        emit(plan, as_json=as_json, human=_print_plan)
        return
    result = operation("reactions.redeliver", reason=reason, **selection)
    emit(result, as_json=as_json, human=_print_result)
    if result["still_owed"] and result["delivered_by"] == "this command":
        error_console.print(
            f"{result['still_owed']} delivery(ies) still owed (the destination failed again, "
            "or the command was stopped): a live runner (`safereplay react "
            f"{reaction}`) or this command, run again, sends them",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(EXIT_NO)


def react_command(
    reaction: ReactionName,
    once: Annotated[
        bool, typer.Option("--once", help="Record and deliver what is owed now, then exit.")
    ] = False,
    as_json: Json = False,
) -> None:
    """Run REACTION live until stopped (SIGTERM/Ctrl-C): record new events' deliveries,
    send them with retries (then park), a circuit breaker per destination and an
    optional throttle (SAFEREPLAY_REACTION_* settings). Exit 1 when deliveries were
    parked or are still owed when it stops. Needs an operator grant on reaction:NAME.
    """
    result = operation("reactions.run", reason="reaction runner", reaction=reaction, once=once)

    def human(r: dict[str, Any]) -> None:
        console.print(
            f"{r['reaction']}: {r['events']} event(s) read, {r['recorded']} delivery(ies) "
            f"recorded, {r['delivered']} delivered, {r['parked']} parked, {r['owed']} "
            f"still owed (position {r['position']})"
        )

    emit(result, as_json=as_json, human=human)
    if result["parked"] or result["owed"]:
        error_console.print(
            f"see what was missed with `safereplay reactions {reaction}` and plan its "
            f"re-delivery with `safereplay redeliver {reaction} --dry-run --reason ...`",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(EXIT_NO)


def help_text(command: Callable[..., None]) -> str:
    """``command``'s docstring with each paragraph on one line: typer's rich help keeps
    a docstring's line breaks, which it then wraps again (ragged lines)."""
    paragraphs = inspect.cleandoc(command.__doc__ or "").split("\n\n")
    return "\n\n".join(" ".join(p.split()) for p in paragraphs)


def register(app: typer.Typer) -> None:
    for name, command in (
        ("reactions", reactions_command),
        ("redeliver", redeliver_command),
        ("react", react_command),
    ):
        app.command(name, help=help_text(command))(command)

"""CLI: ``safereplay flags list|set|unset|history`` and ``safereplay switch
freeze|unfreeze|status`` (see docs/security.md, "Recovery flags" and "The
operations switch"). Every command runs its operation through the dispatch layer."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from safereplay.recovery.cli.security import Json, Reason
from safereplay.recovery.cli.support import console, emit, operation

__all__ = ["flags_app", "register", "switch_app"]

flags_app = typer.Typer(
    help="Recovery flags: safe procedures that run unattended, per projection or reaction.",
    no_args_is_help=True,
)
switch_app = typer.Typer(
    help="The operations switch: freeze every change (read-only mode) during an incident.",
    no_args_is_help=True,
)

FlagArg = Annotated[
    str,
    typer.Argument(help="auto_catch_up, auto_redrive, auto_rebuild or auto_restart_stalled"),
]
TargetArg = Annotated[str, typer.Argument(help="projection:NAME or reaction:NAME")]


def _rollout(rollout: dict[str, Any]) -> str:
    if rollout["partitions"] is not None:
        return "partitions " + ",".join(rollout["partitions"])
    if rollout["share"] is not None:
        return f"{rollout['share']}% of partitions"
    return "all partitions"


def _thresholds(flag: dict[str, Any]) -> str:
    shown = [
        f"{name}={flag[name]}"
        for name in ("backlog_threshold", "max_restarts", "window_seconds")
        if flag[name] is not None
    ]
    return " ".join(shown) or "-"


def _print_switch(switch: dict[str, Any]) -> None:
    if switch["frozen"]:
        console.print(
            f"[red]operations are FROZEN by {switch['held_by']} since {switch['since']}: "
            f"{switch['reason']}[/]",
            highlight=False,
            soft_wrap=True,
        )
    else:
        console.print("operations are not frozen")


@flags_app.command("list")
def list_command(as_json: Json = False) -> None:
    """The flags that are set (an unset flag is off), and the operations switch.

    Needs a viewer grant on projection:*.
    """
    result = operation("flags.list")

    def human(found: Any) -> None:
        if not found["flags"]:
            console.print("no flag is set: every automatic action is off")
        else:
            table = Table("flag", "target", "on", "rollout", "thresholds")
            for flag in found["flags"]:
                table.add_row(
                    flag["name"],
                    flag["target"],
                    "on" if flag["enabled"] else "off",
                    _rollout(flag["rollout"]),
                    _thresholds(flag),
                )
            console.print(table)
        _print_switch(found["switch"])

    emit(result, as_json=as_json, human=human)


@flags_app.command("set")
def set_command(
    flag: FlagArg,
    target: TargetArg,
    reason: Reason,
    on: Annotated[
        bool | None, typer.Option("--on/--off", help="Turn the flag on or off (kept if not given).")
    ] = None,
    partitions: Annotated[
        str | None, typer.Option(help="Roll out to these partitions only (comma-separated).")
    ] = None,
    share: Annotated[
        int | None,
        typer.Option(min=1, max=100, help="Roll out to this share of partitions (percent)."),
    ] = None,
    all_partitions: Annotated[
        bool, typer.Option("--all-partitions", help="Roll out to every partition.")
    ] = False,
    backlog_threshold: Annotated[
        int | None, typer.Option(help="auto_catch_up: act above this backlog (events).")
    ] = None,
    max_restarts: Annotated[
        int | None, typer.Option(help="auto_restart_stalled: the most restarts per window.")
    ] = None,
    window_seconds: Annotated[
        int | None, typer.Option(help="auto_restart_stalled: the window, in seconds.")
    ] = None,
    as_json: Json = False,
) -> None:
    """Set a flag on a target: what is given changes, the rest is kept (or its default).

    Needs an operator grant on the target. Audited with the old and new value.
    """
    given = {
        "enabled": on,
        "partitions": partitions,
        "share": share,
        "all_partitions": all_partitions or None,
        "backlog_threshold": backlog_threshold,
        "max_restarts": max_restarts,
        "window_seconds": window_seconds,
    }
    changes = {name: value for name, value in given.items() if value is not None}
    result = operation("flags.set", reason=reason, flag=flag, target=target, **changes)

    def human(found: Any) -> None:
        new = found["new_value"]
        console.print(
            f"{new['name']} on {new['target']}: {'on' if new['enabled'] else 'off'}, "
            f"{_rollout(new['rollout'])}, {_thresholds(new)} (history #{found['seq']})",
            highlight=False,
        )

    emit(result, as_json=as_json, human=human)


@flags_app.command("unset")
def unset_command(flag: FlagArg, target: TargetArg, reason: Reason, as_json: Json = False) -> None:
    """Unset a flag (back to its default: off). Needs an operator grant on the target."""
    result = operation("flags.unset", reason=reason, flag=flag, target=target)
    emit(
        result,
        as_json=as_json,
        human=lambda found: console.print(
            f"{flag} on {target} unset: off (history #{found['seq']})", highlight=False
        ),
    )


@flags_app.command("history")
def history_command(
    flag: Annotated[
        str | None, typer.Option(help="Only this flag's changes (with --target).")
    ] = None,
    target: Annotated[str | None, typer.Option(help="Only this target's changes.")] = None,
    switch_only: Annotated[
        bool, typer.Option("--switch", help="Only the operations switch's changes.")
    ] = False,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="The most changes listed.")] = 100,
    as_json: Json = False,
) -> None:
    """Every change of a flag, a threshold or the switch: who, when, old and new value.

    Needs a viewer grant on projection:*.
    """
    parameters: dict[str, Any] = {"limit": limit, "switch_only": switch_only}
    if flag or target:
        parameters.update(flag=flag, target=target)
    result = operation("flags.history", **parameters)

    def human(found: Any) -> None:
        if not found["history"]:
            console.print("no change recorded")
            return
        table = Table("#", "subject", "who", "when", "old", "new", "reason")
        for entry in found["history"]:
            table.add_row(
                str(entry["seq"]),
                entry["subject"],
                entry["actor"],
                entry["at"],
                _value(entry["old_value"]),
                _value(entry["new_value"]),
                entry["reason"],
            )
        console.print(table)

    emit(result, as_json=as_json, human=human)


def _value(value: dict[str, Any] | None) -> str:
    if value is None:
        return "unset"
    if "frozen" in value:
        return f"frozen by {value['held_by']}" if value["frozen"] else "not frozen"
    return (
        f"{'on' if value['enabled'] else 'off'}, {_rollout(value['rollout'])}, {_thresholds(value)}"
    )


@switch_app.command("status")
def status_command(as_json: Json = False) -> None:
    """Whether operations are frozen, by whom, since when and why (viewer on projection:*)."""
    emit(operation("switch.status"), as_json=as_json, human=_print_switch)


@switch_app.command("freeze")
def freeze_command(reason: Reason, as_json: Json = False) -> None:
    """Freeze operations: every change is refused (exit 7) for everyone but you.

    Needs an operator grant on *. Reads keep working.
    """
    result = operation("switch.freeze", reason=reason)
    emit(
        result,
        as_json=as_json,
        human=lambda found: console.print(
            f"operations frozen by {found['held_by']}: every change is refused for everyone "
            "else until `safereplay switch unfreeze -r REASON`",
            highlight=False,
        ),
    )


@switch_app.command("unfreeze")
def unfreeze_command(reason: Reason, as_json: Json = False) -> None:
    """Unfreeze operations: the holder, or an admin (administer on *)."""
    result = operation("switch.unfreeze", reason=reason)
    emit(
        result,
        as_json=as_json,
        human=lambda found: console.print(
            f"operations unfrozen (frozen by {found['was']['held_by']} since "
            f"{found['was']['since']})",
            highlight=False,
        ),
    )


def register(app: typer.Typer) -> None:
    app.add_typer(flags_app, name="flags")
    app.add_typer(switch_app, name="switch")

"""CLI: principals, grants, tokens, the audit trail and the key ring."""

from __future__ import annotations

import os
import shlex
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any
from uuid import UUID

import typer
from rich.table import Table

from safereplay.recovery.cli.support import (
    EXIT_INVALID,
    EXIT_NO,
    console,
    emit,
    error_console,
    fail,
    operation,
    recovery_context,
)
from safereplay.recovery.operations.catalog import open_operations
from safereplay.recovery.operations.initialise import reserved_secret_file
from safereplay.recovery.operations.security import audit_list_parameters, bootstrap_admin
from safereplay.recovery.security.anchors import AnchorError
from safereplay.recovery.security.audit import AuditTrailUnavailable, VerificationReport

__all__ = ["Json", "Reason", "audit_app", "keys_app", "principals_app", "register", "token_app"]

principals_app = typer.Typer(help="People and service accounts.", no_args_is_help=True)
token_app = typer.Typer(
    help="API tokens (shown once; stored only as hashes).", no_args_is_help=True
)
audit_app = typer.Typer(help="The tamper-evident audit trail.", no_args_is_help=True)
keys_app = typer.Typer(help="The event key ring.", no_args_is_help=True)

Reason = Annotated[str, typer.Option("--reason", "-r", help="Why (recorded in the audit trail).")]
Json = Annotated[
    bool, typer.Option("--json", help="Machine-readable output (errors too, as JSON).")
]
Name = Annotated[str, typer.Argument(help="The principal's name.")]
KeyId = Annotated[str, typer.Argument(help="The key's id in the ring (e.g. key-2).")]
Role = Annotated[str, typer.Argument(help="viewer, operator, admin, key-custodian or approver")]
Scope = Annotated[
    str,
    typer.Argument(
        help="projection:NAME, projection:*, reaction:NAME, reaction:*, keys, audit or *"
    ),
]


def say(text: str) -> None:
    """One sentence of human output (no markup or highlighting read into it)."""
    console.print(text, highlight=False, markup=False, soft_wrap=True)


@principals_app.command("list")
def principals_list(as_json: Json = False) -> None:
    """List principals and their grants."""
    rows = operation("principals.list")

    def table(result: Any) -> None:
        t = Table("principal", "kind", "grants")
        for row in result:
            t.add_row(row["name"], row["kind"], ", ".join(row["grants"]) or "-")
        console.print(t)

    emit(rows, as_json=as_json, human=table)


@principals_app.command("add")
def principals_add(
    name: Name,
    reason: Reason,
    kind: Annotated[str, typer.Option(help="person or service")] = "person",
    as_json: Json = False,
) -> None:
    """Create a principal (it can do nothing until granted a role)."""

    def human(added: Any) -> None:
        say(
            f"{added['kind']} {added['name']!r} created; it can do nothing yet: grant it a "
            f"role with `safereplay grant {added['name']} ROLE SCOPE --reason ...`"
        )

    emit(
        operation("principals.add", reason=reason, name=name, kind=kind),
        as_json=as_json,
        human=human,
    )


@principals_app.command("bootstrap")
def principals_bootstrap(
    name: Annotated[str, typer.Argument(help="The first admin's name.")],
    token_file: Annotated[
        Path | None,
        typer.Option(
            "--token-file",
            help="Where its token goes (mode 0600, never overwritten). Default: ./NAME.token.",
        ),
    ] = None,
    as_json: Json = False,
) -> None:
    """Create the first admin while no principal exists; its token goes to a 0600 file.

    The token is never printed: standard output gets the `export` line that points
    the other commands at the file (`eval "$(safereplay principals bootstrap ada)"`).
    An existing file is refused (exit 2) before anything is created.
    """
    path = (token_file or Path(f"{name}.token")).expanduser().absolute()
    if path.exists() or path.is_symlink():
        fail(
            f"refusing to write the token to {str(path)!r}: it exists (nothing was created). "
            "Give another --token-file, or move that file away",
            EXIT_INVALID,
        )
    if not path.parent.is_dir():
        fail(f"no directory {str(path.parent)!r} for the token file (--token-file)", EXIT_INVALID)
    # The file is reserved (0600, exclusively) before the admin exists: a token is
    # never made that has nowhere to go, and the file goes again if the admin is not.
    with recovery_context(create=True) as context, reserved_secret_file(path) as write:
        write(bootstrap_admin(context, name))
    error_console.print(
        f"admin {name!r} created (admin and key custodian); its token is in {path} "
        "(0600), not shown. Point the other commands at it:",
        highlight=False,
        soft_wrap=True,
    )
    exports = [f"export SAFEREPLAY_TOKEN_FILE={shlex.quote(str(path))}"]
    if "SAFEREPLAY_TOKEN" in os.environ:
        exports.append("unset SAFEREPLAY_TOKEN  # the token file takes its place")

    def human(created: Any) -> None:
        for line in created["exports"]:
            typer.echo(line)

    emit(
        {"principal": name, "token_file": str(path), "exports": exports},
        as_json=as_json,
        human=human,
    )


def grant(name: Name, role: Role, scope: Scope, reason: Reason, as_json: Json = False) -> None:
    """Grant a role over a scope."""

    def human(granted: Any) -> None:
        say(f"{granted['principal']!r} is now {granted['role']} on {granted['scope']}")

    emit(
        operation("grant", reason=reason, name=name, role=role, grant_scope=scope),
        as_json=as_json,
        human=human,
    )


def revoke(name: Name, role: Role, scope: Scope, reason: Reason, as_json: Json = False) -> None:
    """Revoke a role over a scope."""

    def human(revoked: Any) -> None:
        if revoked["revoked"]:
            say(f"{name!r} is no longer {role} on {scope}")
        else:
            say(f"{name!r} had no {role} grant on {scope}: nothing revoked")

    emit(
        {
            "principal": name,
            "role": role,
            "scope": scope,
            **operation("revoke", reason=reason, name=name, role=role, grant_scope=scope),
        },
        as_json=as_json,
        human=human,
    )


@token_app.command("issue")
def token_issue(name: Name, reason: Reason, as_json: Json = False) -> None:
    """Issue an API token for a principal; it is shown only now."""
    token = operation("token.issue", reason=reason, name=name)
    emit(
        {"principal": name, "token": token},
        as_json=as_json,
        human=lambda issued: say(issued["token"]),
    )


@token_app.command("revoke")
def token_revoke(name: Name, reason: Reason, as_json: Json = False) -> None:
    """Revoke every token of a principal."""
    revoked = operation("token.revoke", reason=reason, name=name)["revoked"]
    emit(
        {"principal": name, "revoked": revoked},
        as_json=as_json,
        human=lambda r: say(f"{r['revoked']} token(s) of {name!r} revoked"),
    )


@audit_app.command("list")
def audit_list(
    actor: Annotated[str | None, typer.Option(help="Only this principal.")] = None,
    projection: Annotated[str | None, typer.Option(help="Only this projection.")] = None,
    job: Annotated[str | None, typer.Option(help="Only this job id.")] = None,
    action: Annotated[str | None, typer.Option(help="Only this operation.")] = None,
    since: Annotated[datetime | None, typer.Option(help="From this time (ISO 8601).")] = None,
    until: Annotated[datetime | None, typer.Option(help="Up to this time (ISO 8601).")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="At most this many entries.")] = None,
    as_json: Json = False,
) -> None:
    """List audit entries, oldest first."""
    filters = audit_list_parameters(
        actor=actor,
        projection=projection,
        job=UUID(job) if job else None,
        action=action,
        since=since,
        until=until,
        limit=limit,
    )
    entries = operation("audit.list", **filters)

    def table(result: Any) -> None:
        t = Table("seq", "at", "actor", "action", "scope", "outcome", "reason")
        for e in result:
            t.add_row(
                str(e["seq"]),
                e["at"],
                e["actor"],
                e["action"],
                e["scope"],
                "[red]UNREADABLE[/]" if "unreadable" in e else e["outcome"],
                e["reason"],
            )
        console.print(t)

    emit(entries, as_json=as_json, human=table)
    unreadable = [str(e["seq"]) for e in entries if "unreadable" in e]
    if unreadable:
        # Listed, never trusted: a row that cannot be read was rewritten behind the trail.
        error_console.print(
            f"[red]error:[/] audit entries {', '.join(unreadable)} cannot be read (tampered "
            "with?): run `safereplay audit verify`",
            highlight=False,
            soft_wrap=True,
        )
        raise SystemExit(EXIT_NO)


@audit_app.command("verify")
def audit_verify(as_json: Json = False) -> None:
    """Verify the chain, signatures and head, and the latest anchor; exit 1 naming the
    first bad entry (also when the trail was truncated, rolled back, emptied or dropped)."""
    with recovery_context() as context:
        caller = context.caller()
        try:
            report = open_operations(context).run(caller, "audit.verify")
        except AuditTrailUnavailable as exc:
            # The tables are gone, so this verification cannot be recorded either.
            report = VerificationReport(
                False, 0, 1, "the audit tables are missing (dropped)", status="dropped"
            )
            error_console.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
    emit(report, as_json=as_json, human=lambda r: console.print(str(r), highlight=False))
    if not report.ok:
        raise SystemExit(EXIT_NO)


@audit_app.command("anchor")
def audit_anchor(as_json: Json = False) -> None:
    """Write a signed digest of the audit head to the anchor (SAFEREPLAY_AUDIT_ANCHOR_DIR),
    after verifying the trail; exit 1 if the trail does not verify."""
    with recovery_context() as context:
        caller = context.caller()
        try:
            digest = open_operations(context).run(caller, "audit.anchor")
        except AnchorError as exc:
            fail(str(exc), EXIT_NO)

    def human(d: Any) -> None:
        console.print(
            f"anchored digest {d['number']}: entry {d['seq']} ({d['entries']} entries) "
            f"in {d['where']}",
            highlight=False,
        )

    emit(digest, as_json=as_json, human=human)


def _ring(done: str) -> Any:
    """Human output of a key ring change: what was done, the keys, the active one."""

    def human(ring: Any) -> None:
        say(
            f"{done}; the ring holds {', '.join(ring['key_ids'])} and new events are sealed "
            f"with {ring['active']!r}"
        )

    return human


@keys_app.command("add")
def keys_add(
    key_id: KeyId,
    reason: Reason,
    activate: Annotated[bool, typer.Option(help="Also make it active.")] = False,
    as_json: Json = False,
) -> None:
    """Add a new random key to the ring file."""
    emit(
        operation("keys.add", reason=reason, key_id=key_id, activate=activate),
        as_json=as_json,
        human=_ring(f"key {key_id!r} added"),
    )


@keys_app.command("activate")
def keys_activate(key_id: KeyId, reason: Reason, as_json: Json = False) -> None:
    """Make a key the one new events are sealed with."""
    emit(
        operation("keys.activate", reason=reason, key_id=key_id),
        as_json=as_json,
        human=_ring(f"key {key_id!r} activated"),
    )


@keys_app.command("rotate")
def keys_rotate(key_id: KeyId, reason: Reason, as_json: Json = False) -> None:
    """Add a new key and make it active at once."""
    emit(
        operation("keys.add", reason=reason, key_id=key_id, activate=True),
        as_json=as_json,
        human=_ring(
            f"key {key_id!r} added and activated (re-seal older events with "
            "`safereplay keys reencrypt --reason ...`)"
        ),
    )


@keys_app.command("usage")
def keys_usage(as_json: Json = False) -> None:
    """How many stored rows each key seals (a full scan)."""

    def table(usage: Any) -> None:
        t = Table("key", "rows")
        for key_id, rows in sorted(usage["by_key"].items()):
            t.add_row(key_id, str(rows))
        t.add_row("(plaintext)", str(usage["plaintext"]))
        console.print(t)
        say(f"{usage['rows']} stored row(s) in all")

    emit(operation("keys.usage"), as_json=as_json, human=table)


@keys_app.command("reencrypt")
def keys_reencrypt(
    reason: Reason,
    rate: Annotated[float | None, typer.Option(help="Cap on events per second.")] = None,
    batch_size: Annotated[
        int, typer.Option(min=1, max=100_000, help="Rows re-sealed per transaction.")
    ] = 500,
    as_json: Json = False,
) -> None:
    """Re-seal stored events under the active key (resumable, throttled)."""

    def table(done: Any) -> None:
        t = Table("table", "scanned", "re-sealed", "cursor")
        for row in done["tables"]:
            t.add_row(row["table"], str(row["scanned"]), str(row["resealed"]), str(row["cursor"]))
        console.print(t)
        say(
            f"stored rows re-sealed under {done['active']!r}; retire an old key once "
            "`safereplay keys usage` shows it seals nothing (`safereplay keys retire KEY_ID "
            "--reason ...`)"
        )

    emit(
        operation("keys.reencrypt", reason=reason, events_per_second=rate, batch_size=batch_size),
        as_json=as_json,
        human=table,
    )


@keys_app.command("retire")
def keys_retire(key_id: KeyId, reason: Reason, as_json: Json = False) -> None:
    """Remove a key from the ring, refused while any stored event needs it."""
    emit(
        operation("keys.retire", reason=reason, key_id=key_id),
        as_json=as_json,
        human=_ring(f"key {key_id!r} retired (removed from the ring)"),
    )


def register(app: typer.Typer) -> None:
    app.add_typer(principals_app, name="principals")
    app.add_typer(token_app, name="token")
    app.add_typer(audit_app, name="audit")
    app.add_typer(keys_app, name="keys")
    app.command("grant")(grant)
    app.command("revoke")(revoke)

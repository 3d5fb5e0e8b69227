"""CLI: ``requests list|show|approve|reject`` (four-eyes approval, docs/security.md)."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from safereplay.recovery.cli.security import Json, Reason
from safereplay.recovery.cli.support import EXIT_NO, console, emit, iso_time, operation
from safereplay.recovery.security.approvals import ChangeRequest

__all__ = ["register", "requests_app"]

requests_app = typer.Typer(
    help="Change requests waiting for a second person's approval (four-eyes).",
    no_args_is_help=True,
)

RequestId = Annotated[
    str, typer.Argument(help="The change request's id (or its first 8+ characters).")
]


def _parameters(request: ChangeRequest) -> str:
    shown = {k: v for k, v in request.parameters.items() if k not in ("toml", "diff")}
    return json.dumps(shown, sort_keys=True, default=str)


def _describe(request: ChangeRequest) -> None:
    lines = [
        f"change request {request.request_id}: {request.state}",
        f"  operation:  {request.operation} on {request.scope}",
        f"  parameters: {_parameters(request)} (sha256 {request.parameters_sha256[:16]}…)",
        f"  asked by:   {request.requester} at {iso_time(request.created_at)}: {request.reason}",
        f"  expires:    {iso_time(request.expires_at)}",
        f"  subject:    {request.fingerprint or '-'}",
    ]
    if request.decided_by is not None:
        decided = iso_time(request.decided_at) if request.decided_at is not None else "-"
        lines.append(f"  decided by: {request.decided_by} at {decided}: {request.decision_reason}")
    if request.error is not None:
        lines.append(f"  failed:     {request.error}")
    elif request.state == "approved":
        lines.append("  ran:        the operation ran as the requester (see the audit trail)")
    for line in lines:
        console.print(line, highlight=False, markup=False, soft_wrap=True)


@requests_app.command("list")
def requests_list(
    state: Annotated[
        str | None,
        typer.Option(help="Only requests in this state: pending, approved, rejected, expired..."),
    ] = None,
    scope: Annotated[
        str | None,
        typer.Option(
            "--scope", help="Only requests within this scope (default: all you may view)."
        ),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="The most listed.")] = 100,
    as_json: Json = False,
) -> None:
    """Change requests you may view, newest first. Needs the view permission on --scope
    (default: projection:*; with a grant on keys only, give --scope keys)."""

    def table(found: list[ChangeRequest]) -> None:
        if not found:
            console.print("no change requests" if state is None else f"no {state} change requests")
            return
        t = Table("id", "state", "operation", "scope", "requester", "expires", "decided by")
        for r in found:
            t.add_row(
                r.request_id[:12],
                r.state,
                r.operation,
                r.scope,
                r.requester,
                iso_time(r.expires_at)[:19],
                r.decided_by or "-",
            )
        console.print(t)

    found = operation("requests.list", state=state, filter_scope=scope, limit=limit)
    emit(found, as_json=as_json, human=table)


@requests_app.command("show")
def requests_show(request_id: RequestId, as_json: Json = False) -> None:
    """One change request: its exact operation and parameters, who asked, why, its state."""
    emit(operation("requests.show", request_id=request_id), as_json=as_json, human=_describe)


@requests_app.command("approve")
def requests_approve(request_id: RequestId, reason: Reason, as_json: Json = False) -> None:
    """Approve a change request: its operation runs now, as the principal who asked.

    Refused for your own request, an expired or decided one, and a stale one (its
    subject changed since it was asked for). Needs the approve permission on its scope.
    """
    result = operation("requests.approve", reason=reason, request_id=request_id)
    emit(result, as_json=as_json, human=_describe)
    if result.state == "failed":
        raise typer.Exit(EXIT_NO)  # approved, but the operation failed (the error is shown)


@requests_app.command("reject")
def requests_reject(request_id: RequestId, reason: Reason, as_json: Json = False) -> None:
    """Reject a change request, with a reason; its operation never runs."""
    result = operation("requests.reject", reason=reason, request_id=request_id)
    emit(result, as_json=as_json, human=_describe)


def register(app: typer.Typer) -> None:
    app.add_typer(requests_app, name="requests")

"""What every CLI command shares: running an operation as the caller, output, exit codes.

Exit codes::

    0  done
    1  done, but the answer is "no" (verification failed, job failed, divergence found)
    2  invalid input or configuration (the message says what to change)
    3  access denied (the attempt is audited)
    4  authentication failed (no token, or the token is not valid)
    5  conflict (a job already holds the projection, a lease was lost, the job has
       ended or its state does not allow that)
    6  the database's schema does not fit this code: missing or outdated (run
       ``safereplay migrate``), newer than this code (upgrade), or a migration
       could not take its locks in time (retry)

Output: every command prints sentences and tables for a person, and with
``--json`` one JSON document on standard output for a script (:func:`emit`
takes both renderings, so no command can fall back to a raw Python value).
Times are ISO 8601 in UTC (``2026-01-31T12:00:00.000000+00:00``) in both: a
datetime is converted to UTC, and the job store's epoch seconds (its database
format, named in :data:`EPOCH_FIELDS`) are converted when they are emitted.

Errors: without ``--json``, one paragraph on standard error and the exit code.
With ``--json`` anywhere on the command line (set once by the entry point, see
:func:`use_json_errors`, before the command line is parsed, so usage errors are
covered too), the error is a JSON object on standard output, and the exit code
is the same::

    {"error": {"code": "conflict", "exit_code": 5, "message": "..."}}

``code`` names the exit code: ``no`` 1, ``invalid`` 2 (bad input, including
command-line usage errors), ``denied`` 3, ``unauthenticated`` 4, ``conflict``
5, ``schema`` 6, ``frozen`` 7 (the operations switch is frozen). A token is
never part of a message, in either form.
"""

from __future__ import annotations

import dataclasses
import getpass
import json
import logging
import os
import re
import socket
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, NoReturn

from rich.console import Console
from rich.markup import escape

from safereplay.domain import DomainError
from safereplay.projections import ProjectionError
from safereplay.reactions import ReactionError
from safereplay.recovery.errors import RecoveryError
from safereplay.recovery.operations.approvals import AwaitingApproval
from safereplay.recovery.operations.catalog import open_operations
from safereplay.recovery.operations.context import RecoveryContext
from safereplay.recovery.operations.shapes import EPOCH_FIELDS, error_code, iso_time, to_jsonable
from safereplay.recovery.operations.store_check import check_store
from safereplay.recovery.security.access import (
    AuthenticationFailed,
    Principal,
    claimed_token_id,
)
from safereplay.recovery.security.audit import AuditKeyError

__all__ = [
    "awaiting_approval",
    "EPOCH_FIELDS",
    "ERROR_CODES",
    "EXIT_CONFLICT",
    "EXIT_DENIED",
    "EXIT_INVALID",
    "EXIT_NO",
    "EXIT_FROZEN",
    "EXIT_SCHEMA",
    "EXIT_UNAUTHENTICATED",
    "EXIT_UNAVAILABLE",
    "cli_caller",
    "cli_origin",
    "console",
    "emit",
    "error_console",
    "fail",
    "iso_time",
    "operation",
    "RunAsCaller",
    "recovery_context",
    "refuse_token_arguments",
    "signed_in",
    "to_jsonable",
    "use_json_errors",
]

logger = logging.getLogger(__name__)

EXIT_NO = 1
EXIT_INVALID = 2
EXIT_DENIED = 3
EXIT_UNAUTHENTICATED = 4
EXIT_CONFLICT = 5
EXIT_SCHEMA = 6
EXIT_FROZEN = 7

console = Console()
error_console = Console(stderr=True)


#: The name of each exit code, as ``code`` in a JSON error.
ERROR_CODES = {
    EXIT_NO: "no",
    EXIT_INVALID: "invalid",
    EXIT_DENIED: "denied",
    EXIT_UNAUTHENTICATED: "unauthenticated",
    EXIT_CONFLICT: "conflict",
    EXIT_SCHEMA: "schema",
    EXIT_FROZEN: "frozen",
}
#: Failures the command line reports as invalid input (exit 2), as it always has:
#: a missing job or projection, or a store it cannot reach, is something to change
#: in the command or the configuration.
_EXIT_CODES = {name: code for code, name in ERROR_CODES.items()} | {
    "not_found": EXIT_INVALID,
    "unavailable": EXIT_INVALID,
}
#: A database that cannot be reached, at the start of a command or lost during it.
EXIT_UNAVAILABLE = _EXIT_CODES["unavailable"]


@dataclasses.dataclass
class _ErrorMode:
    """Whether errors are written as JSON: one flag for the whole process, because
    an error can be raised before the command (and its ``--json`` option) is known."""

    as_json: bool = False


_error_mode = _ErrorMode()


def use_json_errors(as_json: bool) -> None:
    """Errors from now on as JSON on stdout (``True``) or a paragraph on stderr."""
    _error_mode.as_json = as_json


def fail(message: str, code: int) -> NoReturn:
    """Stop with exit ``code``, saying why (JSON under ``--json``, see the module)."""
    if _error_mode.as_json:
        error = {"code": ERROR_CODES.get(code, "error"), "exit_code": code, "message": message}
        sys.stdout.write(json.dumps({"error": error}, indent=2) + "\n")
        sys.stdout.flush()
    else:
        # Escaped: a message quoting input or a pattern ("[a-z0-9]...") is not markup.
        error_console.print(f"[red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise SystemExit(code)


def exit_code_for(exc: BaseException) -> int:
    """The exit code of the failure :func:`~.shapes.error_code` names."""
    return _EXIT_CODES[error_code(exc)]


@contextmanager
def recovery_context(
    *,
    check_schema: bool = True,
    create: bool = False,
    recovery: Mapping[str, object] | None = None,
) -> Iterator[RecoveryContext]:
    """A context from the environment; known errors become messages and exit codes.

    ``recovery``: recovery settings a command's options set over the environment's.

    ``check_schema``: see :attr:`RecoveryContext.check_schema` (off for ``migrate``).
    ``create``: the SQLite store may not exist yet (``migrate``, ``principals
    bootstrap``); every other command refuses a missing one, creating nothing.
    """
    context: RecoveryContext | None = None
    try:
        context = RecoveryContext.from_env(check_schema=check_schema, recovery=recovery)
        check_store(context.domain, context.projection_settings, create=create)
        yield context
    except (DomainError, ProjectionError, ReactionError, RecoveryError, AuditKeyError) as exc:
        fail(str(exc), exit_code_for(exc))
    finally:
        if context is not None:
            context.close()


def cli_origin(operation: str = "") -> dict[str, str]:
    """Where a command-line sign-in comes from (for the audit of a failed one): the
    operation the command runs (never its arguments), the host, user and process."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        user = f"uid {os.getuid()}" if hasattr(os, "getuid") else "unknown"
    return {
        "command": operation or "safereplay",
        "via": "cli",
        "host": socket.gethostname(),
        "user": user,
        "pid": str(os.getpid()),
    }


def cli_caller(context: RecoveryContext, operation: str = "") -> Principal:
    """The caller of a command (its token from the environment); a failed sign-in is
    audited with :func:`cli_origin`."""
    return context.caller(origin=cli_origin(operation))


#: Runs an operation as a command's caller: ``run(name, reason=..., **parameters)``.
RunAsCaller = Callable[..., Any]


@contextmanager
def signed_in(
    command: str, *, recovery: Mapping[str, object] | None = None
) -> Iterator[RunAsCaller]:
    """Run a command's operations as the principal whose token is in the environment,
    signed in once (one token check, one context) however many it runs.
    ``recovery``: see :func:`recovery_context`."""
    with recovery_context(recovery=recovery) as context:
        caller = cli_caller(context, command)
        operations = open_operations(context)

        def run(name: str, /, *, reason: str = "", **parameters: Any) -> Any:
            result = operations.run(caller, name, reason=reason, **parameters)
            if isinstance(result, AwaitingApproval):
                awaiting_approval(result)
            return result

        yield run


def awaiting_approval(result: AwaitingApproval) -> NoReturn:
    """A call that now waits for a second person's approval: say so (the change
    request, as JSON under ``--json``) and stop with exit 0 — nothing was done yet."""
    if _error_mode.as_json:
        document = {
            "awaiting_approval": to_jsonable(result.change_request),
            "message": result.message,
        }
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
        sys.stdout.flush()
    else:
        console.print(
            f"[yellow]waiting for approval:[/] {result.message}", highlight=False, soft_wrap=True
        )
    raise SystemExit(0)


def operation(name: str, /, *, reason: str = "", **parameters: Any) -> Any:
    """Run operation ``name`` as the principal whose token is in the environment."""
    with signed_in(name) as run:
        return run(name, reason=reason, **parameters)


#: An argument holding an API token (``sr_`` and a 16-hex-digit id), anywhere in it.
_TOKEN_ARGUMENT = re.compile(r"sr_[0-9a-f]{16}")


def refuse_token_arguments(args: Sequence[str]) -> None:
    """Stop (exit 4) if an argument holds an API token, without ever showing it.

    Run on the whole command line before it is parsed, so that no parsing error
    ("unexpected extra argument", "no such command", "invalid value") can echo a
    token back. The attempt is audited as a failed sign-in (when the environment
    lets the audit trail be opened), naming whose token it was.
    """
    found = next((m for a in args if (m := _TOKEN_ARGUMENT.search(a)) is not None), None)
    if found is None:
        return
    token_id = claimed_token_id(found.string[found.start() :])
    try:
        context = RecoveryContext.from_env()
        try:
            claimed = context.access.token_owner(token_id) if token_id else None
            refused = AuthenticationFailed(
                "an API token was given as a command-line argument",
                failure="token-on-command-line",
                token_id=token_id,
                claimed=claimed,
            )
            context.sign_ins.failed(refused, cli_origin())
        finally:
            context.close()
    except Exception as exc:  # the refusal stands even if it cannot be audited
        logger.warning("a token on the command line could not be audited: %s", type(exc).__name__)
    fail(
        "an API token was given as a command-line argument (it is not shown here): refused. "
        "The command line is visible to other users (ps) and kept in shell history, so "
        "revoke that token (safereplay token revoke); pass tokens in SAFEREPLAY_TOKEN or "
        "SAFEREPLAY_TOKEN_FILE only",
        EXIT_UNAUTHENTICATED,
    )


def emit(result: Any, *, as_json: bool, human: Callable[[Any], None]) -> None:
    """``result`` as JSON, or as ``human`` renders it: sentences or a table, never a
    raw Python value (so there is no default)."""
    if as_json:
        console.print_json(json.dumps(to_jsonable(result)))
    else:
        human(result)

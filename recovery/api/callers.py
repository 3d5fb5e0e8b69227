"""Who is calling: a bearer token signed in, and the dispatch layer to run their call.

The token comes in the ``Authorization: Bearer`` header only, never in a URL
(URLs end up in logs and browser history). A failed sign-in is audited like the
command line's, with where it came from (``via: http``, the route, the client's
address), and answered with 401 and one message whatever was wrong.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from safereplay.recovery.api.contexts import ContextPool
from safereplay.recovery.errors import AuthenticationFailed
from safereplay.recovery.operations.approvals import AwaitingApproval
from safereplay.recovery.operations.catalog import open_operations
from safereplay.recovery.operations.context import RecoveryContext
from safereplay.recovery.operations.dispatch import Operations
from safereplay.recovery.operations.shapes import to_jsonable
from safereplay.recovery.security.access import Principal

__all__ = ["Caller", "CallerDep", "http_origin"]

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="token",
    description="A principal's API token (`safereplay token issue`), as `Bearer <token>`.",
)


@dataclass(frozen=True)
class Caller:
    """A signed-in principal, with a context borrowed for this request."""

    principal: Principal
    context: RecoveryContext
    operations: Operations

    def run(self, operation: str, /, *, reason: str = "", **parameters: Any) -> Any:
        """Run ``operation`` as the caller (checked and audited); its result as JSON types.

        A call that now waits for a second person's approval is answered 202 with the
        change request it made (nothing ran)."""
        result = self.operations.run(self.principal, operation, reason=reason, **parameters)
        if isinstance(result, AwaitingApproval):
            return JSONResponse(
                status_code=202,
                content={
                    "awaiting_approval": to_jsonable(result.change_request),
                    "message": result.message,
                },
            )
        return to_jsonable(result)


def http_origin(request: Request) -> dict[str, str]:
    """Where a sign-in came from, for the audit of a failed one (no header values
    beyond the user agent, never the token)."""
    route = request.scope.get("route")
    path = getattr(route, "path", request.url.path)
    client = request.client
    return {
        "command": f"{request.method} {path}",
        "via": "http",
        "address": client.host if client else "unknown",
        "user_agent": request.headers.get("user-agent", "")[:120],
    }


def _signed_in(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Iterator[Caller]:
    pool: ContextPool = request.app.state.contexts

    def token() -> str:
        if credentials is None:
            raise AuthenticationFailed(
                "no API token: send it in an 'Authorization: Bearer <token>' header",
                failure="no-token",
            )
        return credentials.credentials

    with pool.borrowed() as context:
        principal = context.sign_in(token, origin=http_origin(request))
        yield Caller(principal, context, open_operations(context))


#: The signed-in caller of an endpoint.
CallerDep = Annotated[Caller, Depends(_signed_in)]

"""The ASGI application of ``safereplay serve``: the API, ``/metrics`` and the dashboard.

Every endpoint signs its caller in with a bearer token (an existing principal's
API token) and runs one operation through the same dispatch layer as the command
line (:mod:`safereplay.recovery.operations.dispatch`): the same permission check,
the same audit entry, the same JSON shape (:mod:`~.operations.shapes`) and the
same error codes, as HTTP statuses (:mod:`.problems`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST

from safereplay.recovery.api.callers import CallerDep
from safereplay.recovery.api.contexts import ContextPool
from safereplay.recovery.api.dashboard import install_dashboard
from safereplay.recovery.api.limits import BodyLimit
from safereplay.recovery.api.problems import install_error_handlers
from safereplay.recovery.api.routes import ROUTERS
from safereplay.recovery.operations.context import RecoveryContext
from safereplay.recovery.security.access import VerifiedSecrets

__all__ = ["ServeOptions", "create_app"]

API_DESCRIPTION = """\
The operations surface of safereplay: status, projections, jobs, parked events,
audit, alerts, reactions (status and re-delivery), and the recovery console's
templates. Every call signs in with a principal's API token (`Authorization:
Bearer <token>`) and goes through the same dispatch layer as the command line: the
same permission check, the same audit entry, the same JSON shapes. Errors are
`{"error": {"code", "status", "message"}}`.
"""


@dataclass(frozen=True)
class ServeOptions:
    """How the server runs.

    ``contexts`` (default 4): recovery contexts (database connections) shared by
    requests; a request waits up to ``context_wait_seconds`` (default 30) for one.
    """

    contexts: int = 4
    context_wait_seconds: float = 30.0


def create_app(
    *,
    options: ServeOptions | None = None,
    new_context: Callable[[VerifiedSecrets], RecoveryContext] | None = None,
) -> FastAPI:
    """The application; ``new_context`` (default: from the environment) makes a context."""
    options = options or ServeOptions()
    verified = VerifiedSecrets()
    make = new_context or (lambda known: RecoveryContext.from_env(verified_secrets=known))
    pool = ContextPool(
        lambda: make(verified), size=options.contexts, wait_seconds=options.context_wait_seconds
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        pool.close()

    app = FastAPI(
        title="safereplay",
        description=API_DESCRIPTION,
        version="1",
        lifespan=lifespan,
        docs_url="/api/docs",
        redoc_url=None,
    )
    app.state.contexts = pool
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)

    @app.get(
        "/metrics",
        tags=["metrics"],
        summary="Prometheus metrics (text exposition format)",
        response_class=PlainTextResponse,
    )
    def metrics(caller: CallerDep) -> PlainTextResponse:
        text = caller.operations.run(caller.principal, "metrics")
        return PlainTextResponse(text, media_type=CONTENT_TYPE_LATEST)

    install_dashboard(app)
    app.add_middleware(BodyLimit)
    return app

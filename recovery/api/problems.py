"""Errors as HTTP responses: one JSON shape, the same codes as the command line.

::

    {"error": {"code": "conflict", "status": 409, "message": "..."}}

=================  ======  ==================================================
code               status  when
=================  ======  ==================================================
invalid            422     bad input: a malformed body, a value out of bounds
unauthenticated    401     no bearer token, or one that is not valid (audited)
denied             403     the principal lacks the permission (audited)
not_found          404     no such job, projection, reaction or parked event
conflict           409     a job holds the projection, or its state forbids it;
                           another runner holds the reaction's lease
frozen             423     the operations switch is frozen (the body names its
                           holder, since when and why: ``held_by``, ``since``,
                           ``reason``)
schema             503     the database's schema does not fit this code
unavailable        503     the database cannot be reached, or the server is busy
internal           500     a defect: logged on the server, never shown
=================  ======  ==================================================

A message names what is wrong; it never holds a stack trace, a token or a payload.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from safereplay.domain import DomainError
from safereplay.projections import ProjectionError
from safereplay.reactions.errors import ReactionError
from safereplay.recovery.api.contexts import PoolExhausted
from safereplay.recovery.errors import OperationsFrozen, RecoveryError
from safereplay.recovery.operations.shapes import error_code, iso_time

__all__ = ["STATUS_OF", "install_error_handlers", "problem"]

_log = logging.getLogger(__name__)

#: The HTTP status of each error code.
STATUS_OF = {
    "invalid": 422,
    "unauthenticated": 401,
    "denied": 403,
    "not_found": 404,
    "conflict": 409,
    "frozen": 423,
    "schema": 503,
    "unavailable": 503,
    "internal": 500,
}
_CODE_OF_STATUS = {401: "unauthenticated", 403: "denied", 404: "not_found", 405: "invalid"}


def problem(code: str, message: str, *, status: int | None = None) -> JSONResponse:
    status = STATUS_OF[code] if status is None else status
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    body = {"error": {"code": code, "status": status, "message": message}}
    return JSONResponse(body, status_code=status, headers=headers)


def _location(loc: tuple[Any, ...]) -> str:
    # ("body", "reason") -> "reason"; ("query", "limit") -> "limit"
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    return ".".join(parts) or "request"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [f"{_location(tuple(e['loc']))}: {e['msg']}" for e in exc.errors()]
        return problem("invalid", "; ".join(problems) or "the request is not valid")

    @app.exception_handler(PoolExhausted)
    async def busy(request: Request, exc: PoolExhausted) -> JSONResponse:
        return problem("unavailable", str(exc))

    @app.exception_handler(OperationsFrozen)
    async def frozen(request: Request, exc: OperationsFrozen) -> JSONResponse:
        response = problem("frozen", str(exc))
        body = {
            "error": {
                "code": "frozen",
                "status": STATUS_OF["frozen"],
                "message": str(exc),
                "held_by": exc.held_by,
                "since": iso_time(exc.since),
                "reason": exc.reason,
            }
        }
        return JSONResponse(body, status_code=response.status_code)

    @app.exception_handler(RecoveryError)
    @app.exception_handler(ReactionError)
    @app.exception_handler(ProjectionError)
    @app.exception_handler(DomainError)
    async def known(request: Request, exc: Exception) -> JSONResponse:
        return problem(error_code(exc), str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _CODE_OF_STATUS.get(exc.status_code, "invalid")
        return problem(code, str(exc.detail), status=exc.status_code)

    @app.exception_handler(Exception)
    async def defect(request: Request, exc: Exception) -> JSONResponse:
        _log.exception("%s %s failed", request.method, request.url.path)
        return problem("internal", "internal error: the server logged it")

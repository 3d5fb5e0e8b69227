"""The API's endpoints, one module per concern; :data:`ROUTERS` lists them all."""

from fastapi import APIRouter

from safereplay.recovery.api.routes import (
    alerts,
    audit,
    builds,
    change_requests,
    conflicts,
    flags,
    jobs,
    parked,
    reactions,
    slos,
    status,
    steps,
    templates,
)

__all__ = ["ROUTERS"]

ROUTERS: tuple[APIRouter, ...] = (
    status.router,
    jobs.router,
    builds.router,
    parked.router,
    audit.router,
    alerts.router,
    conflicts.router,
    templates.router,
    reactions.router,
    steps.router,
    slos.router,
    flags.router,
    change_requests.router,
)

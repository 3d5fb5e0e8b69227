"""The API's endpoints, one module per concern; :data:`ROUTERS` lists them all."""

from fastapi import APIRouter

from safereplay.recovery.api.routes import (
    alerts,
    audit,
    builds,
    change_requests,
    jobs,
    parked,
    reactions,
    status,
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
    templates.router,
    reactions.router,
    change_requests.router,
)

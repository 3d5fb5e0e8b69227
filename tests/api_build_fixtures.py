"""What the builds, parked and audit API tests share: operations run as the admin
directly (to set a scene), workers run in this process until idle, a parked event."""

from __future__ import annotations

from typing import Any
from uuid import UUID, uuid4

from api_fixtures import ApiWorld
from projection_fixtures import parked_event

from safereplay.projections.source import WHOLE
from safereplay.recovery.jobs.model import Job
from safereplay.recovery.operations.catalog import open_operations

ROOT = "/api/projections/run_status"


def as_admin(world: ApiWorld, operation: str, **parameters: Any) -> Any:
    """Run ``operation`` as ada through the dispatch layer, bypassing the API."""
    admin = world.context.access.authenticate(world.envs["admin"]["SAFEREPLAY_TOKEN"])
    return open_operations(world.context).run(admin, operation, reason="scene", **parameters)


def run_workers(world: ApiWorld) -> None:
    """Run every planned partition to its end, as ``safereplay worker --exit-when-idle``."""
    as_admin(world, "worker", exit_when_idle=True)


def job_of(world: ApiWorld, answer: Any) -> Job:
    """The job an API answer names, read back from the database."""
    return world.context.jobs.get_job(UUID(answer.json()["job_id"]))


def built(world: ApiWorld) -> None:
    """run_status's first build (one partition), live and complete."""
    as_admin(world, "rebuild", projection="run_status", partitions=1)
    run_workers(world)


def park_one(world: ApiWorld) -> int:
    """Park an event of run_status's live build 1, as a failing handler would have;
    its position."""
    store = world.context.projection_store
    [checkpoint] = store.checkpoints("run_status", build=1)
    position = checkpoint.position
    event = parked_event(
        projection="run_status",
        position=position,
        partition=WHOLE,
        aggregate_id=uuid4(),
        error_message="cannot decode",
        attempts=3,
        reason="retries exhausted",
    )
    store.commit("run_status", 1, WHOLE, expected=position, position=position, parked=[event])
    return position

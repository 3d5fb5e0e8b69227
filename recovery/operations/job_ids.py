"""Job ids as operators type them: the whole id, or an unambiguous prefix (like git).

``safereplay jobs`` shows the first 8 characters of each id; every command that
takes a job (``watch``, ``pause``, ``resume``, ``abort``, ``retry-partition``,
``worker --job``...) accepts those, resolved here before the permission check
(a read, through the operation's ``prepare`` hook), so that the audit entry
records the whole id.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any
from uuid import UUID

from safereplay.recovery.errors import AmbiguousJobId, InvalidRequest, JobNotFound

if TYPE_CHECKING:
    from safereplay.recovery.jobs.store import JobStore
    from safereplay.recovery.operations.context import RecoveryContext

__all__ = ["job_id_preparer", "resolve_job_id"]

#: Fewer characters than this match too much to be meant as one job.
MIN_PREFIX = 4


def resolve_job_id(jobs: JobStore, text: object) -> UUID:
    """The job whose id is ``text`` or starts with it.

    Raises :class:`JobNotFound` when none does, :class:`AmbiguousJobId` (listing
    the candidates) when several do, :class:`InvalidRequest` for text that is no
    job id at all.
    """
    if isinstance(text, UUID):
        return text
    given = str(text).strip().lower()
    try:
        return UUID(given)
    except ValueError:
        pass
    if len(given.replace("-", "")) < MIN_PREFIX:
        raise InvalidRequest(
            f"job id {str(text)!r} is too short: give at least {MIN_PREFIX} characters "
            "(as `safereplay jobs` shows them)"
        )
    matches = jobs.jobs_with_prefix(given, limit=10)
    if not matches:
        raise JobNotFound(f"no job id starts with {given!r} (see `safereplay jobs`)")
    if len(matches) > 1:
        listed = "; ".join(f"{j.job_id} ({j.kind} of {j.projection}, {j.state})" for j in matches)
        raise AmbiguousJobId(
            f"job id {given!r} is ambiguous, it starts {len(matches)} jobs' ids: {listed}. "
            "Give more characters"
        )
    return matches[0].job_id


def job_id_preparer(
    context: RecoveryContext, *, optional: bool = False
) -> Callable[[Mapping[str, Any]], Mapping[str, Any]]:
    """An operation's ``prepare`` hook: ``job_id`` (maybe a prefix) → the whole id."""

    def prepare(parameters: Mapping[str, Any]) -> Mapping[str, Any]:
        value = parameters.get("job_id")
        if value is None or value == "":
            if optional:
                return {}
            raise InvalidRequest("this operation needs a job id")
        return {"job_id": str(resolve_job_id(context.jobs, value))}

    return prepare

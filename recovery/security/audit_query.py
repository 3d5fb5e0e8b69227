"""Which audit entries to read: the filters ``audit list`` takes, and the one SELECT
they make (kept apart from the trail's writing and verifying in ``audit.py``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, TypedDict
from uuid import UUID

__all__ = ["EntryFilters", "select_entries"]


class EntryFilters(TypedDict, total=False):
    """Each filter given (and not None) narrows the entries read; ``since`` and
    ``until`` include their bounds; ``limit`` keeps the first entries in ``seq`` order."""

    actor: str | None
    scope: str | None
    job_id: UUID | None
    action: str | None
    since: datetime | None
    until: datetime | None
    limit: int | None


def _timestamp(at: datetime) -> str:
    # The trail stores UTC ISO timestamps with microseconds: they compare as text.
    return at.astimezone(UTC).isoformat(timespec="microseconds")


def select_entries(filters: EntryFilters) -> tuple[str, dict[str, Any]]:
    """The query (``{audit_entries}`` still to be rendered) and its parameters."""
    template = "SELECT * FROM {audit_entries} WHERE 1 = 1"
    params: dict[str, Any] = {}
    job_id = filters.get("job_id")
    since = filters.get("since")
    until = filters.get("until")
    conditions = {
        " AND actor = %(actor)s": ("actor", filters.get("actor")),
        " AND scope = %(scope)s": ("scope", filters.get("scope")),
        " AND action = %(action)s": ("action", filters.get("action")),
        " AND job_id = %(job_id)s": ("job_id", str(job_id) if job_id else None),
        " AND at >= %(since)s": ("since", _timestamp(since) if since else None),
        " AND at <= %(until)s": ("until", _timestamp(until) if until else None),
    }
    for fragment, (name, value) in conditions.items():
        if value is not None:
            template += fragment
            params[name] = value
    template += " ORDER BY seq"
    limit = filters.get("limit")
    if limit is not None:
        template += " LIMIT %(limit)s"
        params["limit"] = limit
    return template, params

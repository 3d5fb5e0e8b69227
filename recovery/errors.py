"""Errors raised by recovery operations.

::

    RecoveryError
    ├── InvalidRequest          bad operator input (range, partition, unknown projection...)
    ├── JobConflict             a job is already running on that projection
    ├── JobNotFound             no job with that id
    ├── InvalidJobTransition    e.g. resume a completed job
    ├── CircuitOpen             the job's circuit breaker is open; work is refused for now
    └── IncompleteJob           a job could not account for every position up to its target

Messages name projections, jobs, partitions and positions; never payloads or secrets.
"""

from __future__ import annotations

__all__ = [
    "CircuitOpen",
    "IncompleteJob",
    "InvalidJobTransition",
    "InvalidRequest",
    "JobConflict",
    "JobNotFound",
    "RecoveryError",
]


class RecoveryError(Exception):
    """Base class of every error raised by :mod:`recovery`."""


class InvalidRequest(RecoveryError):
    """The operator's request is invalid; the message says what to change."""


class JobConflict(RecoveryError):
    """Another job already holds the projection (or partition) this one needs."""


class JobNotFound(RecoveryError):
    """No job has that id."""


class InvalidJobTransition(RecoveryError):
    """The job's current state does not allow the requested change."""


class CircuitOpen(RecoveryError):
    """The circuit breaker is open: work is refused until it probes half-open."""


class IncompleteJob(RecoveryError):
    """Positions up to the job's target are neither applied, parked nor recorded holes."""

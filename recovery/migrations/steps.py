"""The ``recovery`` component: every recovery table, set up once per schema version.

Access control (principals, grants, tokens), the audit trail with its append-only
guards, jobs and partition leases, organisation templates and drills live in the
projection store's database. Their DDL is one step of the schema catalog
(:mod:`safereplay.domain.schema`), run by ``safereplay migrate`` or, when
``SAFEREPLAY_MIGRATE_ON_START`` allows it, by the first process that finds it
missing. A process that finds it current runs no DDL: the audit trail's triggers
in particular are created by the migration and never dropped and re-created at a
start, which used to lock the trail against appenders and deadlock processes
started together.
"""

from __future__ import annotations

from typing import Any

from safereplay.domain.schema import AppliedStep, SchemaStep, ensure_schema
from safereplay.recovery.alerts.slo_store import SLOStore
from safereplay.recovery.alerts.store import AlertStore
from safereplay.recovery.database import Database
from safereplay.recovery.drills.drill import DrillStore
from safereplay.recovery.jobs.conflicts import ConflictStore
from safereplay.recovery.jobs.heartbeats import FollowerHeartbeats
from safereplay.recovery.jobs.store import SQLJobStore
from safereplay.recovery.security.access import AccessControl
from safereplay.recovery.security.approvals import ChangeRequestStore
from safereplay.recovery.security.audit import AuditTrail
from safereplay.recovery.security.flags import FlagStore
from safereplay.recovery.security.signin import SignInAudit
from safereplay.recovery.templates.store import TemplateStore

__all__ = [
    "RECOVERY_COMPONENT",
    "RECOVERY_SCHEMA_VERSION",
    "ensure_recovery_schema",
    "recovery_statements",
    "recovery_step",
]

RECOVERY_COMPONENT = "recovery"
#: Raise it with every change to a recovery table, and make the step bring a
#: database at the previous version up to it (its ``from_version`` says which).
RECOVERY_SCHEMA_VERSION = 6
# Versions: 1, the tables of the first catalog; 2, the failed sign-ins' counts
# (safereplay_auth_failures) and TRUNCATE refused on the audit head too; 3, each
# job partition's events in scope and recent events/s (progress counts events,
# not positions); 4, stall and anomaly detection: when each job partition last
# advanced (advanced_at), the live followers' heartbeats (safereplay_followers),
# the alerts (safereplay_alerts, one open per rule and subject) and the
# projections' samples the anomaly rules compare (safereplay_alert_samples); 5,
# declared for the governance tables before any of them existed (a database at 5
# has the tables of 4, nothing more); 6, governance: change requests (four-eyes
# approval), recovery flags and their history, replay SLOs and their breaches,
# integrity conflicts (each its store's tables, listed below).
# Every CREATE is idempotent, so each version's step runs them all; the columns
# versions 3 and 4 add to an existing table are added unless present.


def recovery_statements(dialect: str) -> list[str]:
    """Every recovery table's DDL, as templates, in the order they are created."""
    return [
        *AccessControl.schema_statements(),
        *AuditTrail.schema_statements(dialect),
        *SignInAudit.schema_statements(),
        *SQLJobStore.schema_statements(),
        *TemplateStore.schema_statements(),
        *DrillStore.schema_statements(),
        *FollowerHeartbeats.schema_statements(),
        *AlertStore.schema_statements(),
        *ConflictStore.schema_statements(),
        *SLOStore.schema_statements(),
        *FlagStore.schema_statements(),
        *ChangeRequestStore.schema_statements(),
    ]


def recovery_step(database: Database) -> SchemaStep:
    """The ``recovery`` step of ``database``'s catalog."""
    statements = [database.render(t) for t in recovery_statements(database.dialect)]

    def apply(cursor: Any, from_version: int) -> None:
        if 0 < from_version < 4:
            # The partitions table exists without the version 3 or 4 columns (a fresh
            # database gets them from its CREATE TABLE below).
            SQLJobStore.add_progress_columns(cursor, database.dialect, database.render)
        for statement in statements:
            cursor.execute(statement)

    return SchemaStep(
        RECOVERY_COMPONENT,
        RECOVERY_SCHEMA_VERSION,
        apply,
        "access control, audit trail and its guards, jobs, templates, drills, alerts",
    )


def ensure_recovery_schema(database: Database, *, migrate: bool) -> list[AppliedStep]:
    """Check the catalog; set the recovery tables up if missing and ``migrate``."""
    return ensure_schema(database.schema_database(), [recovery_step(database)], migrate=migrate)

"""Recovery of projections: rebuilds, catch-ups, failure policies, job control and the CLI."""

from safereplay.recovery.cli.demo import DemoResult, run_demo
from safereplay.recovery.drills.drill import (
    DrillResult,
    DrillStore,
    require_matching_drill,
    run_drill,
)
from safereplay.recovery.templates.plan import TemplatePlan, plan_template
from safereplay.recovery.templates.store import TemplateStore

__all__ = [
    "DemoResult",
    "DrillResult",
    "DrillStore",
    "TemplatePlan",
    "TemplateStore",
    "plan_template",
    "require_matching_drill",
    "run_demo",
    "run_drill",
]

"""Recovery of projections: rebuilds, catch-ups, failure policies, job control and the CLI."""

from recovery.demo import DemoResult, run_demo
from recovery.drill import DrillResult, DrillStore, require_matching_drill, run_drill
from recovery.template_ops import TemplatePlan, TemplateStore, plan_template

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

"""Recovery of projections: rebuilds, catch-ups, failure policies, job control and the CLI."""

from recovery.demo import DemoResult, run_demo

__all__ = ["DemoResult", "run_demo"]

"""Recovery templates (declarative runbooks): model, store, plans, staged application."""

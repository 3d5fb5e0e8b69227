"""Stall and anomaly detection: rules as values, evaluated over facts, alerts raised and cleared."""

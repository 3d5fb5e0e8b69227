"""Catch-up throughput benchmark: ``python -m benchmarks.catchup`` (see docs/benchmarks.md)."""

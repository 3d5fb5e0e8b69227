"""Read models that track their position atomically with their state."""

from projections.watermark import HighWaterMark, SkippedHole, SQLiteHighWaterMark

__all__ = ["HighWaterMark", "SQLiteHighWaterMark", "SkippedHole"]

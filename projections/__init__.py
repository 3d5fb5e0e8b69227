"""Read models that track their position atomically with their state."""

__all__: list[str] = []

"""Schema migrations of the recovery tables: the ``recovery`` component of the schema catalog."""

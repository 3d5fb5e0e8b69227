"""The dispatch layer (permission check, audit entry) and the operations it runs."""

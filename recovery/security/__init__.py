"""Who may do what (principals, grants, tokens), the audit trail, and key operations."""

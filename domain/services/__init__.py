"""Use cases: one call, one unit of work."""

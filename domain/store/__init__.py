"""Persistence: tables, the unit of work and the only SQL in the project."""

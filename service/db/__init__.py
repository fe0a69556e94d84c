"""Persistence: the schema (models), engines and sessions, and migrations."""

"""Alembic migrations of the framework tables: `main/` and `tracking/`, one history each."""

"""Alembic revisions of the catalog (installed as saefeat.migrations)."""

"""Alembic migrations of the guard's database, run by `stillwatch.guard.db.upgrade` (no alembic.ini needed)."""

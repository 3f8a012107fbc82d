"""The console's store: one schema (``schema.py``) with Alembic migrations from the first version (``migrations/``),
on SQLite (WAL, the embedded default) or PostgreSQL (several console instances behind one database)."""

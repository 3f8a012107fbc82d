"""Alembic's environment: the console runs migrations on the connection it hands over (``console.store.db``)."""

from __future__ import annotations

from alembic import context

from console.store.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()

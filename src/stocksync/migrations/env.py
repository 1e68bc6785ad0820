"""Alembic environment: runs on the connection `stocksync.migrate` hands it (async engine, sync shim)."""

from __future__ import annotations

from alembic import context

from stocksync.adapters.tables import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata)
with context.begin_transaction():
    context.run_migrations()

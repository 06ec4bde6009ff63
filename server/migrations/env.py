"""Alembic environment: the engine comes from `server.migrate`, never from a URL in a file."""

from alembic import context

from server.tables import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()

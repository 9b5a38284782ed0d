"""Alembic environment: migrations always run on a connection handed over by roadmap_pipeline."""

from alembic import context

from roadmap_pipeline.store.schema import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    transaction_per_migration=True,
)
with context.begin_transaction():
    context.run_migrations()

"""Alembic environment for the trading database; run through pipelines.data.store.migrate."""

from alembic import context

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    version_table="trading_schema_version",
    transactional_ddl=True,
)
with context.begin_transaction():
    context.run_migrations()

"""Alembic environment of the decision log (``training.core.decision_store.upgrade`` runs it)."""

from __future__ import annotations

from alembic import context

from training.core.decision_store import engine_for, metadata

config = context.config
url = config.get_main_option("sqlalchemy.url")
assert url, "sqlalchemy.url is set by training.core.decision_store.alembic_config"
engine = engine_for(url)
try:
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=metadata)
        with context.begin_transaction():
            context.run_migrations()
finally:
    engine.dispose()

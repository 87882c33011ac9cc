"""Alembic environment for the registry database.

Two ways in:
- from the library (`registry db upgrade`, upgrade-on-open): the caller passes a connection that
  already holds the migration lock inside a transaction (`config.attributes["connection"]`);
- from the command line at the repository root (`alembic upgrade head -x db=URL`, or with
  REGISTRY_DB set, else the default SQLite file): this file opens the engine and takes the same
  lock through `registry.store.migrate.migration_lock`.
"""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context

from registry.store.orm import Base

config = context.config
target_metadata = Base.metadata


def _configure(connection) -> None:  # noqa: ANN001
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,  # SQLite cannot ALTER most things: rebuild the table instead
        compare_type=True,
    )


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return

    from registry.store.engine import create_registry_engine, resolve_db_url
    from registry.store.migrate import migration_lock

    if config.config_file_name is not None:
        fileConfig(config.config_file_name)
    url = resolve_db_url(context.get_x_argument(as_dictionary=True).get("db"))
    engine = create_registry_engine(url)
    try:
        with migration_lock(engine) as locked:
            _configure(locked)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported: run against a database")
run_migrations_online()

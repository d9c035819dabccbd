"""Alembic environment for the saefeat catalog.

Run through `saefeat.storage.catalog.db.upgrade(url)` (the URL arrives in
`config.attributes["database_url"]`); with the plain `alembic` command the URL comes from
`sqlalchemy.url` or else from saefeat's settings.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

from saefeat.storage.catalog.db import include_object
from saefeat.storage.catalog.models import Base

config = context.config
target_metadata = Base.metadata


def database_url() -> str:
    url = config.attributes.get("database_url") or config.get_main_option("sqlalchemy.url")
    if url:
        return url
    from saefeat.config import get_settings

    return get_settings().db_url


def run_migrations_offline() -> None:
    url = database_url()
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=url.startswith("sqlite"),
        include_object=include_object,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    url = database_url()
    engine = create_engine(url, poolclass=pool.NullPool)
    sqlite = engine.dialect.name == "sqlite"
    with engine.connect() as connection:
        if sqlite:
            # Batch mode rebuilds a table by copy + drop; with foreign keys on, the drop
            # would cascade ON DELETE CASCADE into child rows. The pragma is a no-op inside
            # a transaction, so set it before Alembic begins one.
            connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
            connection.commit()
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=sqlite,
            include_object=include_object,
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()

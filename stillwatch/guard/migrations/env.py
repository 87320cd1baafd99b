"""Alembic environment: runs on the connection that `stillwatch.guard.db.upgrade` passes in."""

from __future__ import annotations

from alembic import context

from stillwatch.guard.tables import Base

config = context.config
target_metadata = Base.metadata


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    # render_as_batch: SQLite cannot ALTER most things, so later migrations copy-and-move tables there.
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True,
                      compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():  # `alembic upgrade --sql`: print the DDL instead of running it
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata,
                      literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
elif (conn := config.attributes.get("connection")) is not None:
    _run(conn)
else:  # the plain alembic command line, with sqlalchemy.url set in its own ini
    from stillwatch.guard.db import make_engine, write_transaction

    with write_transaction(make_engine(config.get_main_option("sqlalchemy.url"))) as conn:
        _run(conn)

"""Alembic environment of the API database.

Run through :func:`services.api.migrate.upgrade` (start-up, ``asvat db upgrade``), which
passes an open connection in ``config.attributes["connection"]``; the plain ``alembic``
command works too, with ``-x url=<SQLAlchemy URL>``.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from services.api.db import make_engine
from services.api.models import metadata

config = context.config


def run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters by copying
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    run(connection)
else:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option(
        "sqlalchemy.url"
    )
    if not url:
        raise SystemExit("alembic: give the database with -x url=<SQLAlchemy URL>")
    engine = make_engine(url)
    with engine.connect() as own:
        run(own)
    engine.dispose()

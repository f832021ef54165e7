"""Bring the API database to the newest schema (Alembic), at start-up and by ``asvat db``.

Several API processes may start at once against one PostgreSQL: the upgrade runs under a
session advisory lock, so one migrates and the others then find nothing to do. A database
made before migrations existed (tables from ``create_all``, no ``alembic_version``) is
stamped with the first revision, which is exactly that schema, and then upgraded.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect, text

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
#: The revision that matches the tables ``create_all`` made before migrations.
BASELINE = "0001"
#: pg_advisory_lock key for migrations (any constant; "asvat-mi" in ASCII).
_LOCK_KEY = 0x6173766174_2D6D69


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head() -> str:
    """The newest revision the code knows."""
    revision = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert revision is not None
    return revision


def current(engine: Engine) -> str | None:
    """The database's revision (None: not migrated yet)."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> tuple[str | None, str]:
    """Migrate to ``revision``; returns (revision before, revision after)."""
    with engine.connect() as connection:
        postgres = connection.dialect.name == "postgresql"
        if postgres:
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _LOCK_KEY})
            connection.commit()
        try:
            before = MigrationContext.configure(connection).get_current_revision()
            if before is None and inspect(connection).has_table("escalations"):
                command.stamp(alembic_config(connection), BASELINE)
                connection.commit()
                before = BASELINE
            command.upgrade(alembic_config(connection), revision)
            connection.commit()
            after = MigrationContext.configure(connection).get_current_revision()
        finally:
            if postgres:
                connection.rollback()
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _LOCK_KEY})
                connection.commit()
    return before, after or ""


def downgrade(engine: Engine, revision: str) -> None:
    with engine.connect() as connection:
        command.downgrade(alembic_config(connection), revision)
        connection.commit()

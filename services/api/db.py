"""The API database: an engine and a session factory from one SQLAlchemy URL.

SQLite (the embedded default) and PostgreSQL (production) are both first-class. SQLite
connections get write-ahead logging (readers never block the consumer's writes), foreign
keys, and a busy timeout so the consumer and the HTTP threads wait for each other instead of
failing with "database is locked". Transactions that write (:func:`make_writer_factory`)
begin ``IMMEDIATE`` on SQLite: they take the write lock before they read, so a read-then-
write transaction never fails half-way because another writer committed meanwhile.

JSON columns are written by orjson and read by orjson where it reads what ``json`` would
(:func:`asvat.contracts.dumps_json`, :func:`~asvat.contracts.loads_json`): the consumer
stores a payload with every assessment, and ``json.dumps`` was 7 % of its CPU. What goes
in is JSON already (the consumer refuses NaN and Infinity; HTTP bodies hold no floats).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, Table, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from asvat.contracts import dumps_json, loads_json

SQLITE_BUSY_TIMEOUT_MS = 5_000
POSTGRES_CONNECT_TIMEOUT_S = 5
POSTGRES_POOL_SIZE = 20
POSTGRES_POOL_OVERFLOW = 20


def make_engine(url: str) -> Engine:
    """Create an engine for ``url`` (``sqlite:///…`` or ``postgresql+psycopg://…``)."""
    parsed = make_url(url)
    connect_args: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        _ensure_sqlite_parent(parsed.database)
        connect_args["timeout"] = SQLITE_BUSY_TIMEOUT_MS / 1000
        # The consumer writes from a worker thread and requests read from others; the
        # pool hands each connection to one thread at a time.
        connect_args["check_same_thread"] = False
    pool: dict[str, Any] = {}
    if parsed.get_backend_name() == "postgresql":
        connect_args["connect_timeout"] = POSTGRES_CONNECT_TIMEOUT_S
        # As many connections as request threads can use at once (anyio's pool: 40). Those
        # over pool_size are closed when returned, so under load a pool too small opens a
        # new server process per request; half stay open, and no process holds 40 idle.
        pool = {"pool_size": POSTGRES_POOL_SIZE, "max_overflow": POSTGRES_POOL_OVERFLOW}
    engine = create_engine(
        parsed,
        pool_pre_ping=True,
        connect_args=connect_args,
        json_serializer=_json_text,
        json_deserializer=loads_json,
        **pool,
    )
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_begin)
    return engine


def _json_text(obj: Any) -> str:
    return dumps_json(obj).decode("utf-8")


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions whose loaded objects stay readable after commit."""
    return sessionmaker(engine, expire_on_commit=False)


def make_writer_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions for transactions that write: ``BEGIN IMMEDIATE`` on SQLite."""
    return sessionmaker(engine.execution_options(sqlite_begin="IMMEDIATE"), expire_on_commit=False)


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # The driver's own implicit BEGIN is turned off; _sqlite_begin emits ours.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    finally:
        cursor.close()


def _sqlite_begin(connection: Any) -> None:
    mode = connection.get_execution_options().get("sqlite_begin", "DEFERRED")
    connection.exec_driver_sql(f"BEGIN {mode}")


def _ensure_sqlite_parent(database: str | None) -> None:
    """Create the directory of a file database (``data/`` on a fresh checkout)."""
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    Path(database).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)


def insert_on_conflict(dialect: str, table: Table) -> postgresql.Insert | sqlite.Insert | None:
    """``table``'s INSERT in ``dialect``, which can take ON CONFLICT (an upsert), or None
    for a dialect without it."""
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    return None

"""The durable event log: every incident event ingest accepted, in a database.

The embedded broker keeps nothing on disk, so ingest does not let it hold the only copy:
every pseudonymised event is appended here (in one transaction per request) *before* it is
published, and a request is answered 202 only when both have happened. If publishing fails
the events this request added are removed again (the client is told 503 and re-sends), so
the log holds exactly the events some client was told were accepted, plus those of a
request still in flight.

When a broker comes back empty (``republish.py``) the log is published again, in the order
it was accepted; consumers ignore what they have already seen (by ``event_id``), and the
worker rebuilds its state from the topic. The log is also the record an auditor can count
202s against.

Only pseudonymised events are stored (what ingest publishes, byte for byte). An event id is
stored once: a client that re-sends an accepted event adds nothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    create_engine,
    delete,
    event,
    func,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

metadata = MetaData()

#: Versioned by name: a new layout gets a new table, read beside the old one.
event_log = Table(
    "ingest_event_log_v1",
    metadata,
    Column("seq", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True,
           autoincrement=True),
    Column("event_id", String(128), nullable=False, unique=True),
    Column("incident_id", String(128), nullable=False),
    Column("value", LargeBinary, nullable=False),
    Column("accepted_at", Float, nullable=False),
)


@dataclass(frozen=True, slots=True)
class LoggedEvent:
    """One accepted event: its partition key and the exact bytes published."""

    event_id: str
    key: str
    value: bytes


class EventLog:
    """The durable log on a SQLAlchemy URL (SQLite file by default, PostgreSQL in production)."""

    def __init__(self, url: str) -> None:
        self.url = url
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.engine: Engine = create_engine(url, pool_pre_ping=True, future=True)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        metadata.create_all(self.engine)

    def append(self, events: Sequence[LoggedEvent]) -> list[str]:
        """Store ``events`` in one transaction; returns the event ids that were new."""
        if not events:
            return []
        ids = [e.event_id for e in events]
        now = time.time()
        with self.engine.begin() as conn:
            known = set(
                conn.scalars(select(event_log.c.event_id).where(event_log.c.event_id.in_(ids)))
            )
            rows: list[dict[str, Any]] = []
            seen = set(known)
            for e in events:
                if e.event_id in seen:
                    continue
                seen.add(e.event_id)
                rows.append(
                    {"event_id": e.event_id, "incident_id": e.key, "value": e.value,
                     "accepted_at": now}
                )
            if rows:
                insert = (
                    postgresql.insert(event_log)
                    if self.engine.dialect.name == "postgresql"
                    else sqlite.insert(event_log)
                )
                # A concurrent request with the same event id wins the race harmlessly.
                conn.execute(insert.on_conflict_do_nothing(index_elements=["event_id"]), rows)
        return [row["event_id"] for row in rows]

    def remove(self, event_ids: Sequence[str]) -> None:
        """Take back events whose publishing failed (their client was told 503)."""
        if not event_ids:
            return
        with self.engine.begin() as conn:
            conn.execute(delete(event_log).where(event_log.c.event_id.in_(list(event_ids))))

    def purge_accepted_before(self, cutoff: float) -> int:
        """Delete events accepted before ``cutoff`` (Unix time); returns how many."""
        with self.engine.begin() as conn:
            result = conn.execute(delete(event_log).where(event_log.c.accepted_at < cutoff))
            return int(result.rowcount or 0)

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.scalar(select(func.count()).select_from(event_log)) or 0)

    def read(self, batch: int = 5000) -> Iterator[list[LoggedEvent]]:
        """Every logged event in the order accepted, ``batch`` at a time."""
        after = 0
        while True:
            with self.engine.connect() as conn:
                rows = conn.execute(
                    select(event_log.c.seq, event_log.c.event_id, event_log.c.incident_id,
                           event_log.c.value)
                    .where(event_log.c.seq > after)
                    .order_by(event_log.c.seq)
                    .limit(batch)
                ).all()
            if not rows:
                return
            after = rows[-1].seq
            yield [LoggedEvent(r.event_id, r.incident_id, bytes(r.value)) for r in rows]

    def close(self) -> None:
        self.engine.dispose()


def _sqlite_pragmas(connection: object, _record: object) -> None:
    cursor = connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")  # an acknowledged event survives power loss
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()

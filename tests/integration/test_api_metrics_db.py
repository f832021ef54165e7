"""The API's database gauges, read at scrape time, on SQLite and on PostgreSQL.

They read whatever columns the schema has: the tests build the tables by hand in two
shapes (escalations with levels, acknowledgement, areas and reviews; and the first schema,
which had none of them), and once with the API's own models.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from psycopg import sql
from sqlalchemy import Column, Engine, MetaData, String, Table, insert

from services.api.db import make_engine
from services.api.metrics import ApiMetrics, DatabaseCollector
from services.api.models import UtcDateTime
from services.api.models import metadata as api_metadata

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
NOW = datetime(2026, 11, 20, 21, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        made = make_engine(f"sqlite:///{tmp_path / 'api.db'}")
        yield made
        made.dispose()
        return
    import psycopg

    schema = f"asvat_metrics_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN}: {exc}", pytrace=False)
    with admin:
        admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        made = make_engine(
            f"postgresql+psycopg://postgres@127.0.0.1:5432/test?options=-csearch_path%3D{schema}"
        )
        try:
            yield made
        finally:
            made.dispose()
            admin.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


def escalations_table(metadata: MetaData, *extra: Column[Any]) -> Table:
    return Table(
        "escalations",
        metadata,
        Column("escalation_id", String(64), primary_key=True),
        Column("subject_type", String(16)),
        Column("subject_key", String),
        Column("raised_at", UtcDateTime()),
        *extra,
    )


def full_schema(engine: Engine) -> tuple[Table, Table]:
    metadata = MetaData()
    escalations = escalations_table(
        metadata,
        Column("level", String(16)),
        Column("status", String(16)),
        Column("acknowledged_at", UtcDateTime()),
        Column("closed_at", UtcDateTime()),
        Column("district_code", String(32)),
    )
    reviews = Table(
        "reviews",
        metadata,
        Column("escalation_id", String(64), primary_key=True),
        Column("rank", String(40), primary_key=True),
        Column("due_at", UtcDateTime()),
    )
    metadata.create_all(engine)
    return escalations, reviews


def read(
    engine: Engine, now: datetime = NOW
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    metrics = ApiMetrics(engine)
    metrics.database.clock = lambda: now
    text = metrics.render()[0].decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def ago(minutes: float) -> datetime:
    return NOW - timedelta(minutes=minutes)


def test_levels_areas_acknowledgement_and_reviews_are_counted(engine: Engine) -> None:
    escalations, reviews = full_schema(engine)
    rows = [
        # id, subject, level, status, acknowledged, closed, area, raised minutes ago
        ("a", "victim", "high", "open", None, None, "N1", 40),
        ("b", "victim", "high", "open", ago(30), None, "N1", 35),  # acknowledged
        ("c", "location", "high", "open", None, None, "N2", 20),
        ("d", "victim", "high", "closed", None, ago(5), "N1", 90),  # closed: not open
        ("e", "victim", "medium", "open", None, None, None, 600),
        ("f", "victim", None, "open", None, None, "N1", 10),  # raised before levels
    ]
    with engine.begin() as connection:
        connection.execute(
            insert(escalations),
            [
                {
                    "escalation_id": eid,
                    "subject_type": subject,
                    "subject_key": f"key-{eid}",
                    "level": level,
                    "status": status,
                    "acknowledged_at": acknowledged,
                    "closed_at": closed,
                    "district_code": area,
                    "raised_at": ago(minutes),
                }
                for eid, subject, level, status, acknowledged, closed, area, minutes in rows
            ],
        )
        connection.execute(
            insert(reviews),
            [
                {"escalation_id": "a", "rank": "sergeant", "due_at": ago(120)},  # overdue
                {"escalation_id": "a", "rank": "inspector", "due_at": NOW + timedelta(days=3)},
                {"escalation_id": "e", "rank": "sergeant", "due_at": ago(30)},  # overdue
                {"escalation_id": "e", "rank": "inspector", "due_at": NOW + timedelta(days=30)},
                {"escalation_id": "d", "rank": "sergeant", "due_at": ago(600)},  # closed
            ],
        )
    found = read(engine)
    assert found[("asvat_api_database_stats_up", ())] == 1
    open_ = "asvat_api_escalations_open"

    def opened(level: str, subject: str, area: str) -> float:
        return found.get((open_, (("area", area), ("level", level), ("subject_type", subject))), 0)

    assert opened("high", "victim", "N1") == 2
    assert opened("high", "location", "N2") == 1
    assert opened("medium", "victim", "unassigned") == 1
    assert opened("none", "victim", "N1") == 1
    assert sum(v for (name, _), v in found.items() if name == open_) == 5
    assert found[("asvat_api_unacknowledged_high_risk_escalations", ())] == 2
    age = "asvat_api_oldest_unacknowledged_high_risk_escalation_age_seconds"
    assert found[(age, ())] == pytest.approx(40 * 60, abs=1)
    oldest = "asvat_api_oldest_open_escalation_age_seconds"
    assert found[(oldest, (("level", "high"),))] == pytest.approx(40 * 60, abs=1)
    assert found[(oldest, (("level", "medium"),))] == pytest.approx(600 * 60, abs=1)
    assert found[("asvat_api_reviews_overdue", ())] == 2
    assert found[("asvat_api_reviews_due", ())] == 1
    overdue_age = "asvat_api_oldest_overdue_review_age_seconds"
    assert found[(overdue_age, ())] == pytest.approx(120 * 60, abs=1)


def test_the_first_schema_without_levels_gives_zeros_not_errors(engine: Engine) -> None:
    metadata = MetaData()
    escalations = escalations_table(metadata)
    metadata.create_all(engine)
    with engine.begin() as connection:
        connection.execute(
            insert(escalations),
            [
                {
                    "escalation_id": "x",
                    "subject_type": "victim",
                    "subject_key": "k",
                    "raised_at": ago(99),
                },
                {
                    "escalation_id": "y",
                    "subject_type": "location",
                    "subject_key": "l",
                    "raised_at": ago(5),
                },
            ],
        )
    found = read(engine)
    assert found[("asvat_api_database_stats_up", ())] == 1
    key = (("area", "unassigned"), ("level", "none"), ("subject_type", "victim"))
    assert found[("asvat_api_escalations_open", key)] == 1
    assert found[("asvat_api_unacknowledged_high_risk_escalations", ())] == 0
    assert found[("asvat_api_oldest_unacknowledged_high_risk_escalation_age_seconds", ())] == 0
    assert found[("asvat_api_reviews_overdue", ())] == 0


def test_the_api_models_schema_is_read_without_error(engine: Engine) -> None:
    api_metadata.create_all(engine)
    found = read(engine)
    assert found[("asvat_api_database_stats_up", ())] == 1
    assert found[("asvat_api_unacknowledged_high_risk_escalations", ())] == 0
    assert found[("asvat_api_db_pool_connections", (("state", "in_use"),))] == 0


def test_an_empty_database_and_a_dead_one(engine: Engine, tmp_path: Path) -> None:
    found = read(engine)  # no tables yet: the API has not started
    assert found[("asvat_api_database_stats_up", ())] == 1
    assert found[("asvat_api_reviews_overdue", ())] == 0

    dead = make_engine("postgresql+psycopg://postgres@127.0.0.1:9/none")
    found = read(dead)
    assert found[("asvat_api_database_stats_up", ())] == 0
    assert ("asvat_api_reviews_overdue", ()) not in found


def test_readings_are_reused_for_a_few_seconds(engine: Engine) -> None:
    metadata = MetaData()
    escalations = escalations_table(metadata, Column("level", String(16)))
    metadata.create_all(engine)
    collector = DatabaseCollector(clock=lambda: NOW)
    collector.engine = engine
    first = collector._reading()
    with engine.begin() as connection:
        connection.execute(
            insert(escalations),
            [
                {
                    "escalation_id": "z",
                    "subject_type": "victim",
                    "subject_key": "k",
                    "level": "high",
                    "raised_at": ago(1),
                }
            ],
        )
    assert collector._reading() is first  # cached: a scrape storm costs one query
    assert collector.read(NOW).unacknowledged_high == 1

"""The API database's Alembic migrations on SQLite and PostgreSQL: they make what the models
describe, adopt a database made before migrations, go down and up again, run safely from
several processes at once, and make the audit trail append-only."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from api_fixtures import example
from sqlalchemy import delete, insert, inspect, select, text, update
from sqlalchemy.exc import DBAPIError

from services.api import grid, migrate, service, statistics
from services.api.db import make_engine, make_writer_factory
from services.api.models import AreaCount, Assessment, AuditEntry, Escalation, metadata


def test_migrations_make_exactly_what_the_models_describe(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        assert migrate.current(engine) is None
        assert migrate.upgrade(engine) == (None, migrate.head())
        assert migrate.upgrade(engine) == (migrate.head(), migrate.head())  # idempotent
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection, opts={"compare_type": True, "compare_server_default": False}
            )
            differences = compare_metadata(context, metadata)
        assert differences == []
    finally:
        engine.dispose()


def test_a_database_made_before_migrations_is_adopted_and_upgraded(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        # What create_all made before migrations: the baseline schema, no alembic_version.
        migrate.upgrade(engine, migrate.BASELINE)
        legacy = example("escalation.v1/location-7d-100m.json")
        assessment = example("assessment.v1/location-and-case-review.json")
        now = datetime.now(tz=UTC)
        old_escalation = {
            "escalation_id": legacy["escalation_id"],
            "subject_type": "location",
            "subject_key": legacy["subject_key"],
            "rule_id": legacy["rule_id"],
            "incident_id": legacy["incident_id"],
            "occurred_at": now,
            "raised_at": now,
            "received_at": now,
            "payload": legacy,
        }
        old_assessment = {
            k: v
            for k, v in service.assessment_row(assessment, now=now).items()
            if k in BASELINE_ASSESSMENT
        }
        with engine.begin() as connection:
            connection.execute(text("DROP TABLE alembic_version"))
            connection.execute(insert(Escalation.__table__), [old_escalation])
            connection.execute(insert(Assessment.__table__), [old_assessment])
        assert migrate.current(engine) is None
        assert migrate.upgrade(engine) == (migrate.BASELINE, migrate.head())
        with make_writer_factory(engine)() as session:
            stored = session.get(Escalation, legacy["escalation_id"])
            assert stored is not None
            assert (stored.status, stored.level, stored.payload) == ("open", None, legacy)
            assert stored.updated_at == stored.received_at
            kept = session.get(Assessment, assessment["incident_id"])
            assert kept is not None and kept.payload == assessment
            assert (kept.district_code, kept.easting) == ("unassigned", None)  # placed at start
    finally:
        engine.dispose()


BASELINE_ASSESSMENT = {
    "incident_id",
    "assessment_id",
    "in_scope",
    "classification",
    "occurred_at",
    "victim_key",
    "location_key",
    "rules_met",
    "payload",
    "updated_at",
}


def test_rows_stored_without_places_are_placed_and_counted(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        migrate.upgrade(engine)
        sessions = make_writer_factory(engine)
        located = example("assessment.v1/location-and-case-review.json")  # a grid point
        with sessions.begin() as session:
            service.upsert_assessment(session=session, payload=located)
            # As a row from before places were kept: no point, unassigned, not counted.
            session.execute(
                update(Assessment).values(
                    easting=None,
                    northing=None,
                    lat=None,
                    lon=None,
                    grid_cell=None,
                    district_code="unassigned",
                    ward_code="unassigned",
                )
            )
            session.execute(delete(AreaCount))
        areas = statistics.default_areas()
        with sessions.begin() as session:
            assert statistics.locate_unplaced(session, areas) == 1
            assert statistics.locate_unplaced(session, areas) == 0
        with sessions() as session:
            row = session.get(Assessment, located["incident_id"])
            assert row is not None and row.district_code == "E08000021"
            assert row.grid_cell == grid.cell_of(row.easting, row.northing) == 4245_05649
            counted = session.scalars(
                select(AreaCount.incidents).where(
                    AreaCount.area_code == "E08000021", AreaCount.period_kind == "month"
                )
            ).all()
            assert counted == [1]
    finally:
        engine.dispose()


#: Points for the backfill: cell borders, the bounds, outside them, none.
BACKFILLED = [
    (424_560, 564_921),
    (424_500, 564_900),
    (424_499, 564_899),
    (0, 0),
    (-30, 40),
    (-1, -1),
    (700_000, 1_300_000),
    (700_099, 1_300_099),
    (812_345, 1_456_789),
    (2**31 - 1, -(2**31)),
    (None, None),
    (424_560, None),
]


def test_grid_cells_are_filled_in_for_the_rows_there_are(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        migrate.upgrade(engine, "0003")
        payload = example("assessment.v1/location-and-case-review.json")
        now = datetime.now(tz=UTC)
        rows = [
            service.assessment_row(payload | {"incident_id": f"OLD-{n}"}, now=now)
            | {"easting": e, "northing": no}
            for n, (e, no) in enumerate(BACKFILLED)
        ]
        with engine.begin() as connection:
            connection.execute(insert(Assessment.__table__), rows)  # no grid_cell column yet
        assert migrate.upgrade(engine) == ("0003", migrate.head())
        with make_writer_factory(engine)() as session:
            stored = {
                a.incident_id: (a.easting, a.northing, a.grid_cell)
                for a in session.scalars(select(Assessment))
            }
        assert len(stored) == len(BACKFILLED)
        for n, (e, no) in enumerate(BACKFILLED):
            assert stored[f"OLD-{n}"] == (e, no, grid.cell_of(e, no))
        assert stored["OLD-0"][2] == 4245_05649 and stored["OLD-10"][2] is None
        # and back down (the column and its index go) and up again
        migrate.downgrade(engine, "0003")
        assert "grid_cell" not in {c["name"] for c in inspect(engine).get_columns("assessments")}
        migrate.upgrade(engine)
        with engine.connect() as connection:
            cells = connection.execute(text("SELECT count(grid_cell) FROM assessments")).scalar()
        assert cells == len(BACKFILLED) - 2
    finally:
        engine.dispose()


def test_down_to_the_baseline_and_up_again(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        migrate.upgrade(engine)
        migrate.downgrade(engine, migrate.BASELINE)
        assert migrate.current(engine) == migrate.BASELINE
        assert not inspect(engine).has_table("audit_log")
        migrate.upgrade(engine)
        assert migrate.current(engine) == migrate.head()
        assert inspect(engine).has_table("audit_log")
    finally:
        engine.dispose()


def test_the_audit_trail_refuses_updates_and_deletes(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        migrate.upgrade(engine)
        sessions = make_writer_factory(engine)
        with sessions.begin() as session:
            service.audit(session, actor="someone", action="victim.history.read")
        for change in ("UPDATE audit_log SET actor = 'nobody'", "DELETE FROM audit_log"):
            with pytest.raises(DBAPIError, match="append-only"), engine.begin() as connection:
                connection.execute(text(change))
        with sessions() as session:
            assert [e.actor for e in session.scalars(select(AuditEntry))] == ["someone"]
    finally:
        engine.dispose()


def test_several_processes_migrating_at_once_on_postgresql() -> None:
    from api_fixtures import postgres_schema

    with postgres_schema() as url:
        engines = [make_engine(url) for _ in range(3)]
        results: list[object] = []

        def run(engine: object) -> None:
            try:
                results.append(migrate.upgrade(engine))  # type: ignore[arg-type]
            except Exception as exc:  # pragma: no cover - reported below
                results.append(exc)

        threads = [threading.Thread(target=run, args=(e,)) for e in engines]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        for engine in engines:
            engine.dispose()
    assert sorted(map(str, results)) == sorted(
        [str((None, migrate.head()))] + [str((migrate.head(), migrate.head()))] * 2
    )

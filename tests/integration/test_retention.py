"""Retention on real databases (SQLite and PostgreSQL): what is past the policy's periods
goes, what is not stays, the purge is audited by counts only, and the audit trail is
append-only again afterwards. Also the API's scheduled job and ``asvat retention run``."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from api_fixtures import NO_BROKER
from sqlalchemy import Engine, delete, func, select, text
from sqlalchemy.exc import DatabaseError

from asvat.domain.policy import RetentionPolicy
from asvat.settings import Settings
from services.api import migrate
from services.api.app import create_app
from services.api.db import make_engine, make_writer_factory
from services.api.models import (
    Assessment,
    AuditEntry,
    Escalation,
    EscalationEvent,
    Plan,
    Review,
)
from services.api.retention import ACTION, purge
from services.api.service import audit

NOW = datetime.now(tz=UTC).replace(microsecond=0)
DAY_US = 86_400_000_000
RETENTION = RetentionPolicy(
    incidents=2192 * DAY_US, escalations=2192 * DAY_US, audit=2557 * DAY_US, every=DAY_US
)
OLD = NOW - timedelta(days=2200)  # past incidents and escalations, within audit
ANCIENT = NOW - timedelta(days=2600)  # past everything
RECENT = NOW - timedelta(days=30)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    migrate.upgrade(engine)
    yield engine
    engine.dispose()


def assessment(incident_id: str, occurred: datetime) -> Assessment:
    return Assessment(
        incident_id=incident_id,
        assessment_id="a" * 64,
        in_scope=True,
        classification="asb",
        occurred_at=occurred,
        victim_key="f" * 64,
        location_key=None,
        rules_met=[],
        payload={"incident_id": incident_id},
        updated_at=occurred,
    )


def escalation(escalation_id: str, changed: datetime, status: str) -> Escalation:
    return Escalation(
        escalation_id=escalation_id,
        subject_type="victim",
        subject_key="f" * 64,
        rule_id="victim-28d",
        incident_id="I-" + escalation_id,
        occurred_at=changed,
        raised_at=changed,
        received_at=changed,
        payload={},
        updated_at=changed,
        status=status,
    )


def event(escalation_id: str, at: datetime, n: int) -> EscalationEvent:
    return EscalationEvent(
        event_key=f"{escalation_id}-{n}",
        escalation_id=escalation_id,
        kind="raised",
        at=at,
        subject_type="victim",
        level="medium",
        status="open",
        district_code="unassigned",
        ward_code="unassigned",
        data={},
    )


def plan(escalation_id: str, opened: datetime, changed: datetime, status: str) -> Plan:
    return Plan(
        plan_id="P-" + escalation_id,
        escalation_id=escalation_id,
        subject_type="location",
        subject_key="bng:424500:564900",
        status=status,
        scanning={"incidents": [{"incident_id": "I-" + escalation_id}]},
        responses=[],
        opened_at=opened,
        opened_by="system",
        updated_at=changed,
    )


def seed(engine: Engine) -> None:
    with make_writer_factory(engine).begin() as session:
        session.add_all(
            [
                assessment("I-ANCIENT", ANCIENT),
                assessment("I-OLD", OLD),
                assessment("I-RECENT", RECENT),
                escalation("E-OLD-CLOSED", OLD, "closed"),
                escalation("E-OLD-OPEN", OLD, "open"),
                escalation("E-RECENT-CLOSED", RECENT, "closed"),
                event("E-OLD-CLOSED", OLD, 1),
                event("E-OLD-CLOSED", OLD, 2),
                event("E-OLD-OPEN", OLD, 1),
                event("E-RECENT-CLOSED", RECENT, 1),
                Review(escalation_id="E-OLD-CLOSED", rank="sergeant", every_seconds=1, due_at=OLD),
                Review(escalation_id="E-OLD-OPEN", rank="sergeant", every_seconds=1, due_at=OLD),
                # Plans: a draft no one touched goes with its escalation; a closed plan goes
                # when old; one in hand stays (counted), as does a draft of an open escalation.
                plan("E-OLD-CLOSED", OLD, OLD, "draft"),
                plan("E-GONE-CLOSED", ANCIENT, OLD, "closed"),
                plan("E-OLD-OPEN", OLD, OLD, "draft"),
                plan("E-GONE-SUBMITTED", ANCIENT, OLD, "submitted"),
                plan("E-RECENT-CLOSED", OLD, RECENT, "closed"),
            ]
        )
        session.flush()
        audit(session, actor="someone", action="victim.read", subject_key="f" * 64, at=ANCIENT)
        audit(session, actor="someone", action="victim.read", subject_key="f" * 64, at=OLD)
        audit(session, actor="someone", action="victim.read", subject_key="f" * 64, at=RECENT)


def contents(engine: Engine) -> dict[str, Any]:
    with make_writer_factory(engine).begin() as session:
        return {
            "assessments": sorted(session.scalars(select(Assessment.incident_id))),
            "escalations": sorted(session.scalars(select(Escalation.escalation_id))),
            "escalation_events": sorted(session.scalars(select(EscalationEvent.event_key))),
            "reviews": sorted(session.scalars(select(Review.escalation_id))),
            "plans": sorted(session.scalars(select(Plan.escalation_id))),
            "audit_log": sorted(
                (a.action, a.at.date().isoformat()) for a in session.scalars(select(AuditEntry))
            ),
        }


def test_dry_run_counts_and_changes_nothing(engine: Engine) -> None:
    seed(engine)
    before = contents(engine)
    report = purge(
        session_factory=make_writer_factory(engine), retention=RETENTION, now=NOW, dry_run=True
    )
    assert report.removed == {
        "assessments": 2,
        "escalation_events": 2,
        "reviews": 1,
        "plans": 2,
        "escalations": 1,
        "audit_log": 1,
    }
    assert report.open_kept == 1
    assert report.open_plans_kept == 2
    assert contents(engine) == before  # nor an audit entry


def test_purge_removes_what_is_past_retention_and_audits_counts_only(engine: Engine) -> None:
    seed(engine)
    report = purge(session_factory=make_writer_factory(engine), retention=RETENTION, now=NOW)
    assert report.removed == {
        "assessments": 2,
        "escalation_events": 2,
        "reviews": 1,
        "plans": 2,
        "escalations": 1,
        "audit_log": 1,
    }
    after = contents(engine)
    assert after["assessments"] == ["I-RECENT"]
    assert after["escalations"] == ["E-OLD-OPEN", "E-RECENT-CLOSED"]  # open ones stay
    assert after["escalation_events"] == ["E-OLD-OPEN-1", "E-RECENT-CLOSED-1"]
    assert after["reviews"] == ["E-OLD-OPEN"]
    assert after["plans"] == ["E-GONE-SUBMITTED", "E-OLD-OPEN", "E-RECENT-CLOSED"]
    assert after["audit_log"] == sorted(
        [
            ("victim.read", OLD.date().isoformat()),
            ("victim.read", RECENT.date().isoformat()),
            (ACTION, NOW.date().isoformat()),
        ]
    )
    with make_writer_factory(engine).begin() as session:
        entry = session.scalars(select(AuditEntry).where(AuditEntry.action == ACTION)).one()
    assert entry.actor == "retention job"
    assert entry.detail == {
        "cutoffs": {
            "incidents": (NOW - timedelta(days=2192)).isoformat(),
            "escalations": (NOW - timedelta(days=2192)).isoformat(),
            "audit": (NOW - timedelta(days=2557)).isoformat(),
        },
        "removed": report.removed,
        "open_escalations_kept": 1,
        "open_plans_kept": 2,
    }
    text = json.dumps(entry.detail)
    assert "I-OLD" not in text and "E-OLD" not in text and "f" * 64 not in text

    # Nothing left to remove: a second run removes nothing, and says so in the trail.
    again = purge(session_factory=make_writer_factory(engine), retention=RETENTION, now=NOW)
    assert set(again.removed.values()) == {0}


def test_the_audit_trail_is_append_only_again_after_a_purge(engine: Engine) -> None:
    seed(engine)
    purge(session_factory=make_writer_factory(engine), retention=RETENTION, now=NOW)
    factory = make_writer_factory(engine)
    with pytest.raises(DatabaseError, match="append-only"), factory.begin() as session:
        session.execute(delete(AuditEntry))
    with make_writer_factory(engine).begin() as session:
        assert session.scalar(select(func.count()).select_from(AuditEntry)) == 3


def test_a_failed_purge_leaves_everything_as_it_was(engine: Engine) -> None:
    """One transaction: a step that fails half-way (here a table the purge needs is
    gone) undoes the steps before it, and the audit trail keeps its guard."""
    seed(engine)
    before = contents(engine)
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE reviews"))
    factory = make_writer_factory(engine)
    with pytest.raises(DatabaseError, match="reviews"):
        purge(session_factory=factory, retention=RETENTION, now=NOW)
    after = {name: rows for name, rows in before.items() if name != "reviews"}
    with factory.begin() as session:
        assert sorted(session.scalars(select(Assessment.incident_id))) == after["assessments"]
        assert (
            sorted(session.scalars(select(EscalationEvent.event_key)))
            == (after["escalation_events"])
        )
        assert session.scalar(select(func.count()).select_from(AuditEntry)) == 3
    with pytest.raises(DatabaseError, match="append-only"), factory.begin() as session:
        session.execute(delete(AuditEntry))


@pytest.mark.anyio
async def test_the_api_runs_the_purge_on_its_schedule(
    database_url: str, engine: Engine, settings_factory: Callable[..., Settings]
) -> None:
    seed(engine)
    app = create_app(
        settings_factory(database_url=database_url, kafka_bootstrap=NO_BROKER),
        start_consumer=False,
        retention=RetentionPolicy(
            incidents=RETENTION.incidents,
            escalations=RETENTION.escalations,
            audit=RETENTION.audit,
            every=500_000,  # 0.5 s
        ),
        retention_delay_s=0.0,
    )
    async with app.router.lifespan_context(app):
        job = app.state.retention
        for _ in range(200):
            if job.runs >= 2:
                break
            await asyncio.sleep(0.05)
        assert job.runs >= 2, "the retention job did not run twice in 10 s"
    after = contents(engine)
    assert after["assessments"] == ["I-RECENT"]
    assert [a for a in after["audit_log"] if a[0] == ACTION][:2] == [
        (ACTION, NOW.date().isoformat())
    ] * 2


def test_asvat_retention_run_on_the_command_line(
    database_url: str, engine: Engine, tmp_path: Path
) -> None:
    seed(engine)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASVAT_")}
    env.update(ASVAT_DATABASE_URL=database_url, ASVAT_DATA_DIR=str(tmp_path / "data"))

    def run(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "asvat", "retention", "run", *extra],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    dry = run("--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert (
        "would remove assessments 2, escalation_events 2, reviews 1, plans 2, escalations 1"
        in dry.stdout
    )
    assert contents(engine)["assessments"] == ["I-ANCIENT", "I-OLD", "I-RECENT"]
    done = run()
    assert done.returncode == 0, done.stderr
    assert "removed assessments 2" in done.stdout and "audit_log 1" in done.stdout
    assert "1 open escalations and 2 plans in hand past the cutoff kept" in done.stdout
    assert contents(engine)["assessments"] == ["I-RECENT"]
    with make_writer_factory(engine).begin() as session:
        actors = session.scalars(select(AuditEntry.actor).where(AuditEntry.action == ACTION))
        assert list(actors) == ["asvat retention run"]

    policy = tmp_path / "short.yaml"
    policy.write_text(
        "codes: {ASBN: {class: asb, asb_category: nuisance}}\nscope: [asb]\nmax_lateness: 30d\n"
        "rules: [{id: v, subject: victim, window: 28d, threshold: 3}]\n"
        "retention: {incidents: 10d}\n"
    )
    bad = run("--policy", str(policy))
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        f"asvat: bad policy: {policy}: retention.incidents: expected at least the longest "
        "rule window plus max_lateness (58d), since the worker can still re-assess an "
        "incident until then, got '10d'"
    ]

"""What the API stores.

* ``assessments`` — the current assessment per incident, placed in a district and ward;
* ``escalations`` — one row per escalation: its latest message, its level and status, who
  acknowledged, was assigned or closed it, and where it is;
* ``escalation_events`` — append-only: every change to an escalation (raised, upgraded,
  acknowledged, …), numbered by ``seq``, a monotonically increasing sequence that is the
  live alert feed's event id;
* ``audit_log`` — append-only (triggers refuse UPDATE and DELETE): who did what, when, from
  where, including reading a victim's history;
* ``api_tokens`` — bearer tokens (their SHA-256 only) with a role, revocable;
* ``area_counts`` — incident and escalation counts per area and period, kept up to date by
  the consumer so that area statistics are a range read, not a scan;
* ``reviews`` — the supervisory review schedule of each open escalation;
* ``plans`` — problem-solving plans (SARA), one per escalation, with their supervision and
  outcome;
* ``data_versions`` — a counter per derived table, for caching answers made from it.

Tables keep the full message as ``payload`` (what the API serves back) next to the columns
it filters and sorts on. The schema is made by the Alembic migrations in
``services/api/migrations``; ``tests/integration/test_api_migrations.py`` checks that they
and these models agree.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Float,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

#: JSON everywhere, JSONB on PostgreSQL (indexable, compact).
JsonType = JSON().with_variant(JSONB(), "postgresql")
#: An auto-incrementing 64-bit key (SQLite only auto-increments INTEGER PRIMARY KEY).
SeqType = BigInteger().with_variant(Integer(), "sqlite")
UNASSIGNED = "unassigned"


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend.

    PostgreSQL stores ``timestamptz``; SQLite has no time zones, so the value is stored as
    naive UTC and given back its ``UTC`` tzinfo on the way out. Naive datetimes are refused
    on the way in: their meaning would depend on the server's clock settings.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: give it a time zone")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UtcDateTime,
        dict[str, Any]: JsonType,
        list[str]: JsonType,
        list[dict[str, Any]]: JsonType,
    }


class Assessment(Base):
    """The current assessment of one incident: the latest ``asvat.assessments.v1`` message."""

    __tablename__ = "assessments"

    incident_id: Mapped[str] = mapped_column(String, primary_key=True)
    assessment_id: Mapped[str] = mapped_column(String(64))
    in_scope: Mapped[bool] = mapped_column(Boolean)
    classification: Mapped[str] = mapped_column(String(16))
    occurred_at: Mapped[datetime]
    victim_key: Mapped[str | None] = mapped_column(String(64))
    location_key: Mapped[str | None] = mapped_column(String)
    rules_met: Mapped[list[str]]
    payload: Mapped[dict[str, Any]]
    updated_at: Mapped[datetime]
    # Where (from location_key; unassigned when outside every boundary or without a point).
    easting: Mapped[int | None] = mapped_column(Integer)
    northing: Mapped[int | None] = mapped_column(Integer)
    lat: Mapped[float | None] = mapped_column(Float)
    lon: Mapped[float | None] = mapped_column(Float)
    # The 100 m grid cell of (easting, northing) (services/api/grid.py): radius scans read
    # the cells around their point. Null without a point.
    grid_cell: Mapped[int | None] = mapped_column(Integer)
    district_code: Mapped[str] = mapped_column(String(32), server_default=UNASSIGNED)
    ward_code: Mapped[str] = mapped_column(String(32), server_default=UNASSIGNED)
    # Risk, case review and integrity: stored when the message carries them (null before).
    risk_level: Mapped[str | None] = mapped_column(String(16))
    risk_score: Mapped[int | None] = mapped_column(Integer)
    case_review_threshold_met: Mapped[bool | None] = mapped_column(Boolean)
    integrity_flag_count: Mapped[int] = mapped_column(Integer, server_default="0")

    __table_args__ = (
        Index("ix_assessments_victim_occurred", "victim_key", "occurred_at"),
        Index("ix_assessments_location_occurred", "location_key", "occurred_at"),
        Index("ix_assessments_occurred", "occurred_at"),
        Index("ix_assessments_district_occurred", "district_code", "occurred_at"),
        Index("ix_assessments_ward_occurred", "ward_code", "occurred_at"),
        Index("ix_assessments_grid", "easting", "northing"),
        # Radius scans: the cells around a point, optionally over a time window; with the
        # point, so that rows outside the square around the circle are not read.
        Index("ix_assessments_cell_occurred", "grid_cell", "occurred_at", "easting", "northing"),
        Index("ix_assessments_case_review", "case_review_threshold_met", "occurred_at"),
        Index("ix_assessments_integrity", "integrity_flag_count", "occurred_at"),
    )


class Escalation(Base):
    """One escalation (``asvat.escalations.v1``): its latest message and its handling."""

    __tablename__ = "escalations"

    escalation_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    subject_type: Mapped[str] = mapped_column(String(16))
    subject_key: Mapped[str] = mapped_column(String)
    rule_id: Mapped[str | None] = mapped_column(String)
    incident_id: Mapped[str] = mapped_column(String)
    occurred_at: Mapped[datetime]
    raised_at: Mapped[datetime]
    received_at: Mapped[datetime]
    payload: Mapped[dict[str, Any]]
    # The escalation's state, kept by the API.
    updated_at: Mapped[datetime]
    last_event: Mapped[str] = mapped_column(String(16), server_default="raised")
    level: Mapped[str | None] = mapped_column(String(16))
    level_rank: Mapped[int] = mapped_column(Integer, server_default="-1")  # -1: no level
    risk_score: Mapped[int | None] = mapped_column(Integer)
    episode: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), server_default="open")
    acknowledged_at: Mapped[datetime | None]
    acknowledged_by: Mapped[str | None] = mapped_column(String(200))
    assignee_type: Mapped[str | None] = mapped_column(String(16))
    assignee: Mapped[str | None] = mapped_column(String(200))
    closed_at: Mapped[datetime | None]
    closed_by: Mapped[str | None] = mapped_column(String(200))
    outcome: Mapped[str | None] = mapped_column(String(32))
    # Where: the subject's place, or for a victim the place of the escalating incident.
    location_key: Mapped[str | None] = mapped_column(String)
    lat: Mapped[float | None] = mapped_column(Float)
    lon: Mapped[float | None] = mapped_column(Float)
    district_code: Mapped[str] = mapped_column(String(32), server_default=UNASSIGNED)
    ward_code: Mapped[str] = mapped_column(String(32), server_default=UNASSIGNED)
    last_seq: Mapped[int] = mapped_column(SeqType, server_default="0")

    __table_args__ = (
        # Newest first, optionally for one subject type: the control room's list.
        Index("ix_escalations_raised", "raised_at", "escalation_id"),
        Index("ix_escalations_type_raised", "subject_type", "raised_at", "escalation_id"),
        Index("ix_escalations_subject", "subject_type", "subject_key"),
        Index("ix_escalations_status_raised", "status", "raised_at", "escalation_id"),
        Index("ix_escalations_level_raised", "level_rank", "raised_at", "escalation_id"),
        Index("ix_escalations_district_raised", "district_code", "raised_at", "escalation_id"),
        # The control room's usual view: one district's open (or acknowledged) escalations.
        Index(
            "ix_escalations_district_status_raised",
            "district_code",
            "status",
            "raised_at",
            "escalation_id",
        ),
        Index("ix_escalations_ward_raised", "ward_code", "raised_at", "escalation_id"),
        Index("ix_escalations_updated", "updated_at", "escalation_id"),
        Index("ix_escalations_incident", "incident_id"),
    )


class EscalationEvent(Base):
    """One change to an escalation, in the order the database took it (``seq``)."""

    __tablename__ = "escalation_events"

    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    event_key: Mapped[str] = mapped_column(String(64), unique=True)
    escalation_id: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime]
    actor: Mapped[str | None] = mapped_column(String(200))
    # A snapshot at the time of the event, for the feed's filters.
    subject_type: Mapped[str] = mapped_column(String(16))
    level: Mapped[str | None] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    district_code: Mapped[str] = mapped_column(String(32))
    ward_code: Mapped[str] = mapped_column(String(32))
    data: Mapped[dict[str, Any]]

    __table_args__ = (Index("ix_escalation_events_escalation", "escalation_id", "seq"),)


class AuditEntry(Base):
    """Who did what, when and from where. Append-only: the database refuses changes."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(200))
    token_id: Mapped[str | None] = mapped_column(String(32))
    role: Mapped[str | None] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(40))
    escalation_id: Mapped[str | None] = mapped_column(String(64))
    subject_type: Mapped[str | None] = mapped_column(String(16))
    subject_key: Mapped[str | None] = mapped_column(String)
    detail: Mapped[dict[str, Any]]
    client_ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(400))

    __table_args__ = (
        Index("ix_audit_escalation", "escalation_id", "id"),
        Index("ix_audit_subject", "subject_type", "subject_key", "id"),
        Index("ix_audit_at", "at"),
    )


class ApiToken(Base):
    """A bearer token: its SHA-256, never the token itself."""

    __tablename__ = "api_tokens"

    token_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime]
    created_by: Mapped[str | None] = mapped_column(String(200))
    revoked_at: Mapped[datetime | None]
    revoked_by: Mapped[str | None] = mapped_column(String(200))


class AreaCount(Base):
    """Counts for one area (district or ward) and one period (day, ISO week or month)."""

    __tablename__ = "area_counts"

    area_level: Mapped[str] = mapped_column(String(8), primary_key=True)
    period_kind: Mapped[str] = mapped_column(String(8), primary_key=True)
    period: Mapped[str] = mapped_column(String(10), primary_key=True)
    area_code: Mapped[str] = mapped_column(String(32), primary_key=True)
    incidents: Mapped[int] = mapped_column(Integer, server_default="0")
    in_scope: Mapped[int] = mapped_column(Integer, server_default="0")
    asb: Mapped[int] = mapped_column(Integer, server_default="0")
    crime: Mapped[int] = mapped_column(Integer, server_default="0")
    non_crime: Mapped[int] = mapped_column(Integer, server_default="0")
    other: Mapped[int] = mapped_column(Integer, server_default="0")
    cancelled: Mapped[int] = mapped_column(Integer, server_default="0")
    repeats: Mapped[int] = mapped_column(Integer, server_default="0")
    escalations: Mapped[int] = mapped_column(Integer, server_default="0")


class DataVersion(Base):
    """A counter bumped by every transaction that changes a derived table (``area_counts``),
    so that answers made from it can be cached until it changes."""

    __tablename__ = "data_versions"

    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    version: Mapped[int] = mapped_column(SeqType, server_default="0")


class Review(Base):
    """The next supervisory review of an escalation by one rank."""

    __tablename__ = "reviews"

    escalation_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    rank: Mapped[str] = mapped_column(String(40), primary_key=True)
    every_seconds: Mapped[int] = mapped_column(Integer)
    due_at: Mapped[datetime]
    last_done_at: Mapped[datetime | None]
    last_done_by: Mapped[str | None] = mapped_column(String(200))
    note: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("ix_reviews_due", "due_at"),)


class Plan(Base):
    """A problem-solving plan (SARA) for a repeat location or victim: one per escalation.

    Its status moves ``draft → submitted → signed_off → closed`` (:mod:`asvat.domain.plans`);
    every change is in the audit trail (``audit_log``, actions ``plan.*``)."""

    __tablename__ = "plans"

    plan_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    escalation_id: Mapped[str] = mapped_column(String(64), unique=True)
    subject_type: Mapped[str] = mapped_column(String(16))
    subject_key: Mapped[str] = mapped_column(String)
    rule_id: Mapped[str | None] = mapped_column(String)
    radius_m: Mapped[int] = mapped_column(Integer, server_default="0")
    status: Mapped[str] = mapped_column(String(16), server_default="draft")
    district_code: Mapped[str] = mapped_column(String(32), server_default=UNASSIGNED)
    ward_code: Mapped[str] = mapped_column(String(32), server_default=UNASSIGNED)
    # S, A, R, A
    scanning: Mapped[dict[str, Any]]
    problem_statement: Mapped[str | None] = mapped_column(Text)
    analysis: Mapped[str | None] = mapped_column(Text)
    responses: Mapped[list[dict[str, Any]]]
    success_measure: Mapped[str | None] = mapped_column(Text)
    evaluation_due: Mapped[str | None] = mapped_column(String(10))  # an ISO date
    # Handling
    opened_at: Mapped[datetime]
    opened_by: Mapped[str] = mapped_column(String(200))
    updated_at: Mapped[datetime]
    submitted_at: Mapped[datetime | None]
    submitted_by: Mapped[str | None] = mapped_column(String(200))
    signed_off_at: Mapped[datetime | None]
    signed_off_by: Mapped[str | None] = mapped_column(String(200))
    review_due_at: Mapped[datetime | None]
    closed_at: Mapped[datetime | None]
    closed_by: Mapped[str | None] = mapped_column(String(200))
    outcome: Mapped[str | None] = mapped_column(String(16))
    evaluation: Mapped[str | None] = mapped_column(Text)
    incidents_before: Mapped[int | None] = mapped_column(Integer)
    incidents_after: Mapped[int | None] = mapped_column(Integer)
    before_after: Mapped[dict[str, Any] | None] = mapped_column(JsonType)

    __table_args__ = (
        Index("ix_plans_status_opened", "status", "opened_at", "plan_id"),
        Index("ix_plans_district_opened", "district_code", "opened_at"),
        Index("ix_plans_opened", "opened_at", "plan_id"),
    )


metadata = Base.metadata

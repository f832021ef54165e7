"""What the API stores: the current assessment per incident and every escalation raised.

Both tables keep the full message as ``payload`` (what the API serves back) next to the
columns it filters and sorts on.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import JSON, Boolean, DateTime, Dialect, Index, String, TypeDecorator
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

#: JSON everywhere, JSONB on PostgreSQL (indexable, compact).
JsonType = JSON().with_variant(JSONB(), "postgresql")


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

    __table_args__ = (
        Index("ix_assessments_victim_occurred", "victim_key", "occurred_at"),
        Index("ix_assessments_location_occurred", "location_key", "occurred_at"),
        Index("ix_assessments_occurred", "occurred_at"),
    )


class Escalation(Base):
    """One raised escalation (``asvat.escalations.v1``), stored once per ``escalation_id``."""

    __tablename__ = "escalations"

    escalation_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    subject_type: Mapped[str] = mapped_column(String(16))
    subject_key: Mapped[str] = mapped_column(String)
    rule_id: Mapped[str] = mapped_column(String)
    incident_id: Mapped[str] = mapped_column(String)
    occurred_at: Mapped[datetime]
    raised_at: Mapped[datetime]
    received_at: Mapped[datetime]
    payload: Mapped[dict[str, Any]]

    __table_args__ = (
        # Newest first, optionally for one subject type: the control room's list.
        Index("ix_escalations_raised", "raised_at", "escalation_id"),
        Index("ix_escalations_type_raised", "subject_type", "raised_at", "escalation_id"),
        Index("ix_escalations_subject", "subject_type", "subject_key"),
    )


metadata = Base.metadata

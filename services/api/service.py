"""Database functions of the API: store what the worker publishes, read it back.

Write functions never commit: the caller owns the transaction, so the consumer can write a
whole batch in one transaction and commit Kafka offsets only after it.
Payloads are expected to be schema-valid (``schemas/assessment.v1.json``,
``schemas/escalation.v1.json``); a payload that cannot be turned into a row raises
:class:`PayloadError`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, cast

from sqlalchemy import Table, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from asvat.domain.timeutil import TimestampError, parse_timestamp
from services.api.models import Assessment, Escalation

SubjectType = Literal["victim", "location"]
MAX_LIST_LIMIT = 500
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class PayloadError(ValueError):
    """A payload that cannot be turned into a row; the message names the field at fault."""


def upsert_assessment(*, session: Session, payload: Mapping[str, Any]) -> None:
    """Make ``payload`` the current assessment of its incident (insert or replace)."""
    upsert_assessments(session=session, payloads=[payload])


def upsert_assessments(*, session: Session, payloads: Iterable[Mapping[str, Any]]) -> int:
    """Upsert many assessments in order: for a repeated incident_id the last one wins.

    Returns the number of distinct incidents written.
    """
    now = datetime.now(tz=UTC)
    latest: dict[str, dict[str, Any]] = {}
    for payload in payloads:
        row = assessment_row(payload, now=now)
        latest.pop(row["incident_id"], None)  # keep arrival order of the winners
        latest[row["incident_id"]] = row
    if not latest:
        return 0
    rows = list(latest.values())
    insert = _insert_for(session, Assessment)
    if insert is None:  # another dialect: portable, row by row
        for row in rows:
            session.merge(Assessment(**row))
        return len(rows)
    updated = {name: getattr(insert.excluded, name) for name in rows[0] if name != "incident_id"}
    stmt = insert.on_conflict_do_update(index_elements=["incident_id"], set_=updated)
    session.execute(stmt, rows)
    return len(rows)


def record_escalation(*, session: Session, payload: Mapping[str, Any]) -> bool:
    """Store an escalation; False when its escalation_id is already stored (a redelivery)."""
    return record_escalations(session=session, payloads=[payload]) == 1


def record_escalations(*, session: Session, payloads: Iterable[Mapping[str, Any]]) -> int:
    """Store escalations not yet seen (idempotent on escalation_id); returns how many were new."""
    now = datetime.now(tz=UTC)
    rows: dict[str, dict[str, Any]] = {}
    for payload in payloads:
        row = escalation_row(payload, received_at=now)
        rows.setdefault(row["escalation_id"], row)  # first delivery wins, like the table
    if not rows:
        return 0
    insert = _insert_for(session, Escalation)
    if insert is None:
        new = 0
        for row in rows.values():
            if session.get(Escalation, row["escalation_id"]) is None:
                session.add(Escalation(**row))
                new += 1
        session.flush()
        return new
    stmt = insert.on_conflict_do_nothing(index_elements=["escalation_id"]).returning(
        insert.table.c.escalation_id
    )
    inserted = session.execute(stmt, list(rows.values())).scalars().all()
    return len(inserted)


def list_escalations(
    *, session: Session, subject_type: SubjectType | None = None, limit: int = 100
) -> Sequence[Escalation]:
    """Escalations newest first (by raised_at), optionally of one subject type."""
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise ValueError(f"limit must be between 1 and {MAX_LIST_LIMIT}, got {limit}")
    query = select(Escalation)
    if subject_type is not None:
        query = query.where(Escalation.subject_type == subject_type)
    query = query.order_by(Escalation.raised_at.desc(), Escalation.escalation_id.desc())
    return session.scalars(query.limit(limit)).all()


def get_assessment(*, session: Session, incident_id: str) -> Assessment | None:
    """The current assessment of an incident, or None if none has been received."""
    return session.get(Assessment, incident_id, populate_existing=True)


def assessment_row(payload: Mapping[str, Any], *, now: datetime) -> dict[str, Any]:
    """Column values of an ``asvat.assessment.v1`` payload."""
    return {
        "incident_id": _text(payload, "incident_id"),
        "assessment_id": _text(payload, "assessment_id"),
        "in_scope": _field(payload, "in_scope", bool),
        "classification": _text(payload, "classification"),
        "occurred_at": _timestamp(payload, "occurred_at"),
        "victim_key": _optional_text(payload, "victim_key"),
        "location_key": _optional_text(payload, "location_key"),
        "rules_met": list(_field(payload, "rules_met", list)),
        "payload": dict(payload),
        "updated_at": now,
    }


def escalation_row(payload: Mapping[str, Any], *, received_at: datetime) -> dict[str, Any]:
    """Column values of an ``asvat.escalation.v1`` payload."""
    return {
        "escalation_id": _text(payload, "escalation_id"),
        "subject_type": _text(payload, "subject_type"),
        "subject_key": _text(payload, "subject_key"),
        "rule_id": _text(payload, "rule_id"),
        "incident_id": _text(payload, "incident_id"),
        "occurred_at": _timestamp(payload, "occurred_at"),
        "raised_at": _timestamp(payload, "raised_at"),
        "received_at": received_at,
        "payload": dict(payload),
    }


def _insert_for(
    session: Session, model: type[Assessment | Escalation]
) -> postgresql.Insert | sqlite.Insert | None:
    """The dialect's INSERT with ON CONFLICT support, or None where there is none."""
    table = cast(Table, model.__table__)
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    return None


def _field(payload: Mapping[str, Any], name: str, kind: type) -> Any:
    if name not in payload:
        raise PayloadError(f"{name}: missing")
    value = payload[name]
    if not isinstance(value, kind):
        raise PayloadError(f"{name}: expected {kind.__name__}, got {value!r}")
    return value


def _text(payload: Mapping[str, Any], name: str) -> str:
    value: str = _field(payload, name, str)
    if not value:
        raise PayloadError(f"{name}: must not be empty")
    return value


def _optional_text(payload: Mapping[str, Any], name: str) -> str | None:
    if payload.get(name) is None:
        if name not in payload:
            raise PayloadError(f"{name}: missing (null is allowed, absent is not)")
        return None
    return _text(payload, name)


def _timestamp(payload: Mapping[str, Any], name: str) -> datetime:
    text = _text(payload, name)
    try:
        return _EPOCH + timedelta(microseconds=parse_timestamp(text))
    except (TimestampError, OverflowError) as exc:
        raise PayloadError(f"{name}: {exc}") from exc

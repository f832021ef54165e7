"""Database functions of the API: store what the worker publishes, read it back.

Write functions never commit: the caller owns the transaction, so the consumer can write a
whole batch in one transaction and commit Kafka offsets only after it.
Payloads are expected to be schema-valid (``schemas/assessment.v1.json``,
``schemas/escalation.v1.json``); a payload that cannot be turned into a row raises
:class:`PayloadError`. Fields that later versions of the payloads add (an escalation's
``level``, ``risk_score``, ``reasons``, ``tasking``; an assessment's ``risk_level``,
``case_review_threshold_met``, ``integrity_flags``) are stored when present.

Every change to an escalation appends a row to ``escalation_events`` (the live alert
feed). Its ``seq`` must grow in commit order, so that a reader that has seen ``seq`` n
never later finds a smaller one: every transaction that appends takes the feed lock
(:func:`lock_feed`) before anything else, on PostgreSQL a transaction-level advisory
lock; SQLite has one writer at a time anyway.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from functools import cache, lru_cache
from typing import Any, Literal, cast

from sqlalchemy import (
    ColumnElement,
    Float,
    Integer,
    Table,
    and_,
    bindparam,
    delete,
    func,
    or_,
    select,
    text,
    tuple_,
)
from sqlalchemy.orm import Session

from asvat.domain.timeutil import TimestampError, parse_duration, parse_timestamp
from services.api import grid, statistics
from services.api.areas import NOWHERE, AreaIndex, Located
from services.api.db import insert_on_conflict
from services.api.models import (
    Assessment,
    AuditEntry,
    Escalation,
    EscalationEvent,
    Review,
)

SubjectType = Literal["victim", "location"]
Level = Literal["standard", "medium", "high"]
Status = Literal["open", "acknowledged", "closed"]
LEVELS: tuple[str, ...] = ("standard", "medium", "high")
MAX_LIST_LIMIT = 500
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: pg_advisory_xact_lock key of the alert feed ("asvat-fe" in ASCII).
FEED_LOCK_KEY = 0x61737661742D6665


class PayloadError(ValueError):
    """A payload that cannot be turned into a row; the message names the field at fault."""


# -- the feed ---------------------------------------------------------------------------


def lock_feed(session: Session) -> None:
    """Serialise appends to ``escalation_events`` (call first in the transaction)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": FEED_LOCK_KEY})


def append_event(
    session: Session,
    row: Escalation,
    *,
    kind: str,
    at: datetime,
    event_key: str | None = None,
    actor: str | None = None,
    detail: Mapping[str, Any] | None = None,
    flush: bool = True,
) -> EscalationEvent:
    """Append a change of ``row`` to the feed (the caller holds :func:`lock_feed`).

    ``flush=False`` leaves the insert (so ``seq`` and ``row.last_seq``) to one flush for a
    whole batch: see :func:`_number_events`. The event's data is the escalation's summary
    then; its ``event_id`` is filled in when the event is read (``alerts.message``).
    """
    row.last_event = kind
    row.updated_at = at
    event = EscalationEvent(
        event_key=event_key or _digest("api-event", row.escalation_id, kind, at.isoformat()),
        escalation_id=row.escalation_id,
        kind=kind,
        at=at,
        actor=actor,
        subject_type=row.subject_type,
        level=row.level,
        status=row.status,
        district_code=row.district_code,
        ward_code=row.ward_code,
        data={"escalation": summary(row), "detail": dict(detail or {})},
    )
    session.add(event)
    if flush:
        session.flush()  # assigns seq
        row.last_seq = event.seq
    return event


def _number_events(
    session: Session, appended: Sequence[tuple[Escalation, EscalationEvent]]
) -> None:
    """Insert a batch of events in one flush, in the order appended (so ``seq`` follows
    it), then note each escalation's last event id."""
    if not appended:
        return
    session.flush()
    for row, event in appended:
        row.last_seq = max(row.last_seq or 0, event.seq)


def audit(
    session: Session,
    *,
    actor: str,
    action: str,
    token_id: str | None = None,
    role: str | None = None,
    escalation_id: str | None = None,
    subject_type: str | None = None,
    subject_key: str | None = None,
    detail: Mapping[str, Any] | None = None,
    client_ip: str | None = None,
    user_agent: str | None = None,
    at: datetime | None = None,
    flush: bool = True,
) -> AuditEntry:
    """Append an entry to the audit trail (the database refuses to change it later).
    ``flush=False`` leaves the insert to the transaction's next flush."""
    entry = AuditEntry(
        at=at or datetime.now(tz=UTC),
        actor=actor,
        token_id=token_id,
        role=role,
        action=action,
        escalation_id=escalation_id,
        subject_type=subject_type,
        subject_key=subject_key,
        detail=dict(detail or {}),
        client_ip=client_ip,
        user_agent=(user_agent or None) and user_agent[:400],
    )
    session.add(entry)
    if flush:
        session.flush()
    return entry


# -- assessments ------------------------------------------------------------------------


def upsert_assessment(
    *, session: Session, payload: Mapping[str, Any], areas: AreaIndex | None = None
) -> None:
    """Make ``payload`` the current assessment of its incident (insert or replace)."""
    upsert_assessments(session=session, payloads=[payload], areas=areas)


def upsert_assessments(
    *,
    session: Session,
    payloads: Iterable[Mapping[str, Any]],
    areas: AreaIndex | None = None,
    deltas: statistics.Deltas | None = None,
) -> int:
    """Upsert many assessments in order: for a repeated incident_id the last one wins.

    Each is placed in its district and ward (``areas``; default: the shipped boundaries),
    the area counts move by the difference between the old and the new row, and victim
    escalations that were waiting for this incident's place get it. Returns the number of
    distinct incidents written. ``deltas``: add the area counts' changes there, for the
    caller to write (one write per transaction); by default they are written here.
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
    index = areas or statistics.default_areas()
    for row, where in zip(rows, index.locate_keys([r["location_key"] for r in rows]), strict=True):
        row.update(statistics.place_columns(where))
    previous = {
        r.incident_id: statistics.AssessmentFacts.of_row(r)
        for r in session.execute(_PREVIOUS_FACTS, {"ids": list(latest)})
    }
    changes = statistics.Deltas() if deltas is None else deltas
    for row in rows:
        old = previous.get(row["incident_id"])
        new = statistics.AssessmentFacts.of_dict(row)
        if new == old:
            continue  # re-issued with the same class, scope, repeat and place: no change
        if old is not None:
            changes.add_assessment(old, -1)
        changes.add_assessment(new, +1)
    upsert = _assessment_upsert(session.get_bind().dialect.name, tuple(rows[0]))
    if upsert is None:  # another dialect: portable, row by row
        for row in rows:
            session.merge(Assessment(**row))
    else:
        session.execute(upsert, rows)
    _place_waiting_escalations(session, rows, changes)
    if deltas is None:
        changes.write(session)
    return len(rows)


#: The area-count facts of the stored assessments of some incidents (``ids``).
_PREVIOUS_FACTS = select(Assessment.incident_id, *statistics.FACT_COLUMNS).where(
    Assessment.incident_id.in_(bindparam("ids", expanding=True))
)


@lru_cache(maxsize=8)
def _assessment_upsert(dialect: str, columns: tuple[str, ...]) -> Any:
    """INSERT … ON CONFLICT (incident_id) DO UPDATE of ``columns``, or None for a dialect
    without it. Built once: building it (its ``excluded`` columns above all) cost more per
    batch than running it, when the live feed comes in batches of a few messages."""
    insert = insert_on_conflict(dialect, cast(Table, Assessment.__table__))
    if insert is None:
        return None
    updated = {name: getattr(insert.excluded, name) for name in columns if name != "incident_id"}
    return insert.on_conflict_do_update(index_elements=["incident_id"], set_=updated)


def _place_waiting_escalations(
    session: Session, rows: Sequence[Mapping[str, Any]], deltas: statistics.Deltas
) -> None:
    """Victim escalations raised before their incident's assessment arrived get its place."""
    by_incident = {r["incident_id"]: r for r in rows if r["location_key"] is not None}
    if not by_incident:
        return
    # The subject type is tested here, not in the query: with ``subject_type = 'victim'``
    # in it SQLite chose the (subject_type, subject_key) index and read half the table,
    # 19 ms a batch at 70,000 escalations, instead of the few rows of these incidents.
    waiting = [
        escalation
        for escalation in session.scalars(_UNPLACED_ESCALATIONS, {"ids": list(by_incident)})
        if escalation.subject_type == "victim"
    ]
    if not waiting:
        return
    lock_feed(session)
    now = datetime.now(tz=UTC)
    appended: list[tuple[Escalation, EscalationEvent]] = []
    for escalation in waiting:
        row = by_incident[escalation.incident_id]
        deltas.add_escalation(
            escalation.raised_at, escalation.district_code, escalation.ward_code, -1
        )
        escalation.location_key = row["location_key"]
        escalation.lat, escalation.lon = row["lat"], row["lon"]
        escalation.district_code, escalation.ward_code = row["district_code"], row["ward_code"]
        deltas.add_escalation(
            escalation.raised_at, escalation.district_code, escalation.ward_code, +1
        )
        event = append_event(
            session,
            escalation,
            kind="located",
            at=now,
            event_key=_digest("located", escalation.escalation_id, row["location_key"]),
            flush=False,
        )
        appended.append((escalation, event))
    _number_events(session, appended)


#: Escalations of some incidents (``ids``) that have no place yet.
_UNPLACED_ESCALATIONS = select(Escalation).where(
    Escalation.incident_id.in_(bindparam("ids", expanding=True)),
    Escalation.location_key.is_(None),
)


def assessment_row(payload: Mapping[str, Any], *, now: datetime) -> dict[str, Any]:
    """Column values of an ``asvat.assessment.v1`` payload (place columns excluded)."""
    flags = payload.get("integrity_flags")
    case_review = payload.get("case_review_threshold_met")
    score = payload.get("risk_score")
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
        "risk_level": _level(payload.get("risk_level"), "risk_level"),
        "risk_score": score if isinstance(score, int) and not isinstance(score, bool) else None,
        "case_review_threshold_met": case_review if isinstance(case_review, bool) else None,
        "integrity_flag_count": len(flags) if isinstance(flags, list) else 0,
    }


def get_assessment(*, session: Session, incident_id: str) -> Assessment | None:
    """The current assessment of an incident, or None if none has been received."""
    return session.get(Assessment, incident_id, populate_existing=True)


# -- escalations ------------------------------------------------------------------------


def record_escalation(
    *, session: Session, payload: Mapping[str, Any], areas: AreaIndex | None = None
) -> bool:
    """Store an escalation message; False when it was stored before (a redelivery)."""
    return record_escalations(session=session, payloads=[payload], areas=areas) == 1


def record_escalations(
    *,
    session: Session,
    payloads: Iterable[Mapping[str, Any]],
    areas: AreaIndex | None = None,
    deltas: statistics.Deltas | None = None,
) -> int:
    """Apply escalation messages not seen before, in order; returns how many were new.

    A message is identified by its ``event_id`` when it has one, else by escalation id,
    event and level, so a redelivery changes nothing. ``raised`` creates the escalation
    (the first delivery wins); ``upgraded`` raises its level; ``closed`` closes it.
    ``deltas``: as for :func:`upsert_assessments`.
    """
    now = datetime.now(tz=UTC)
    parsed = [_escalation_message(payload) for payload in payloads]
    if not parsed:
        return 0
    lock_feed(session)
    seen = set(session.scalars(_SEEN_EVENT_KEYS, {"keys": list({m["event_key"] for m in parsed})}))
    index = areas or statistics.default_areas()
    changes = statistics.Deltas() if deltas is None else deltas
    # One query each for the escalations already stored and the incidents' places.
    ids = list({m["escalation_id"] for m in parsed})
    stored = {e.escalation_id: e for e in session.scalars(_STORED_ESCALATIONS, {"ids": ids})}
    incidents = list(
        {
            m["payload"].get("incident_id")
            for m in parsed
            if m["payload"].get("subject_type") == "victim"
            and isinstance(m["payload"].get("incident_id"), str)
        }
    )
    places: dict[str, str | None] = {}
    if incidents:
        found = session.execute(_INCIDENT_PLACES, {"ids": incidents}).all()
        places = {incident: key for incident, key in found}
    # Where each escalation not yet stored lies, found in one look-up for the batch (one
    # per escalation cost ~0.15 ms each in the area index).
    new_keys = {
        key
        for m in parsed
        if m["escalation_id"] not in stored
        and (key := _escalation_location_key(m["payload"], places)) is not None
    }
    located = dict(zip(new_keys, index.locate_keys(list(new_keys)), strict=True))
    new = 0
    appended: list[tuple[Escalation, EscalationEvent]] = []
    to_plan: list[Escalation] = []  # location escalations: a draft problem-solving plan each
    schedules: dict[str, list[Review]] = {}  # escalation_id -> its reviews from now on
    for message in parsed:
        if message["event_key"] in seen:
            continue
        seen.add(message["event_key"])
        row = stored.get(message["escalation_id"])
        if row is None:
            if message["kind"] == "closed":
                continue  # nothing to close here (it was never raised to this database)
            row = _new_escalation(message, now, located, places)
            stored[row.escalation_id] = row
            session.add(row)
            changes.add_escalation(row.raised_at, row.district_code, row.ward_code, +1)
            kind = "raised"
            if row.subject_type == "location":
                to_plan.append(row)
        else:
            kind = _apply_change(row, message)
        schedule = _review_schedule(message["payload"])
        if schedule is not None:
            schedules.pop(row.escalation_id, None)  # the latest message's schedule wins
            schedules[row.escalation_id] = schedule
        event = append_event(
            session, row, kind=kind, at=now, event_key=message["event_key"], flush=False
        )
        appended.append((row, event))
        new += 1
    _number_events(session, appended)
    _replace_reviews(session, schedules)
    if to_plan:
        from services.api import plans  # plans reads this module: imported when needed

        plans.open_for_escalations(session, to_plan)
    if deltas is None:
        changes.write(session)
    return new


# The batch's look-ups, built once (see ``_assessment_upsert``).
_SEEN_EVENT_KEYS = select(EscalationEvent.event_key).where(
    EscalationEvent.event_key.in_(bindparam("keys", expanding=True))
)
_STORED_ESCALATIONS = select(Escalation).where(
    Escalation.escalation_id.in_(bindparam("ids", expanding=True))
)
_INCIDENT_PLACES = select(Assessment.incident_id, Assessment.location_key).where(
    Assessment.incident_id.in_(bindparam("ids", expanding=True))
)
_DELETE_REVIEWS = delete(Review).where(Review.escalation_id.in_(bindparam("ids", expanding=True)))


def _escalation_message(payload: Mapping[str, Any]) -> dict[str, Any]:
    escalation_id = _text(payload, "escalation_id")
    kind = payload.get("event", "raised")
    if kind not in ("raised", "upgraded", "closed"):
        raise PayloadError(f"event: expected raised, upgraded or closed, got {kind!r}")
    level = _level(payload.get("level"), "level")
    event_id = payload.get("event_id")
    key = (
        event_id
        if isinstance(event_id, str) and 0 < len(event_id) <= 64
        else _digest("escalation-message", escalation_id, kind, level or "")
    )
    return {
        "escalation_id": escalation_id,
        "kind": kind,
        "level": level,
        "event_key": key,
        "payload": dict(payload),
    }


def _escalation_location_key(
    payload: Mapping[str, Any], places: Mapping[str, str | None]
) -> str | None:
    """A location escalation's subject, or the place of a victim escalation's incident."""
    if payload.get("subject_type") == "location":
        subject_key = payload.get("subject_key")
        return subject_key if isinstance(subject_key, str) and subject_key else None
    incident_id = payload.get("incident_id")
    return places.get(incident_id) if isinstance(incident_id, str) else None


def _new_escalation(
    message: Mapping[str, Any],
    now: datetime,
    located: Mapping[str, Located],
    places: Mapping[str, str | None],
) -> Escalation:
    payload = message["payload"]
    subject_type = _text(payload, "subject_type")
    subject_key = _text(payload, "subject_key")
    incident_id = _text(payload, "incident_id")
    raised_at = _timestamp(payload, "raised_at" if "raised_at" in payload else "at")
    location_key = _escalation_location_key(payload, places)
    where = located.get(location_key, NOWHERE) if location_key else NOWHERE
    level = message["level"]
    score = payload.get("risk_score")
    rule = payload.get("rule_id")
    return Escalation(
        escalation_id=message["escalation_id"],
        subject_type=subject_type,
        subject_key=subject_key,
        rule_id=rule if isinstance(rule, str) and rule else None,
        incident_id=incident_id,
        occurred_at=_timestamp(payload, "occurred_at"),
        raised_at=raised_at,
        received_at=now,
        payload=dict(payload),
        updated_at=now,
        last_event="raised",
        level=level,
        level_rank=LEVELS.index(level) if level else -1,
        risk_score=score if isinstance(score, int) and not isinstance(score, bool) else None,
        episode=payload.get("episode") if isinstance(payload.get("episode"), int) else None,
        status="open",
        location_key=location_key,
        lat=where.lat,
        lon=where.lon,
        district_code=where.district_code,
        ward_code=where.ward_code,
        last_seq=0,
    )


def _apply_change(row: Escalation, message: Mapping[str, Any]) -> str:
    """Apply a later message about a stored escalation; the event kind to record."""
    payload = message["payload"]
    kind = str(message["kind"])
    if kind == "closed":
        if row.status != "closed":
            row.status = "closed"
            at = payload.get("at")
            row.closed_at = _timestamp(payload, "at") if isinstance(at, str) else None
            row.closed_by = row.closed_by or "repeat detector"
        return "closed"
    level = message["level"]
    if level is not None and LEVELS.index(level) > row.level_rank:
        row.level, row.level_rank = level, LEVELS.index(level)
    score = payload.get("risk_score")
    if isinstance(score, int) and not isinstance(score, bool):
        row.risk_score = score
    incident = payload.get("incident_id")
    if isinstance(incident, str) and incident:
        row.incident_id = incident
        row.occurred_at = _timestamp(payload, "occurred_at")
    row.payload = dict(payload)
    return kind


def _review_schedule(payload: Mapping[str, Any]) -> list[Review] | None:
    """The review schedule a message's tasking carries (None: it carries none, and the
    escalation keeps its schedule). Raises :class:`PayloadError` for a malformed one."""
    tasking = payload.get("tasking")
    reviews = tasking.get("reviews") if isinstance(tasking, dict) else None
    if not isinstance(reviews, list):
        return None
    schedule: list[Review] = []
    for item in reviews:
        if not isinstance(item, dict):
            continue
        try:
            every = parse_duration(str(item["every"])) // 1_000_000
            due = _EPOCH + timedelta(microseconds=parse_timestamp(str(item["first_due_at"])))
        except (KeyError, ValueError) as exc:
            raise PayloadError(f"tasking.reviews: {exc}") from exc
        schedule.append(
            Review(
                rank=str(item.get("rank", "supervisor"))[:40], every_seconds=every, due_at=due
            )
        )
    return schedule


def _replace_reviews(session: Session, schedules: Mapping[str, list[Review]]) -> None:
    """Each escalation's schedule in ``schedules`` replaces the one stored: one DELETE and
    one flush for a whole batch (a DELETE per message flushed the batch's rows each time)."""
    if not schedules:
        return
    session.execute(_DELETE_REVIEWS, {"ids": list(schedules)})
    for escalation_id, schedule in schedules.items():
        for review in schedule:
            review.escalation_id = escalation_id
            session.add(review)


def get_escalation(*, session: Session, escalation_id: str) -> Escalation | None:
    return session.get(Escalation, escalation_id, populate_existing=True)


# -- listing ----------------------------------------------------------------------------

SortKey = Literal["raised_at", "-raised_at", "updated_at", "-updated_at", "level", "-level"]


class CursorError(ValueError):
    """A pagination cursor that this API did not make (or for another sort)."""


def _sort_columns(sort: str) -> list[Any]:
    field = sort.lstrip("-")
    if field == "level":
        return [Escalation.level_rank, Escalation.raised_at, Escalation.escalation_id]
    if field == "updated_at":
        return [Escalation.updated_at, Escalation.escalation_id]
    return [Escalation.raised_at, Escalation.escalation_id]


def list_escalations(
    *,
    session: Session,
    subject_type: SubjectType | None = None,
    limit: int = 100,
    levels: Sequence[str] = (),
    statuses: Sequence[str] = (),
    district: str | None = None,
    ward: str | None = None,
    rule_id: str | None = None,
    raised_from: datetime | None = None,
    raised_to: datetime | None = None,
    sort: str = "-raised_at",
    after: Sequence[Any] | None = None,
) -> Sequence[Any]:
    """Escalations filtered and sorted (default newest raised first), ``limit`` at most,
    starting after the row whose sort values are ``after`` (keyset pagination): rows with
    the columns of :class:`Escalation` as attributes."""
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise ValueError(f"limit must be between 1 and {MAX_LIST_LIMIT}, got {limit}")
    columns = _sort_columns(sort)
    descending = sort.startswith("-")
    # Plain rows with the escalation's columns (attribute access as on the model): a page
    # of ORM objects costs more than the query itself.
    query = select(*Escalation.__table__.c)
    if subject_type is not None:
        query = query.where(Escalation.subject_type == subject_type)
    if levels:
        query = query.where(Escalation.level_rank.in_([LEVELS.index(v) for v in levels]))
    if statuses:
        query = query.where(Escalation.status.in_(list(statuses)))
    if district is not None:
        query = query.where(Escalation.district_code == district)
    if ward is not None:
        query = query.where(Escalation.ward_code == ward)
    if rule_id is not None:
        query = query.where(Escalation.rule_id == rule_id)
    if raised_from is not None:
        query = query.where(Escalation.raised_at >= raised_from)
    if raised_to is not None:
        query = query.where(Escalation.raised_at < raised_to)
    if after is not None:
        if len(after) != len(columns):
            raise CursorError("the cursor belongs to another sort order")
        position = tuple_(*columns)
        values = tuple_(*after)
        query = query.where(position < values if descending else position > values)
    order = [c.desc() if descending else c.asc() for c in columns]
    found: Sequence[Any] = session.execute(query.order_by(*order).limit(limit)).all()
    return found


def sort_values(row: Any, sort: str) -> list[Any]:
    """The keyset position of ``row`` under ``sort`` (what a cursor encodes)."""
    field = sort.lstrip("-")
    if field == "level":
        return [row.level_rank, row.raised_at, row.escalation_id]
    if field == "updated_at":
        return [row.updated_at, row.escalation_id]
    return [row.raised_at, row.escalation_id]


def summary(row: Any, include_payload: bool = True) -> dict[str, Any]:
    """An escalation as the API shows it: handling state, place, and why (and the latest
    message as received, unless ``include_payload`` is false)."""
    payload = row.payload or {}
    tasking = payload.get("tasking")
    tasking = tasking if isinstance(tasking, dict) else {}
    actions = payload.get("actions")
    if not isinstance(actions, list):
        actions = tasking.get("actions")
        actions = actions if isinstance(actions, list) else []
    contributing = payload.get("contributing_incident_ids")
    why = reasons(row)
    if not isinstance(contributing, list):  # escalations by risk level: from their reasons
        contributing = sorted(
            {str(i) for r in why for i in (r.get("incident_ids") or []) if isinstance(i, str)}
        )
    return {
        "escalation_id": row.escalation_id,
        "subject_type": row.subject_type,
        "subject_key": row.subject_key,
        "rule_id": row.rule_id,
        "incident_id": row.incident_id,
        "contributing_incident_ids": list(contributing),
        "level": row.level,
        "risk_score": row.risk_score,
        "episode": row.episode,
        "status": row.status,
        "last_event": row.last_event,
        "event_id": row.last_seq,
        "occurred_at": _iso(row.occurred_at),
        "raised_at": _iso(row.raised_at),
        "updated_at": _iso(row.updated_at),
        "acknowledged_at": _iso(row.acknowledged_at),
        "acknowledged_by": row.acknowledged_by,
        "assignee_type": row.assignee_type,
        "assignee": row.assignee,
        "closed_at": _iso(row.closed_at),
        "closed_by": row.closed_by,
        "outcome": row.outcome,
        "location_key": row.location_key,
        "lat": row.lat,
        "lon": row.lon,
        "district": row.district_code,
        "ward": row.ward_code,
        "reasons": why,
        "actions": [a for a in actions if isinstance(a, dict)],
        **({"payload": payload} if include_payload else {}),
    }


def reasons(row: Any) -> list[dict[str, Any]]:
    """Why the escalation was raised: the message's reasons, or its rule and incidents."""
    given = (row.payload or {}).get("reasons")
    if isinstance(given, list) and given:
        return [r for r in given if isinstance(r, dict)]
    contributing = (row.payload or {}).get("contributing_incident_ids") or []
    if row.rule_id is None:
        return []
    noun = "victim" if row.subject_type == "victim" else "location"
    return [
        {
            "factor": "rule",
            "rule_id": row.rule_id,
            "detail": f"the {noun} met rule {row.rule_id} with {len(contributing)} incidents",
            "incident_ids": list(contributing),
        }
    ]


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def escalation_events(*, session: Session, escalation_id: str) -> Sequence[EscalationEvent]:
    return session.scalars(
        select(EscalationEvent)
        .where(EscalationEvent.escalation_id == escalation_id)
        .order_by(EscalationEvent.seq)
    ).all()


def audit_trail(
    *, session: Session, escalation_id: str | None = None, limit: int = 500
) -> Sequence[AuditEntry]:
    query = select(AuditEntry)
    if escalation_id is not None:
        query = query.where(AuditEntry.escalation_id == escalation_id)
    return session.scalars(query.order_by(AuditEntry.id.desc()).limit(limit)).all()


def reviews_of(*, session: Session, escalation_id: str) -> Sequence[Review]:
    return session.scalars(
        select(Review).where(Review.escalation_id == escalation_id).order_by(Review.due_at)
    ).all()


# -- subjects ---------------------------------------------------------------------------


def incidents_of_victim(
    *, session: Session, victim_key: str, limit: int = 500
) -> Sequence[Assessment]:
    """A victim's incidents, newest first."""
    return session.scalars(
        select(Assessment)
        .where(Assessment.victim_key == victim_key)
        .order_by(Assessment.occurred_at.desc(), Assessment.incident_id)
        .limit(limit)
    ).all()


def incidents_at_location(
    *, session: Session, location_key: str, radius_m: int = 0, limit: int = 500
) -> Sequence[Assessment]:
    """Incidents at a place, newest first: the same key, or (``radius_m`` > 0, grid keys
    only) any point within ``radius_m`` metres."""
    at_place, params = at_location(location_key, radius_m)
    return session.scalars(
        select(Assessment)
        .where(at_place)
        .order_by(Assessment.occurred_at.desc(), Assessment.incident_id)
        .limit(limit),
        params,
    ).all()


def at_location(location_key: str, radius_m: int) -> tuple[ColumnElement[bool], dict[str, Any]]:
    """Assessments at a place: the same key, or (``radius_m`` > 0, grid keys only) any
    point within ``radius_m`` metres (:func:`within_radius`); a condition and the
    parameters to execute it with."""
    same = Assessment.location_key == location_key
    point = statistics.grid_point(location_key)
    if radius_m > 0 and point is not None:
        near, params = within_radius(*point, radius_m)
        return or_(same, near), params
    return same, {}


def within_radius(
    easting: int, northing: int, radius_m: int
) -> tuple[ColumnElement[bool], dict[str, Any]]:
    """Assessments whose point lies within ``radius_m`` metres of ``(easting, northing)``,
    the circle's edge included: a condition and the parameters to execute it with.

    The index entries read are those of the grid cells covering the circle (``grid_cell IN
    …``, by ``ix_assessments_cell_occurred``: :mod:`services.api.grid`), so their number
    follows the density around the point, not the size of the force: by the (easting,
    northing) index a scan read a north-south strip of the whole area, 2r wide. The square
    around the circle is tested in that index too (it holds the point), so only rows in
    the square are read (PostgreSQL: fetched from the heap; SQLite: looked up), then the
    distance exactly, in floating point: exact for whole metres (any two points of the
    grid), and never an integer overflow on PostgreSQL, whatever order the planner tests
    the conditions in. A radius too wide for a list of cells (over about 1.5 km) is
    scanned by the (easting, northing) index, as before.

    The condition is built once per number of cells, with named parameters: building it
    afresh for every scan (casts, a literal per cell) cost more than the database's part
    of the scan at 100,000 assessments, and an "expanding" IN rewrites the SQL at every
    execution. Its parameters are named ``near_…``: one such condition per statement."""
    params: dict[str, Any] = {
        "near_e": float(easting),
        "near_n": float(northing),
        "near_r2": float(radius_m) ** 2,
        "near_e_low": easting - radius_m,
        "near_e_high": easting + radius_m,
        "near_n_low": northing - radius_m,
        "near_n_high": northing + radius_m,
    }
    cells = grid.covering_cells(easting, northing, radius_m)
    if cells is None:
        return _near_by_strip(), params
    params |= {f"near_cell_{i}": cell for i, cell in enumerate(cells)}
    return _near_by_cells(len(cells)), params


def _in_square() -> list[ColumnElement[bool]]:
    return [
        Assessment.easting.between(
            bindparam("near_e_low", type_=Integer), bindparam("near_e_high", type_=Integer)
        ),
        Assessment.northing.between(
            bindparam("near_n_low", type_=Integer), bindparam("near_n_high", type_=Integer)
        ),
    ]


def _in_circle() -> ColumnElement[bool]:
    de = Assessment.easting.cast(Float) - bindparam("near_e", type_=Float)
    dn = Assessment.northing.cast(Float) - bindparam("near_n", type_=Float)
    inside: ColumnElement[bool] = de * de + dn * dn <= bindparam("near_r2", type_=Float)
    return inside


@lru_cache(maxsize=64)
def _near_by_cells(count: int) -> ColumnElement[bool]:
    cells = [bindparam(f"near_cell_{i}", type_=Integer) for i in range(count)]
    return and_(Assessment.grid_cell.in_(cells), *_in_square(), _in_circle())


@cache
def _near_by_strip() -> ColumnElement[bool]:
    return and_(*_in_square(), _in_circle())


def escalations_of_subject(
    *, session: Session, subject_type: str, subject_key: str
) -> Sequence[Escalation]:
    return session.scalars(
        select(Escalation)
        .where(Escalation.subject_type == subject_type, Escalation.subject_key == subject_key)
        .order_by(Escalation.raised_at.desc())
    ).all()


def incident_view(row: Assessment) -> dict[str, Any]:
    """An incident in a subject's history: pseudonymous keys and the assessment only."""
    payload = row.payload or {}
    return {
        "incident_id": row.incident_id,
        "occurred_at": _iso(row.occurred_at),
        "classification": row.classification,
        "asb_category": payload.get("asb_category"),
        "in_scope": row.in_scope,
        "rules_met": list(row.rules_met or []),
        "risk_level": row.risk_level,
        "risk_score": row.risk_score,
        "victim_key": row.victim_key,
        "location_key": row.location_key,
        "lat": row.lat,
        "lon": row.lon,
        "district": row.district_code,
        "ward": row.ward_code,
    }


def monthly_counts(rows: Iterable[Assessment]) -> list[dict[str, Any]]:
    """Incidents per month (UK local time), oldest first: the history's time series."""
    counts: dict[str, int] = {}
    for row in rows:
        month = statistics.periods(row.occurred_at)["month"]
        counts[month] = counts.get(month, 0) + 1
    return [{"month": m, "incidents": n} for m, n in sorted(counts.items())]


# -- queues -----------------------------------------------------------------------------


def case_reviews_due(*, session: Session, limit: int = 100) -> list[dict[str, Any]]:
    """Victims whose incidents meet the ASB Case Review threshold, most recent first."""
    latest = func.max(Assessment.occurred_at).label("latest")
    rows = session.execute(
        select(Assessment.victim_key, func.count().label("incidents"), latest)
        .where(Assessment.case_review_threshold_met.is_(True), Assessment.victim_key.is_not(None))
        .group_by(Assessment.victim_key)
        .order_by(latest.desc(), Assessment.victim_key)
        .limit(limit)
    ).all()
    return [
        {"victim_key": r.victim_key, "incidents_meeting": r.incidents, "latest": _iso(r.latest)}
        for r in rows
    ]


def integrity_flags(*, session: Session, limit: int = 100) -> Sequence[Assessment]:
    """Incidents finalised as ASB that may be unrecorded crimes, most recent first."""
    return session.scalars(
        select(Assessment)
        .where(Assessment.integrity_flag_count > 0)
        .order_by(Assessment.occurred_at.desc(), Assessment.incident_id)
        .limit(limit)
    ).all()


def reviews_due(
    *, session: Session, now: datetime, notice: timedelta, overdue_only: bool, limit: int = 100
) -> Sequence[tuple[Review, Escalation]]:
    """Reviews of escalations not closed that are due within ``notice`` (or overdue)."""
    bound = now if overdue_only else now + notice
    query = (
        select(Review, Escalation)
        .join(Escalation, Escalation.escalation_id == Review.escalation_id)
        .where(Escalation.status != "closed")
    )
    query = (
        query.where(Review.due_at < bound) if overdue_only else query.where(Review.due_at <= bound)
    )
    rows = session.execute(
        query.order_by(Review.due_at, Review.escalation_id, Review.rank).limit(limit)
    ).all()
    return [(r[0], r[1]) for r in rows]


# -- helpers ----------------------------------------------------------------------------


def _digest(*parts: str) -> str:
    return hashlib.sha256("|".join(parts).encode("utf-8")).hexdigest()


def _level(value: Any, name: str) -> str | None:
    if value is None:
        return None
    if value not in LEVELS:
        raise PayloadError(f"{name}: expected one of {', '.join(LEVELS)}, got {value!r}")
    return str(value)


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
    text_value = _text(payload, name)
    try:
        return _EPOCH + timedelta(microseconds=parse_timestamp(text_value))
    except (TimestampError, OverflowError) as exc:
        raise PayloadError(f"{name}: {exc}") from exc

"""Database functions for problem-solving plans; the rules are :mod:`asvat.domain.plans`.

A location escalation opens a draft plan as it is stored (:func:`open_for_escalations`,
called by ``service.record_escalations``); a victim escalation gets one on request. One
plan per escalation: its id is derived from the escalation's, so opening twice returns the
same plan. Scanning is pre-filled with the subject's incidents, their times and a map
extract (SVG in British National Grid metres). Every change appends to the audit trail
(actions ``plan.*``, with the subject, and the plan and escalation ids in the detail), in
the caller's transaction.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import cache
from typing import Any

from sqlalchemy import Row, Select, select
from sqlalchemy.orm import Session

from asvat.domain import plans as rules
from asvat.domain.plans import MapPoint, PlanRefused, before_after, map_extract_svg
from services.api import service, statistics
from services.api.models import Assessment, AuditEntry, Escalation, Plan

SYSTEM_ACTOR = "asvat"
EDITABLE = ("problem_statement", "analysis", "responses", "success_measure", "evaluation_due")
SCANNING_LIMIT = 200


class NotFound(LookupError):
    pass


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acts, for the audit trail (a token's principal, or the system)."""

    name: str
    role: str
    token_id: str | None = None
    client_ip: str | None = None
    user_agent: str | None = None


SYSTEM = Actor(SYSTEM_ACTOR, "system")


def plan_id_for(escalation_id: str) -> str:
    return hashlib.sha256(f"plan|{escalation_id}".encode()).hexdigest()


@cache
def _rule_radii() -> dict[str, float]:
    from asvat.domain.policy import default_policy

    policy = default_policy()
    return {r.id: r.radius_m or 0.0 for r in policy.location_rules} | {"*": policy.max_radius_m}


def radius_for(row: Escalation) -> int:
    """The radius of the location rule the escalation met: from its rule id (or the rules
    named in its reasons) in the shipped policy, a ``…-100m`` suffix, else the widest."""
    radii = _rule_radii()
    names = [row.rule_id] if row.rule_id else []
    names += [
        str(r.get("rule_id"))
        for r in (row.payload or {}).get("reasons") or []
        if isinstance(r, dict) and r.get("rule_id")
    ]
    for name in names:
        if name in radii:
            return int(radii[name])
        found = re.search(r"(\d+)m$", name)
        if found:
            return int(found.group(1))
    return int(radii["*"])


def _audit(
    session: Session,
    plan: Plan,
    actor: Actor,
    action: str,
    detail: Mapping[str, Any],
    *,
    flush: bool = True,
) -> AuditEntry:
    return service.audit(
        session,
        actor=actor.name,
        token_id=actor.token_id,
        role=actor.role,
        action=action,
        # Not under escalation_id: an escalation's own trail stays its handling; a plan's
        # entries are found by its subject and plan_id (:func:`audit_of`).
        subject_type=plan.subject_type,
        subject_key=plan.subject_key,
        detail={"plan_id": plan.plan_id, "escalation_id": plan.escalation_id, **detail},
        client_ip=actor.client_ip,
        user_agent=actor.user_agent,
        flush=flush,
    )


def subject_incidents(
    session: Session,
    plan: Plan | Escalation,
    radius_m: int,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    limit: int | None = None,
) -> Sequence[Assessment]:
    """In-scope incidents of the subject (the victim, or the place: same key or within
    ``radius_m``), newest first, optionally with ``occurred_at`` in ``[start, end)``."""
    query, params = _subject_query(select(Assessment), plan, radius_m, start, end, limit)
    return session.scalars(query, params).all()


#: What a plan's scanning shows of each incident: read as columns, not as whole rows with
#: their payloads (a draft plan is opened for every location escalation as it is stored,
#: and loading up to SCANNING_LIMIT payloads was more than half of what its scan cost).
_SCAN_COLUMNS = (
    Assessment.incident_id,
    Assessment.occurred_at,
    Assessment.classification,
    Assessment.payload["asb_category"].as_string().label("asb_category"),
    Assessment.location_key,
    Assessment.lat,
    Assessment.lon,
    Assessment.easting,
    Assessment.northing,
)


def _subject_query(
    query: Select[Any],
    plan: Plan | Escalation,
    radius_m: int,
    start: datetime | None,
    end: datetime | None,
    limit: int | None,
) -> tuple[Select[Any], dict[str, Any]]:
    """``query`` narrowed to :func:`subject_incidents`' rows, in its order; its parameters."""
    query = query.where(Assessment.in_scope.is_(True))
    params: dict[str, Any] = {}
    if plan.subject_type == "victim":
        query = query.where(Assessment.victim_key == plan.subject_key)
    else:
        at_place, params = service.at_location(plan.subject_key, radius_m)
        query = query.where(at_place)
    if start is not None:
        query = query.where(Assessment.occurred_at >= start)
    if end is not None:
        query = query.where(Assessment.occurred_at < end)
    query = query.order_by(Assessment.occurred_at.desc(), Assessment.incident_id)
    if limit is not None:
        query = query.limit(limit)
    return query, params


def scanning_for(session: Session, row: Escalation, radius_m: int) -> dict[str, Any]:
    """The scanning section pre-filled: the subject's incidents, their times, a map."""
    query, params = _subject_query(
        select(*_SCAN_COLUMNS), row, radius_m, None, None, SCANNING_LIMIT
    )
    found = session.execute(query, params).all()
    contributing = set(service.summary(row, include_payload=False)["contributing_incident_ids"])
    points = [
        MapPoint(a.easting, a.northing, f"{a.incident_id} {a.occurred_at:%Y-%m-%d %H:%M}")
        for a in found
        if a.easting is not None and a.northing is not None
    ]
    centre = statistics.grid_point(row.subject_key) if row.subject_type == "location" else None
    centre_f = (float(centre[0]), float(centre[1])) if centre else None
    return {
        "generated_at": _iso(datetime.now(tz=UTC)),
        "summary": _scan_summary(row, found, radius_m),
        "radius_m": radius_m,
        "incidents": [
            {
                "incident_id": a.incident_id,
                "occurred_at": _iso(a.occurred_at),
                "classification": a.classification,
                "asb_category": a.asb_category,
                "contributing": a.incident_id in contributing,
                "location_key": a.location_key,
                "lat": a.lat,
                "lon": a.lon,
            }
            for a in found
        ],
        "map_svg": map_extract_svg(
            points, centre=centre_f, radius_m=radius_m if centre_f else None
        ),
        "map_geojson": {
            "type": "FeatureCollection",
            "features": [
                {
                    "type": "Feature",
                    "geometry": {"type": "Point", "coordinates": [a.lon, a.lat]},
                    "properties": {
                        "incident_id": a.incident_id,
                        "occurred_at": _iso(a.occurred_at),
                    },
                }
                for a in found
                if a.lat is not None and a.lon is not None
            ],
        },
    }


def _scan_summary(row: Escalation, found: Sequence[Row[Any]], radius_m: int) -> str:
    where = (
        f"within {radius_m} m of {row.subject_key}"
        if row.subject_type == "location"
        else "reported by this victim"
    )
    if not found:
        return f"No in-scope incidents {where} are stored yet."
    first, last = found[-1].occurred_at, found[0].occurred_at
    return (
        f"{len(found)} in-scope incidents {where} between {first:%d %b %Y} and "
        f"{last:%d %b %Y}; escalated by "
        f"{'rule ' + row.rule_id if row.rule_id else 'risk level'} "
        f"({row.level or 'not rated'})."
    )


def open_for_escalation(
    session: Session, row: Escalation, actor: Actor = SYSTEM
) -> tuple[Plan, bool]:
    """The plan of escalation ``row``, opened as a draft if it has none; ``(plan, new)``."""
    plan_id = plan_id_for(row.escalation_id)
    existing = session.get(Plan, plan_id)
    if existing is not None:
        return existing, False
    plan = _draft(session, row, plan_id, actor, datetime.now(tz=UTC))
    session.add(plan)
    session.flush()
    _audit(session, plan, actor, "plan.open", {"status": "draft"})
    return plan, True


def open_for_escalations(
    session: Session, rows: Sequence[Escalation], actor: Actor = SYSTEM
) -> list[Plan]:
    """:func:`open_for_escalation` for a batch the consumer stores: the plans opened (an
    escalation that has one already is passed over). One query finds the plans already
    there and the new ones are written with the transaction's next flush: opening them
    one by one cost two flushes and a look-up each."""
    wanted = {plan_id_for(row.escalation_id): row for row in rows}
    if not wanted:
        return []
    existing = set(session.scalars(select(Plan.plan_id).where(Plan.plan_id.in_(list(wanted)))))
    now = datetime.now(tz=UTC)
    # Every scanning query first: a query flushes what is pending, and these add nothing.
    opened = [
        _draft(session, row, plan_id, actor, now)
        for plan_id, row in wanted.items()
        if plan_id not in existing
    ]
    session.add_all(opened)
    for plan in opened:
        _audit(session, plan, actor, "plan.open", {"status": "draft"}, flush=False)
    return opened


def _draft(session: Session, row: Escalation, plan_id: str, actor: Actor, now: datetime) -> Plan:
    radius = radius_for(row) if row.subject_type == "location" else 0
    return Plan(
        plan_id=plan_id,
        escalation_id=row.escalation_id,
        subject_type=row.subject_type,
        subject_key=row.subject_key,
        rule_id=row.rule_id,
        radius_m=radius,
        status="draft",
        district_code=row.district_code,
        ward_code=row.ward_code,
        scanning=scanning_for(session, row, radius),
        responses=[],
        opened_at=now,
        opened_by=actor.name,
        updated_at=now,
    )


def get(session: Session, plan_id: str, *, lock: bool = False) -> Plan:
    query = select(Plan).where(Plan.plan_id == plan_id)
    if lock:
        query = query.with_for_update()
    plan = session.scalars(query.execution_options(populate_existing=True)).first()
    if plan is None:
        raise NotFound(f"no plan {plan_id!r}")
    return plan


def content(plan: Plan) -> dict[str, Any]:
    """What the completeness rules read."""
    return {
        "status": plan.status,
        "problem_statement": plan.problem_statement,
        "analysis": plan.analysis,
        "responses": plan.responses,
        "success_measure": plan.success_measure,
        "evaluation_due": plan.evaluation_due,
        "review_due_at": plan.review_due_at,
    }


def update(session: Session, plan_id: str, actor: Actor, changes: Mapping[str, Any]) -> Plan:
    plan = get(session, plan_id, lock=True)
    changed = {k: v for k, v in changes.items() if k in EDITABLE and getattr(plan, k) != v}
    rules.transition(plan.status, "update", role=actor.role, plan=content(plan) | changed)
    for name, value in changed.items():
        setattr(plan, name, value)
    plan.updated_at = datetime.now(tz=UTC)
    _audit(session, plan, actor, "plan.update", {"changed": changed})
    return plan


def submit(session: Session, plan_id: str, actor: Actor) -> Plan:
    plan = get(session, plan_id, lock=True)
    plan.status = rules.transition(plan.status, "submit", role=actor.role, plan=content(plan))
    plan.submitted_at = plan.updated_at = datetime.now(tz=UTC)
    plan.submitted_by = actor.name
    _audit(session, plan, actor, "plan.submit", {"status": plan.status})
    return plan


def return_to_draft(session: Session, plan_id: str, actor: Actor, note: str | None) -> Plan:
    plan = get(session, plan_id, lock=True)
    plan.status = rules.transition(plan.status, "return", role=actor.role, plan=content(plan))
    plan.updated_at = datetime.now(tz=UTC)
    _audit(session, plan, actor, "plan.return", {"status": plan.status, "note": note})
    return plan


def sign_off(
    session: Session, plan_id: str, actor: Actor, *, next_review: date | None, note: str | None
) -> Plan:
    """A supervisor signs the plan off (or records a review of a signed-off plan); the next
    review is due on ``next_review`` (default: in 28 days)."""
    plan = get(session, plan_id, lock=True)
    first = plan.status == "submitted"
    plan.status = rules.transition(plan.status, "sign_off", role=actor.role, plan=content(plan))
    now = datetime.now(tz=UTC)
    if next_review is not None:
        plan.review_due_at = datetime.combine(next_review, time(23, 59, 59), tzinfo=UTC)
    else:
        plan.review_due_at = now + timedelta(days=rules.DEFAULT_REVIEW_DAYS)
    plan.updated_at = now
    if first:
        plan.signed_off_at, plan.signed_off_by = now, actor.name
    detail = {
        "status": plan.status,
        "review": not first,
        "next_review": _iso(plan.review_due_at),
        "note": note,
    }
    _audit(session, plan, actor, "plan.sign_off" if first else "plan.review", detail)
    return plan


def close(
    session: Session,
    plan_id: str,
    actor: Actor,
    *,
    outcome: str | None,
    evaluation: str | None,
    at: datetime | None = None,
) -> Plan:
    """Close with an outcome and evaluation; the before-and-after counts are added."""
    plan = get(session, plan_id, lock=True)
    plan.status = rules.transition(
        plan.status,
        "close",
        role=actor.role,
        plan=content(plan),
        outcome=outcome,
        evaluation=evaluation,
    )
    now = at or datetime.now(tz=UTC)
    counts = count_before_after(session, plan, closed_at=now)
    plan.closed_at, plan.closed_by, plan.updated_at = now, actor.name, now
    plan.outcome, plan.evaluation = outcome, evaluation
    plan.incidents_before, plan.incidents_after = counts.before, counts.after
    plan.before_after = counts.content()
    _audit(
        session,
        plan,
        actor,
        "plan.close",
        {"status": plan.status, "outcome": outcome, "before_after": plan.before_after},
    )
    return plan


def count_before_after(session: Session, plan: Plan, *, closed_at: datetime) -> rules.BeforeAfter:
    start, end = rules.comparison_window(plan.opened_at, closed_at)
    query, params = _subject_query(
        select(Assessment.occurred_at), plan, plan.radius_m, start, end, None
    )
    return before_after(
        session.scalars(query, params), opened_at=plan.opened_at, closed_at=closed_at
    )


def list_plans(
    session: Session,
    *,
    statuses: Sequence[str] = (),
    subject_type: str | None = None,
    district: str | None = None,
    ward: str | None = None,
    escalation_id: str | None = None,
    opened_from: datetime | None = None,
    opened_to: datetime | None = None,
    limit: int = 100,
    offset: int = 0,
) -> Sequence[Plan]:
    """Plans, newest opened first."""
    query = select(Plan)
    if statuses:
        query = query.where(Plan.status.in_(list(statuses)))
    if subject_type:
        query = query.where(Plan.subject_type == subject_type)
    if district:
        query = query.where(Plan.district_code == district)
    if ward:
        query = query.where(Plan.ward_code == ward)
    if escalation_id:
        query = query.where(Plan.escalation_id == escalation_id)
    if opened_from:
        query = query.where(Plan.opened_at >= opened_from)
    if opened_to:
        query = query.where(Plan.opened_at < opened_to)
    query = query.order_by(Plan.opened_at.desc(), Plan.plan_id).limit(limit).offset(offset)
    return session.scalars(query).all()


def report(session: Session, *, now: datetime, district: str | None = None) -> dict[str, Any]:
    """Plans missing detail, awaiting supervision, or overdue for evaluation."""
    query = select(Plan).where(Plan.status != "closed")
    if district:
        query = query.where(Plan.district_code == district)
    sections: dict[str, list[dict[str, Any]]] = {
        "missing_detail": [],
        "awaiting_supervision": [],
        "overdue_for_evaluation": [],
    }
    for plan in session.scalars(query.order_by(Plan.opened_at, Plan.plan_id)):
        for reason in rules.attention(content(plan), now=now):
            item = view(plan, include_scanning=False)
            if reason == "missing_detail":
                item["missing"] = rules.missing_fields(content(plan))
            sections[reason].append(item)
    return {
        "at": _iso(now),
        "counts": {k: len(v) for k, v in sections.items()},
        **sections,
    }


def audit_of(session: Session, plan: Plan) -> Sequence[AuditEntry]:
    return session.scalars(
        select(AuditEntry)
        .where(
            AuditEntry.subject_type == plan.subject_type,
            AuditEntry.subject_key == plan.subject_key,
            AuditEntry.action.like("plan.%"),
            AuditEntry.detail["plan_id"].as_string() == plan.plan_id,
        )
        .order_by(AuditEntry.id.desc())
    ).all()


def view(plan: Plan, *, include_scanning: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {
        "plan_id": plan.plan_id,
        "escalation_id": plan.escalation_id,
        "subject_type": plan.subject_type,
        "subject_key": plan.subject_key,
        "rule_id": plan.rule_id,
        "radius_m": plan.radius_m,
        "status": plan.status,
        "district": plan.district_code,
        "ward": plan.ward_code,
        "problem_statement": plan.problem_statement,
        "analysis": plan.analysis,
        "responses": list(plan.responses or []),
        "success_measure": plan.success_measure,
        "evaluation_due": plan.evaluation_due,
        "missing": rules.missing_fields(content(plan)),
        "opened_at": _iso(plan.opened_at),
        "opened_by": plan.opened_by,
        "updated_at": _iso(plan.updated_at),
        "submitted_at": _iso(plan.submitted_at),
        "submitted_by": plan.submitted_by,
        "signed_off_at": _iso(plan.signed_off_at),
        "signed_off_by": plan.signed_off_by,
        "review_due_at": _iso(plan.review_due_at),
        "closed_at": _iso(plan.closed_at),
        "closed_by": plan.closed_by,
        "outcome": plan.outcome,
        "evaluation": plan.evaluation,
        "incidents_before": plan.incidents_before,
        "incidents_after": plan.incidents_after,
        "before_after": plan.before_after,
    }
    if include_scanning:
        out["scanning"] = plan.scanning
    return out


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


__all__ = ["Actor", "NotFound", "PlanRefused"]

"""What people do with an escalation: acknowledge, assign, note, close, sign off.

Each action changes the escalation row, appends an event to the live feed and an entry to
the audit trail (who: the token's name; when; what; from which address and user agent), in
one transaction. Actions that make no sense in the escalation's state are refused with a
:class:`Conflict` saying why (a closed escalation cannot be acknowledged, …).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.api.models import Escalation, Review
from services.api.security import Caller
from services.api.service import append_event, audit, lock_feed

AssigneeType = Literal["officer", "team"]
Outcome = Literal["resolved", "referred_to_partner", "no_further_action", "duplicate", "other"]
OUTCOMES: tuple[str, ...] = (
    "resolved",
    "referred_to_partner",
    "no_further_action",
    "duplicate",
    "other",
)


class NotFound(LookupError):
    pass


class Conflict(ValueError):
    """The action does not fit the escalation's state."""


@dataclass(frozen=True, slots=True)
class Done:
    escalation: Escalation
    seq: int
    audit_id: int


def _load(session: Session, escalation_id: str) -> Escalation:
    lock_feed(session)  # first: every appender takes the feed lock before any row lock
    row = session.scalars(
        select(Escalation).where(Escalation.escalation_id == escalation_id).with_for_update()
    ).first()
    if row is None:
        raise NotFound(f"no escalation {escalation_id!r}")
    return row


def _record(
    session: Session,
    row: Escalation,
    caller: Caller,
    *,
    kind: str,
    action: str,
    detail: dict[str, Any],
    feed_detail: dict[str, Any] | None = None,
) -> Done:
    now = datetime.now(tz=UTC)
    event = append_event(
        session,
        row,
        kind=kind,
        at=now,
        actor=caller.name,
        detail=feed_detail if feed_detail is not None else detail,
    )
    entry = audit(
        session,
        actor=caller.name,
        token_id=caller.principal.token_id,
        role=caller.principal.role,
        action=action,
        escalation_id=row.escalation_id,
        subject_type=row.subject_type,
        subject_key=row.subject_key,
        detail={**detail, "event_id": event.seq},
        client_ip=caller.client_ip,
        user_agent=caller.user_agent,
        at=now,
    )
    return Done(row, event.seq, entry.id)


def acknowledge(
    *, session: Session, escalation_id: str, caller: Caller, note: str | None = None
) -> Done:
    row = _load(session, escalation_id)
    if row.status == "closed":
        raise Conflict("the escalation is closed")
    if row.status == "acknowledged":
        raise Conflict(
            f"already acknowledged by {row.acknowledged_by} at {row.acknowledged_at:%Y-%m-%d %H:%M}"
        )
    row.status = "acknowledged"
    row.acknowledged_at = datetime.now(tz=UTC)
    row.acknowledged_by = caller.name
    detail: dict[str, Any] = {"note": note} if note else {}
    return _record(
        session,
        row,
        caller,
        kind="acknowledged",
        action="escalation.acknowledge",
        detail=detail,
        feed_detail={},
    )


def assign(
    *,
    session: Session,
    escalation_id: str,
    caller: Caller,
    assignee_type: AssigneeType,
    assignee: str,
) -> Done:
    row = _load(session, escalation_id)
    if row.status == "closed":
        raise Conflict("the escalation is closed")
    previous = {"assignee_type": row.assignee_type, "assignee": row.assignee}
    row.assignee_type, row.assignee = assignee_type, assignee
    detail = {"assignee_type": assignee_type, "assignee": assignee, "previous": previous}
    return _record(session, row, caller, kind="assigned", action="escalation.assign", detail=detail)


def note(*, session: Session, escalation_id: str, caller: Caller, text: str) -> Done:
    row = _load(session, escalation_id)
    # The note's text is in the audit trail only; the live feed says that a note was added.
    return _record(
        session,
        row,
        caller,
        kind="noted",
        action="escalation.note",
        detail={"text": text},
        feed_detail={},
    )


def close(
    *, session: Session, escalation_id: str, caller: Caller, outcome: Outcome, note: str | None
) -> Done:
    row = _load(session, escalation_id)
    if row.status == "closed":
        raise Conflict(f"already closed by {row.closed_by} with outcome {row.outcome}")
    row.status = "closed"
    row.closed_at = datetime.now(tz=UTC)
    row.closed_by = caller.name
    row.outcome = outcome
    detail: dict[str, Any] = {"outcome": outcome}
    if note:
        detail["note"] = note
    return _record(
        session,
        row,
        caller,
        kind="closed",
        action="escalation.close",
        detail=detail,
        feed_detail={"outcome": outcome},
    )


def sign_off(
    *, session: Session, escalation_id: str, caller: Caller, rank: str | None, note: str | None
) -> Done:
    """A supervisor's review: the rank's next review is then due one interval from now."""
    row = _load(session, escalation_id)
    now = datetime.now(tz=UTC)
    reviews = session.scalars(
        select(Review).where(Review.escalation_id == escalation_id).order_by(Review.due_at)
    ).all()
    chosen = next((r for r in reviews if rank is None or r.rank == rank), None)
    if rank is not None and chosen is None and reviews:
        ranks = ", ".join(r.rank for r in reviews)
        raise Conflict(f"no {rank} review is scheduled for this escalation (scheduled: {ranks})")
    detail: dict[str, Any] = {"rank": rank}
    if chosen is not None:
        chosen.last_done_at = now
        chosen.last_done_by = caller.name
        chosen.note = note
        chosen.due_at = now + timedelta(seconds=chosen.every_seconds)
        detail.update(rank=chosen.rank, next_due_at=chosen.due_at.isoformat())
    feed = dict(detail)
    if note:
        detail["note"] = note
    return _record(
        session,
        row,
        caller,
        kind="signed_off",
        action="escalation.sign_off",
        detail=detail,
        feed_detail=feed,
    )

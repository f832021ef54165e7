"""HTTP routes of the API under ``/v1``: escalations and what people do with them, the
history of a victim or a place, areas, statistics and hotspots, work queues, tokens; and
the health, readiness and metrics endpoints.

Every route but ``/healthz`` and ``/readyz`` needs a bearer token (:mod:`security`); the
role each needs is in its description. A query parameter that does not fit is 422 with the
reasons (FastAPI's ``detail`` list: where, what, why).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, Generic, Literal, TypeVar, cast

import orjson
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import AwareDatetime, BaseModel, Field
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from services.api import handling, service, statistics, tokens
from services.api.alerts import FeedNotifier, feed_position
from services.api.areas import UNASSIGNED, AreaIndex
from services.api.health import check_broker, check_database
from services.api.metrics import ApiMetrics
from services.api.models import Assessment, AuditEntry, Escalation, EscalationEvent, Review
from services.api.pages import PageCache
from services.api.security import Admin, Caller, Operator, Supervisor, Viewer, forget_tokens
from services.api.service import MAX_LIST_LIMIT, Level, Status, SubjectType

VICTIM_KEY = r"^[0-9a-f]{64}$"
LOCATION_KEY = r"^(uprn:[0-9]{1,12}|bng:-?[0-9]{1,7}:-?[0-9]{1,7})$"
AREA_CODE = r"^[A-Za-z0-9_-]{1,32}$"


@dataclass(frozen=True, slots=True)
class ApiState:
    """What the routes need, kept on ``app.state.api``."""

    engine: Engine
    session_factory: sessionmaker[Session]
    writer_factory: sessionmaker[Session]
    metrics: ApiMetrics
    bootstrap: str
    areas: AreaIndex
    notifier: FeedNotifier
    stopping: asyncio.Event
    pages: PageCache = field(default_factory=PageCache)


async def get_state(request: Request) -> ApiState:
    # async: FastAPI runs a plain function dependency on a thread, one hop per request.
    state: ApiState = request.app.state.api
    return state


def get_session(state: Annotated[ApiState, Depends(get_state)]) -> Iterator[Session]:
    with state.session_factory() as session:
        yield session


StateDep = Annotated[ApiState, Depends(get_state)]
SessionDep = Annotated[Session, Depends(get_session)]


# -- response and request models --------------------------------------------------------


class Problem(BaseModel):
    detail: str = Field(description="What went wrong, for a person.")


class EscalationSummary(BaseModel):
    """An escalation: what was raised, how it is being handled, where, and why."""

    escalation_id: str
    subject_type: Literal["victim", "location"]
    subject_key: str = Field(description="A victim_key (pseudonym) or a location_key.")
    rule_id: str | None = Field(description="The rule met (escalations by rule), else null.")
    incident_id: str = Field(description="The incident that raised (or last upgraded) it.")
    contributing_incident_ids: list[str]
    level: Level | None = Field(description="standard, medium or high; null: not rated.")
    risk_score: int | None
    episode: int | None
    status: Status
    last_event: str = Field(description="The last change: raised, upgraded, acknowledged, …")
    event_id: int = Field(description="Feed id of the last change (the live alerts' id).")
    occurred_at: str
    raised_at: str
    updated_at: str
    acknowledged_at: str | None
    acknowledged_by: str | None
    assignee_type: Literal["officer", "team"] | None
    assignee: str | None
    closed_at: str | None
    closed_by: str | None
    outcome: str | None
    location_key: str | None
    lat: float | None
    lon: float | None
    district: str = Field(description="District code, or 'unassigned'.")
    ward: str = Field(description="Ward code, or 'unassigned'.")
    reasons: list[dict[str, Any]] = Field(description="Why: each factor, rule or incident.")
    actions: list[dict[str, Any]] = Field(description="Recommended actions with deadlines.")
    payload: dict[str, Any] | None = Field(
        None,
        description="The latest escalation message as received (in lists only with "
        "include_payload=true; always in an escalation's detail).",
    )


class EscalationList(BaseModel):
    """A page of escalations."""

    items: list[EscalationSummary]
    count: int = Field(description="Number of items returned.")
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null: end.")
    feed_position: int = Field(
        description="The live feed's newest event id when this page was read: stream from it "
        "(last_event_id) to miss nothing."
    )


class IncidentView(BaseModel):
    """An incident as the API shows it: pseudonymous keys and its assessment only."""

    incident_id: str
    occurred_at: str | None
    classification: str
    asb_category: str | None
    in_scope: bool
    rules_met: list[str]
    risk_level: str | None
    risk_score: int | None
    victim_key: str | None
    location_key: str | None
    lat: float | None
    lon: float | None
    district: str
    ward: str


class FeedEvent(BaseModel):
    event_id: int
    kind: str
    at: str
    actor: str | None
    detail: dict[str, Any]


class AuditView(BaseModel):
    id: int
    at: str
    actor: str
    role: str | None
    action: str
    escalation_id: str | None
    subject_type: str | None
    subject_key: str | None
    detail: dict[str, Any]
    client_ip: str | None
    user_agent: str | None


class ReviewView(BaseModel):
    escalation_id: str
    rank: str
    every_seconds: int
    due_at: str
    last_done_at: str | None
    last_done_by: str | None


class EscalationDetail(BaseModel):
    escalation: EscalationSummary
    incidents: list[IncidentView] = Field(description="The incidents that raised it.")
    subject_incidents: list[IncidentView] = Field(
        description="The subject's incidents, newest first (at most 100)."
    )
    events: list[FeedEvent] = Field(description="Every change, oldest first.")
    audit: list[AuditView] = Field(description="The audit trail of this escalation, newest first.")
    reviews: list[ReviewView]


class ActionResult(BaseModel):
    escalation: EscalationSummary
    event_id: int = Field(description="The feed id of this action.")
    audit_id: int = Field(description="The audit trail entry of this action.")


class AcknowledgeBody(BaseModel):
    note: str | None = Field(None, max_length=4000)


class AssignBody(BaseModel):
    assignee_type: Literal["officer", "team"]
    assignee: str = Field(min_length=1, max_length=200, description="Collar number or team.")


class NoteBody(BaseModel):
    text: str = Field(min_length=1, max_length=4000)


class CloseBody(BaseModel):
    outcome: handling.Outcome
    note: str | None = Field(None, max_length=4000)


class SignOffBody(BaseModel):
    rank: str | None = Field(None, min_length=1, max_length=40)
    note: str | None = Field(None, max_length=4000)


class MonthCount(BaseModel):
    month: str
    incidents: int


class SubjectHistory(BaseModel):
    subject_type: Literal["victim", "location"]
    subject_key: str
    radius_m: int = 0
    incidents: list[IncidentView] = Field(description="Newest first, at most 500.")
    monthly: list[MonthCount] = Field(description="Incidents per month, oldest first.")
    escalations: list[EscalationSummary]


class AreaView(BaseModel):
    code: str
    name: str
    level: Literal["district", "ward"]
    district_code: str | None


class AreaStatisticsRow(BaseModel):
    period: str
    area_level: Literal["district", "ward"]
    area_code: str
    area_name: str
    district_code: str | None = None
    incidents: int
    in_scope: int
    asb: int
    crime: int
    non_crime: int
    other: int
    cancelled: int
    repeats: int = Field(description="Incidents that met at least one rule.")
    escalations: int = Field(description="Escalations raised in the area and period.")


class AreaStatistics(BaseModel):
    level: Literal["district", "ward"]
    period: Literal["day", "week", "month"]
    start: date = Field(alias="from")
    end: date = Field(alias="to")
    rows: list[AreaStatisticsRow]


class CaseReviewItem(BaseModel):
    victim_key: str
    incidents_meeting: int
    latest: str | None


class IntegrityItem(BaseModel):
    incident: IncidentView
    integrity_flags: list[dict[str, Any]]


class ReviewItem(BaseModel):
    review: ReviewView
    overdue: bool
    escalation: EscalationSummary


T = TypeVar("T")


class Queue(BaseModel, Generic[T]):
    items: list[T]
    count: int


class TokenView(BaseModel):
    token_id: str
    name: str
    role: str
    created_at: str
    created_by: str | None
    revoked_at: str | None
    revoked_by: str | None


class TokenCreated(TokenView):
    token: str = Field(description="The token: shown this once, stored only as a hash.")


class CreateTokenBody(BaseModel):
    role: Literal["viewer", "operator", "supervisor", "admin", "ingest"]
    name: str | None = Field(None, min_length=1, max_length=200)


class Me(BaseModel):
    token_id: str
    name: str
    role: str


ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "No token, or an unknown or revoked one."},
    403: {"model": Problem, "description": "The token's role does not allow this."},
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": Problem, "description": "Unknown."}}
CONFLICT: dict[int | str, dict[str, Any]] = {
    409: {"model": Problem, "description": "Not possible in the escalation's state."}
}

router = APIRouter(responses=ERRORS)
ops = APIRouter(tags=["operations"])


# -- helpers ----------------------------------------------------------------------------


def _invalid(where: str, message: str) -> HTTPException:
    """A 422 shaped like FastAPI's own validation errors."""
    return HTTPException(
        422, detail=[{"loc": ["query", where], "msg": message, "type": "value_error"}]
    )


def _encode_cursor(sort: str, values: list[Any]) -> str:
    plain = [v.isoformat() if isinstance(v, datetime) else v for v in values]
    raw = json.dumps({"s": sort, "v": plain}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str, sort: str) -> list[Any]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        doc = json.loads(raw)
        if not isinstance(doc, dict) or doc.get("s") != sort:
            raise ValueError("made for another sort order")
        values = doc["v"]
        if not isinstance(values, list):
            raise ValueError("bad values")
        out: list[Any] = []
        for index, value in enumerate(values):
            last = index == len(values) - 1
            if last:
                if not isinstance(value, str):
                    raise ValueError("bad id")
                out.append(value)
            elif sort.lstrip("-") == "level" and index == 0:
                if not isinstance(value, int) or isinstance(value, bool):
                    raise ValueError("bad level")
                out.append(value)
            else:
                moment = datetime.fromisoformat(str(value))
                if moment.tzinfo is None:
                    raise ValueError("naive time")
                out.append(moment)
        expected = 3 if sort.lstrip("-") == "level" else 2
        if len(out) != expected:
            raise ValueError("wrong length")
        return out
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError) as exc:
        raise _invalid("cursor", f"not a cursor from this list with sort={sort} ({exc})") from None


def _summaries(rows: list[Escalation] | Any) -> list[EscalationSummary]:
    return [EscalationSummary.model_validate(service.summary(r)) for r in rows]


def _incident(row: Assessment) -> IncidentView:
    return IncidentView.model_validate(service.incident_view(row))


def _audit_view(entry: AuditEntry) -> AuditView:
    return AuditView(
        id=entry.id,
        at=entry.at.isoformat(),
        actor=entry.actor,
        role=entry.role,
        action=entry.action,
        escalation_id=entry.escalation_id,
        subject_type=entry.subject_type,
        subject_key=entry.subject_key,
        detail=entry.detail,
        client_ip=entry.client_ip,
        user_agent=entry.user_agent,
    )


def _review_view(review: Review) -> ReviewView:
    return ReviewView(
        escalation_id=review.escalation_id,
        rank=review.rank,
        every_seconds=review.every_seconds,
        due_at=review.due_at.isoformat(),
        last_done_at=review.last_done_at.isoformat() if review.last_done_at else None,
        last_done_by=review.last_done_by,
    )


def _event_view(event: EscalationEvent) -> FeedEvent:
    return FeedEvent(
        event_id=event.seq,
        kind=event.kind,
        at=event.at.isoformat(),
        actor=event.actor,
        detail=(event.data or {}).get("detail") or {},
    )


def _audit_read(state: ApiState, caller: Caller, **what: Any) -> None:
    """Record that ``caller`` read something personal (a victim's history)."""
    with state.writer_factory.begin() as session:
        service.audit(
            session,
            actor=caller.name,
            token_id=caller.principal.token_id,
            role=caller.principal.role,
            client_ip=caller.client_ip,
            user_agent=caller.user_agent,
            **what,
        )


def _check_area(state: ApiState, level: str, code: str | None, where: str) -> None:
    if code is None or code == UNASSIGNED:
        return
    if (level, code) not in state.areas.by_code:
        raise _invalid(where, f"no {level} with code {code!r} (see GET /v1/areas)")


# -- escalations ------------------------------------------------------------------------

SortQ = Literal["raised_at", "-raised_at", "updated_at", "-updated_at", "level", "-level"]


@router.get("/v1/escalations", response_model=EscalationList, tags=["escalations"])
async def list_escalations(
    state: StateDep,
    caller: Viewer,
    subject_type: Annotated[
        SubjectType | None, Query(description="Only victims or only locations.")
    ] = None,
    level: Annotated[list[Level] | None, Query(description="Only these levels.")] = None,
    status: Annotated[list[Status] | None, Query(description="Only these statuses.")] = None,
    district: Annotated[
        str | None, Query(pattern=AREA_CODE, description="District code, or 'unassigned'.")
    ] = None,
    ward: Annotated[
        str | None, Query(pattern=AREA_CODE, description="Ward code, or 'unassigned'.")
    ] = None,
    rule_id: Annotated[str | None, Query(max_length=200, description="Only this rule.")] = None,
    raised_from: Annotated[
        AwareDatetime | None, Query(description="Raised at or after (RFC 3339 with offset).")
    ] = None,
    raised_to: Annotated[
        AwareDatetime | None, Query(description="Raised before (RFC 3339 with offset).")
    ] = None,
    sort: Annotated[
        SortQ, Query(description="Order; '-' for descending. Ties break on escalation_id.")
    ] = "-raised_at",
    cursor: Annotated[
        str | None, Query(max_length=1000, description="next_cursor of the previous page.")
    ] = None,
    limit: Annotated[
        int, Query(ge=1, le=MAX_LIST_LIMIT, description="How many to return at most.")
    ] = 100,
    include_payload: Annotated[
        bool, Query(description="Also each escalation's latest message as received.")
    ] = False,
) -> Response:
    """Escalations, filtered, sorted (newest raised first by default) and paged by cursor.
    Role: viewer."""
    _check_area(state, "district", district, "district")
    _check_area(state, "ward", ward, "ward")
    if raised_from and raised_to and raised_from >= raised_to:
        raise _invalid("raised_to", "must be after raised_from")
    after = _decode_cursor(cursor, sort) if cursor else None
    # Every change to an escalation appends to the feed, so the feed's newest id is the
    # version of the whole list: a page made at that version can be served again as is.
    position = await _version(state, "escalations", feed_position)
    asked = (
        "escalations",
        subject_type,
        tuple(level or ()),
        tuple(status or ()),
        district,
        ward,
        rule_id,
        raised_from,
        raised_to,
        sort,
        cursor,
        limit,
        include_payload,
    )

    def page() -> bytes:
        with state.session_factory() as own:  # may run after this request has ended
            return _page(own)

    def _page(session: Session) -> bytes:
        rows = service.list_escalations(
            session=session,
            subject_type=subject_type,
            limit=limit,
            levels=level or (),
            statuses=status or (),
            district=district,
            ward=ward,
            rule_id=rule_id,
            raised_from=raised_from,
            raised_to=raised_to,
            sort=sort,
            after=after,
        )
        last = rows[-1] if len(rows) == limit else None
        next_cursor = _encode_cursor(sort, service.sort_values(last, sort)) if last else None
        # The summaries have the documented shape already (the schemathesis test checks
        # it): serialised once, without a second validation, by orjson (a tenth of the
        # time json takes, and it holds the GIL the event loop needs meanwhile).
        return orjson.dumps(
            {
                "items": [service.summary(r, include_payload) for r in rows],
                "count": len(rows),
                "next_cursor": next_cursor,
                "feed_position": position,
            }
        )

    # A page made already is served from the event loop; making one takes a thread.
    body = state.pages.cached(asked, position)
    if body is None:
        body = await run_in_threadpool(state.pages.get_or_make, asked, position, page)
    return Response(body, media_type="application/json")


async def _version(state: ApiState, name: str, read: Callable[[Session], int]) -> int:
    """The version ``read`` gives, as read by this process within ``pages.version_s``
    (then no database round trip and no thread), else read now."""
    known = state.pages.known_version(name)
    if known is not None:
        return cast(int, known)

    def read_now() -> int:
        with state.session_factory() as session:
            return read(session)

    return cast(int, await run_in_threadpool(state.pages.version, name, read_now))


@router.get(
    "/v1/escalations/{escalation_id}",
    response_model=EscalationDetail,
    tags=["escalations"],
    responses=NOT_FOUND,
)
def get_escalation(
    state: StateDep,
    session: SessionDep,
    caller: Viewer,
    escalation_id: Annotated[str, Path(min_length=1, max_length=64)],
) -> EscalationDetail:
    """One escalation with its incidents, reasons, events, reviews and audit trail. Reading
    a victim's escalation is itself audited. Role: viewer."""
    row = service.get_escalation(session=session, escalation_id=escalation_id)
    if row is None:
        raise HTTPException(404, f"no escalation {escalation_id!r}")
    if row.subject_type == "victim":
        _audit_read(
            state,
            caller,
            action="escalation.read",
            escalation_id=row.escalation_id,
            subject_type=row.subject_type,
            subject_key=row.subject_key,
        )
    contributing = service.summary(row)["contributing_incident_ids"] or [row.incident_id]
    by_id = {
        a.incident_id: a
        for a in session.query(Assessment).filter(Assessment.incident_id.in_(contributing))
    }
    if row.subject_type == "victim":
        subject = service.incidents_of_victim(
            session=session, victim_key=row.subject_key, limit=100
        )
    else:
        subject = service.incidents_at_location(
            session=session, location_key=row.subject_key, limit=100
        )
    return EscalationDetail(
        escalation=_summaries([row])[0],
        incidents=[_incident(by_id[i]) for i in contributing if i in by_id],
        subject_incidents=[_incident(a) for a in subject],
        events=[
            _event_view(e)
            for e in service.escalation_events(session=session, escalation_id=escalation_id)
        ],
        audit=[
            _audit_view(a)
            for a in service.audit_trail(session=session, escalation_id=escalation_id)
        ],
        reviews=[
            _review_view(r)
            for r in service.reviews_of(session=session, escalation_id=escalation_id)
        ],
    )


def _act(state: ApiState, action: Any, **kwargs: Any) -> ActionResult:
    try:
        with state.writer_factory.begin() as session:
            done: handling.Done = action(session=session, **kwargs)
            result = ActionResult(
                escalation=_summaries([done.escalation])[0],
                event_id=done.seq,
                audit_id=done.audit_id,
            )
    except handling.NotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except handling.Conflict as exc:
        raise HTTPException(409, str(exc)) from None
    state.notifier.notify()
    return result


EscalationId = Annotated[str, Path(min_length=1, max_length=64)]
ACTION_TAGS: list[str | Any] = ["escalation handling"]
ACTION_RESPONSES: dict[int | str, dict[str, Any]] = {**NOT_FOUND, **CONFLICT}


@router.post(
    "/v1/escalations/{escalation_id}/acknowledge", tags=ACTION_TAGS, responses=ACTION_RESPONSES
)
def acknowledge(
    state: StateDep,
    caller: Operator,
    escalation_id: EscalationId,
    body: AcknowledgeBody | None = None,
) -> ActionResult:
    """Acknowledge an open escalation (409 when acknowledged or closed). Role: operator."""
    note = body.note if body else None
    return _act(state, handling.acknowledge, escalation_id=escalation_id, caller=caller, note=note)


@router.post("/v1/escalations/{escalation_id}/assign", tags=ACTION_TAGS, responses=ACTION_RESPONSES)
def assign(
    state: StateDep, caller: Operator, escalation_id: EscalationId, body: AssignBody
) -> ActionResult:
    """Assign to an officer or a team (409 when closed). Role: operator."""
    return _act(
        state,
        handling.assign,
        escalation_id=escalation_id,
        caller=caller,
        assignee_type=body.assignee_type,
        assignee=body.assignee,
    )


@router.post("/v1/escalations/{escalation_id}/notes", tags=ACTION_TAGS, responses=ACTION_RESPONSES)
def add_note(
    state: StateDep, caller: Operator, escalation_id: EscalationId, body: NoteBody
) -> ActionResult:
    """Add a note (kept in the audit trail). Role: operator."""
    return _act(state, handling.note, escalation_id=escalation_id, caller=caller, text=body.text)


@router.post("/v1/escalations/{escalation_id}/close", tags=ACTION_TAGS, responses=ACTION_RESPONSES)
def close(
    state: StateDep, caller: Supervisor, escalation_id: EscalationId, body: CloseBody
) -> ActionResult:
    """Close with an outcome (409 when closed already). Role: supervisor."""
    return _act(
        state,
        handling.close,
        escalation_id=escalation_id,
        caller=caller,
        outcome=body.outcome,
        note=body.note,
    )


@router.post(
    "/v1/escalations/{escalation_id}/sign-off", tags=ACTION_TAGS, responses=ACTION_RESPONSES
)
def sign_off(
    state: StateDep,
    caller: Supervisor,
    escalation_id: EscalationId,
    body: SignOffBody | None = None,
) -> ActionResult:
    """Record a supervisory review: the rank's next review becomes due one interval from
    now. Role: supervisor."""
    return _act(
        state,
        handling.sign_off,
        escalation_id=escalation_id,
        caller=caller,
        rank=body.rank if body else None,
        note=body.note if body else None,
    )


# -- incidents and subjects ---------------------------------------------------------------


@router.get(
    "/v1/incidents/{incident_id}/assessment",
    tags=["assessments"],
    responses=NOT_FOUND,
    response_model=dict[str, Any],
)
def get_assessment(
    session: SessionDep,
    caller: Viewer,
    incident_id: Annotated[str, Path(min_length=1, max_length=200)],
) -> dict[str, Any]:
    """The current assessment of one incident (``schemas/assessment.v1.json``). Role: viewer."""
    row = service.get_assessment(session=session, incident_id=incident_id)
    if row is None:
        raise HTTPException(
            status_code=404,
            detail=f"no assessment for incident {incident_id!r}: the repeat detector has not "
            "published one yet, or the API has not consumed it yet",
        )
    return row.payload


@router.get("/v1/victims/{victim_key}", response_model=SubjectHistory, tags=["subjects"])
def victim_history(
    state: StateDep,
    session: SessionDep,
    caller: Viewer,
    victim_key: Annotated[str, Path(pattern=VICTIM_KEY, description="A victim_key (pseudonym).")],
) -> SubjectHistory:
    """A victim's incidents over time and escalations (pseudonymous keys only). Every read
    is recorded in the audit trail. Role: viewer."""
    _audit_read(
        state, caller, action="victim.history.read", subject_type="victim", subject_key=victim_key
    )
    incidents = service.incidents_of_victim(session=session, victim_key=victim_key)
    escalations = service.escalations_of_subject(
        session=session, subject_type="victim", subject_key=victim_key
    )
    return SubjectHistory(
        subject_type="victim",
        subject_key=victim_key,
        incidents=[_incident(a) for a in incidents],
        monthly=[MonthCount(**m) for m in service.monthly_counts(incidents)],
        escalations=_summaries(escalations),
    )


@router.get("/v1/locations/{location_key}", response_model=SubjectHistory, tags=["subjects"])
def location_history(
    session: SessionDep,
    caller: Viewer,
    location_key: Annotated[
        str, Path(pattern=LOCATION_KEY, description="uprn:<n> or bng:<easting>:<northing>.")
    ],
    radius_m: Annotated[
        int, Query(ge=0, le=1000, description="Also incidents within this many metres.")
    ] = 0,
) -> SubjectHistory:
    """A place's incidents over time and escalations. Role: viewer."""
    incidents = service.incidents_at_location(
        session=session, location_key=location_key, radius_m=radius_m
    )
    escalations = service.escalations_of_subject(
        session=session, subject_type="location", subject_key=location_key
    )
    return SubjectHistory(
        subject_type="location",
        subject_key=location_key,
        radius_m=radius_m,
        incidents=[_incident(a) for a in incidents],
        monthly=[MonthCount(**m) for m in service.monthly_counts(incidents)],
        escalations=_summaries(escalations),
    )


# -- areas --------------------------------------------------------------------------------

AreaLevelQ = Annotated[Literal["district", "ward"], Query(description="district or ward.")]


@router.get("/v1/areas", response_model=list[AreaView], tags=["areas"])
def list_areas(state: StateDep, caller: Viewer, level: AreaLevelQ = "district") -> list[AreaView]:
    """The districts or wards of the boundary files. Role: viewer."""
    layer = state.areas.districts if level == "district" else state.areas.wards
    return [
        AreaView(code=a.code, name=a.name, level=level, district_code=a.district_code)
        for a in layer.areas
    ]


@router.get(
    "/v1/areas/{level}/boundaries",
    tags=["areas"],
    response_model=dict[str, Any],
    responses={200: {"content": {"application/geo+json": {}}}},
)
def boundaries(state: StateDep, caller: Viewer, level: Literal["district", "ward"]) -> Response:
    """The boundaries as GeoJSON (WGS84), properties code, name, level. Role: viewer."""
    body = json.dumps(state.areas.boundaries(level), separators=(",", ":"))
    return Response(
        body, media_type="application/geo+json", headers={"Cache-Control": "private, max-age=3600"}
    )


STAT_COLUMNS = list(AreaStatisticsRow.model_fields)


@router.get(
    "/v1/areas/statistics",
    tags=["areas"],
    response_model=AreaStatistics,
    responses={200: {"content": {"text/csv": {"schema": {"type": "string"}}}}},
)
async def area_statistics(
    request: Request,
    state: StateDep,
    caller: Viewer,
    level: AreaLevelQ = "district",
    period: Annotated[
        Literal["day", "week", "month"], Query(description="day, ISO week or month (UK time).")
    ] = "month",
    start: Annotated[
        date | None, Query(alias="from", description="First day (default: a year ago).")
    ] = None,
    end: Annotated[date | None, Query(alias="to", description="Last day (default: today).")] = None,
    district: Annotated[
        str | None, Query(pattern=AREA_CODE, description="Only this district (or its wards).")
    ] = None,
    format: Annotated[
        Literal["json", "csv"] | None,
        Query(description="json or csv (default: by the Accept header, else json)."),
    ] = None,
) -> Any:
    """Incidents (by class, in scope, meeting a rule) and escalations per area and period.
    Role: viewer."""
    _check_area(state, "district", district, "district")
    today = datetime.now(tz=statistics.LOCAL).date()
    default_start, default_end = statistics.default_range(today)
    first, last = start or default_start, end or default_end
    if first > last:
        raise _invalid("to", "must not be before from")
    if (last - first).days > 366 * 10:
        raise _invalid("from", "at most ten years at once")
    wants_csv = format == "csv" or (
        format is None and "text/csv" in request.headers.get("accept", "")
    )
    # The counts' version moves with every change to them: a cached answer is exact as of
    # the version (read by this process at most pages.version_s ago).
    version = await _version(state, "area_counts", statistics.counts_version)
    asked = ("statistics", level, period, first, last, district, wants_csv)

    def answer() -> bytes:
        with state.session_factory() as own:  # may run after this request has ended
            return _answer(own)

    def _answer(session: Session) -> bytes:
        rows = statistics.area_statistics(
            session=session,
            areas=state.areas,
            level=level,
            period=period,
            start=first,
            end=last,
            district=district,
        )
        if wants_csv:
            return statistics.as_csv(rows, STAT_COLUMNS).encode()
        doc = {"level": level, "period": period, "from": str(first), "to": str(last)}
        return orjson.dumps({**doc, "rows": rows})

    body = state.pages.cached(asked, version)
    if body is None:
        body = await run_in_threadpool(state.pages.get_or_make, asked, version, answer)
    return _statistics_response(body, wants_csv, level, period, first, last)


def _statistics_response(
    body: bytes, csv: bool, level: str, period: str, first: date, last: date
) -> Response:
    if not csv:
        return Response(body, media_type="application/json")
    name = f"asvat-{level}-{period}-{first}-{last}.csv"
    return Response(
        body,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


@router.get(
    "/v1/hotspots",
    tags=["areas"],
    response_model=dict[str, Any],
    responses={200: {"content": {"application/geo+json": {}}}},
)
def hotspots(
    state: StateDep,
    session: SessionDep,
    caller: Viewer,
    start: Annotated[
        AwareDatetime | None, Query(alias="from", description="Default: 28 days ago.")
    ] = None,
    end: Annotated[AwareDatetime | None, Query(alias="to", description="Default: now.")] = None,
    cell_m: Annotated[int, Query(ge=50, le=5000, description="Grid cell side, metres.")] = 250,
    min_incidents: Annotated[int, Query(ge=1, le=10000)] = 3,
    district: Annotated[str | None, Query(pattern=AREA_CODE)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> Response:
    """Grid cells with the most in-scope incidents, as GeoJSON points at the cell centres
    (properties: incidents, cell, district, ward). Role: viewer."""
    _check_area(state, "district", district, "district")
    now = datetime.now(tz=UTC)
    last = end or now
    first = start or (last - timedelta(days=28))
    if first >= last:
        raise _invalid("to", "must be after from")
    doc = statistics.hotspots(
        session=session,
        areas=state.areas,
        start=first,
        end=last,
        cell_m=cell_m,
        min_incidents=min_incidents,
        district=district,
        limit=limit,
    )
    return Response(json.dumps(doc, separators=(",", ":")), media_type="application/geo+json")


# -- queues -------------------------------------------------------------------------------


@router.get("/v1/queues/case-reviews", response_model=Queue[CaseReviewItem], tags=["queues"])
def case_reviews(
    session: SessionDep, caller: Viewer, limit: Annotated[int, Query(ge=1, le=500)] = 100
) -> Queue[CaseReviewItem]:
    """Victims whose incidents meet the ASB Case Review threshold. Role: viewer."""
    items = [CaseReviewItem(**i) for i in service.case_reviews_due(session=session, limit=limit)]
    return Queue[CaseReviewItem](items=items, count=len(items))


@router.get("/v1/queues/integrity-flags", response_model=Queue[IntegrityItem], tags=["queues"])
def integrity_queue(
    session: SessionDep, caller: Viewer, limit: Annotated[int, Query(ge=1, le=500)] = 100
) -> Queue[IntegrityItem]:
    """Incidents finalised as ASB that may be unrecorded crimes. Role: viewer."""
    items = []
    for row in service.integrity_flags(session=session, limit=limit):
        flags = (row.payload or {}).get("integrity_flags")
        items.append(
            IntegrityItem(
                incident=_incident(row),
                integrity_flags=[f for f in flags if isinstance(f, dict)]
                if isinstance(flags, list)
                else [],
            )
        )
    return Queue[IntegrityItem](items=items, count=len(items))


@router.get("/v1/queues/reviews", response_model=Queue[ReviewItem], tags=["queues"])
def reviews_queue(
    session: SessionDep,
    caller: Viewer,
    state: Annotated[
        Literal["due", "overdue"], Query(description="due (within the notice) or overdue.")
    ] = "due",
    within_hours: Annotated[int, Query(ge=0, le=24 * 90, description="The notice.")] = 72,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> Queue[ReviewItem]:
    """Supervisory reviews of open escalations that are due or overdue. Role: viewer."""
    now = datetime.now(tz=UTC)
    rows = service.reviews_due(
        session=session,
        now=now,
        notice=timedelta(hours=within_hours),
        overdue_only=state == "overdue",
        limit=limit,
    )
    items = [
        ReviewItem(
            review=_review_view(review),
            overdue=review.due_at < now,
            escalation=_summaries([escalation])[0],
        )
        for review, escalation in rows
    ]
    return Queue[ReviewItem](items=items, count=len(items))


# -- audit and tokens ---------------------------------------------------------------------


@router.get("/v1/audit", response_model=list[AuditView], tags=["audit"])
def audit_log(
    session: SessionDep,
    caller: Supervisor,
    escalation_id: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> list[AuditView]:
    """The audit trail, newest first (reads of victims' histories included). Role: supervisor."""
    rows = service.audit_trail(session=session, escalation_id=escalation_id, limit=limit)
    return [_audit_view(r) for r in rows]


@router.get("/v1/me", response_model=Me, tags=["tokens"])
def me(caller: Viewer) -> Me:
    """Who the token is. Role: viewer."""
    p = caller.principal
    return Me(token_id=p.token_id, name=p.name, role=p.role)


@router.get("/v1/tokens", response_model=list[TokenView], tags=["tokens"])
def list_tokens(session: SessionDep, caller: Admin) -> list[TokenView]:
    """Every token (never the token itself). Role: admin."""
    return [
        TokenView.model_validate(tokens.describe(t)) for t in tokens.list_tokens(session=session)
    ]


@router.post("/v1/tokens", response_model=TokenCreated, status_code=201, tags=["tokens"])
def create_token(state: StateDep, caller: Admin, body: CreateTokenBody) -> TokenCreated:
    """Make a token; the answer holds it, once. Role: admin."""
    with state.writer_factory.begin() as session:
        row, token = tokens.create(
            session=session, role=body.role, name=body.name, created_by=caller.name
        )
        service.audit(
            session,
            actor=caller.name,
            token_id=caller.principal.token_id,
            role=caller.principal.role,
            action="token.create",
            detail={"token_id": row.token_id, "name": row.name, "role": row.role},
            client_ip=caller.client_ip,
            user_agent=caller.user_agent,
        )
        return TokenCreated(**tokens.describe(row), token=token)  # type: ignore[arg-type]


@router.post(
    "/v1/tokens/{token_id}/revoke", response_model=TokenView, tags=["tokens"], responses=NOT_FOUND
)
def revoke_token(
    state: StateDep,
    caller: Admin,
    token_id: Annotated[str, Path(min_length=1, max_length=200)],
) -> TokenView:
    """Revoke a token (by id): it is refused from the next request on. Role: admin."""
    with state.writer_factory.begin() as session:
        try:
            row = tokens.revoke(session=session, which=token_id, revoked_by=caller.name)
        except tokens.TokenError as exc:
            raise HTTPException(404, str(exc)) from None
        service.audit(
            session,
            actor=caller.name,
            token_id=caller.principal.token_id,
            role=caller.principal.role,
            action="token.revoke",
            detail={"token_id": row.token_id, "name": row.name},
            client_ip=caller.client_ip,
            user_agent=caller.user_agent,
        )
        revoked = TokenView.model_validate(tokens.describe(row))
    forget_tokens()  # after the commit: no look-up can cache the token as valid again
    return revoked


# -- operations ---------------------------------------------------------------------------


@ops.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up (says nothing about its dependencies: see /readyz). No token."""
    return {"status": "ok"}


@ops.get(
    "/readyz",
    responses={503: {"description": "The database or the broker does not answer (which, why)."}},
)
async def readyz(state: StateDep) -> JSONResponse:
    """200 when the database answers SELECT 1 and the broker a metadata request, else 503.
    No token."""
    database, broker = await asyncio.gather(
        check_database(state.engine), check_broker(state.bootstrap)
    )
    checks = {"database": database or "ok", "broker": broker or "ok"}
    failed = [name for name, problem in (("database", database), ("broker", broker)) if problem]
    if failed:
        return JSONResponse(
            status_code=503, content={"status": "unavailable", "failed": failed, "checks": checks}
        )
    return JSONResponse(content={"status": "ok", "checks": checks})


@ops.get("/metrics", responses=ERRORS, response_class=PlainTextResponse)
async def metrics(state: StateDep, caller: Viewer) -> Response:
    """Prometheus exposition text of this app's registry. Role: viewer."""
    body, content_type = state.metrics.render()
    return Response(content=body, media_type=content_type)


# -- plans, scrutiny, recording quality ---------------------------------------------------
# In their own modules, which use this module's dependencies: imported last.
from services.api import plan_views  # noqa: E402

router.include_router(plan_views.router)

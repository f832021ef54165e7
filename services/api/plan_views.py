"""HTTP routes of problem-solving plans (``/v1/plans``), the scrutiny report and the
recording-quality report; included in :data:`services.api.views.router`.

Mutating routes need a token of role operator at least; what each role may do to a plan in
which state is decided by :func:`asvat.domain.plans.transition` (403 when the role may not,
409 when the state does not allow it, 422 naming the missing fields).
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import AwareDatetime, BaseModel, Field

from asvat.domain.plans import OUTCOMES, PlanRefused
from services.api import plans
from services.api.security import Caller, Operator, Viewer
from services.api.views import (
    AREA_CODE,
    CONFLICT,
    NOT_FOUND,
    AuditView,
    SessionDep,
    StateDep,
    _audit_view,
    _check_area,
    _invalid,
)

router: APIRouter = APIRouter(tags=["plans"])
PlanStatusQ = Literal["draft", "submitted", "signed_off", "closed"]
PlanId = Annotated[str, Path(pattern=r"^[0-9a-f]{64}$", description="The plan's id.")]


class PlanResponse(BaseModel):
    """One response of a plan: what will be done, by whom, by when."""

    action: str | None = Field(None, max_length=4000)
    owner: str | None = Field(None, max_length=200, description="A person, team or partner.")
    due_date: date | None = Field(None, description="By when (YYYY-MM-DD).")


class PlanView(BaseModel):
    """A problem-solving plan (SARA): scanning, analysis, response, assessment."""

    plan_id: str
    escalation_id: str
    subject_type: Literal["victim", "location"]
    subject_key: str
    rule_id: str | None
    radius_m: int = Field(description="Incidents within this radius count for the place.")
    status: PlanStatusQ
    district: str
    ward: str
    problem_statement: str | None
    analysis: str | None
    responses: list[dict[str, Any]]
    success_measure: str | None
    evaluation_due: str | None
    missing: list[str] = Field(description="Fields still needed before it can be submitted.")
    opened_at: str
    opened_by: str
    updated_at: str
    submitted_at: str | None
    submitted_by: str | None
    signed_off_at: str | None
    signed_off_by: str | None
    review_due_at: str | None
    closed_at: str | None
    closed_by: str | None
    outcome: str | None
    evaluation: str | None
    incidents_before: int | None = Field(
        description="In-scope incidents in the period as long as the plan was open, just "
        "before it opened (set at closing)."
    )
    incidents_after: int | None = Field(description="In-scope incidents while it was open.")
    before_after: dict[str, Any] | None
    scanning: dict[str, Any] | None = Field(
        None,
        description="Pre-filled: summary, incidents with times, map_svg (a small SVG drawn "
        "from grid coordinates) and map_geojson.",
    )


class PlanList(BaseModel):
    items: list[PlanView]
    count: int


class PlanDetail(BaseModel):
    plan: PlanView
    audit: list[AuditView] = Field(description="Every change to the plan, newest first.")


class OpenPlanBody(BaseModel):
    escalation_id: str = Field(min_length=1, max_length=64)


class PlanUpdateBody(BaseModel):
    """Fields to change (absent: unchanged)."""

    problem_statement: str | None = Field(None, max_length=8000)
    analysis: str | None = Field(None, max_length=16000)
    responses: list[PlanResponse] | None = Field(None, max_length=50)
    success_measure: str | None = Field(None, max_length=4000)
    evaluation_due: date | None = None


class NoteBody(BaseModel):
    note: str | None = Field(None, max_length=4000)


class SignOffBody(BaseModel):
    next_review: date | None = Field(None, description="Next review date (default: 28 days).")
    note: str | None = Field(None, max_length=4000)


class ClosePlanBody(BaseModel):
    outcome: Literal["resolved", "reduced", "displaced", "no_change"] | None = Field(
        None, description="Required: " + ", ".join(OUTCOMES)
    )
    evaluation: str | None = Field(None, max_length=16000, description="Required: free text.")


class PlanReport(BaseModel):
    at: str
    counts: dict[str, int]
    missing_detail: list[dict[str, Any]]
    awaiting_supervision: list[dict[str, Any]]
    overdue_for_evaluation: list[dict[str, Any]]


#: A plan that lacks fields is 422 in FastAPI's validation-error shape, one entry per
#: missing field (``loc`` ["body", field]), with the list also as ``missing``.
ACT_RESPONSES: dict[int | str, dict[str, Any]] = {**NOT_FOUND, **CONFLICT}


def _actor(caller: Caller) -> plans.Actor:
    return plans.Actor(
        name=caller.name,
        role=caller.principal.role,
        token_id=caller.principal.token_id,
        client_ip=caller.client_ip,
        user_agent=caller.user_agent,
    )


def _view(plan: Any) -> PlanView:
    return PlanView.model_validate(plans.view(plan))


def _act(state: Any, action: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        with state.writer_factory.begin() as session:
            return _view(action(session, *args, **kwargs))
    except plans.NotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except PlanRefused as exc:
        if exc.kind == "forbidden":
            raise HTTPException(403, str(exc)) from None
        if exc.kind == "conflict":
            raise HTTPException(409, str(exc)) from None
        # Shaped like FastAPI's own 422 (one entry per missing field), plus `missing`.
        why = str(exc).split("; missing:")[0]
        detail = [
            {"loc": ["body", name], "msg": f"{name}: missing ({why})", "type": "missing"}
            for name in exc.missing
        ]
        return JSONResponse(status_code=422, content={"detail": detail, "missing": exc.missing})


@router.get("/v1/plans", response_model=PlanList)
def list_plans(
    state: StateDep,
    session: SessionDep,
    caller: Viewer,
    status: Annotated[list[PlanStatusQ] | None, Query(description="Only these.")] = None,
    subject_type: Annotated[Literal["victim", "location"] | None, Query()] = None,
    district: Annotated[str | None, Query(pattern=AREA_CODE)] = None,
    ward: Annotated[str | None, Query(pattern=AREA_CODE)] = None,
    escalation_id: Annotated[str | None, Query(max_length=64)] = None,
    opened_from: Annotated[AwareDatetime | None, Query()] = None,
    opened_to: Annotated[AwareDatetime | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=100_000)] = 0,
) -> PlanList:
    """Plans, newest opened first, filtered (without their scanning). Role: viewer."""
    _check_area(state, "district", district, "district")
    _check_area(state, "ward", ward, "ward")
    rows = plans.list_plans(
        session,
        statuses=status or (),
        subject_type=subject_type,
        district=district,
        ward=ward,
        escalation_id=escalation_id,
        opened_from=opened_from,
        opened_to=opened_to,
        limit=limit,
        offset=offset,
    )
    items = [PlanView.model_validate(plans.view(r, include_scanning=False)) for r in rows]
    return PlanList(items=items, count=len(items))


@router.get("/v1/plans/report", response_model=PlanReport)
def plans_report(
    state: StateDep,
    session: SessionDep,
    caller: Viewer,
    district: Annotated[str | None, Query(pattern=AREA_CODE)] = None,
) -> PlanReport:
    """Open plans missing detail (drafts that could not be submitted), awaiting
    supervision (submitted), or overdue for evaluation (signed off, the review or
    evaluation date passed). Role: viewer."""
    _check_area(state, "district", district, "district")
    doc = plans.report(session, now=datetime.now(tz=UTC), district=district)
    return PlanReport.model_validate(doc)


@router.post(
    "/v1/plans",
    response_model=PlanView,
    status_code=201,
    responses={**NOT_FOUND, 200: {"model": PlanView, "description": "It had one already."}},
)
def open_plan(state: StateDep, caller: Operator, body: OpenPlanBody) -> Response:
    """Open a draft plan for an escalation (a victim's on request; a location's is opened
    automatically). One per escalation: 200 with the existing plan. Role: operator."""
    from services.api import service

    with state.writer_factory.begin() as session:
        row = service.get_escalation(session=session, escalation_id=body.escalation_id)
        if row is None:
            raise HTTPException(404, f"no escalation {body.escalation_id!r}")
        plan, new = plans.open_for_escalation(session, row, _actor(caller))
        doc = _view(plan).model_dump(mode="json")
    return JSONResponse(status_code=201 if new else 200, content=doc)


@router.get("/v1/plans/{plan_id}", response_model=PlanDetail, responses=NOT_FOUND)
def get_plan(session: SessionDep, caller: Viewer, plan_id: PlanId) -> PlanDetail:
    """A plan with its scanning (incidents, map) and audit trail. Role: viewer."""
    try:
        plan = plans.get(session, plan_id)
    except plans.NotFound as exc:
        raise HTTPException(404, str(exc)) from None
    return PlanDetail(
        plan=_view(plan), audit=[_audit_view(a) for a in plans.audit_of(session, plan)]
    )


@router.patch("/v1/plans/{plan_id}", response_model=PlanView, responses=ACT_RESPONSES)
def update_plan(state: StateDep, caller: Operator, plan_id: PlanId, body: PlanUpdateBody) -> Any:
    """Change the plan's analysis, responses, success measure… (not once closed).
    Role: operator."""
    changes = body.model_dump(mode="json", exclude_unset=True)
    return _act(state, plans.update, plan_id, _actor(caller), changes)


@router.post("/v1/plans/{plan_id}/submit", response_model=PlanView, responses=ACT_RESPONSES)
def submit_plan(state: StateDep, caller: Operator, plan_id: PlanId) -> Any:
    """Submit for supervision: 422 naming the missing fields unless the plan has a problem
    statement, an analysis, at least one response with an owner and a date, and a success
    measure. Role: operator."""
    return _act(state, plans.submit, plan_id, _actor(caller))


@router.post("/v1/plans/{plan_id}/return", response_model=PlanView, responses=ACT_RESPONSES)
def return_plan(
    state: StateDep, caller: Operator, plan_id: PlanId, body: NoteBody | None = None
) -> Any:
    """Send a submitted plan back to draft. Role: supervisor (403 otherwise)."""
    return _act(state, plans.return_to_draft, plan_id, _actor(caller), body.note if body else None)


@router.post("/v1/plans/{plan_id}/sign-off", response_model=PlanView, responses=ACT_RESPONSES)
def sign_off_plan(
    state: StateDep, caller: Operator, plan_id: PlanId, body: SignOffBody | None = None
) -> Any:
    """Sign off a submitted plan, or record a review of a signed-off one, with the next
    review date. Role: supervisor (403 otherwise)."""
    return _act(
        state,
        plans.sign_off,
        plan_id,
        _actor(caller),
        next_review=body.next_review if body else None,
        note=body.note if body else None,
    )


@router.post("/v1/plans/{plan_id}/close", response_model=PlanView, responses=ACT_RESPONSES)
def close_plan(state: StateDep, caller: Operator, plan_id: PlanId, body: ClosePlanBody) -> Any:
    """Close a signed-off plan with an outcome and an evaluation (422 without); the
    before-and-after incident counts are added. Role: supervisor (403 otherwise)."""
    return _act(
        state,
        plans.close,
        plan_id,
        _actor(caller),
        outcome=body.outcome,
        evaluation=body.evaluation,
    )


# -- scrutiny -------------------------------------------------------------------------------


class ScrutinyRow(BaseModel):
    period: str = Field(description="YYYY-MM or YYYY-Qn (UK time).")
    area_level: Literal["district", "ward"]
    area_code: str = Field(description="District or ward code, 'unassigned', or 'all'.")
    area_name: str
    model_config = {"extra": "allow"}


class Scrutiny(BaseModel):
    level: Literal["district", "ward"]
    period: Literal["month", "quarter"]
    start: date = Field(alias="from")
    end: date = Field(alias="to")
    columns: list[str]
    rows: list[dict[str, Any]] = Field(
        description="One per area and period (force-wide rows last, area_code 'all'); the "
        "columns are listed in `columns`."
    )


def _scrutiny_rows(
    state: Any,
    session: Any,
    level: str,
    period: str,
    start: date | None,
    end: date | None,
    district: str | None,
) -> tuple[list[dict[str, Any]], date, date]:
    from services.api import scrutiny, statistics

    _check_area(state, "district", district, "district")
    today = datetime.now(tz=statistics.LOCAL).date()
    default_start, default_end = statistics.default_range(today)
    first, last = start or default_start, end or default_end
    if first > last:
        raise _invalid("to", "must not be before from")
    if (last - first).days > 366 * 10:
        raise _invalid("from", "at most ten years at once")
    rows = scrutiny.scrutiny(
        session=session,
        areas=state.areas,
        level=level,  # type: ignore[arg-type]
        period=period,  # type: ignore[arg-type]
        start=first,
        end=last,
        district=district,
    )
    return rows, first, last


LevelQ = Annotated[Literal["district", "ward"], Query(description="district or ward.")]
PeriodQ = Annotated[Literal["month", "quarter"], Query(description="month or quarter (UK).")]
FromQ = Annotated[date | None, Query(alias="from", description="First day (default: a year ago).")]
ToQ = Annotated[date | None, Query(alias="to", description="Last day (default: today).")]
DistrictQ = Annotated[str | None, Query(pattern=AREA_CODE, description="Only this district.")]


@router.get("/v1/scrutiny", response_model=Scrutiny, tags=["scrutiny"])
def scrutiny_json(
    state: StateDep,
    session: SessionDep,
    caller: Viewer,
    level: LevelQ = "district",
    period: PeriodQ = "month",
    start: FromQ = None,
    end: ToQ = None,
    district: DistrictQ = None,
) -> Scrutiny:
    """Scrutiny statistics per area and month or quarter: incidents by class and ASB
    category, repeat victims and locations, escalations by level, hours to acknowledge,
    case reviews, integrity flags, plans opened and their outcomes. Role: viewer."""
    from services.api.scrutiny import COLUMNS

    rows, first, last = _scrutiny_rows(state, session, level, period, start, end, district)
    return Scrutiny.model_validate(
        {
            "level": level,
            "period": period,
            "from": first,
            "to": last,
            "columns": COLUMNS,
            "rows": rows,
        }
    )


@router.get(
    "/v1/scrutiny.csv",
    tags=["scrutiny"],
    response_class=Response,
    responses={200: {"content": {"text/csv": {"schema": {"type": "string"}}}}},
)
def scrutiny_csv(
    state: StateDep,
    session: SessionDep,
    caller: Viewer,
    level: LevelQ = "district",
    period: PeriodQ = "month",
    start: FromQ = None,
    end: ToQ = None,
    district: DistrictQ = None,
) -> Response:
    """The scrutiny statistics as CSV (the columns of GET /v1/scrutiny). Role: viewer."""
    from services.api.scrutiny import as_csv

    rows, first, last = _scrutiny_rows(state, session, level, period, start, end, district)
    name = f"asvat-scrutiny-{level}-{period}-{first}-{last}.csv"
    return Response(
        as_csv(rows),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


@router.get(
    "/v1/scrutiny/charts",
    tags=["scrutiny"],
    response_class=Response,
    responses={200: {"content": {"text/html": {"schema": {"type": "string"}}}}},
)
def scrutiny_charts(
    state: StateDep,
    session: SessionDep,
    caller: Viewer,
    level: LevelQ = "district",
    period: PeriodQ = "month",
    start: FromQ = None,
    end: ToQ = None,
    district: DistrictQ = None,
) -> Response:
    """A self-contained HTML page of charts (SVG drawn by the server, no scripts, nothing
    from the internet) and the force-wide table, for a public performance meeting.
    Role: viewer."""
    from services.api.scrutiny import charts_page

    rows, first, last = _scrutiny_rows(state, session, level, period, start, end, district)
    where = f"district {district}" if district else "the force area"
    title = f"ASB scrutiny: {where}, {first} to {last}, by {period}"
    return Response(charts_page(rows, title=title), media_type="text/html; charset=utf-8")


# -- recording quality ----------------------------------------------------------------------


@router.post(
    "/v1/reports/recording-quality",
    tags=["recording quality"],
    responses={
        200: {
            "content": {
                "application/json": {"schema": {"type": "object"}},
                "text/csv": {"schema": {"type": "string"}},
            }
        },
        413: {"description": "More than 50 MB of events."},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "Incident events (contract v1, raw or pseudonymised): a JSON array "
            "or NDJSON (application/x-ndjson), e.g. a read of asvat.incidents.v1.",
            "content": {
                "application/json": {"schema": {"type": "array", "items": {"type": "object"}}},
                "application/x-ndjson": {"schema": {"type": "string"}},
            },
        }
    },
)
async def recording_quality_report(
    request: Request,
    caller: Viewer,
    format: Annotated[Literal["json", "csv"], Query(description="json or csv.")] = "json",
) -> Response:
    """Recording quality by contact team and month over the events posted: how often the
    opening classification matched the closing one, incidents reclassified into or out of
    ASB, integrity flags raised and corrected. Operators are never named: team-level only
    (operator ids are pseudonymised, then dropped). Role: viewer."""
    import json as _json

    from starlette.concurrency import run_in_threadpool

    from asvat.keys import load_hmac_key
    from asvat.policy import load_policy
    from asvat.recording_quality import CSV_COLUMNS, as_csv, parse_events, recording_quality
    from asvat.settings import load_settings

    body = await request.body()
    if len(body) > 50 * 1024 * 1024:
        raise HTTPException(413, "at most 50 MB of events at once")
    text = body.decode("utf-8", errors="replace")
    if "ndjson" in request.headers.get("content-type", ""):
        lines = text.splitlines()
    else:
        try:
            doc = _json.loads(text or "[]")
        except ValueError as exc:
            raise HTTPException(
                422, [{"loc": ["body"], "msg": f"not JSON: {exc}", "type": "json_invalid"}]
            ) from None
        if not isinstance(doc, list):
            doc = [doc]
        lines = [_json.dumps(item) for item in doc]

    def make() -> tuple[list[dict[str, Any]], int]:
        settings = load_settings()
        key, key_id = load_hmac_key(settings)
        policy = load_policy(settings.policy)
        events, bad = parse_events(lines, key=key, key_id=key_id)
        return recording_quality(events, policy), bad

    rows, bad = await run_in_threadpool(make)
    if format == "csv":
        return Response(as_csv(rows, CSV_COLUMNS), media_type="text/csv; charset=utf-8")
    return JSONResponse({"rows": rows, "count": len(rows), "invalid": bad})

"""HTTP routes of the API: escalations for the control room, assessments per incident,
and the health, readiness and metrics endpoints."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from services.api import service
from services.api.health import check_broker, check_database
from services.api.metrics import ApiMetrics
from services.api.service import MAX_LIST_LIMIT, SubjectType


@dataclass(frozen=True, slots=True)
class ApiState:
    """What the routes need, kept on ``app.state.api``."""

    engine: Engine
    session_factory: sessionmaker[Session]
    metrics: ApiMetrics
    bootstrap: str


def get_state(request: Request) -> ApiState:
    state: ApiState = request.app.state.api
    return state


def get_session(state: Annotated[ApiState, Depends(get_state)]) -> Iterator[Session]:
    with state.session_factory() as session:
        yield session


StateDep = Annotated[ApiState, Depends(get_state)]
SessionDep = Annotated[Session, Depends(get_session)]


class EscalationList(BaseModel):
    """Escalation payloads (``schemas/escalation.v1.json``), newest first."""

    items: list[dict[str, Any]] = Field(description="Escalation payloads, newest raised first.")
    count: int = Field(description="Number of items returned.")


router = APIRouter()


@router.get("/v1/escalations", response_model=EscalationList, tags=["escalations"])
def list_escalations(
    session: SessionDep,
    subject_type: Annotated[
        SubjectType | None, Query(description="Only victims or only locations.")
    ] = None,
    limit: Annotated[
        int, Query(ge=1, le=MAX_LIST_LIMIT, description="How many to return at most.")
    ] = 100,
) -> EscalationList:
    """Raised escalations, newest first by raised_at."""
    rows = service.list_escalations(session=session, subject_type=subject_type, limit=limit)
    return EscalationList(items=[row.payload for row in rows], count=len(rows))


@router.get("/v1/incidents/{incident_id}/assessment", tags=["assessments"])
def get_assessment(incident_id: str, session: SessionDep) -> dict[str, Any]:
    """The current assessment of one incident (``schemas/assessment.v1.json``)."""
    row = service.get_assessment(session=session, incident_id=incident_id)
    if row is None:
        raise HTTPException(
            status_code=404,
            detail=f"no assessment for incident {incident_id!r}: the repeat detector has not "
            "published one yet, or the API has not consumed it yet",
        )
    return row.payload


@router.get("/healthz", tags=["operations"])
async def healthz() -> dict[str, str]:
    """The process is up (says nothing about its dependencies: see /readyz)."""
    return {"status": "ok"}


@router.get("/readyz", tags=["operations"])
async def readyz(state: StateDep) -> JSONResponse:
    """200 when the database answers SELECT 1 and the broker a metadata request, else 503."""
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


@router.get("/metrics", tags=["operations"])
async def metrics(state: StateDep) -> Response:
    """Prometheus exposition text of this app's registry."""
    body, content_type = state.metrics.render()
    return Response(content=body, media_type=content_type)

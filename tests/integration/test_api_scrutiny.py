"""Scrutiny statistics (JSON, CSV, charts) and the recording-quality report through the API
on SQLite and PostgreSQL, against numbers worked out by hand on a small data set."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from api_fixtures import Api, example, sha256
from sqlalchemy import update

from services.api import plans, service
from services.api.models import Escalation, Plan

pytestmark = pytest.mark.anyio

NEWCASTLE, MONUMENT, SUNDERLAND = "E08000021", "E05011453", "E08000024"
POINTS = {"newcastle": (424560, 564921), "sunderland": (439800, 556900)}


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def assessment(
    n: int,
    day: str,
    where: str,
    cls: str,
    *,
    category: str | None = None,
    victim: str | None = None,
    rules: list[str] = (),  # type: ignore[assignment]
    case_review: bool = False,
    flags: int = 0,
) -> dict[str, Any]:
    e, north = POINTS[where]
    payload: dict[str, Any] = example("assessment.v1/location-and-case-review.json")
    return payload | {
        "incident_id": f"S-{n}",
        "assessment_id": sha256(f"scrutiny-{n}"),
        "location_key": f"bng:{e + n}:{north}",
        "victim_key": sha256(victim) if victim else None,
        "occurred_at": f"{day}T12:00:00Z",
        "classification": cls,
        "asb_category": category,
        "rules_met": list(rules),
        "case_review_threshold_met": case_review,
        "integrity_flags": [{"reason": "opening_code", "detail": "x"}] * flags,
    }


def escalation(n: int, where: str, raised: str, level: str | None, subject: str) -> dict[str, Any]:
    e, north = POINTS[where]
    key = f"bng:{e}:{north + n}" if subject == "location" else sha256(f"v{n}")
    payload: dict[str, Any] = {
        "schema": "asvat.escalation.v1",
        "escalation_id": sha256(f"scrutiny-esc-{n}"),
        "event": "raised",
        "subject_type": subject,
        "subject_key": key,
        "rule_id": "location-7d-100m" if subject == "location" else "victim-28d",
        "incident_id": f"S-{n}",
        "contributing_incident_ids": [f"S-{n}"],
        "occurred_at": raised,
        "raised_at": raised,
    }
    if level:
        payload["level"] = level
    return payload


def load(api: Api) -> None:
    assessments = [
        assessment(1, "2024-03-05", "newcastle", "asb", category="personal", victim="VA",
                   rules=["victim-28d"], case_review=True),
        assessment(2, "2024-03-06", "newcastle", "asb", category="nuisance", victim="VA",
                   rules=["victim-28d", "case-review"]),
        assessment(3, "2024-03-07", "newcastle", "crime", victim="VB"),
        assessment(4, "2024-03-08", "newcastle", "asb", category="personal",
                   rules=["location-7d-100m"], flags=1),
        assessment(5, "2024-03-09", "sunderland", "non_crime"),
        assessment(6, "2024-04-02", "sunderland", "asb", category="environmental", victim="VC",
                   rules=["victim-28d"]),
    ]  # fmt: skip
    escalations = [
        escalation(1, "newcastle", "2024-03-10T10:00:00Z", "medium", "location"),
        escalation(2, "newcastle", "2024-03-11T10:00:00Z", "high", "location"),
        escalation(6, "sunderland", "2024-04-03T10:00:00Z", None, "victim"),
    ]
    with api.app.state.api.writer_factory.begin() as session:
        service.upsert_assessments(session=session, payloads=assessments)
        service.record_escalations(session=session, payloads=escalations)
    at = datetime(2024, 3, 10, 12, tzinfo=UTC)  # acknowledged after 2 h and 4 h
    first, second = (plans.plan_id_for(sha256(f"scrutiny-esc-{n}")) for n in (1, 2))
    with api.app.state.api.writer_factory.begin() as session:
        session.execute(
            update(Escalation)
            .where(Escalation.escalation_id == sha256("scrutiny-esc-1"))
            .values(acknowledged_at=at, status="acknowledged")
        )
        session.execute(
            update(Escalation)
            .where(Escalation.escalation_id == sha256("scrutiny-esc-6"))
            .values(acknowledged_at=datetime(2024, 4, 3, 14, tzinfo=UTC))
        )
        session.execute(
            update(Plan)
            .where(Plan.plan_id == first)
            .values(
                opened_at=datetime(2024, 3, 12, tzinfo=UTC),
                closed_at=datetime(2024, 4, 20, tzinfo=UTC),
                status="closed",
                outcome="reduced",
            )
        )
        session.execute(
            update(Plan)
            .where(Plan.plan_id == second)
            .values(opened_at=datetime(2024, 3, 15, tzinfo=UTC))
        )


PARAMS = {"from": "2024-01-01", "to": "2024-06-30"}
ZERO = {
    "incidents": 0, "asb": 0, "crime": 0, "non_crime": 0, "other": 0, "asb_personal": 0,
    "asb_nuisance": 0, "asb_environmental": 0, "repeat_victims": 0, "repeat_locations": 0,
    "escalations_high": 0, "escalations_medium": 0, "escalations_standard": 0,
    "escalations_unrated": 0, "acknowledged": 0, "case_reviews": 0, "integrity_flagged": 0,
    "plans_opened": 0, "plans_closed": 0, "outcome_resolved": 0, "outcome_reduced": 0,
    "outcome_displaced": 0, "outcome_no_change": 0, "ack_hours_median": None,
    "ack_hours_mean": None,
}  # fmt: skip
NEWCASTLE_MARCH = ZERO | {
    "incidents": 4, "asb": 3, "crime": 1, "asb_personal": 2, "asb_nuisance": 1,
    "repeat_victims": 1, "repeat_locations": 1, "escalations_high": 1,
    "escalations_medium": 1, "acknowledged": 1, "case_reviews": 1, "integrity_flagged": 1,
    "plans_opened": 2, "ack_hours_median": 2.0, "ack_hours_mean": 2.0,
}  # fmt: skip


def row(rows: list[dict[str, Any]], period: str, code: str) -> dict[str, Any]:
    found = next(r for r in rows if r["period"] == period and r["area_code"] == code)
    return {k: v for k, v in found.items() if k in ZERO}


async def test_scrutiny_by_district_and_month(api: Api) -> None:
    load(api)
    answer = await api.client.get("/v1/scrutiny", params=PARAMS, headers=api.as_("viewer"))
    assert answer.status_code == 200, answer.text
    rows = answer.json()["rows"]
    assert [(r["period"], r["area_code"]) for r in rows] == [
        ("2024-03", NEWCASTLE),
        ("2024-03", SUNDERLAND),
        ("2024-03", "all"),
        ("2024-04", NEWCASTLE),
        ("2024-04", SUNDERLAND),
        ("2024-04", "all"),
    ]
    assert row(rows, "2024-03", NEWCASTLE) == NEWCASTLE_MARCH
    assert row(rows, "2024-03", SUNDERLAND) == ZERO | {"incidents": 1, "non_crime": 1}
    assert row(rows, "2024-04", NEWCASTLE) == ZERO | {"plans_closed": 1, "outcome_reduced": 1}
    assert row(rows, "2024-04", SUNDERLAND) == ZERO | {
        "incidents": 1,
        "asb": 1,
        "asb_environmental": 1,
        "repeat_victims": 1,
        "escalations_unrated": 1,
        "acknowledged": 1,
        "ack_hours_median": 4.0,
        "ack_hours_mean": 4.0,
    }
    march = row(rows, "2024-03", "all")
    assert (march["incidents"], march["non_crime"], march["plans_opened"]) == (5, 1, 2)


async def test_scrutiny_by_ward_and_quarter_as_csv(api: Api) -> None:
    load(api)
    params = PARAMS | {"level": "ward", "period": "quarter", "district": NEWCASTLE}
    answer = await api.client.get("/v1/scrutiny.csv", params=params, headers=api.as_("viewer"))
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(answer.text)))
    assert [(r["period"], r["area_code"]) for r in rows] == [
        ("2024-Q1", MONUMENT),
        ("2024-Q1", "all"),
        ("2024-Q2", MONUMENT),
        ("2024-Q2", "all"),
    ]
    q1 = rows[0]
    assert q1["area_name"] == "Monument"
    assert {k: q1[k] for k in ("incidents", "asb_personal", "repeat_victims", "plans_opened")} == {
        "incidents": "4",
        "asb_personal": "2",
        "repeat_victims": "1",
        "plans_opened": "2",
    }
    assert q1["ack_hours_median"] == "2.0" and rows[2]["ack_hours_median"] == ""


async def test_the_charts_page_is_drawn_by_the_server(api: Api) -> None:
    load(api)
    page = await api.client.get("/v1/scrutiny/charts", params=PARAMS, headers=api.as_("viewer"))
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.text.count("<svg") == 8 and "<script" not in page.text
    assert "Escalations raised by level" in page.text
    backwards = {"from": "2024-05-01", "to": "2024-01-01"}
    refused = await api.client.get(
        "/v1/scrutiny/charts", params=backwards, headers=api.as_("viewer")
    )
    assert refused.status_code == 422
    assert (await api.client.get("/v1/scrutiny")).status_code == 401


async def test_recording_quality_over_posted_events(api: Api) -> None:
    def event(n: int, seq: int, opening: str, closing: str | None, team: str) -> dict[str, Any]:
        return {
            "event_id": f"R-{n}-{seq}",
            "incident_id": f"R-{n}",
            "sequence": seq,
            "event_type": "closed" if closing else "opened",
            "occurred_at": "2024-03-10T21:00:00Z",
            "reported_at": "2024-03-10T21:05:00Z",
            "source": "101",
            "opening_code": opening,
            "closing_code": closing,
            "location": {"lat": 54.97, "lon": -1.61},
            "recorded_by": {"team": team, "operator_id": "OP-7"},
        }

    events = [
        event(1, 0, "ASBP", None, "Control A"),
        event(1, 1, "ASBP", "ASBP", "Control A"),
        event(2, 0, "HARS", "ASBP", "Control A"),  # into ASB, integrity flag
        event(3, 0, "DISP", None, "Online"),
    ]
    answer = await api.client.post(
        "/v1/reports/recording-quality", json=events, headers=api.as_("viewer")
    )
    assert answer.status_code == 200, answer.text
    rows = {r["team"]: r for r in answer.json()["rows"]}
    control = rows["Control A"]
    assert (control["incidents"], control["finalised"], control["same_class"]) == (2, 2, 1)
    assert (control["into_asb"], control["integrity_flagged"]) == (1, 1)
    assert control["same_class_rate"] == 0.5
    assert rows["Online"]["finalised"] == 0
    assert "OP-7" not in answer.text
    as_csv = await api.client.post(
        "/v1/reports/recording-quality",
        params={"format": "csv"},
        content="\n".join(__import__("json").dumps(e) for e in events),
        headers=api.as_("viewer") | {"content-type": "application/x-ndjson"},
    )
    assert as_csv.text.splitlines()[1] == "Control A,2024-03,2,2,1,1,1,0,1,0,0,0.5"


def test_periods_are_uk_time() -> None:
    from services.api.scrutiny import period_key

    midnight = datetime(2024, 6, 30, 23, 30, tzinfo=UTC)  # 00:30 on 1 July in BST
    assert period_key(midnight, "month") == "2024-07"
    assert period_key(midnight, "quarter") == "2024-Q3"
    assert period_key(midnight - timedelta(hours=1), "quarter") == "2024-Q2"

"""Problem-solving plans through the API on SQLite and PostgreSQL: opened once per location
escalation as it is stored, on request for a victim's; 422 naming what is missing; 403 for
a sign-off by a non-supervisor; closing with before-and-after counts; the report; and every
change in the audit trail."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from api_fixtures import Api, example, sha256
from sqlalchemy import select, update

from services.api import plans, service
from services.api.models import Plan

pytestmark = pytest.mark.anyio

E, N = 424560, 564921  # Newcastle, Monument ward
PLACE = f"bng:{E}:{N}"
VICTIM = sha256("victim-plan")
NOW = datetime.now(tz=UTC)


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def assessment(n: int, *, at: datetime, dx: int = 0, victim: str | None = None) -> dict[str, Any]:
    payload: dict[str, Any] = example("assessment.v1/location-and-case-review.json")
    return payload | {
        "incident_id": f"P-{n}",
        "assessment_id": sha256(f"plan-a{n}"),
        "location_key": f"bng:{E + dx}:{N}",
        "victim_key": victim,
        "occurred_at": iso(at),
    }


def escalation(subject: str, key: str, n: int = 1) -> dict[str, Any]:
    return {
        "schema": "asvat.escalation.v1",
        "escalation_id": sha256(f"plan-esc-{subject}-{n}"),
        "event": "raised",
        "subject_type": subject,
        "subject_key": key,
        "rule_id": "location-7d-100m" if subject == "location" else "victim-28d",
        "incident_id": "P-1",
        "contributing_incident_ids": ["P-1"],
        "occurred_at": iso(NOW - timedelta(days=1)),
        "raised_at": iso(NOW - timedelta(hours=1)),
    }


def store(api: Api, *, assessments: list[Any] = (), escalations: list[Any] = ()) -> None:  # type: ignore[assignment]
    with api.app.state.api.writer_factory.begin() as session:
        if assessments:
            service.upsert_assessments(session=session, payloads=assessments)
        if escalations:
            service.record_escalations(session=session, payloads=escalations)


async def location_plan(api: Api) -> dict[str, Any]:
    store(
        api,
        assessments=[
            assessment(1, at=NOW - timedelta(days=1)),
            # within 100 m, and of ASB (the example is a crime: no category)
            assessment(2, at=NOW - timedelta(days=2), dx=60)
            | {"classification": "asb", "asb_category": "nuisance"},
            assessment(3, at=NOW - timedelta(days=2), dx=150),  # beyond the radius
        ],
        escalations=[escalation("location", PLACE)],
    )
    listed = await api.client.get("/v1/plans", headers=api.as_("viewer"))
    assert listed.status_code == 200, listed.text
    (item,) = listed.json()["items"]
    detail = await api.client.get(f"/v1/plans/{item['plan_id']}", headers=api.as_("viewer"))
    assert detail.status_code == 200
    plan: dict[str, Any] = detail.json()["plan"]
    return plan


GOOD = {
    "problem_statement": "Stones thrown at buses at the Monument stop, Friday nights.",
    "analysis": "Unlit shelter; groups gather after the shops close.",
    "responses": [{"action": "Light the shelter", "owner": "Council", "due_date": "2026-12-01"}],
    "success_measure": "Half as many incidents in three months.",
}


async def test_a_location_escalation_opens_one_draft_with_scanning(api: Api) -> None:
    plan = await location_plan(api)
    assert plan["status"] == "draft" and plan["subject_key"] == PLACE
    assert plan["radius_m"] == 100 and plan["district"] == "E08000021"
    scanned = [i["incident_id"] for i in plan["scanning"]["incidents"]]
    assert scanned == ["P-1", "P-2"]  # newest first; P-3 is 150 m away
    assert [(i["classification"], i["asb_category"]) for i in plan["scanning"]["incidents"]] == [
        ("crime", None),
        ("asb", "nuisance"),
    ]
    assert plan["scanning"]["incidents"][0]["contributing"] is True
    assert plan["scanning"]["map_svg"].count("<title>") == 2
    assert len(plan["scanning"]["map_geojson"]["features"]) == 2
    assert plan["missing"] == ["problem_statement", "analysis", "responses", "success_measure"]
    # redelivery and a later upgrade of the same escalation: still one plan
    again = escalation("location", PLACE) | {"event": "upgraded", "level": "high"}
    store(api, escalations=[escalation("location", PLACE), again])
    with api.app.state.api.session_factory() as session:
        assert len(session.scalars(select(Plan)).all()) == 1


async def test_location_escalations_stored_together_open_a_plan_each_once(api: Api) -> None:
    store(api, assessments=[assessment(1, at=NOW - timedelta(days=1))])
    first, second, third = (
        escalation("location", f"bng:{E + 10 * n}:{N}", n) for n in (1, 2, 3)
    )
    store(api, escalations=[first, second])
    store(api, escalations=[second, third, first | {"event": "upgraded", "level": "high"}])
    with api.app.state.api.session_factory() as session:
        opened = {p.escalation_id: p for p in session.scalars(select(Plan))}
        audited = [
            e.detail["escalation_id"]
            for e in service.audit_trail(session=session)
            if e.action == "plan.open"
        ]
    assert set(opened) == {first["escalation_id"], second["escalation_id"], third["escalation_id"]}
    assert sorted(audited) == sorted(opened)  # one plan.open each, none repeated
    assert [i["incident_id"] for i in opened[first["escalation_id"]].scanning["incidents"]] == [
        "P-1"
    ]


async def test_submit_refuses_an_incomplete_plan_naming_the_fields(api: Api) -> None:
    plan = await location_plan(api)
    url = f"/v1/plans/{plan['plan_id']}"
    refused = await api.client.post(f"{url}/submit", headers=api.as_("operator"))
    assert refused.status_code == 422
    assert refused.json()["missing"] == [
        "problem_statement",
        "analysis",
        "responses",
        "success_measure",
    ]
    partial = GOOD | {"responses": [{"action": "Patrol", "owner": "PC 1"}]}
    assert (
        await api.client.patch(url, json=partial, headers=api.as_("operator"))
    ).status_code == 200
    refused = await api.client.post(f"{url}/submit", headers=api.as_("operator"))
    assert refused.status_code == 422 and refused.json()["missing"] == ["responses[0].due_date"]
    viewer = await api.client.patch(url, json=GOOD, headers=api.as_("viewer"))
    assert viewer.status_code == 403


async def test_the_whole_life_of_a_plan_with_before_and_after_counts(api: Api) -> None:
    plan = await location_plan(api)
    url = f"/v1/plans/{plan['plan_id']}"
    assert (await api.client.patch(url, json=GOOD, headers=api.as_("operator"))).status_code == 200
    submitted = await api.client.post(f"{url}/submit", headers=api.as_("operator"))
    assert submitted.status_code == 200 and submitted.json()["status"] == "submitted"
    early_close = await api.client.post(
        f"{url}/close",
        json={"outcome": "resolved", "evaluation": "x"},
        headers=api.as_("supervisor"),
    )
    assert early_close.status_code == 409
    by_operator = await api.client.post(f"{url}/sign-off", headers=api.as_("operator"))
    assert by_operator.status_code == 403
    signed = await api.client.post(
        f"{url}/sign-off", json={"next_review": "2030-01-31"}, headers=api.as_("supervisor")
    )
    assert signed.status_code == 200, signed.text
    assert signed.json()["status"] == "signed_off"
    assert signed.json()["signed_off_by"] == "test supervisor"
    assert signed.json()["review_due_at"].startswith("2030-01-31")

    # The plan opened 10 days ago: before = the 10 days before that.
    opened = NOW - timedelta(days=10)
    with api.app.state.api.writer_factory.begin() as session:
        session.execute(update(Plan).values(opened_at=opened))
    store(
        api,
        assessments=[
            assessment(11, at=opened - timedelta(days=9)),  # before
            assessment(12, at=opened - timedelta(days=1), dx=99),  # before, within 100 m
            assessment(13, at=opened - timedelta(days=11)),  # earlier than the before period
            assessment(14, at=opened - timedelta(days=3), dx=300),  # too far
            assessment(15, at=opened + timedelta(days=4)),  # after
        ],
    )
    # P-1 (1 day ago) and P-2 (2 days ago) are after too.
    no_outcome = await api.client.post(
        f"{url}/close", json={"evaluation": "fewer calls"}, headers=api.as_("supervisor")
    )
    assert no_outcome.status_code == 422 and no_outcome.json()["missing"] == ["outcome"]
    not_supervisor = await api.client.post(
        f"{url}/close",
        json={"outcome": "reduced", "evaluation": "fewer calls"},
        headers=api.as_("operator"),
    )
    assert not_supervisor.status_code == 403
    closed = await api.client.post(
        f"{url}/close",
        json={"outcome": "reduced", "evaluation": "fewer calls"},
        headers=api.as_("supervisor"),
    )
    assert closed.status_code == 200, closed.text
    done = closed.json()
    assert done["status"] == "closed" and done["outcome"] == "reduced"
    assert (done["incidents_before"], done["incidents_after"]) == (2, 3)
    assert done["before_after"]["change"] == 1
    late_edit = await api.client.patch(url, json=GOOD, headers=api.as_("operator"))
    assert late_edit.status_code == 409

    detail = (await api.client.get(url, headers=api.as_("viewer"))).json()
    actions = [a["action"] for a in reversed(detail["audit"])]
    assert actions == ["plan.open", "plan.update", "plan.submit", "plan.sign_off", "plan.close"]
    assert detail["audit"][0]["actor"] == "test supervisor"
    audit = await api.client.get("/v1/audit", headers=api.as_("supervisor"))
    assert sum(a["action"].startswith("plan.") for a in audit.json()) == 5


async def test_a_victim_plan_is_opened_on_request_once(api: Api) -> None:
    store(
        api,
        assessments=[
            assessment(1, at=NOW - timedelta(days=1), victim=VICTIM),
            assessment(2, at=NOW - timedelta(days=3), dx=900, victim=VICTIM),
        ],
        escalations=[escalation("victim", VICTIM)],
    )
    listed = await api.client.get("/v1/plans", headers=api.as_("viewer"))
    assert listed.json()["count"] == 0  # not automatic for a victim
    body = {"escalation_id": sha256("plan-esc-victim-1")}
    made = await api.client.post("/v1/plans", json=body, headers=api.as_("operator"))
    assert made.status_code == 201, made.text
    assert [i["incident_id"] for i in made.json()["scanning"]["incidents"]] == ["P-1", "P-2"]
    again = await api.client.post("/v1/plans", json=body, headers=api.as_("operator"))
    assert again.status_code == 200 and again.json()["plan_id"] == made.json()["plan_id"]
    missing = await api.client.post(
        "/v1/plans", json={"escalation_id": "nope"}, headers=api.as_("operator")
    )
    assert missing.status_code == 404
    victims = await api.client.get(
        "/v1/plans", params={"subject_type": "victim"}, headers=api.as_("viewer")
    )
    assert victims.json()["count"] == 1


async def test_the_report_lists_what_needs_attention(api: Api) -> None:
    keys = [f"bng:{E}:{N + 1000 * i}" for i in range(3)]
    store(api, escalations=[escalation("location", k, n=i) for i, k in enumerate(keys)])
    ids = [plans.plan_id_for(sha256(f"plan-esc-location-{i}")) for i in range(3)]
    for plan_id in ids[1:]:
        url = f"/v1/plans/{plan_id}"
        await api.client.patch(url, json=GOOD, headers=api.as_("operator"))
        assert (await api.client.post(f"{url}/submit", headers=api.as_("operator"))).is_success
    await api.client.post(f"/v1/plans/{ids[2]}/sign-off", headers=api.as_("supervisor"))
    with api.app.state.api.writer_factory.begin() as session:
        session.execute(
            update(Plan).where(Plan.plan_id == ids[2]).values(review_due_at=NOW - timedelta(days=1))
        )
    report = (await api.client.get("/v1/plans/report", headers=api.as_("viewer"))).json()
    assert report["counts"] == {
        "missing_detail": 1,
        "awaiting_supervision": 1,
        "overdue_for_evaluation": 1,
    }
    assert report["missing_detail"][0]["plan_id"] == ids[0]
    assert report["awaiting_supervision"][0]["plan_id"] == ids[1]
    assert report["overdue_for_evaluation"][0]["plan_id"] == ids[2]
    by_status = await api.client.get(
        "/v1/plans", params={"status": ["submitted", "signed_off"]}, headers=api.as_("viewer")
    )
    assert {i["plan_id"] for i in by_status.json()["items"]} == set(ids[1:])


async def test_plans_are_in_the_openapi_document(api: Api) -> None:
    doc = (await api.client.get("/openapi.json")).json()
    for path in ("/v1/plans", "/v1/plans/report", "/v1/plans/{plan_id}/close"):
        assert path in doc["paths"]
    assert "patch" in doc["paths"]["/v1/plans/{plan_id}"]

"""The REST API under /v1 on SQLite and PostgreSQL: escalation lists (filters, sorts,
cursor pages), details, handling with its audit trail, subjects' histories, areas,
statistics, hotspots and queues."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from api_fixtures import Api, example, sha256
from sqlalchemy import select

from services.api import service, statistics
from services.api.models import AreaCount

pytestmark = pytest.mark.anyio

NEWCASTLE, MONUMENT = "E08000021", "E05011453"
SUNDERLAND = "E08000024"
#: Grid points: Newcastle's Monument ward, Sunderland, and one out at sea (unassigned).
POINTS = {"newcastle": (424560, 564921), "sunderland": (439800, 556900), "sea": (460000, 560000)}
BASE = datetime(2024, 3, 1, tzinfo=UTC)


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def assessment(n: int, *, where: str = "newcastle", day: int = 0, **extra: Any) -> dict[str, Any]:
    easting, northing = POINTS[where]
    payload = example("assessment.v1/location-and-case-review.json") | {
        "incident_id": f"T-{n}",
        "assessment_id": sha256(f"a{n}{extra}"),
        "location_key": f"bng:{easting + n % 5}:{northing}",
        "victim_key": sha256(f"victim-{n % 3}"),
        "occurred_at": iso(BASE + timedelta(days=day, hours=n % 24)),
    }
    payload.update(extra)
    return payload


def escalation(
    n: int,
    *,
    level: str | None = None,
    subject: str = "location",
    where: str = "newcastle",
    event: str = "raised",
    minutes: int | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """An escalation message; with ``level`` in the shape risk levels will give it."""
    easting, northing = POINTS[where]
    key = f"bng:{easting}:{northing + n}" if subject == "location" else sha256(f"victim-{n}")
    payload: dict[str, Any] = {
        "schema": "asvat.escalation.v1",
        "escalation_id": sha256(f"esc-{n}"),
        "event": event,
        "subject_type": subject,
        "subject_key": key,
        "incident_id": f"T-{n}",
        "contributing_incident_ids": [f"T-{n}"],
        "occurred_at": iso(BASE + timedelta(hours=n)),
        "raised_at": iso(BASE + timedelta(minutes=n if minutes is None else minutes)),
    }
    if level is None:
        payload["rule_id"] = "location-7d-100m" if subject == "location" else "victim-28d"
    else:
        payload.update(level=level, risk_score=10 + n, reasons=[{"factor": "rule", "weight": 5}])
    payload.update(extra)
    return payload


def store(api: Api, *, assessments: list[Any] = (), escalations: list[Any] = ()) -> None:  # type: ignore[assignment]
    with api.app.state.api.writer_factory.begin() as session:
        if assessments:
            service.upsert_assessments(session=session, payloads=assessments)
        if escalations:
            service.record_escalations(session=session, payloads=escalations)


LEVELS = ["standard", "medium", "high"]


def many() -> list[dict[str, Any]]:
    """40 escalations: levels, subjects and places mixed; two raised at the same minute."""
    out = []
    for n in range(40):
        out.append(
            escalation(
                n,
                level=LEVELS[n % 3] if n % 4 else None,
                subject="victim" if n % 5 == 0 else "location",
                where=("newcastle", "sunderland", "sea")[(n // 3) % 3],
                minutes=7 if n in (7, 8) else n,
            )
        )
    return out


async def get_all(api: Api, **params: Any) -> list[dict[str, Any]]:
    """Every page of the list; checks each page's size and that the last says so."""
    items: list[dict[str, Any]] = []
    cursor = None
    for _ in range(100):
        query = dict(params, **({"cursor": cursor} if cursor else {}))
        response = await api.client.get("/v1/escalations", params=query, headers=api.as_("viewer"))
        assert response.status_code == 200, response.text
        page = response.json()
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items
        assert page["count"] == params["limit"]
    raise AssertionError("more than 100 pages")


async def test_lists_page_by_cursor_in_every_sort_without_gaps_or_repeats(api: Api) -> None:
    payloads = many()
    store(api, escalations=payloads)
    with api.app.state.api.session_factory() as session:
        rows = service.list_escalations(session=session, limit=500)
    by_id = {r.escalation_id: r for r in rows}
    assert len(by_id) == 40
    for sort in ("-raised_at", "raised_at", "-updated_at", "updated_at", "-level", "level"):
        listed = await get_all(api, sort=sort, limit=7)
        ids = [i["escalation_id"] for i in listed]
        assert len(ids) == len(set(ids)) == 40, sort
        keys = [service.sort_values(by_id[i], sort) for i in ids]
        assert keys == sorted(keys, reverse=sort.startswith("-")), sort

    high_here = await get_all(api, level="high", district=NEWCASTLE, limit=3)
    expected = {
        p["escalation_id"]
        for n, p in enumerate(payloads)
        if p.get("level") == "high" and (n // 3) % 3 == 0 and p["subject_type"] == "location"
    }
    assert {i["escalation_id"] for i in high_here} == expected and expected
    assert all(i["level"] == "high" and i["district"] == NEWCASTLE for i in high_here)
    victims = await get_all(api, subject_type="victim", limit=500)
    assert len(victims) == 8 and all(i["subject_type"] == "victim" for i in victims)
    # Victims' places come from their incidents' assessments: none stored, so unassigned.
    assert {i["district"] for i in victims} == {"unassigned"}
    sea = await get_all(api, district="unassigned", subject_type="location", limit=500)
    assert sea and all(i["location_key"] and i["lat"] for i in sea)
    window = await get_all(
        api,
        include_payload="true",
        raised_from=iso(BASE + timedelta(minutes=10)),
        raised_to=iso(BASE + timedelta(minutes=20)),
        limit=500,
    )
    slim = await get_all(
        api,
        raised_from=iso(BASE + timedelta(minutes=10)),
        raised_to=iso(BASE + timedelta(minutes=20)),
        limit=500,
    )
    assert len(slim) == len(window) and all("payload" not in i for i in slim)
    assert sorted(i["payload"]["raised_at"] for i in window) == sorted(
        p["raised_at"] for p in payloads if 10 <= int(p["raised_at"][14:16]) < 20
    )
    two = await get_all(api, level=["medium", "high"], limit=500)
    assert {i["level"] for i in two} == {"medium", "high"}
    assert len(await get_all(api, status="closed", limit=500)) == 0


async def test_bad_query_parameters_are_422_with_reasons(api: Api) -> None:
    store(api, escalations=many()[:5])
    first = (
        await api.client.get("/v1/escalations", params={"limit": 2}, headers=api.as_("viewer"))
    ).json()
    bad_queries = [
        {"level": "severe"},
        {"status": "pending"},
        {"limit": 0},
        {"sort": "colour"},
        {"raised_from": "2024-03-01T00:00:00"},  # no offset
        {"raised_from": "2024-03-02T00:00:00Z", "raised_to": "2024-03-01T00:00:00Z"},
        {"cursor": "not-a-cursor"},
        {"cursor": first["next_cursor"], "sort": "level"},  # a cursor of another sort
        {"district": "E99999999"},
        {"district": "'; drop table escalations; --"},
    ]
    for query in bad_queries:
        response = await api.client.get("/v1/escalations", params=query, headers=api.as_("viewer"))
        assert response.status_code == 422, (query, response.text)
        detail = response.json()["detail"]
        assert isinstance(detail, list) and detail[0]["msg"] and detail[0]["loc"], detail
    for path, query in [
        ("/v1/areas/statistics", {"period": "year"}),
        ("/v1/areas/statistics", {"from": "2024-02-01", "to": "2024-01-01"}),
        ("/v1/hotspots", {"cell_m": 1}),
        ("/v1/locations/uprn:1", {"radius_m": 5000}),
        ("/v1/queues/reviews", {"state": "soon"}),
    ]:
        response = await api.client.get(path, params=query, headers=api.as_("viewer"))
        assert response.status_code == 422, (path, query, response.text)


async def test_handling_an_escalation_leaves_an_audit_trail(api: Api) -> None:
    payload = escalation(1, level="medium")
    store(api, assessments=[assessment(1)], escalations=[payload])
    eid = payload["escalation_id"]
    ua = {"User-Agent": "control-room-screen/2"}

    async def act(role: str, action: str, body: Any = None) -> Any:
        return await api.client.post(
            f"/v1/escalations/{eid}/{action}", json=body, headers={**api.as_(role), **ua}
        )

    response = await act("operator", "acknowledge", {"note": "calling back"})
    assert response.status_code == 200, response.text
    done = response.json()
    assert done["escalation"]["status"] == "acknowledged"
    assert done["escalation"]["acknowledged_by"] == "test operator"
    assert (await act("operator", "acknowledge")).status_code == 409
    response = await act("operator", "assign", {"assignee_type": "team", "assignee": "NPT East"})
    assert response.json()["escalation"]["assignee"] == "NPT East"
    assert (
        await act("operator", "assign", {"assignee_type": "dog", "assignee": "x"})
    ).status_code == 422
    assert (await act("operator", "notes", {"text": "Spoke to the caller."})).status_code == 200
    assert (await act("operator", "close", {"outcome": "resolved"})).status_code == 403
    assert (await act("supervisor", "close", {"outcome": "maybe"})).status_code == 422
    response = await act("supervisor", "close", {"outcome": "resolved", "note": "Plan done."})
    assert response.json()["escalation"]["status"] == "closed"
    assert response.json()["escalation"]["outcome"] == "resolved"
    assert (
        await act("operator", "assign", {"assignee_type": "officer", "assignee": "1"})
    ).status_code == 409
    assert (await act("supervisor", "close", {"outcome": "resolved"})).status_code == 409
    missing = await api.client.post(
        "/v1/escalations/nothing/acknowledge", headers=api.as_("operator")
    )
    assert missing.status_code == 404

    detail = (await api.client.get(f"/v1/escalations/{eid}", headers=api.as_("viewer"))).json()
    actions = [(e["action"], e["actor"]) for e in reversed(detail["audit"])]
    assert actions == [
        ("escalation.acknowledge", "test operator"),
        ("escalation.assign", "test operator"),
        ("escalation.note", "test operator"),
        ("escalation.close", "test supervisor"),
    ]
    assert all(
        e["user_agent"] == "control-room-screen/2" and e["client_ip"] for e in detail["audit"]
    )
    note = next(e for e in detail["audit"] if e["action"] == "escalation.note")
    assert note["detail"]["text"] == "Spoke to the caller."
    kinds = [e["kind"] for e in detail["events"]]
    assert kinds == ["raised", "acknowledged", "assigned", "noted", "closed"]
    ids = [e["event_id"] for e in detail["events"]]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all("text" not in e["detail"] for e in detail["events"])  # notes stay in the audit
    assert detail["escalation"]["event_id"] == ids[-1]
    assert [i["incident_id"] for i in detail["incidents"]] == ["T-1"]
    assert detail["escalation"]["reasons"] == [{"factor": "rule", "weight": 5}]


async def test_raised_then_upgraded_and_redelivered(api: Api) -> None:
    raised = escalation(2, level="medium", event_id="e" * 64)
    upgraded = raised | {
        "event": "upgraded",
        "event_id": "f" * 64,
        "level": "high",
        "previous_level": "medium",
        "risk_score": 30,
        "incident_id": "T-3",
        "tasking": {
            "level": "high",
            "actions": [{"id": "visit", "description": "Visit", "due_at": "2024-03-02T00:00:00Z"}],
            "reviews": [
                {"rank": "sergeant", "every": "14d", "first_due_at": "2020-01-01T00:00:00Z"},
                {"rank": "inspector", "every": "28d", "first_due_at": "2999-01-01T00:00:00Z"},
            ],
        },
    }
    store(api, escalations=[raised, raised, upgraded])
    store(api, escalations=[upgraded, raised])  # redeliveries change nothing
    detail = (
        await api.client.get(
            f"/v1/escalations/{raised['escalation_id']}", headers=api.as_("viewer")
        )
    ).json()
    summary = detail["escalation"]
    assert (summary["level"], summary["risk_score"], summary["incident_id"]) == ("high", 30, "T-3")
    assert summary["actions"][0]["id"] == "visit"
    assert [e["kind"] for e in detail["events"]] == ["raised", "upgraded"]
    assert {r["rank"] for r in detail["reviews"]} == {"sergeant", "inspector"}

    overdue = (
        await api.client.get(
            "/v1/queues/reviews", params={"state": "overdue"}, headers=api.as_("viewer")
        )
    ).json()
    assert [(i["review"]["rank"], i["overdue"]) for i in overdue["items"]] == [("sergeant", True)]
    response = await api.client.post(
        f"/v1/escalations/{raised['escalation_id']}/sign-off",
        json={"rank": "sergeant", "note": "Reviewed the plan."},
        headers=api.as_("supervisor"),
    )
    assert response.status_code == 200, response.text
    after = (
        await api.client.get(
            "/v1/queues/reviews", params={"state": "overdue"}, headers=api.as_("viewer")
        )
    ).json()
    assert after["items"] == []
    wrong_rank = await api.client.post(
        f"/v1/escalations/{raised['escalation_id']}/sign-off",
        json={"rank": "chief_inspector"},
        headers=api.as_("supervisor"),
    )
    assert wrong_rank.status_code == 409


async def test_a_victim_escalation_gets_its_place_when_the_assessment_arrives(api: Api) -> None:
    victim = escalation(5, subject="victim", level="high")
    store(api, escalations=[victim])  # before the incident's assessment
    first = (await get_all(api, limit=500))[0]
    assert first["district"] == "unassigned"
    store(api, assessments=[assessment(5, where="sunderland")])
    placed = (await get_all(api, district=SUNDERLAND, limit=500))[0]
    assert placed["escalation_id"] == victim["escalation_id"]
    assert placed["last_event"] == "located"
    stats = (
        await api.client.get(
            "/v1/areas/statistics",
            params={"from": "2024-03-01", "to": "2024-03-31"},
            headers=api.as_("viewer"),
        )
    ).json()
    escalations = {r["area_code"]: r["escalations"] for r in stats["rows"]}
    assert escalations.get(SUNDERLAND) == 1 and escalations.get("unassigned", 0) == 0


async def test_area_statistics_follow_every_change_and_match_a_recount(api: Api) -> None:
    first = [
        assessment(n, where=("newcastle", "sunderland", "sea")[n % 3], day=n % 40)
        for n in range(30)
    ]
    store(api, assessments=first, escalations=many()[:12])
    # Re-issued: reclassified, moved, or now meeting a rule; and redelivered unchanged.
    changed = [
        first[0] | {"classification": "asb", "assessment_id": "1" * 64},
        first[1] | {"location_key": "bng:424560:564921", "assessment_id": "2" * 64},
        first[2] | {"rules_met": [], "in_scope": False, "classification": "other"},
        first[3],
    ]
    store(api, assessments=changed)
    with api.app.state.api.session_factory() as session:
        incremental = {
            (r.area_level, r.period_kind, r.period, r.area_code): tuple(
                getattr(r, c) for c in statistics.COUNTS
            )
            for r in session.scalars(select(AreaCount))
        }
    with api.app.state.api.writer_factory.begin() as session:
        statistics.recount(session)
    with api.app.state.api.session_factory() as session:
        recounted = {
            (r.area_level, r.period_kind, r.period, r.area_code): tuple(
                getattr(r, c) for c in statistics.COUNTS
            )
            for r in session.scalars(select(AreaCount))
        }
    assert {k: v for k, v in incremental.items() if any(v)} == recounted

    params = {"from": "2024-03-01", "to": "2024-04-30", "period": "month", "level": "district"}
    body = (
        await api.client.get("/v1/areas/statistics", params=params, headers=api.as_("viewer"))
    ).json()
    rows = body["rows"]
    assert sum(r["incidents"] for r in rows) == 30
    assert {r["area_code"] for r in rows} == {NEWCASTLE, SUNDERLAND, "unassigned"}
    newcastle = [r for r in rows if r["area_code"] == NEWCASTLE]
    assert newcastle[0]["area_name"] == "Newcastle upon Tyne"
    wards = (
        await api.client.get(
            "/v1/areas/statistics",
            params={**params, "level": "ward", "district": NEWCASTLE, "period": "week"},
            headers=api.as_("viewer"),
        )
    ).json()["rows"]
    assert wards and all(r["district_code"] == NEWCASTLE for r in wards)
    assert all("-W" in r["period"] for r in wards)
    response = await api.client.get(
        "/v1/areas/statistics", params={**params, "format": "csv"}, headers=api.as_("viewer")
    )
    assert response.headers["content-type"].startswith("text/csv")
    parsed = list(csv.DictReader(io.StringIO(response.text)))
    assert [(r["period"], r["area_code"], int(r["incidents"])) for r in parsed] == [
        (r["period"], r["area_code"], r["incidents"]) for r in rows
    ]
    by_accept = await api.client.get(
        "/v1/areas/statistics", params=params, headers={**api.as_("viewer"), "Accept": "text/csv"}
    )
    assert by_accept.text == response.text


async def test_hotspots_subjects_and_queues(api: Api) -> None:
    cluster = [assessment(n, day=1) for n in range(6)]  # within 5 m of one point
    flagged = assessment(
        50,
        where="sunderland",
        day=2,
        case_review_threshold_met=True,
        integrity_flags=[{"reason": "description", "offence": "criminal_damage", "detail": "x"}],
        risk_level="high",
        risk_score=25,
    )
    store(api, assessments=[*cluster, flagged, assessment(51, where="sea", day=3)])
    viewer = api.as_("viewer")
    spots = (
        await api.client.get(
            "/v1/hotspots",
            params={
                "from": "2024-01-01T00:00:00Z",
                "to": "2024-06-01T00:00:00Z",
                "min_incidents": 2,
            },
            headers=viewer,
        )
    ).json()
    assert spots["type"] == "FeatureCollection"
    [spot] = spots["features"]
    assert spot["properties"]["incidents"] == 6 and spot["properties"]["district"] == NEWCASTLE
    lon, lat = spot["geometry"]["coordinates"]
    assert 54.9 < lat < 55.1 and -1.7 < lon < -1.5

    place = (
        await api.client.get(f"/v1/locations/{cluster[0]['location_key']}", headers=viewer)
    ).json()
    assert [i["incident_id"] for i in place["incidents"]] == ["T-5", "T-0"]
    near = (
        await api.client.get(
            f"/v1/locations/{cluster[0]['location_key']}", params={"radius_m": 10}, headers=viewer
        )
    ).json()
    assert len(near["incidents"]) == 6 and near["monthly"] == [{"month": "2024-03", "incidents": 6}]

    victim = (await api.client.get(f"/v1/victims/{flagged['victim_key']}", headers=viewer)).json()
    assert "T-50" in [i["incident_id"] for i in victim["incidents"]]
    assert all(set(i) >= {"victim_key", "location_key"} for i in victim["incidents"])

    reviews = (await api.client.get("/v1/queues/case-reviews", headers=viewer)).json()
    assert reviews["items"] == [
        {
            "victim_key": flagged["victim_key"],
            "incidents_meeting": 1,
            "latest": "2024-03-03T02:00:00Z",
        }
    ]
    integrity = (await api.client.get("/v1/queues/integrity-flags", headers=viewer)).json()
    assert [i["incident"]["incident_id"] for i in integrity["items"]] == ["T-50"]
    assert integrity["items"][0]["integrity_flags"][0]["offence"] == "criminal_damage"
    assert integrity["items"][0]["incident"]["risk_level"] == "high"
    areas = (await api.client.get("/v1/areas", params={"level": "ward"}, headers=viewer)).json()
    assert len(areas) == 177
    shapes = await api.client.get("/v1/areas/district/boundaries", headers=viewer)
    assert shapes.headers["content-type"] == "application/geo+json"
    assert len(shapes.json()["features"]) == 6

"""The API's database functions and HTTP routes on SQLite and on PostgreSQL.

PostgreSQL must be running on 127.0.0.1:5432 with trust authentication (database ``test``);
each test gets its own schema, dropped afterwards.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from api_fixtures import NO_BROKER, Api, example
from fastapi import FastAPI
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from asvat.settings import TOPIC_ASSESSMENTS, TOPIC_ESCALATIONS, Settings
from services.api import migrate, service
from services.api.app import create_app
from services.api.consumer import DatabaseUnavailable, Message, store_batch
from services.api.db import make_engine, make_session_factory
from services.api.main import bind_socket, run
from services.api.models import Assessment, Escalation

pytestmark = pytest.mark.anyio


@pytest.fixture
def sessions(database_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(database_url)
    migrate.upgrade(engine)
    try:
        yield make_session_factory(engine)
    finally:
        engine.dispose()


def escalation(subject_type: str, subject: str, rule: str, raised_at: str) -> dict[str, Any]:
    """A schema-valid escalation with a deterministic id, raised at ``raised_at``."""
    subject_key = (
        hashlib.sha256(subject.encode()).hexdigest() if subject_type == "victim" else subject
    )
    return {
        "schema": "asvat.escalation.v1",
        "escalation_id": hashlib.sha256(
            f"{subject_type}|{subject_key}|{rule}".encode()
        ).hexdigest(),
        "event": "raised",
        "subject_type": subject_type,
        "subject_key": subject_key,
        "rule_id": rule,
        "incident_id": f"NB-{subject}",
        "contributing_incident_ids": ["NB-0", f"NB-{subject}"],
        "occurred_at": "2024-03-01T21:00:00Z",
        "raised_at": raised_at,
    }


# Out of order on purpose; the +01:00 one is 2024-03-02T09:30Z, the newest instant, though
# its text sorts before the others'.
LISTED = [
    escalation("victim", "a", "victim-28d", "2024-03-02T08:00:00Z"),
    escalation("location", "uprn:1", "location-7d-100m", "2024-03-01T12:00:00Z"),
    escalation("victim", "b", "case-review", "2024-03-02T10:30:00+01:00"),
    escalation("location", "bng:1:2", "location-7d-100m", "2024-03-02T09:00:00.5Z"),
]
NEWEST_FIRST = [LISTED[2], LISTED[3], LISTED[0], LISTED[1]]


# -- service --------------------------------------------------------------------------


def test_upsert_twice_keeps_one_row_with_the_latest_payload(
    sessions: sessionmaker[Session],
) -> None:
    first = example("assessment.v1/victim-repeat.json")
    second = copy.deepcopy(first)
    second.update(
        assessment_id="0" * 64,
        rules_met=["case-review", "victim-28d"],
        assessed_at="2024-03-05T10:00:00Z",
    )
    with sessions.begin() as session:
        service.upsert_assessment(session=session, payload=first)
    with sessions.begin() as session:
        service.upsert_assessment(session=session, payload=second)
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Assessment)) == 1
        row = service.get_assessment(session=session, incident_id=first["incident_id"])
        assert row is not None
        assert row.payload == second
        assert row.assessment_id == "0" * 64
        assert row.rules_met == ["case-review", "victim-28d"]
        assert row.occurred_at == datetime(2024, 3, 1, 21, 15, tzinfo=UTC)
        assert row.occurred_at.tzinfo is not None
        assert row.updated_at.tzinfo is not None
        assert row.victim_key == first["victim_key"]
        assert row.location_key == "uprn:100012345678"


def test_upserts_in_one_transaction_last_one_wins(sessions: sessionmaker[Session]) -> None:
    first = example("assessment.v1/victim-repeat.json")
    other = example("assessment.v1/cancelled-anonymous.json")
    last = {**first, "rules_met": []}
    with sessions.begin() as session:
        assert service.upsert_assessments(session=session, payloads=[first, other, last]) == 2
    with sessions() as session:
        row = service.get_assessment(session=session, incident_id=first["incident_id"])
        assert row is not None and row.payload == last
        anonymous = service.get_assessment(session=session, incident_id=other["incident_id"])
        assert anonymous is not None
        assert (anonymous.victim_key, anonymous.location_key) == (None, None)
        assert service.get_assessment(session=session, incident_id="NB-nothing") is None


def test_record_escalation_is_idempotent(sessions: sessionmaker[Session]) -> None:
    payload = example("escalation.v1/victim-28d.json")
    redelivery = {**payload, "raised_at": "2024-03-09T00:00:00Z"}
    with sessions.begin() as session:
        assert service.record_escalation(session=session, payload=payload) is True
    with sessions.begin() as session:
        assert service.record_escalation(session=session, payload=redelivery) is False
    with sessions.begin() as session:  # twice in one batch: stored once
        other = example("escalation.v1/location-7d-100m.json")
        assert service.record_escalations(session=session, payloads=[other, other, payload]) == 1
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Escalation)) == 2
        stored = session.get(Escalation, payload["escalation_id"])
        assert stored is not None
        assert stored.payload == payload  # the first delivery is kept
        assert stored.raised_at == datetime(2024, 3, 1, 21, 15, 2, 120000, tzinfo=UTC)
        assert stored.received_at.tzinfo is not None


def test_the_latest_message_of_an_escalation_sets_its_review_schedule(
    sessions: sessionmaker[Session],
) -> None:
    def reviews(*ranks: str) -> dict[str, Any]:
        due = "2024-03-08T00:00:00Z"
        items = [{"rank": r, "every": "7d", "first_due_at": due} for r in ranks]
        return {"tasking": {"level": "high", "actions": [], "reviews": items}}

    raised = escalation("victim", "r", "victim-28d", "2024-03-02T08:00:00Z") | reviews("sergeant")
    upgraded = raised | {"event": "upgraded", "level": "high"} | reviews("inspector", "chief")
    other = escalation("victim", "s", "victim-28d", "2024-03-02T08:00:00Z") | reviews("sergeant")

    def ranks(escalation_id: str) -> list[str]:
        with sessions() as session:
            found = service.reviews_of(session=session, escalation_id=escalation_id)
            return sorted(r.rank for r in found)

    with sessions.begin() as session:  # raised and upgraded in one batch: the upgrade's wins
        assert service.record_escalations(session=session, payloads=[raised, other, upgraded]) == 3
    assert ranks(raised["escalation_id"]) == ["chief", "inspector"]
    assert ranks(other["escalation_id"]) == ["sergeant"]
    closed = {k: v for k, v in raised.items() if k not in ("tasking", "level")}
    closed["event"] = "closed"
    with sessions.begin() as session:  # a message without a schedule keeps the one stored
        assert service.record_escalations(session=session, payloads=[closed]) == 1
    assert ranks(raised["escalation_id"]) == ["chief", "inspector"]
    again = raised | {"event": "upgraded", "level": "high", "event_id": "9" * 64}
    with sessions.begin() as session:  # a later batch replaces it
        assert service.record_escalations(session=session, payloads=[again]) == 1
    assert ranks(raised["escalation_id"]) == ["sergeant"]


def test_list_escalations_newest_first_filtered_and_limited(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        assert service.record_escalations(session=session, payloads=LISTED) == 4
    with sessions() as session:

        def ids(**query: Any) -> list[str]:
            rows = service.list_escalations(session=session, **query)
            return [row.escalation_id for row in rows]

        assert ids() == [e["escalation_id"] for e in NEWEST_FIRST]
        assert ids(subject_type="victim") == [
            LISTED[2]["escalation_id"],
            LISTED[0]["escalation_id"],
        ]
        assert ids(subject_type="location") == [
            LISTED[3]["escalation_id"],
            LISTED[1]["escalation_id"],
        ]
        assert ids(limit=1) == [LISTED[2]["escalation_id"]]
        with pytest.raises(ValueError, match="limit"):
            service.list_escalations(session=session, limit=0)


def test_payload_that_cannot_be_stored_names_the_field(sessions: sessionmaker[Session]) -> None:
    payload = example("escalation.v1/victim-28d.json")
    payload["raised_at"] = "yesterday"
    with sessions.begin() as session, pytest.raises(service.PayloadError, match="raised_at"):
        service.record_escalation(session=session, payload=payload)


def test_store_batch_sets_aside_only_what_cannot_be_stored(
    sessions: sessionmaker[Session], database_url: str
) -> None:
    kept = example("assessment.v1/victim-repeat.json")
    also_kept = example("escalation.v1/victim-28d.json")
    location = example("escalation.v1/location-7d-100m.json")
    year_zero = location | {"occurred_at": "0000-01-01T00:00:00Z"}
    # PostgreSQL text and JSONB refuse NUL characters; SQLite stores them.
    nul = location | {"escalation_id": "e" * 64, "contributing_incident_ids": ["NB-\u0000"]}
    messages = [
        Message(TOPIC_ASSESSMENTS, 0, 10, kept),
        Message(TOPIC_ESCALATIONS, 1, 20, year_zero),
        Message(TOPIC_ESCALATIONS, 1, 21, nul),
        Message(TOPIC_ESCALATIONS, 1, 22, also_kept),
    ]
    rejected = store_batch(sessions, messages)
    on_postgres = database_url.startswith("postgresql")
    assert [bad.offset for bad in rejected] == ([20, 21] if on_postgres else [20])
    assert "occurred_at" in rejected[0].reason
    with sessions() as session:
        assert service.get_assessment(session=session, incident_id=kept["incident_id"])
        assert session.get(Escalation, also_kept["escalation_id"]) is not None
        assert (session.get(Escalation, "e" * 64) is None) == on_postgres


def test_store_batch_tells_an_unavailable_database_from_a_bad_row() -> None:
    engine = make_engine("postgresql+psycopg://postgres@127.0.0.1:9/nothing")
    message = Message(TOPIC_ESCALATIONS, 0, 0, example("escalation.v1/victim-28d.json"))
    try:
        with pytest.raises(DatabaseUnavailable):
            store_batch(make_session_factory(engine), [message])
    finally:
        engine.dispose()


# -- HTTP -----------------------------------------------------------------------------


@pytest.fixture
async def client(api: Api) -> httpx.AsyncClient:
    """The app's client with a viewer token, the database seeded with LISTED."""
    seed(api.app)
    api.client.headers.update(api.as_("viewer"))
    return api.client


def seed(app: FastAPI) -> None:
    with app.state.api.session_factory.begin() as session:
        service.record_escalations(session=session, payloads=LISTED)
        service.upsert_assessment(
            session=session, payload=example("assessment.v1/victim-repeat.json")
        )


async def test_http_escalations(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/escalations", params={"include_payload": "true"})
    assert response.status_code == 200
    body = response.json()
    assert [item["payload"] for item in body["items"]] == NEWEST_FIRST
    assert body["count"] == 4
    assert body["next_cursor"] is None
    first = body["items"][0]
    assert first["escalation_id"] == NEWEST_FIRST[0]["escalation_id"]
    assert (first["status"], first["level"], first["rule_id"]) == ("open", None, "case-review")
    assert first["raised_at"] == "2024-03-02T09:30:00Z"

    response = await client.get(
        "/v1/escalations",
        params={"subject_type": "location", "limit": 1, "include_payload": "true"},
    )
    body = response.json()
    assert [item["payload"] for item in body["items"]] == [LISTED[3]]
    assert body["count"] == 1 and body["next_cursor"]

    for bad in ({"limit": 0}, {"limit": 501}, {"limit": "many"}, {"subject_type": "street"}):
        response = await client.get("/v1/escalations", params=bad)
        assert response.status_code == 422, bad
    response = await client.get("/v1/escalations", params={"limit": 500})
    assert response.status_code == 200


async def test_http_assessment(client: httpx.AsyncClient) -> None:
    expected = example("assessment.v1/victim-repeat.json")
    response = await client.get("/v1/incidents/NB-2024-000123/assessment")
    assert response.status_code == 200
    assert response.json() == expected

    response = await client.get("/v1/incidents/NB-9999/assessment")
    assert response.status_code == 404
    assert "no assessment for incident 'NB-9999'" in response.json()["detail"]


async def test_http_health_readiness_and_metrics(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})

    response = await client.get("/readyz")  # the database answers, no broker listens
    assert response.status_code == 503
    body = response.json()
    assert body["failed"] == ["broker"]
    assert body["checks"]["database"] == "ok"
    assert NO_BROKER in body["checks"]["broker"]

    await client.get("/v1/incidents/NB-9999/assessment")
    await client.get("/nowhere")
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert (
        'asvat_api_requests_total{method="GET",route="/v1/incidents/{incident_id}/assessment",'
        'status="404"} 1.0' in text
    )
    assert 'asvat_api_requests_total{method="GET",route="/readyz",status="503"} 1.0' in text
    assert 'route="<unmatched>",status="404"' in text
    assert 'asvat_api_request_seconds_count{route="/healthz",status="200"} 1.0' in text
    assert 'asvat_api_messages_consumed_total{topic="asvat.assessments.v1"} 0.0' in text
    assert 'asvat_api_messages_invalid_total{topic="asvat.escalations.v1"} 0.0' in text


async def test_readyz_names_the_database_when_it_does_not_answer(
    settings_factory: Callable[..., Settings],
) -> None:
    app = create_app(
        settings_factory(
            database_url="postgresql+psycopg://postgres@127.0.0.1:9/nothing",
            kafka_bootstrap=NO_BROKER,
        ),
        start_consumer=False,
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        response = await client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["failed"] == ["database", "broker"]


def test_main_refuses_a_port_in_use(
    capsys: pytest.CaptureFixture[str], settings_factory: Callable[..., Settings]
) -> None:
    taken = bind_socket("127.0.0.1", 0)
    port = taken.getsockname()[1]
    try:
        with pytest.raises(SystemExit) as exit_info:
            run(settings_factory(api_host="127.0.0.1", api_port=port))
    finally:
        taken.close()
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert f"port {port}" in err[0]


async def test_startup_names_a_database_that_does_not_answer(
    settings_factory: Callable[..., Settings],
) -> None:
    app = create_app(
        settings_factory(database_url="postgresql+psycopg://postgres:secret@127.0.0.1:9/nothing"),
        start_consumer=False,
    )
    with pytest.raises(RuntimeError, match="ASVAT_DATABASE_URL") as raised:
        async with app.router.lifespan_context(app):
            pass
    assert "127.0.0.1:9" in str(raised.value)
    assert "secret" not in str(raised.value)

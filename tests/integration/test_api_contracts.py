"""The contracts' current examples (``schemas/examples``) go through the consumer's write
path and come back out of the API, on SQLite and PostgreSQL: whatever the repeat detector
publishes in the documented shape, the API stores and serves, with what it adds (level,
risk, reasons, tasking, reviews, case review, integrity flags)."""

from __future__ import annotations

import pytest
from api_fixtures import Api, current_examples

from asvat.contracts import validate_against
from asvat.settings import TOPIC_ASSESSMENTS, TOPIC_ESCALATIONS
from services.api.consumer import Message, store_batch

pytestmark = pytest.mark.anyio


async def test_every_current_example_is_stored_and_served(api: Api) -> None:
    assessments = current_examples("assessment.v1")
    escalations = current_examples("escalation.v1")
    assert assessments and escalations
    for payload in assessments:
        assert validate_against("assessment.v1", payload) == []
    for payload in escalations:
        assert validate_against("escalation.v1", payload) == []
    messages = [
        *(Message(TOPIC_ASSESSMENTS, 0, n, p) for n, p in enumerate(assessments)),
        *(Message(TOPIC_ESCALATIONS, 0, n, p) for n, p in enumerate(escalations)),
    ]
    assert store_batch(api.app.state.api.writer_factory, messages) == []
    viewer = api.as_("viewer")
    for payload in assessments:
        response = await api.client.get(
            f"/v1/incidents/{payload['incident_id']}/assessment", headers=viewer
        )
        assert response.status_code == 200
        assert response.json()["incident_id"] == payload["incident_id"]
    listed = (await api.client.get("/v1/escalations", headers=viewer)).json()["items"]
    by_id = {item["escalation_id"]: item for item in listed}
    for payload in escalations:
        item = by_id[payload["escalation_id"]]
        if payload.get("level") is not None:
            assert item["level"] in ("medium", "high", "standard")
        if payload.get("reasons"):
            assert item["reasons"]
    # Escalations seen again (a redelivery) change nothing.
    assert store_batch(api.app.state.api.writer_factory, messages) == []
    again = (await api.client.get("/v1/escalations", headers=viewer)).json()["items"]
    assert [i["event_id"] for i in again] == [i["event_id"] for i in listed]

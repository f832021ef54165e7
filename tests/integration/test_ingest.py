"""The ingest service against a real embedded broker: accept, refuse, report, recover."""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import TEST_HMAC_KEY, TopicRecord, free_port, issue_token
from fastapi.testclient import TestClient

from asvat.auth import hash_token
from asvat.contracts import validate_against
from asvat.domain.identity import victim_key
from asvat.embedded.broker import EmbeddedBroker
from asvat.settings import TOPIC_INCIDENTS, Settings
from services.ingest.app import MAX_BODY_BYTES, create_app
from services.ingest.main import run
from services.ingest.publisher import KafkaPublisher

Reader = Callable[..., list[TopicRecord]]
SettingsFactory = Callable[..., Settings]

PHONE_SPELLINGS = ("07412 345678", "+44 7412 345678", "447412345678")
RAW_CALLER = {
    "phone": PHONE_SPELLINGS[0],
    "name": "Quentin Raw-Caller",
    "date_of_birth": "1971-08-09",
    "postcode": "NE99 9ZZ",
}


def incident(
    incident_id: str | None = None, *, sequence: int = 0, caller: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A valid raw incident.v1 event with unique ids."""
    incident_id = incident_id or f"NB-TEST-{uuid.uuid4().hex[:12]}"
    event: dict[str, Any] = {
        "event_id": f"{incident_id}-{sequence}-{uuid.uuid4().hex[:6]}",
        "incident_id": incident_id,
        "sequence": sequence,
        "event_type": "opened" if sequence == 0 else "updated",
        "occurred_at": "2024-03-01T21:15:00Z",
        "reported_at": "2024-03-01T21:17:00Z",
        "source": "999",
        "opening_code": "ASBP",
        "location": {"lat": 54.97328, "lon": -1.61396},
        "vulnerability": ["isolation"],
        "description": "Youths kicking the door.",
    }
    if caller is not None:
        event["caller"] = caller
    return event


def unique_topic() -> str:
    return f"asvat.test.incidents.{uuid.uuid4().hex[:10]}"


class Ingest:
    """An ingest app on a real publisher, and what it needs to be checked."""

    def __init__(self, settings: Settings, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self.bootstrap = bootstrap
        self.publisher = KafkaPublisher(
            bootstrap,
            topic=topic,
            partitions=settings.topic_partitions,
            timeout=settings.publish_timeout_seconds,
        )
        self.app = create_app(settings, self.publisher)
        self.database_url = settings.resolved_database_url
        self.token = issue_token(self.database_url, "ingest")
        self.client = TestClient(self.app, headers={"Authorization": f"Bearer {self.token}"})

    def post(self, body: Any) -> Any:
        return self.client.post("/v1/incidents", json=body)

    def post_raw(self, body: bytes, content_type: str) -> Any:
        return self.client.post(
            "/v1/incidents", content=body, headers={"Content-Type": content_type}
        )

    def close(self) -> None:
        self.client.close()
        self.publisher.close()


@pytest.fixture
def make_ingest(settings_factory: SettingsFactory) -> Iterator[Callable[..., Ingest]]:
    made: list[Ingest] = []

    def factory(bootstrap: str, topic: str | None = None, **overrides: Any) -> Ingest:
        settings = settings_factory(kafka_bootstrap=bootstrap, **overrides)
        ingest = Ingest(settings, bootstrap, topic or unique_topic())
        made.append(ingest)
        return ingest

    yield factory
    for ingest in made:
        ingest.close()


def test_accepted_records_are_on_the_topic_pseudonymised(
    broker: EmbeddedBroker, make_ingest: Callable[..., Ingest], read_topic: Reader
) -> None:
    ingest = make_ingest(broker.bootstrap, TOPIC_INCIDENTS)
    shared = f"NB-TEST-{uuid.uuid4().hex[:12]}"
    events = [
        incident(shared, sequence=0, caller=dict(RAW_CALLER)),
        incident(shared, sequence=1, caller={"phone": PHONE_SPELLINGS[1]}),
        incident(caller={"phone": PHONE_SPELLINGS[2]}),
        incident(),  # anonymous
    ]
    started = time.monotonic()
    response = ingest.post(events)
    elapsed = time.monotonic() - started

    assert response.status_code == 202, response.text
    ids = [e["event_id"] for e in events]
    assert response.json() == {"accepted": 4, "event_ids": ids}
    assert elapsed < 3.0

    on_topic = [
        r
        for r in read_topic(broker.bootstrap, TOPIC_INCIDENTS)
        if json.loads(r.value)["event_id"] in ids
    ]
    assert len(on_topic) == 4
    by_id = {json.loads(r.value)["event_id"]: r for r in on_topic}
    expected_key = victim_key({"phone": "07412 345678"}, TEST_HMAC_KEY.encode())
    for event in events:
        record = by_id[event["event_id"]]
        payload = json.loads(record.value)
        assert record.key == event["incident_id"].encode()
        assert validate_against("incident.pseudonymised.v1", payload) == []
        assert "caller" not in payload
        assert payload["victim_key_id"] == "test"
        assert payload["victim_key"] == (expected_key if "caller" in event else None)
        assert {
            k: v
            for k, v in payload.items()
            if k not in ("victim_key", "victim_key_id", "ingested_at")
        } == {k: v for k, v in event.items() if k != "caller"}
        compact = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
        assert record.value == compact
    # One incident's events share a partition (keyed by incident_id).
    assert by_id[ids[0]].partition == by_id[ids[1]].partition

    everything = b"".join((r.key or b"") + r.value for r in on_topic)
    for raw in (
        *PHONE_SPELLINGS,
        "7412345678",
        "7412 345678",
        RAW_CALLER["name"],
        "Raw-Caller",
        RAW_CALLER["date_of_birth"],
        RAW_CALLER["postcode"],
    ):
        assert raw.encode() not in everything, f"raw caller value {raw!r} reached the topic"


def test_one_invalid_record_in_three_publishes_nothing(
    broker: EmbeddedBroker, make_ingest: Callable[..., Ingest], read_topic: Reader
) -> None:
    ingest = make_ingest(broker.bootstrap)
    first = incident()
    assert ingest.post(first).status_code == 202
    bad = incident(caller={"phone": "12345"})
    bad["occurred_at"] = "2024-03-01T21:15:00"  # no offset
    batch = [incident(), bad, incident()]

    response = ingest.post(batch)

    assert response.status_code == 422
    body = response.json()
    assert body["detail"] == "1 of 3 records are invalid; nothing was published"
    assert {(e["index"], e["field"]) for e in body["errors"]} == {
        (1, "occurred_at"),
        (1, "caller.phone"),
    }
    assert all("expected" in e["reason"] for e in body["errors"])
    assert "12345" not in response.text  # the caller's phone is not echoed
    records = read_topic(broker.bootstrap, ingest.topic)
    assert [json.loads(r.value)["event_id"] for r in records] == [first["event_id"]]


def test_ndjson_batches_are_accepted(
    broker: EmbeddedBroker, make_ingest: Callable[..., Ingest], read_topic: Reader
) -> None:
    ingest = make_ingest(broker.bootstrap)
    events = [incident(caller={"person_id": "P-1"}), incident(), incident()]
    body = (
        json.dumps(events[0])
        + "\r\n\n"
        + json.dumps(events[1])
        + "\n   \n"
        + json.dumps(events[2])  # no trailing newline
    ).encode()

    response = ingest.post_raw(body, "application/x-ndjson; charset=utf-8")

    assert response.status_code == 202, response.text
    assert response.json()["event_ids"] == [e["event_id"] for e in events]
    records = read_topic(broker.bootstrap, ingest.topic)
    assert sorted(json.loads(r.value)["event_id"] for r in records) == sorted(
        e["event_id"] for e in events
    )


def test_malformed_ndjson_line_is_named(
    broker: EmbeddedBroker, make_ingest: Callable[..., Ingest], read_topic: Reader
) -> None:
    ingest = make_ingest(broker.bootstrap)
    body = (json.dumps(incident()) + "\n\n" + '{"event_id": "x", oops}\n').encode()

    response = ingest.post_raw(body, "application/x-ndjson")

    assert response.status_code == 422
    payload = response.json()
    assert payload["detail"] == "1 of 2 NDJSON lines are not valid JSON; nothing was published"
    [error] = payload["errors"]
    assert (error["index"], error["line"], error["field"]) == (1, 3, "(body)")
    assert error["reason"].startswith("expected valid JSON")
    assert read_topic(broker.bootstrap, ingest.topic) == []


@pytest.mark.parametrize(
    ("body", "content_type", "status", "fragment"),
    [
        (b'{"event_id": ', "application/json", 422, "expected valid JSON"),
        (b'{"location": {"lat": NaN}}', "application/json", 422, "NaN is not valid JSON"),
        (b"\xff\xfe\x00", "application/x-ndjson", 422, "expected UTF-8"),
        (b"[]", "application/json", 422, "expected at least one incident event"),
        (b"{}", "text/plain", 415, "application/x-ndjson"),
    ],
)
def test_bodies_that_are_not_incident_json_are_refused(
    broker: EmbeddedBroker,
    make_ingest: Callable[..., Ingest],
    body: bytes,
    content_type: str,
    status: int,
    fragment: str,
) -> None:
    ingest = make_ingest(broker.bootstrap)
    response = ingest.post_raw(body, content_type)
    assert response.status_code == status
    assert fragment in response.text
    if status == 422:
        assert response.json()["errors"][0]["field"] == "(body)"
        assert response.json()["errors"][0]["index"] == 0


def test_a_body_over_the_cap_is_refused_with_413(
    broker: EmbeddedBroker, make_ingest: Callable[..., Ingest]
) -> None:
    ingest = make_ingest(broker.bootstrap)
    response = ingest.post_raw(b" " * (MAX_BODY_BYTES + 1), "application/json")
    assert response.status_code == 413
    assert str(MAX_BODY_BYTES) in response.json()["detail"]


def test_broker_down_gives_503_then_recovers(
    tmp_path: Path, make_ingest: Callable[..., Ingest], read_topic: Reader
) -> None:
    own = EmbeddedBroker(free_port(), log_path=tmp_path / "broker.log")
    own.start()
    try:
        ingest = make_ingest(own.bootstrap, publish_timeout_seconds=1.5)
        assert ingest.post(incident()).status_code == 202
        assert ingest.client.get("/readyz").status_code == 200

        own.stop()
        started = time.monotonic()
        response = ingest.post([incident(), incident()])
        elapsed = time.monotonic() - started

        assert response.status_code == 503
        assert response.headers["Retry-After"] == "5"
        detail = response.json()["detail"]
        assert "none of the records" in detail and "Re-send" in detail
        assert "event_id" in detail
        assert elapsed < 1.5 + 2.0
        ready = ingest.client.get("/readyz")
        assert ready.status_code == 503
        assert own.bootstrap in ready.json()["detail"]
        assert ingest.client.get("/healthz").status_code == 200

        # A restarted Tansu has forgotten everything; the same publisher carries on, and
        # the client's re-send (as the 503 told it) is accepted within Retry-After.
        own.start()
        again = incident()
        deadline = time.monotonic() + 5
        statuses = [ingest.post(again).status_code]
        while statuses[-1] == 503 and time.monotonic() < deadline:
            statuses.append(ingest.post(again).status_code)
        assert statuses[-1] == 202, statuses
        assert set(statuses) <= {202, 503}
        records = read_topic(own.bootstrap, ingest.topic)
        assert {json.loads(r.value)["event_id"] for r in records} == {again["event_id"]}
    finally:
        own.stop()


def test_metrics_count_records_per_app(
    broker: EmbeddedBroker, make_ingest: Callable[..., Ingest]
) -> None:
    first = make_ingest(broker.bootstrap)
    second = make_ingest(broker.bootstrap)  # a second app in one process: own registry
    assert first.post([incident(), incident()]).status_code == 202
    bad = incident()
    bad["source"] = "email"
    assert first.post([incident(), bad, incident()]).status_code == 422

    text = first.client.get("/metrics").text
    assert "asvat_ingest_records_received_total 5.0" in text
    assert "asvat_ingest_records_accepted_total 2.0" in text
    assert 'asvat_ingest_records_rejected_total{reason="invalid_record"} 3.0' in text
    assert "asvat_ingest_publish_seconds_count 1.0" in text
    assert "asvat_ingest_records_received_total 0.0" in second.client.get("/metrics").text


def test_health_and_readiness(broker: EmbeddedBroker, make_ingest: Callable[..., Ingest]) -> None:
    ingest = make_ingest(broker.bootstrap)
    assert ingest.client.get("/healthz").json() == {"status": "ok"}
    assert ingest.client.get("/readyz").json() == {"status": "ready"}

    nowhere = make_ingest(f"127.0.0.1:{free_port()}")
    started = time.monotonic()
    response = nowhere.client.get("/readyz")
    assert response.status_code == 503
    assert time.monotonic() - started < 3.0
    assert nowhere.client.get("/healthz").status_code == 200


def test_run_refuses_a_port_in_use(
    settings_factory: SettingsFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        port = int(sock.getsockname()[1])
        code = run(settings_factory(ingest_port=port, kafka_bootstrap="127.0.0.1:1"))
    assert code == 1
    err = capsys.readouterr().err.strip()
    assert err == f"asvat ingest: port {port} (ingest HTTP) is already in use on 127.0.0.1"


def test_production_without_a_key_does_not_start(
    settings_factory: SettingsFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = settings_factory(
        env="production", hmac_key=None, ingest_port=free_port(), kafka_bootstrap="127.0.0.1:1"
    )
    assert run(settings) == 1
    assert "ASVAT_HMAC_KEY_FILE" in capsys.readouterr().err



def test_posting_needs_an_ingest_token(make_ingest: Callable[..., Ingest]) -> None:
    # Refused at the door, before anything is published: no broker is needed for that.
    ingest = make_ingest(f"127.0.0.1:{free_port()}", publish_timeout_seconds=1.0)
    bare = TestClient(ingest.app)

    def post(token: str | None) -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return bare.post("/v1/incidents", json=incident(), headers=headers)

    response = post(None)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert post("asvat_not-a-token").status_code == 401
    response = post(issue_token(ingest.database_url, "admin"))
    assert response.status_code == 403
    assert "cannot post incidents" in response.json()["detail"]
    # The right role gets in (and meets the missing broker: 503, not 401).
    assert post(ingest.token).status_code == 503
    revoke(ingest.database_url, ingest.token)
    assert post(ingest.token).status_code == 401
    assert bare.get("/healthz").status_code == 200  # health needs no token


def revoke(database_url: str, token: str) -> None:
    from services.api import tokens
    from services.api.db import make_engine, make_writer_factory
    from services.api.models import ApiToken

    engine = make_engine(database_url)
    try:
        with make_writer_factory(engine).begin() as session:
            row = session.query(ApiToken).filter_by(token_hash=hash_token(token)).one()
            tokens.revoke(session=session, which=row.token_id)
    finally:
        engine.dispose()

"""The API's consumer against a real broker: produce with kafka-python, read back over HTTP.

Tansu makes every first group join wait about 5 s, so each test allows 20 s per wait.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from api_fixtures import current_examples
from conftest import issue_token
from kafka import KafkaProducer

from asvat.embedded.broker import EmbeddedBroker, ensure_topics
from asvat.settings import TOPIC_ASSESSMENTS, TOPIC_ESCALATIONS, Settings
from services.api import migrate, service
from services.api.app import create_app
from services.api.consumer import ApiConsumer
from services.api.db import make_engine, make_session_factory
from services.api.metrics import ApiMetrics

WAIT_S = 20.0

pytestmark = pytest.mark.anyio

Produced = tuple[str, int, int]  # topic, partition, offset


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def example(name: str) -> dict[str, Any]:
    """A current, schema-valid example: the consumer checks every message against it."""
    kind, _, which = name.partition("/")
    examples = current_examples(kind)
    escalations = {"victim": 0, "location": 0}
    assessments = {"victim-repeat": -1, "other": 0}
    payload = examples[(escalations if kind == "escalation.v1" else assessments)[which]]
    if name == "escalation.v1/location":
        payload = payload | {"subject_type": "location", "subject_key": "uprn:1"}
    return payload


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def victim_escalation(tag: str, raised_at: str) -> dict[str, Any]:
    """A valid victim escalation unique to ``tag``."""
    payload = example("escalation.v1/victim")
    payload["subject_key"] = sha256(tag)
    payload["escalation_id"] = sha256(f"victim|{payload['subject_key']}|victim-28d")
    payload["event_id"] = sha256(f"event|{payload['escalation_id']}")
    payload["incident_id"] = f"T-{tag}"
    payload["raised_at"] = raised_at
    return payload


def produce(bootstrap: str, messages: list[tuple[str, str, bytes]]) -> list[Produced]:
    """Send ``(topic, key, value)`` messages in order; where each one landed."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    try:
        futures = [
            producer.send(topic, key=key.encode(), value=value) for topic, key, value in messages
        ]
        producer.flush(timeout=10)
        landed = [future.get(timeout=10) for future in futures]
    finally:
        producer.close(timeout=5)
    return [(meta.topic, meta.partition, meta.offset) for meta in landed]


def encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload).encode()


@asynccontextmanager
async def running_api(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The whole app, consumer included, behind an in-process HTTP client (viewer token)."""
    token = issue_token(settings.resolved_database_url, "viewer")
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(
            transport=transport, base_url="http://api", headers=headers
        ) as client:
            yield client


async def wait_until(what: str, check: Callable[[], Awaitable[bool]]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"waited {WAIT_S:g} s for {what}")
        await asyncio.sleep(0.1)


async def escalation_ids(client: httpx.AsyncClient) -> set[str]:
    response = await client.get("/v1/escalations", params={"limit": 500})
    assert response.status_code == 200
    return {item["escalation_id"] for item in response.json()["items"]}


def metric(text: str, name: str, topic: str) -> float:
    prefix = f'{name}{{topic="{topic}"}} '
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    raise AssertionError(f"{prefix!r} not in /metrics")


async def test_consumer_stores_batches_idempotently_and_sets_aside_malformed(
    broker: EmbeddedBroker,
    settings_factory: Callable[..., Settings],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    tag = uuid.uuid4().hex[:10]
    incident = f"T-{tag}-1"
    first = example("assessment.v1/victim-repeat") | {"incident_id": incident}
    latest = first | {
        "rules_met": ["case-review", "victim-28d"],
        "assessed_at": "2024-03-02T09:00:00Z",
    }
    other = example("assessment.v1/other") | {"incident_id": f"T-{tag}-2"}
    victim = victim_escalation(tag, "2024-03-01T21:15:02.120Z")
    redelivered = victim | {"raised_at": "2024-03-03T00:00:00Z"}
    location = example("escalation.v1/location")
    location["subject_key"] = f"uprn:{int(tag, 16) % 10**12}"
    location["escalation_id"] = sha256(f"location|{location['subject_key']}|location-7d-100m")
    location["event_id"] = sha256(f"event|{location['escalation_id']}")
    no_rules = {k: v for k, v in first.items() if k != "rules_met"}

    landed = produce(
        broker.bootstrap,
        [
            # Malformed first, on the partitions of the valid ones: the loop must go on.
            (TOPIC_ESCALATIONS, victim["subject_key"], b"{not json"),
            (TOPIC_ASSESSMENTS, incident, encode(no_rules)),
            (TOPIC_ESCALATIONS, victim["subject_key"], encode(victim)),
            (TOPIC_ESCALATIONS, victim["subject_key"], encode(redelivered)),
            (TOPIC_ESCALATIONS, location["subject_key"], encode(location)),
            (TOPIC_ASSESSMENTS, incident, encode(first)),
            (TOPIC_ASSESSMENTS, other["incident_id"], encode(other)),
            (TOPIC_ASSESSMENTS, incident, encode(latest)),
        ],
    )
    group = f"asvat-api-test-{tag}"
    settings = settings_factory(
        database_url=f"sqlite:///{tmp_path / 'api.db'}",
        kafka_bootstrap=broker.bootstrap,
        api_consumer_group=group,
    )
    caplog.set_level(logging.ERROR, logger="services.api.consumer")

    async with running_api(settings) as client:

        async def assessment_is_latest() -> bool:
            response = await client.get(f"/v1/incidents/{incident}/assessment")
            return response.status_code == 200 and response.json() == latest

        async def both_escalations() -> bool:
            return {victim["escalation_id"], location["escalation_id"]} <= await escalation_ids(
                client
            )

        async def malformed_counted() -> bool:
            text = (await client.get("/metrics")).text
            return all(
                metric(text, "asvat_api_messages_invalid_total", topic) >= 1
                for topic in (TOPIC_ASSESSMENTS, TOPIC_ESCALATIONS)
            )

        await wait_until("the latest assessment", assessment_is_latest)
        await wait_until("both escalations", both_escalations)
        await wait_until("the malformed messages to be counted", malformed_counted)

        response = await client.get(f"/v1/incidents/{other['incident_id']}/assessment")
        assert response.json() == other
        query = {"limit": 500, "include_payload": "true"}
        items = (await client.get("/v1/escalations", params=query)).json()["items"]
        mine = [i for i in items if i["escalation_id"] == victim["escalation_id"]]
        assert [i["payload"] for i in mine] == [victim]  # once, as first delivered

        text = (await client.get("/metrics")).text
        assert metric(text, "asvat_api_messages_consumed_total", TOPIC_ESCALATIONS) >= 4
        assert metric(text, "asvat_api_messages_consumed_total", TOPIC_ASSESSMENTS) >= 4
        # How late each message was stored, from its Kafka timestamp: produced just before,
        # so seconds at most (the alert AsvatAlertsDelayed reads this).
        for topic in (TOPIC_ASSESSMENTS, TOPIC_ESCALATIONS):
            delays = metric(text, "asvat_api_message_delay_seconds_count", topic)
            total = metric(text, "asvat_api_message_delay_seconds_sum", topic)
            assert delays >= 4 and 0 <= total / delays < WAIT_S, (topic, delays, total)
        batches = [
            float(line.split()[-1])
            for line in text.splitlines()
            if line.startswith("asvat_api_batch_store_seconds_count ")
        ]
        assert batches and batches[0] >= 1

        response = await client.get("/readyz")
        assert (response.status_code, response.json()["status"]) == (200, "ok")

    # Each malformed message is logged with where it is, and what is wrong with it.
    logged = [record.getMessage() for record in caplog.records]
    bad_json, bad_schema = (f"{t}[{p}]@{o}" for t, p, o in landed[:2])
    assert any(bad_json in line and "not UTF-8 JSON" in line for line in logged), logged
    assert any(bad_schema in line and "rules_met" in line for line in logged), logged

    # Offsets are committed past everything produced: a restart would not re-read it.
    reader = AIOKafkaConsumer(
        bootstrap_servers=broker.bootstrap, group_id=group, enable_auto_commit=False
    )
    await reader.start()  # no subscription: reads the group's offsets without joining it
    try:
        committed = {
            (topic, partition): await reader.committed(TopicPartition(topic, partition))
            for topic, partition, _ in landed
        }
    finally:
        await reader.stop()
    for topic, partition, offset in landed:
        assert (committed[topic, partition] or -1) > offset, (topic, partition, offset)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_consumer_waits_for_the_broker_and_reconnects_after_it_restarts(
    settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    # A broker of its own: this test stops it. Tansu keeps nothing across a restart.
    own = EmbeddedBroker(free_port(), log_path=tmp_path / "broker.log")
    settings = settings_factory(
        database_url=f"sqlite:///{tmp_path / 'api.db'}",
        kafka_bootstrap=own.bootstrap,
        api_consumer_group="asvat-api-reconnect",
    )
    before = victim_escalation("before-restart", "2024-03-01T10:00:00Z")
    after = victim_escalation("after-restart", "2024-03-01T11:00:00Z")
    try:
        async with running_api(settings) as client:
            # Started with no broker: the app serves, is not ready, and keeps trying.
            await asyncio.sleep(0.5)
            assert (await client.get("/healthz")).status_code == 200
            response = await client.get("/readyz")
            assert (response.status_code, response.json()["failed"]) == (503, ["broker"])

            own.start()
            ensure_topics(own.bootstrap, 1)
            produce(own.bootstrap, [(TOPIC_ESCALATIONS, before["subject_key"], encode(before))])

            async def seen(payload: dict[str, Any]) -> Callable[[], Awaitable[bool]]:
                async def check() -> bool:
                    return payload["escalation_id"] in await escalation_ids(client)

                return check

            await wait_until("an escalation once the broker is up", await seen(before))

            own.stop(timeout=1)
            own.start()
            ensure_topics(own.bootstrap, 1)
            produce(own.bootstrap, [(TOPIC_ESCALATIONS, after["subject_key"], encode(after))])
            await wait_until("an escalation after the broker restarted", await seen(after))
            assert (await client.get("/readyz")).status_code == 200
    finally:
        own.stop(timeout=1)


class ScriptedKafka:
    """Stands in for AIOKafkaConsumer inside the loop: a log per partition, a position per
    partition, and a record of seeks and commits. Stops the consumer once all is read."""

    def __init__(self, log: dict[TopicPartition, list[bytes]], when_done: Callable[[], None]):
        self.log = log
        self.position = dict.fromkeys(log, 0)
        self.seeks: list[tuple[TopicPartition, int]] = []
        self.commits: list[dict[TopicPartition, int]] = []
        self.when_done = when_done
        self.on_seek: Callable[[], None] = lambda: None

    async def getmany(
        self, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        batch = {
            tp: [self.record(tp, offset) for offset in range(self.position[tp], len(values))]
            for tp, values in self.log.items()
            if self.position[tp] < len(values)
        }
        for tp, records in batch.items():
            self.position[tp] = records[-1].offset + 1
        if not batch:
            self.when_done()
        await asyncio.sleep(0)
        return batch

    def record(self, tp: TopicPartition, offset: int) -> ConsumerRecord[bytes, bytes]:
        value = self.log[tp][offset]
        return ConsumerRecord(tp.topic, tp.partition, offset, 0, 0, None, value, None, 0, 0, [])

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))
        self.position[tp] = offset
        self.on_seek()

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))


async def test_a_batch_the_database_refuses_is_read_again_and_committed_once_stored(
    tmp_path: Path,
) -> None:
    # The database has no tables yet ("no such table" is an OperationalError): the batch
    # must not be committed, must be fetched again, and must land once the tables exist.
    engine = make_engine(f"sqlite:///{tmp_path / 'api.db'}")
    escalations = TopicPartition(TOPIC_ESCALATIONS, 2)
    assessments = TopicPartition(TOPIC_ASSESSMENTS, 0)
    escalation = example("escalation.v1/victim")
    assessment = example("assessment.v1/victim-repeat")
    metrics = ApiMetrics()
    consumer = ApiConsumer(
        bootstrap="unused:9092",
        group_id="unused",
        session_factory=make_session_factory(engine),
        metrics=metrics,
    )
    kafka = ScriptedKafka(
        {escalations: [b"[]", encode(escalation)], assessments: [encode(assessment)]},
        when_done=consumer._stopping.set,
    )
    kafka.on_seek = lambda: migrate.upgrade(engine) and None
    try:
        await asyncio.wait_for(consumer._consume(cast(AIOKafkaConsumer, kafka)), 10)
        assert sorted(kafka.seeks) == [(assessments, 0), (escalations, 0)]
        assert kafka.commits == [{escalations: 2, assessments: 1}]
        with make_session_factory(engine)() as session:
            assert service.get_assessment(session=session, incident_id=assessment["incident_id"])
            assert service.list_escalations(session=session)[0].payload == escalation
        text = metrics.render()[0].decode()
        assert metric(text, "asvat_api_messages_invalid_total", TOPIC_ESCALATIONS) == 1
        assert metric(text, "asvat_api_messages_consumed_total", TOPIC_ESCALATIONS) == 2
        assert metric(text, "asvat_api_messages_consumed_total", TOPIC_ASSESSMENTS) == 1
    finally:
        engine.dispose()

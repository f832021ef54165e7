"""Ingest's durable event log on SQLite and PostgreSQL, and the republisher on a real broker.

The log is what makes the embedded broker safe to lose: these tests check that it keeps
each accepted event once, in order, takes back what failed to publish, and is published
again to a broker that lost it — with the epoch record that tells workers to read again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from asvat.embedded.broker import EmbeddedBroker
from asvat.settings import TOPIC_INCIDENTS
from services.ingest.event_log import EventLog, LoggedEvent
from services.ingest.publisher import (
    BrokerUnavailable,
    DurablePublisher,
    KafkaPublisher,
    Republisher,
    read_epoch,
)
from tests.e2e.test_up import free_port


def logged(n: int, incident: str = "I") -> LoggedEvent:
    value = json.dumps({"event_id": f"E{n}", "incident_id": f"{incident}{n}"}).encode()
    return LoggedEvent(f"E{n}", f"{incident}{n}", value)


def test_events_are_kept_once_in_order_and_failed_ones_taken_back(database_url: str) -> None:
    log = EventLog(database_url)
    try:
        assert log.append([logged(1), logged(2), logged(1)]) == ["E1", "E2"]
        assert log.append([logged(2), logged(3)]) == ["E3"]  # a re-sent event adds nothing
        log.remove(["E3"])
        assert log.append([logged(4), logged(3)]) == ["E4", "E3"]
        order = [e.event_id for chunk in log.read(batch=2) for e in chunk]
        assert order == ["E1", "E2", "E4", "E3"]
        assert log.count() == 4
        assert next(e.value for chunk in log.read() for e in chunk) == logged(1).value
    finally:
        log.close()


class FailingPublisher(KafkaPublisher):
    def publish(self, records: Any) -> None:
        raise BrokerUnavailable("broker away")


def test_a_failed_publish_leaves_no_trace_of_the_new_events_only(tmp_path: Any) -> None:
    log = EventLog(f"sqlite:///{tmp_path / 'log.db'}")
    try:
        log.append([logged(1)])  # accepted earlier
        durable = DurablePublisher(FailingPublisher("127.0.0.1:1"), log)
        with pytest.raises(BrokerUnavailable):
            durable.publish([(e.key, e.value) for e in (logged(1), logged(2))])
        # E2 was this request's and is gone; E1 was accepted before and stays.
        assert [e.event_id for chunk in log.read() for e in chunk] == ["E1"]
    finally:
        log.close()


def test_a_broker_that_lost_everything_gets_the_log_back_with_a_new_epoch(
    tmp_path: Any, read_topic: Callable[..., Any]
) -> None:
    broker = EmbeddedBroker(free_port(), log_path=tmp_path / "broker.log")
    broker.start()
    log = EventLog(f"sqlite:///{tmp_path / 'log.db'}")
    kafka = KafkaPublisher(broker.bootstrap, partitions=2, timeout=10)
    try:
        durable = DurablePublisher(kafka, log)
        durable.publish([(e.key, e.value) for e in map(logged, range(30))])
        republisher = Republisher(broker.bootstrap, log, kafka, partitions=2)
        assert republisher.check_once() == 30  # a broker with no epoch yet: fill it
        first = read_epoch(broker.bootstrap)
        assert first is not None and first["republished"] == 30
        assert republisher.check_once() is None  # it has the log now

        broker.stop()  # memory only: every topic is gone
        broker.start()
        kafka.close()
        assert read_epoch(broker.bootstrap) is None
        assert republisher.check_once() == 30
        second = read_epoch(broker.bootstrap)
        assert second is not None and second["epoch"] != first["epoch"]
        records = read_topic(broker.bootstrap, TOPIC_INCIDENTS)
        assert sorted(json.loads(r.value)["event_id"] for r in records) == sorted(
            f"E{n}" for n in range(30)
        )
    finally:
        kafka.close()
        log.close()
        broker.stop()


def test_events_past_retention_are_purged_at_most_once_per_interval(database_url: str) -> None:
    log = EventLog(database_url)
    try:
        log.append([logged(1), logged(2)])
        republisher = Republisher(
            "127.0.0.1:1", log, FailingPublisher("127.0.0.1:1"), partitions=1,
            retention_s=100.0, purge_every_s=3600.0,
        )
        now = time.time()
        assert republisher.purge_if_due(now) == 0  # both accepted just now: kept
        log.append([logged(3)])
        assert republisher.purge_if_due(now + 200) == 0  # not due again within the hour
        assert republisher.purge_if_due(now + 3601) == 3  # all older than 100 s by then
        assert log.count() == 0
    finally:
        log.close()

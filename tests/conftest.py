"""Shared fixtures: a real embedded Kafka broker for the session, and a topic reader.

The broker is a real Tansu process on a free port (memory storage), with every asvat
topic created at 4 partitions. Tests that need a broker they can stop start their own
:class:`~asvat.embedded.broker.EmbeddedBroker`.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from asvat.embedded.broker import EmbeddedBroker, ensure_topics
from asvat.settings import Settings

#: The API's fixtures (``database_url`` on SQLite and PostgreSQL, ``api``): tests/api_fixtures.py
pytest_plugins = ["api_fixtures"]

TEST_PARTITIONS = 4
#: A test HMAC key (never a production one); at least 32 characters.
TEST_HMAC_KEY = "test-only-hmac-key-0123456789abcdef"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class TopicRecord:
    """One record read back from a topic."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes


def consume_all(
    bootstrap: str, topic: str, *, idle_s: float = 0.5, timeout_s: float = 15.0
) -> list[TopicRecord]:
    """Every record on ``topic`` from the beginning, read until nothing new for ``idle_s``.

    Reads by fetching, never by end offsets: Tansu reports a partition's end offset as
    (base offset of its last batch) + 1, which is short whenever a batch holds several
    records. A topic that does not exist gives ``[]``.
    """
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        client_id="asvat-test-reader",
    )
    try:
        if topic not in consumer.topics():
            return []
        partitions = sorted(consumer.partitions_for_topic(topic) or ())
        assigned = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(assigned)
        consumer.seek_to_beginning(*assigned)
        records: list[TopicRecord] = []
        deadline = time.monotonic() + timeout_s
        last_new = time.monotonic()
        while time.monotonic() < deadline:
            batches: dict[Any, list[Any]] = consumer.poll(timeout_ms=100)
            fresh = [r for batch in batches.values() for r in batch]
            if fresh:
                records.extend(TopicRecord(r.partition, r.offset, r.key, r.value) for r in fresh)
                last_new = time.monotonic()
            elif time.monotonic() - last_new >= idle_s:
                break
        return sorted(records, key=lambda r: (r.partition, r.offset))
    finally:
        consumer.close()


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """A real embedded Kafka broker for the whole session, asvat topics created."""
    log_path = tmp_path_factory.mktemp("broker") / "broker.log"
    embedded = EmbeddedBroker(free_port(), log_path=log_path)
    embedded.start()
    try:
        ensure_topics(embedded.bootstrap, TEST_PARTITIONS)
        yield embedded
    finally:
        embedded.stop()


@pytest.fixture
def read_topic() -> Callable[..., list[TopicRecord]]:
    """``read_topic(bootstrap, topic)``: every record on the topic (see :func:`consume_all`)."""
    return consume_all


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    """Settings for a test: explicit values, so ASVAT_* variables in the shell do not leak in."""
    values: dict[str, Any] = {
        "env": "development",
        "data_dir": data_dir,
        "kafka_bootstrap": None,
        "hmac_key": TEST_HMAC_KEY,
        "hmac_key_file": None,
        "hmac_key_id": "test",
        "topic_partitions": TEST_PARTITIONS,
        "future_skew_seconds": 300,
        "publish_timeout_seconds": 5.0,
    }
    values.update(overrides)
    return Settings(**values)


def issue_token(database_url: str, role: str, name: str | None = None) -> str:
    """A new token of ``role`` in the API database at ``database_url`` (migrated first)."""
    return issue_tokens(database_url, [role], name)[role]


def issue_tokens(database_url: str, roles: list[str], name: str | None = None) -> dict[str, str]:
    """A new token of each role in ``roles`` (the database is migrated first)."""
    from services.api import migrate, tokens
    from services.api.db import make_engine, make_writer_factory

    engine = make_engine(database_url)
    made: dict[str, str] = {}
    try:
        migrate.upgrade(engine)
        with make_writer_factory(engine).begin() as session:
            for role in roles:
                label = f"{name or 'test'} {role}"
                made[role] = tokens.create(session=session, role=role, name=label)[1]
    finally:
        engine.dispose()
    return made


@pytest.fixture
def settings_factory(tmp_path: Path) -> Callable[..., Settings]:
    """``settings_factory(**overrides)``: :func:`make_settings` in this test's tmp dir."""

    def factory(**overrides: Any) -> Settings:
        return make_settings(overrides.pop("data_dir", tmp_path), **overrides)

    return factory

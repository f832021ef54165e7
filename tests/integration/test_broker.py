"""The embedded Tansu broker: start, answer, stop, free the port; clear errors."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import TEST_PARTITIONS, free_port

from asvat.embedded.broker import (
    BrokerUnreachableError,
    EmbeddedBroker,
    PortInUseError,
    ensure_port_free,
    ensure_topics,
    ping_broker,
    wait_for_broker,
)
from asvat.settings import ALL_TOPICS


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def listening_port() -> Iterator[int]:
    """A port some other program is listening on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield int(sock.getsockname()[1])


def test_start_answers_and_stop_frees_the_port(tmp_path: Path) -> None:
    port = free_port()
    broker = EmbeddedBroker(port, log_path=tmp_path / "broker.log")
    assert broker.bootstrap == f"127.0.0.1:{port}"
    assert broker.pid is None

    broker.start()
    pid = broker.pid
    assert pid is not None and _alive(pid)
    assert os.getpgid(pid) == pid  # its own process group
    ping_broker(broker.bootstrap, timeout=2.0)
    with pytest.raises(PortInUseError):
        ensure_port_free("127.0.0.1", port, "embedded Kafka broker")

    started = time.monotonic()
    broker.stop()
    assert time.monotonic() - started < 5.0
    assert broker.pid is None
    assert not _alive(pid)
    ensure_port_free("127.0.0.1", port, "embedded Kafka broker")  # free again
    with pytest.raises(BrokerUnreachableError):
        ping_broker(broker.bootstrap, timeout=0.5)
    assert "tansu" in (tmp_path / "broker.log").read_text().lower()

    broker.stop()  # a second stop is harmless
    broker.start()  # and the same object can start again on the same port
    try:
        ping_broker(broker.bootstrap, timeout=2.0)
    finally:
        broker.stop()


def test_stop_is_prompt_while_clients_are_connected() -> None:
    # Tansu drains on SIGTERM until every client has gone; stop() must not wait for that.
    broker = EmbeddedBroker(free_port())
    broker.start()
    pid = broker.pid
    assert pid is not None
    client = socket.create_connection(("127.0.0.1", broker.port))
    try:
        started = time.monotonic()
        broker.stop(timeout=5.0)
        assert time.monotonic() - started < 1.0
        assert not _alive(pid)
    finally:
        client.close()
        broker.stop()


def test_context_manager_starts_and_stops() -> None:
    with EmbeddedBroker(free_port()) as broker:
        pid = broker.pid
        assert pid is not None
        ping_broker(broker.bootstrap, timeout=2.0)
    assert broker.pid is None
    assert not _alive(pid)


def test_port_in_use_error_names_the_port(listening_port: int) -> None:
    with pytest.raises(PortInUseError) as caught:
        EmbeddedBroker(listening_port).start()
    message = str(caught.value)
    assert message == (
        f"port {listening_port} (embedded Kafka broker) is already in use on 127.0.0.1"
    )
    assert "\n" not in message
    assert caught.value.port == listening_port


def test_a_second_broker_on_a_taken_port_is_refused(broker: EmbeddedBroker) -> None:
    with pytest.raises(PortInUseError, match=str(broker.port)):
        EmbeddedBroker(broker.port).start()
    ping_broker(broker.bootstrap, timeout=2.0)  # the first one is untouched


def test_ensure_port_free_names_what_needs_it(listening_port: int) -> None:
    with pytest.raises(PortInUseError, match=rf"port {listening_port} \(ingest HTTP\)"):
        ensure_port_free("127.0.0.1", listening_port, "ingest HTTP")


def test_wait_for_broker_says_where_and_how_to_start_one() -> None:
    port = free_port()
    started = time.monotonic()
    with pytest.raises(BrokerUnreachableError) as caught:
        wait_for_broker(f"127.0.0.1:{port}", timeout=0.5)
    assert time.monotonic() - started < 3.0
    message = str(caught.value)
    assert f"127.0.0.1:{port}" in message
    assert "asvat up" in message
    assert "ASVAT_KAFKA_BOOTSTRAP" in message


def test_wait_for_broker_returns_when_it_answers(broker: EmbeddedBroker) -> None:
    wait_for_broker(broker.bootstrap, timeout=5.0)


def test_ping_is_refused_by_something_that_is_not_kafka(listening_port: int) -> None:
    # Accepts the connection but never answers: the probe must time out, not hang.
    started = time.monotonic()
    with pytest.raises(BrokerUnreachableError, match=str(listening_port)):
        ping_broker(f"127.0.0.1:{listening_port}", timeout=0.5)
    assert time.monotonic() - started < 2.0


def test_ensure_topics_is_idempotent(broker: EmbeddedBroker) -> None:
    from kafka import KafkaAdminClient

    extra = f"asvat.test.ensure.{free_port()}"
    ensure_topics(broker.bootstrap, TEST_PARTITIONS, [*ALL_TOPICS, extra])
    ensure_topics(broker.bootstrap, TEST_PARTITIONS, [*ALL_TOPICS, extra])  # no error
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        described = {t["name"]: t for t in admin.describe_topics([*ALL_TOPICS, extra])}
    finally:
        admin.close()
    assert set(described) == {*ALL_TOPICS, extra}
    for topic in described.values():
        assert topic["error_code"] == 0
        assert len(topic["partitions"]) == TEST_PARTITIONS


def test_ensure_topics_on_a_dead_broker_is_a_clear_error() -> None:
    port = free_port()
    with pytest.raises(BrokerUnreachableError, match=f"127.0.0.1:{port}"):
        ensure_topics(f"127.0.0.1:{port}", 4)

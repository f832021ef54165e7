"""How the worker's replica publishes a batch of outputs, without a broker.

* Each record goes to the partition ``producer.send`` would have chosen (Kafka's default
  partitioner: murmur2 of the key), in its partition in the order decided, as record batches
  (aiokafka's batch API) split where a batch is full; a failed batch fails the publish.
* One INFO line per published batch counts the records by kind and names no id; the line
  per escalation is DEBUG; the metrics are counted per batch.

The same against a real broker: ``tests/integration/test_replica.py``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record.memory_records import MemoryRecords

from asvat.domain.policy import default_policy
from asvat.logs import _DIGITS, JsonFormatter, redact
from asvat.settings import (
    TOPIC_ASSESSMENTS,
    TOPIC_CASE_REVIEWS,
    TOPIC_ESCALATIONS,
    TOPIC_INTEGRITY,
    TOPIC_LATE,
    TOPIC_REVIEWS,
)
from services.repeat_detector.metrics import WorkerMetrics
from services.repeat_detector.ownership import Ownership
from services.repeat_detector.replica import Record, Replica, _Pending, published_summary
from tests.conftest import make_settings
from tests.unit.test_detector import event


class FakeProducer:
    """The part of AIOKafkaProducer the replica's publishing uses; records what it is sent."""

    def __init__(self, partitions: dict[str, int], batch_size: int = 256 * 1024) -> None:
        self.partitions = partitions
        self.batch_size = batch_size
        #: (topic, partition, [(key, value), ...]) per batch, in the order sent.
        self.batches: list[tuple[str, int, list[tuple[bytes, bytes]]]] = []
        self.fail_on: tuple[str, int] | None = None

    async def partitions_for(self, topic: str) -> set[int]:
        return set(range(self.partitions[topic]))

    def create_batch(self) -> BatchBuilder:
        return BatchBuilder(self.batch_size, 0)

    async def send_batch(
        self, batch: BatchBuilder, topic: str, *, partition: int
    ) -> asyncio.Future[Any]:
        assert batch.closed(), "a batch handed over complete is sent without lingering"
        records = MemoryRecords(bytes(batch._build())).next_batch()
        self.batches.append((topic, partition, [(r.key, r.value) for r in records]))
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.fail_on == (topic, partition):
            done.set_exception(RuntimeError(f"broker refused {topic}/{partition}"))
        else:
            done.set_result(None)
        return done

    def by_partition(self) -> dict[tuple[str, int], list[tuple[bytes, bytes]]]:
        found: dict[tuple[str, int], list[tuple[bytes, bytes]]] = {}
        for topic, partition, records in self.batches:
            found.setdefault((topic, partition), []).extend(records)
        return found


def replica_with(producer: FakeProducer, tmp_path: Path, partitions: int = 4) -> Replica:
    replica = Replica(
        make_settings(tmp_path, topic_partitions=partitions), default_policy(), WorkerMetrics()
    )
    replica._producer = producer  # type: ignore[assignment]
    return replica


def some_records(n: int, seed: int = 3) -> list[Record]:
    """Records of every output topic with keys like the real ones, several per key."""
    rng = random.Random(seed)
    topics = [TOPIC_ASSESSMENTS, TOPIC_ESCALATIONS, TOPIC_CASE_REVIEWS, TOPIC_INTEGRITY,
              TOPIC_LATE, TOPIC_REVIEWS]
    keys = [f"NB-2022-{k:07d}" for k in range(40)] + [f"{k:064x}" for k in range(20)]
    keys += ["", "bng:424944:564696", "é-ключ-🙂"]
    return [
        (rng.choice(topics), rng.choice(keys), f"value {i} ".encode() + b"x" * rng.randint(0, 300))
        for i in range(n)
    ]


@pytest.mark.parametrize("batch_size", [256 * 1024, 1000])
def test_records_go_where_producer_send_puts_them_in_order(
    tmp_path: Path, batch_size: int
) -> None:
    """1000 bytes per batch: the records of a partition span several batches, still in order."""
    partitions = {TOPIC_ASSESSMENTS: 4, TOPIC_ESCALATIONS: 4, TOPIC_CASE_REVIEWS: 4,
                  TOPIC_INTEGRITY: 3, TOPIC_LATE: 1, TOPIC_REVIEWS: 7}
    producer = FakeProducer(partitions, batch_size)
    replica = replica_with(producer, tmp_path)
    records = some_records(2000)
    asyncio.run(replica._send_all(records))

    expected: dict[tuple[str, int], list[tuple[bytes, bytes]]] = {}
    for topic, key, value in records:
        ids = list(range(partitions[topic]))
        partition = DefaultPartitioner()(key.encode(), ids, ids)  # what producer.send does
        expected.setdefault((topic, partition), []).append((key.encode(), value))
    assert producer.by_partition() == expected
    if batch_size == 1000:
        assert len(producer.batches) > 3 * len(expected)
        # Every partition's first batch goes before any partition's second one.
        firsts = [(t, p) for t, p, _ in producer.batches[: len(expected)]]
        assert sorted(firsts) == sorted(expected)
    else:
        assert len(producer.batches) == len(expected)


def test_a_failed_batch_fails_the_whole_send(tmp_path: Path) -> None:
    producer = FakeProducer({TOPIC_ASSESSMENTS: 2, TOPIC_ESCALATIONS: 2}, batch_size=500)
    records = [(TOPIC_ASSESSMENTS, f"I{n}", b"v" * 100) for n in range(30)]
    records += [(TOPIC_ESCALATIONS, f"S{n}", b"v" * 100) for n in range(30)]
    producer.fail_on = (TOPIC_ESCALATIONS, 1)
    with pytest.raises(RuntimeError, match="broker refused"):
        asyncio.run(replica_with(producer, tmp_path)._send_all(records))


def test_the_summary_counts_by_kind_and_names_no_id() -> None:
    records: list[Record] = [(TOPIC_ASSESSMENTS, "NB-2022-0001234", b"")] * 480
    records += [(TOPIC_ESCALATIONS, "a" * 64, b"")] * 30
    records += [(TOPIC_CASE_REVIEWS, "b" * 64, b"")] * 2
    records += [(TOPIC_LATE, "NB-2022-0004321", b"")] * 1
    message = published_summary(records[::-1])
    assert message == (
        "published 513 records: 480 assessments, 30 escalations, 2 case reviews, "
        "1 late or rejected events"
    )
    assert "1234" not in message and "4321" not in message
    # Nothing the redaction's phone-number matcher would have to look at.
    assert _DIGITS.search(message) is None and redact(message) == message
    assert published_summary([(TOPIC_REVIEWS, "e" * 64, b"")]) == "published 1 record: 1 reviews"
    assert published_summary([("other.v1", "k", b"")] * 2) == "published 2 records: 2 on other.v1"


def _repeat_victims() -> list[Any]:
    """Incidents of a few victims, several of whom reach a rule (escalations)."""
    rng = random.Random(7)
    return [
        event(n, day=rng.uniform(0, 20), victim=f"{n % 6:064x}", x=rng.uniform(0, 500))
        for n in range(40)
    ]


def test_one_info_line_per_published_batch_and_escalations_at_debug(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    producer = FakeProducer({t: 4 for t in (TOPIC_ASSESSMENTS, TOPIC_ESCALATIONS,
                                            TOPIC_CASE_REVIEWS, TOPIC_INTEGRITY, TOPIC_LATE)})
    replica = replica_with(producer, tmp_path)
    replica.ownership = Ownership(4, range(4))
    replica.assigned, replica.phase = True, "live"
    caplog.set_level(logging.DEBUG, logger="asvat.worker")
    pending = _Pending()
    events = _repeat_victims()
    for incident in events:
        replica._apply(({}, incident), incident.reported_at, pending)
    asyncio.run(replica._publish(pending))

    sent = Counter(topic for topic, _p, records in producer.batches for _ in records)
    assert sent[TOPIC_ESCALATIONS] > 0 and sent[TOPIC_ASSESSMENTS] >= len(events)
    info = [r for r in caplog.records if r.levelno == logging.INFO]
    assert [r.getMessage() for r in info] == [published_summary(pending.records)]
    assert info[0].getMessage().startswith(
        f"published {sum(sent.values())} records: {sent[TOPIC_ASSESSMENTS]} assessments, "
        f"{sent[TOPIC_ESCALATIONS]} escalations"
    )
    line = JsonFormatter("worker").format(info[0])
    assert "incident_id" not in line and '"count": ' in line
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert len([m for m in debug if m.startswith("escalation ")]) == sent[TOPIC_ESCALATIONS]

    # The metrics, counted once per batch, count every event and output.
    metrics = replica.metrics
    assert metrics.events.labels("applied")._value.get() == len(events)
    issued = sum(s.value for m in metrics.assessments.collect() for s in m.samples
                 if s.name.endswith("_total"))
    assert issued >= sent[TOPIC_ASSESSMENTS]
    raised = sum(s.value for m in metrics.escalations.collect() for s in m.samples
                 if s.name.endswith("_total"))
    assert raised >= sent[TOPIC_ESCALATIONS]


def test_nothing_published_nothing_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    producer = FakeProducer({})
    caplog.set_level(logging.DEBUG, logger="asvat.worker")
    asyncio.run(replica_with(producer, tmp_path)._publish(_Pending(positions={0: 5})))
    assert producer.batches == [] and caplog.records == []


def test_an_integer_beyond_64_bits_is_written_not_raised() -> None:
    # orjson refuses such an integer; an event set aside with its data as read may hold one.
    from asvat.contracts import dumps_json

    payload = {"reason": "late", "event": {"sequence": 2**70, "lat": 55.0}}
    assert json.loads(dumps_json(payload)) == payload
